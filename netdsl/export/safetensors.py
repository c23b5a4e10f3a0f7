"""`--safetensors OUT.safetensors` and `netdsl train --init-from W.safetensors`.

The file is a PyTorch state_dict: the names and layouts of the module `--pytorch` writes
(each layer type's state_dict_items): "<layer>.weight" and "<layer>.bias" in PyTorch's
layouts (conv (O, C/groups, kh, kw), fc (O, C*H*W)), batch norm's running_mean,
running_var and num_batches_tracked. Those are netdsl's own names and layouts, so reading
one back is a check of names and shapes.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import DataError
from ..files import write_atomic
from ..ir import Network
from ..ops import registry
from .common import need, own


def state_dict(net: Network, tensors: dict[str, Any]) -> list[tuple[str, str | None, Any]]:
    """(PyTorch name, netdsl name or None, array) of every tensor, in layer order."""
    items = []
    for lyr in net.layers:
        for name, pname, array in registry.of(lyr).state_dict_items(lyr, own(lyr, tensors)):
            items.append((name, f"{lyr.name}.{pname}" if pname else None, array))
    return items


def save_safetensors(net: Network, tensors: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the state_dict as a safetensors file, atomically."""
    import numpy as np

    st = need("safetensors.numpy", "--safetensors")
    arrays = {}
    for name, _, a in state_dict(net, tensors):
        a = np.asarray(a)
        # astype copies C-contiguous and keeps a 0-d array 0-d (ascontiguousarray would not)
        arrays[name] = a.astype(np.int64 if a.dtype.kind in "iu" else np.float32, order="C")
    meta = {"format": "pt", "network": net.name, "source": os.path.basename(net.file),
            "producer": "netdsl"}  # fmt: skip
    write_atomic(path, st.save(arrays, metadata=meta))


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a safetensors file as numpy; DataError naming the file otherwise."""
    from ..train.paths import os_problem, show_path

    st = need("safetensors.numpy", "--init-from")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{show_path(path)}: cannot read: {os_problem(e)}") from None
    try:
        return dict(st.load(data))
    except Exception as e:  # the library raises its own SafetensorError and others
        raise DataError(f"{show_path(path)}: not a readable safetensors file ({e})") from None


def init_tensors(net: Network, current: dict[str, Any], path: str | os.PathLike,
                 partial: bool = False) -> tuple[dict[str, Any], list[str], list[str]]:  # fmt: skip
    """The netdsl tensors a safetensors file gives a network whose weights are `current`.

    Strict (the default): every tensor of the network must be in the file with its shape
    and the file may hold nothing else (a DataError naming the file and the first tensor
    that does not fit). `partial`: tensors whose name and shape match are taken; returns
    also the network's tensors left at their init and the file's tensors not used.
    num_batches_tracked is PyTorch's alone: taken or not, never needed.
    """
    import numpy as np

    from ..train.paths import show_path

    where = show_path(path)
    found = read_safetensors(path)
    loaded: dict[str, Any] = {}
    left: list[str] = []
    used: set[str] = set()
    for tname, nname, array in state_dict(net, current):
        if nname is None:
            used.add(tname)
            continue
        want = tuple(np.shape(array))
        got = found.get(tname)
        if got is None or tuple(got.shape) != want:
            if partial:
                left.append(tname)
                continue
            if got is None:
                raise DataError(f"{where}: does not fit {net.name}: no tensor {tname} (shape "
                                f"{_dims(want)}); use --init-partial to load only what "
                                "matches")  # fmt: skip
            raise DataError(f"{where}: does not fit {net.name}: {tname} is {_dims(got.shape)}, "
                            f"the network needs {_dims(want)}")  # fmt: skip
        value = np.asarray(got, np.float32)
        if not np.isfinite(value).all():
            raise DataError(f"{where}: {tname} holds NaN or infinite values")
        loaded[nname] = value.reshape(np.shape(current[nname]))
        used.add(tname)
    unused = [k for k in found if k not in used]
    if unused and not partial:
        raise DataError(f"{where}: does not fit {net.name}: the file has a tensor {unused[0]} "
                        "that the network does not have; use --init-partial to load only "
                        "what matches")  # fmt: skip
    return loaded, left, unused


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def init_compiled(cnet: Any, path: str | os.PathLike, partial: bool = False, warn=None) -> None:
    """`netdsl train --init-from`: load a safetensors state_dict into a compiled network
    before its first step (see init_tensors); what was loaded is said on `warn`."""
    import sys

    from ..train.paths import show_path

    warn = sys.stderr if warn is None else warn
    current = {**cnet.params, **cnet.buffers}
    loaded, left, unused = init_tensors(cnet.net, current, path, partial)
    if not loaded:
        raise DataError(
            f"{show_path(path)}: no tensor of it fits {cnet.net.name} (names "
            "and shapes differ everywhere); was it written for another network?"
        )
    cnet.set_params(loaded, strict=False)
    print(f"--init-from {show_path(path)}: {len(loaded)} of {len(current)} tensors loaded",
          file=warn)  # fmt: skip
    if left:
        print(f"  left at their init: {', '.join(left)}", file=warn)
    if unused:
        print(f"  not used from the file: {', '.join(unused)}", file=warn)
