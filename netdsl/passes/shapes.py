"""Shape inference and checking, with parameter and MAC counts, by each layer type's rule.

Every rule (LayerType.infer, netdsl/ops/layers/) sees the layer and its input shapes
(C, H, W) per image and returns the output shape; it records the parameter tensors
(PyTorch layouts), the trainable count and the multiply-accumulates per image. Mistakes
are reported at the option that caused them, with expected and actual values.
"""

from __future__ import annotations

from ..errors import NetError
from ..ir import Network, Shape
from ..ops import registry
from ..ops.base import fmt

MAX_ELEMENTS = 2**31 - 1  # per image; float32 kernels index with 32-bit-safe arithmetic


def infer_shapes(net: Network) -> Network:
    """Fill in_shapes, out_shape, params, n_params and macs of every layer, in order."""
    shapes: dict[str, Shape] = {}
    for i, layer in enumerate(net.layers):
        lt = registry.of(layer)
        if lt.source and i > 0:
            raise layer.error("only one input layer is supported", None,
                              "a second input is not yet supported")  # fmt: skip
        if lt.is_loss and i != len(net.layers) - 1:
            nxt = net.layers[i + 1]
            raise nxt.error(f"layer '{nxt.name}' comes after the loss", None,
                            "the loss must be the last layer")  # fmt: skip
        layer.in_shapes = [shapes[n] for n in layer.inputs]
        out = lt.infer(layer)
        if any(d < 1 for d in out):
            raise layer.error(f"{layer.name}: output shape {fmt(out)} is empty")
        if out[0] * out[1] * out[2] > MAX_ELEMENTS or layer.n_params > MAX_ELEMENTS:
            raise layer.error(
                f"{layer.name}: output {fmt(out)} or its {layer.n_params:,} "
                f"parameters exceed {MAX_ELEMENTS:,} elements per image",
                None,
                "is a size or a number of filters mistyped?",
            )
        layer.out_shape = out
        shapes[layer.name] = out
    return net


def receptive_fields(net: Network) -> Network:
    """Receptive field (size, jump) of every layer's output, in input pixels."""
    rf: dict[str, tuple[int, int]] = {}
    for layer in net.layers:
        r, j = max((rf[n] for n in layer.inputs), default=(1, 1))
        layer.rf = registry.of(layer).receptive_field(layer, r, j)
        rf[layer.name] = layer.rf
    return net


def _check_train_vs_input(net: Network) -> None:
    c, h, w = net.input.out_shape
    t = net.train
    for a in t["augment"]:
        if a["kind"] == "crop":
            size = a["size"] if isinstance(a["size"], (list, tuple)) else (a["size"], a["size"])
            if tuple(size) != (h, w):
                raise NetError(
                    f"crop({fmt(size)}) must give the input size {h}x{w}",
                    t.locs.get("augment"),
                    f"write crop({h})" if h == w else None,
                )
    norm = t["normalize"]
    if norm:
        for k in ("mean", "std"):
            if len(norm[k]) not in (1, c):
                raise NetError(f"normalize {k} has {len(norm[k])} values but the input has "
                               f"{c} channels", t.locs.get("normalize"),
                               f"give 1 or {c} values")  # fmt: skip


# Datasets whose images and classes are known before loading: name -> ((C, H, W), classes)
KNOWN_DATASETS = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def known_dataset(data) -> str | None:
    """The KNOWN_DATASETS name of a train section's `data` (`cifar10:DIR` is cifar10), or None."""
    text = str(data)
    key = "cifar10" if text == "cifar10" or text.startswith("cifar10:") else text
    return key if key in KNOWN_DATASETS else None


def data_check(net: Network) -> Network:
    """Check the input shape and the number of classes against a known dataset."""
    _check_train_vs_input(net)
    key = known_dataset(net.train["data"])
    if key is None:
        return net
    shape, classes = KNOWN_DATASETS[key]
    crops = [a["size"] for a in net.train["augment"] if a["kind"] == "crop"]
    inp = net.input
    want = shape
    if crops:
        size = crops[0] if isinstance(crops[0], int) else crops[0][0]
        want = (shape[0], size, size)
    if inp.out_shape != want and inp.out_shape[0] != shape[0]:
        raise inp.error(f"input is {fmt(inp.out_shape)} but {key} images are {fmt(shape)}",
                        "shape", f"use input image: {fmt(want)}")  # fmt: skip
    loss = net.loss
    if loss is not None and loss.in_shapes[0][0] != classes:
        raise loss.error(
            f"the loss sees {loss.in_shapes[0][0]} class scores but {key} has {classes} classes",
            None, f"make the last fc layer {classes} wide")  # fmt: skip
    return net
