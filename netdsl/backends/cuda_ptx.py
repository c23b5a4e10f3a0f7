"""Compile recorded CUDA launches to PTX for a real GPU, on a machine without one.

The simulator (NUMBA_ENABLE_CUDASIM=1) runs kernels as Python, so it never checks that
they are valid *CUDA* code: a NumPy function numba-cuda lacks (np.exp), a type that does
not unify, a shared array of non-constant shape all pass the simulator and fail on a GPU.
`netdsl.ops.cudakit.recording()` notes every launch's kernel and argument types while the
simulator runs; this module, in a process WITHOUT the simulator, rebuilds each kernel and
compiles it with numba-cuda's `compile_ptx` (needs NVVM, e.g. the nvidia-nvvm and
nvidia-cuda-nvrtc wheels, but no GPU and no driver).

    python -m netdsl.backends.cuda_ptx RECORDS.pkl     # prints one line per kernel
"""

from __future__ import annotations

import importlib
import pickle
import sys
from typing import Any


def _type(desc: tuple) -> Any:
    import numpy as np
    from numba import types
    from numba.np.numpy_support import from_dtype

    if desc[0] == "array":
        _, dtype, ndim, layout = desc
        return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)
    name = desc[1]
    return getattr(types, name) if hasattr(types, name) else types.float64


def compile_records(records: list[tuple], cc: tuple[int, int] = (9, 0)) -> list[str]:
    """Compile each distinct (kernel, argument types) once; returns 'ok ...' / 'FAIL ...' lines."""
    from numba import cuda
    from numba.cuda import dispatcher

    class _Device:  # device functions ask the current device for its compute capability
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Device()  # no driver here: pretend to be `cc`
    done, lines = set(), []
    for module, factory, cfg, name, args in records:
        key = (module, factory, cfg, name, args)
        if key in done:
            continue
        done.add(key)
        kern = getattr(getattr(importlib.import_module(module), factory)(*cfg), name)
        sig = tuple(_type(a) for a in args)
        label = f"{module.rsplit('.', 1)[-1]}.{name}{list(cfg) if cfg else ''}"
        try:
            cuda.compile_ptx(kern.py_func, sig, cc=cc)
            lines.append(f"ok   {label}")
        except Exception as e:  # report every kernel, not just the first failure
            first = str(e).strip().splitlines()
            lines.append(f"FAIL {label}: {type(e).__name__}: {first[0] if first else ''}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], "rb") as f:
        records = pickle.load(f)
    lines = compile_records(records)
    print("\n".join(lines))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
