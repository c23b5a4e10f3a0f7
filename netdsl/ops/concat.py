"""Channel concatenation of (N, C_i, H, W) pieces into (N, sum C_i, H, W).

Pure data movement, so plain NumPy slice assignment (a strided memcpy per piece) is as fast
as a kernel and needs no compilation. Backward slices dy back into one gradient per piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _offsets(channels: Sequence[int], total: int) -> list[int]:
    """Start channel of every piece, plus `total` at the end; checks the pieces fill `total`."""
    starts = [0]
    for c in channels:
        starts.append(starts[-1] + c)
    if starts[-1] != total:
        raise ValueError(f"concat pieces have {starts[-1]} channels in all, output has {total}")
    return starts


def ref_forward(xs: Sequence[np.ndarray]) -> np.ndarray:
    """xs: pieces (N, C_i, H, W) -> (N, sum C_i, H, W), float64."""
    return np.concatenate([np.asarray(x, dtype=np.float64) for x in xs], axis=1)


def ref_backward(dy: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    """dy: (N, sum C_i, H, W), channels: the C_i -> gradients (N, C_i, H, W), float64."""
    starts = _offsets(channels, dy.shape[1])
    dy = np.asarray(dy, dtype=np.float64)
    return [dy[:, s:e].copy() for s, e in zip(starts[:-1], starts[1:], strict=True)]


def concat_forward(inputs: Sequence[np.ndarray], y: np.ndarray) -> None:
    """Copy pieces (N, C_i, H, W) into y (N, sum C_i, H, W), in order along channels."""
    starts = _offsets([x.shape[1] for x in inputs], y.shape[1])
    for x, s, e in zip(inputs, starts[:-1], starts[1:], strict=True):
        y[:, s:e] = x


def concat_backward(dy: np.ndarray, dxs: Sequence[np.ndarray]) -> None:
    """Copy channel slices of dy (N, sum C_i, H, W) into each dx (N, C_i, H, W) (overwrite)."""
    starts = _offsets([dx.shape[1] for dx in dxs], dy.shape[1])
    for dx, s, e in zip(dxs, starts[:-1], starts[1:], strict=True):
        dx[...] = dy[:, s:e]


# CUDA kernels: see the CUDA backend issue
