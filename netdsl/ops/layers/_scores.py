"""The rule shared by the layer types that read a vector of class scores (softmax, loss)."""

from __future__ import annotations

from ..base import fmt


def vector(layer, what: str):
    """The input shape, which must be (K, 1, 1); else a located error naming `what`."""
    shape = layer.in_shapes[0]
    if shape[1:] != (1, 1):
        raise layer.error(
            f"{layer.name}: {what} expects a vector of class scores, got {fmt(shape)}", None,
            "put an fc layer before it")  # fmt: skip
    return shape


def all_channels(lo, cin: int):
    """Every input channel, for each GPU in `lo` (an array or one GPU's int)."""
    return lo * 0, lo * 0 + cin
