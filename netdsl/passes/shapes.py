"""Shape inference and checking, with parameter and MAC counts, one rule per layer type.

Every rule sees the layer and its input shapes (C, H, W) per image and returns the
output shape; it records the parameter tensors (PyTorch layouts), the trainable count
and the multiply-accumulates per image. Mistakes are reported at the option that
caused them, with expected and actual values.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import NetError
from ..ir import Layer, Network, Shape

MAX_ELEMENTS = 2**31 - 1  # per image; float32 kernels index with 32-bit-safe arithmetic


def infer_shapes(net: Network) -> Network:
    """Fill in_shapes, out_shape, params, n_params and macs of every layer, in order."""
    shapes: dict[str, Shape] = {}
    for i, layer in enumerate(net.layers):
        if layer.type == "input" and i > 0:
            raise layer.error("only one input layer is supported", None,
                              "a second input is not yet supported")  # fmt: skip
        if layer.type == "loss" and i != len(net.layers) - 1:
            nxt = net.layers[i + 1]
            raise nxt.error(f"layer '{nxt.name}' comes after the loss", None,
                            "the loss must be the last layer")  # fmt: skip
        layer.in_shapes = [shapes[n] for n in layer.inputs]
        out = RULES[layer.type](layer)
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


def fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def _input(layer: Layer) -> Shape:
    shape = tuple(layer.attrs["shape"])
    if len(shape) == 2:  # HxW: one channel
        shape = (1, *shape)
    if len(shape) != 3:
        raise layer.error(f"input shape must be CxHxW, got {fmt(shape)}", "shape",
                          "e.g. input image: 3x32x32")  # fmt: skip
    if min(shape) < 1:
        raise layer.error(f"input shape {fmt(shape)} has a zero size", "shape")
    return shape  # type: ignore[return-value]


def _window(layer: Layer, size: int, k: int, s: int, d: int, pad: tuple[int, int], axis: str,
            key: str) -> int:  # fmt: skip
    """Output length of a sliding window; checks the kernel fits its padded input."""
    ke = d * (k - 1) + 1  # dilated kernel extent
    padded = size + pad[0] + pad[1]
    if ke > padded:
        what = f"kernel {k}" + (f" (dilated to {ke})" if d > 1 else "")
        raise layer.error(
            f"{layer.name}: {what} is larger than its padded input {axis} {padded}",
            key,
            f"input {axis} is {size}; use a smaller kernel or more padding",
        )
    return (padded - ke) // s + 1


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's 'same': output ceil(size/stride), extra padding at the bottom/right."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
    return total // 2, total - total // 2


def _conv(layer: Layer) -> Shape:
    (c, h, w), a = layer.in_shapes[0], layer.attrs
    o, g, (kh, kw), (sh, sw), (dh, dw) = (a["filters"], a["groups"], a["kernel"], a["stride"],
                                          a["dilation"])  # fmt: skip
    table = a["connect"]
    if table is not None:
        if g != 1:
            raise layer.error("a connection table replaces groups; drop 'groups'", "groups")
        if len(table) != o:
            raise layer.error(
                f"{layer.name}: the connection table has {len(table)} rows but the layer has "
                f"{o} filters", "connect", "one row per output map")  # fmt: skip
        bad = max(max(r) for r in table)
        if bad >= c:
            raise layer.error(
                f"{layer.name}: the connection table uses input map {bad} but the input has "
                f"{c} maps (0..{c - 1})", "connect")  # fmt: skip
    if c % g:
        raise layer.error(
            f"{layer.name} expects {c} input channels divisible by groups={g}", "groups",
            f"use a groups value that divides {c}")  # fmt: skip
    if o % g:
        raise layer.error(
            f"{layer.name}: {o} filters are not divisible by groups={g}", "groups",
            f"use a number of filters that is a multiple of {g}")  # fmt: skip
    pad = a["pad"]
    if pad == "valid":
        pads = ((0, 0), (0, 0))
    elif pad == "same":
        pads = (_same_pad(h, kh, sh, dh), _same_pad(w, kw, sw, dw))
    else:
        pads = ((pad[0], pad[0]), (pad[1], pad[1]))
    ho = _window(layer, h, kh, sh, dh, pads[0], "height", "kernel")
    wo = _window(layer, w, kw, sw, dw, pads[1], "width", "kernel")
    a["pad_tl"] = (pads[0][0], pads[1][0])
    a["out_hw"] = (ho, wo)
    layer.params = {"weight": (o, c // g, kh, kw)}
    if a["bias"]:
        layer.params["bias"] = (o,)
    links = sum(len(r) for r in table) if table is not None else o * (c // g)
    layer.n_params = links * kh * kw + (o if a["bias"] else 0)
    layer.macs = links * kh * kw * ho * wo
    return (o, ho, wo)


def _pool(layer: Layer) -> Shape:
    (c, h, w), a = layer.in_shapes[0], layer.attrs
    if a["global"]:
        if a["kernel"] is not None:
            raise layer.error("global pooling takes no kernel size", "kernel")
        a["kernel"], a["stride"], a["round"] = (h, w), (1, 1), a["round"] or "floor"
    if a["kernel"] is None:
        raise layer.error("pool needs a kernel size", None, "e.g. pool p1: max 2x2, stride 2")
    (kh, kw), (ph, pw) = a["kernel"], a["pad"]
    (sh, sw) = a["stride"] = a["stride"] or (kh, kw)
    if ph >= kh or pw >= kw:
        raise layer.error(f"{layer.name}: padding {ph}x{pw} must be smaller than the kernel "
                          f"{kh}x{kw}", "pad")  # fmt: skip
    floor_hw, ceil_hw = [], []
    for size, k, s, p, axis in ((h, kh, sh, ph, "height"), (w, kw, sw, pw, "width")):
        fl = _window(layer, size, k, s, 1, (p, p), axis, "kernel")
        ce = -(-(size + 2 * p - k) // s) + 1
        if (ce - 1) * s >= size + p:  # Caffe's rule: the last window must start inside
            ce -= 1
        floor_hw.append(fl)
        ceil_hw.append(ce)
    if a["round"] is None:
        if floor_hw != ceil_hw:
            raise layer.error(
                f"{layer.name}: output is {fmt(floor_hw)} with floor rounding and "
                f"{fmt(ceil_hw)} with ceil rounding; say which",
                None,
                "add `ceil` (Caffe, cuda-convnet) or `floor` (Darknet, PyTorch's default)",
            )
        a["round"] = "floor"
    ho, wo = floor_hw if a["round"] == "floor" else ceil_hw
    a["pad_tl"], a["out_hw"] = (ph, pw), (ho, wo)
    return (c, ho, wo)


def _subsample(layer: Layer) -> Shape:
    (c, h, w), a = layer.in_shapes[0], layer.attrs
    (kh, kw) = a["kernel"]
    (sh, sw) = a["stride"] = a["stride"] or (kh, kw)
    ho = _window(layer, h, kh, sh, 1, (0, 0), "height", "kernel")
    wo = _window(layer, w, kw, sw, 1, (0, 0), "width", "kernel")
    a["pad_tl"], a["out_hw"] = (0, 0), (ho, wo)
    layer.params = {"weight": (c,), "bias": (c,)}  # one coefficient and one bias per map
    layer.n_params = 2 * c
    return (c, ho, wo)


def _fc(layer: Layer) -> Shape:
    c, h, w = layer.in_shapes[0]
    o = layer.attrs["outputs"]
    f = c * h * w  # fc flattens its input (implicit flatten)
    layer.params = {"weight": (o, f)}
    if layer.attrs["bias"]:
        layer.params["bias"] = (o,)
    layer.n_params = o * f + (o if layer.attrs["bias"] else 0)
    layer.macs = o * f
    return (o, 1, 1)


def _same(layer: Layer) -> Shape:
    return layer.in_shapes[0]


def _maxout(layer: Layer) -> Shape:
    c, h, w = layer.in_shapes[0]
    k = layer.attrs["pieces"]
    if c % k:
        raise layer.error(f"{layer.name}: {c} input channels are not divisible into "
                          f"{k} pieces", "pieces")  # fmt: skip
    return (c // k, h, w)


def _lrn(layer: Layer) -> Shape:
    if layer.attrs["size"] % 2 == 0:
        raise layer.error(f"lrn size must be odd (a window centred on each map), got "
                          f"{layer.attrs['size']}", "size")  # fmt: skip
    return layer.in_shapes[0]


def _bn(layer: Layer) -> Shape:
    c = layer.in_shapes[0][0]
    layer.params = {"weight": (c,), "bias": (c,)}  # gamma, beta
    layer.state = {"running_mean": (c,), "running_var": (c,)}
    layer.n_params = 2 * c
    return layer.in_shapes[0]


def _vector(layer: Layer, what: str) -> Shape:
    shape = layer.in_shapes[0]
    if shape[1:] != (1, 1):
        raise layer.error(
            f"{layer.name}: {what} expects a vector of class scores, got {fmt(shape)}", None,
            "put an fc layer before it")  # fmt: skip
    return shape


def _flatten(layer: Layer) -> Shape:
    c, h, w = layer.in_shapes[0]
    return (c * h * w, 1, 1)


def _add(layer: Layer) -> Shape:
    first = layer.in_shapes[0]
    for i, (name, shape) in enumerate(zip(layer.inputs, layer.in_shapes)):
        if shape != first:
            raise layer.error(
                f"{layer.name}: add operands differ: {layer.inputs[0]} is {fmt(first)}, "
                f"{name} is {fmt(shape)}", f"__input{i}__",
                "add needs equal shapes; project the shortcut with a 1x1 conv")  # fmt: skip
    return first


def _concat(layer: Layer) -> Shape:
    _, h, w = layer.in_shapes[0]
    for i, (name, shape) in enumerate(zip(layer.inputs, layer.in_shapes)):
        if shape[1:] != (h, w):
            raise layer.error(
                f"{layer.name}: concat operands differ in size: {layer.inputs[0]} is "
                f"{h}x{w}, {name} is {shape[1]}x{shape[2]}", f"__input{i}__",
                "concat joins channels; heights and widths must match")  # fmt: skip
    return (sum(s[0] for s in layer.in_shapes), h, w)


RULES: dict[str, Callable[[Layer], Shape]] = {
    "input": _input,
    "conv": _conv,
    "pool": _pool,
    "subsample": _subsample,
    "fc": _fc,
    "act": _same,
    "maxout": _maxout,
    "lrn": _lrn,
    "dropout": _same,
    "bn": _bn,
    "softmax": lambda lyr: _vector(lyr, "softmax"),
    "flatten": _flatten,
    "add": _add,
    "concat": _concat,
    "loss": lambda lyr: _vector(lyr, "the loss"),
}


def receptive_fields(net: Network) -> Network:
    """Receptive field (size, jump) of every layer's output, in input pixels."""
    rf: dict[str, tuple[int, int]] = {}
    for layer in net.layers:
        if layer.type == "input":
            layer.rf = (1, 1)
        else:
            r, j = max(rf[n] for n in layer.inputs)
            a = layer.attrs
            if layer.type in ("conv", "pool", "subsample"):
                kh = a["kernel"][0]
                d = a.get("dilation", (1, 1))[0]
                r, j = r + d * (kh - 1) * j, j * a["stride"][0]
            elif layer.type in ("fc", "flatten"):
                r = r + (layer.in_shapes[0][1] - 1) * j  # sees its whole input
            layer.rf = (r, j)
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


def data_check(net: Network) -> Network:
    """Check the input shape and the number of classes against a known dataset."""
    known = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}
    _check_train_vs_input(net)
    data = net.train["data"]
    if data is None:
        return net
    key = "cifar10" if data == "cifar10" or str(data).startswith("cifar10:") else data
    if key not in known:
        return net
    shape, classes = known[key]
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
