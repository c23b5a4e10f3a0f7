"""What every exporter shares: the weights a checkpoint gives a network (checked), atomic
output files, and optional packages imported with an error that names the extra."""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import DataError, NetdslError
from ..ir import Layer, Network

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "safetensors": "safetensors", "torch": None}


def need(module: str, what: str) -> Any:
    """Import an optional package, or a one-line NetdslError (exit 1) naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'netdsl[{extra}]'" if extra else f"pip install {top}"
        why = "is not installed" if isinstance(e, ModuleNotFoundError) else f"cannot load ({e})"
        raise NetdslError(f"{what} needs the {top} package, which {why}; install it with: "
                          f"{how}") from None  # fmt: skip


def expected_tensors(net: Network) -> dict[str, tuple[int, ...]]:
    """Every tensor a network's weights hold, "<layer>.<name>" -> shape (parameters, then
    non-trainable state such as batch norm's running statistics), in layer order."""
    out: dict[str, tuple[int, ...]] = {}
    for lyr in net.layers:
        for pname, shape in {**lyr.params, **lyr.state}.items():
            out[f"{lyr.name}.{pname}"] = tuple(shape)
    return out


def own(layer: Layer, tensors: dict) -> dict:
    """A layer's tensors from a dict keyed "<layer>.<name>", keyed by name."""
    prefix = layer.name + "."
    return {k[len(prefix) :]: v for k, v in tensors.items()
            if k.startswith(prefix) and "." not in k[len(prefix) :]}  # fmt: skip


def checkpoint_tensors(net: Network, path: str | os.PathLike) -> dict[str, Any]:
    """The weights of a netdsl checkpoint (.npz written by `netdsl train`), checked against
    the network: every tensor it needs, of its shape, finite. A DataError naming the file
    and the first tensor that does not fit otherwise."""
    import numpy as np

    from ..train.checkpoint import load_checkpoint
    from ..train.paths import show_path

    arrays, _ = load_checkpoint(path)
    where = show_path(path)
    tensors = {k.split(".", 1)[1]: np.asarray(v, np.float32) for k, v in arrays.items()
               if k.startswith(("param.", "state."))}  # fmt: skip
    check_fit(net, tensors, where, "the checkpoint")
    return tensors


def check_fit(net: Network, tensors: dict, where: str, what: str) -> None:
    """Refuse (DataError naming `where` and the first bad tensor) weights that lack a tensor
    of the network, hold one it does not have, have another shape, or are not finite."""
    import numpy as np

    expected = expected_tensors(net)
    for name, shape in expected.items():
        if name not in tensors:
            raise DataError(f"{where}: does not fit {net.name}: {what} has no tensor {name} "
                            f"(expected shape {_dims(shape)}); was it written for another "
                            "network?")  # fmt: skip
        got = tuple(np.shape(tensors[name]))
        if got != shape:
            raise DataError(f"{where}: does not fit {net.name}: {name} is {_dims(got)} in "
                            f"{what}, the network needs {_dims(shape)}")  # fmt: skip
        if not np.isfinite(tensors[name]).all():
            raise DataError(f"{where}: {name} holds NaN or infinite values (the weights of a "
                            "diverged run cannot be exported)")  # fmt: skip
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise DataError(f"{where}: does not fit {net.name}: {what} has a tensor {extra[0]} "
                        "that the network does not have")  # fmt: skip


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def window_pads(layer: Layer) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding that makes a plain floor-rounded window (ONNX's
    Conv/MaxPool, PyTorch's F.conv2d) give exactly the layer's output size: the bottom and
    right padding is what the last window needs (a ceil-rounded pool's overhang included),
    never more; so no output row is added or dropped."""
    a = layer.attrs
    _, h, w = layer.in_shapes[0]
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    (pt, pl), (ho, wo) = a["pad_tl"], a["out_hw"]
    pb = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - h - pt)
    pr = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - w - pl)
    return pt, pl, pb, pr


def fresh_name(base: str, used: set[str]) -> str:
    """`base`, or `base_2`, `base_3` ... : the first not in `used`, which it joins (ONNX
    tensor and node names, the generated PyTorch module's variables)."""
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name
