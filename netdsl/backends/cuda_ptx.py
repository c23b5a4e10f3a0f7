"""Compile recorded CUDA launches to PTX for a real GPU, on a machine without one.

The simulator (NUMBA_ENABLE_CUDASIM=1) runs kernels as Python, so it never checks that
they are valid *CUDA* code: a NumPy function numba-cuda lacks (np.exp), a type that does
not unify, a shared array of non-constant shape all pass the simulator and fail on a GPU.
`netdsl.ops.cudakit.recording()` notes every launch's kernel and argument types while the
simulator runs; this module, in a process WITHOUT the simulator, rebuilds each kernel and
compiles it with numba-cuda's `compile_ptx` (needs NVVM, e.g. the nvidia-nvvm and
nvidia-cuda-nvrtc wheels, but no GPU and no driver); of kernels that differ only in layer
geometry, the first K of each family (see compile_records).

    python -m netdsl.backends.cuda_ptx RECORDS.pkl [--per-family K]   # a line per kernel
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pickle
from collections.abc import Iterator
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


def compile_records(records: list[tuple], cc: tuple[int, int] = (9, 0),
                    per_family: int = 1) -> list[str]:  # fmt: skip
    """Compile each distinct (kernel, argument types) once; returns 'ok ...' / 'FAIL ...' lines
    and a last line counting the kernels compiled and skipped.

    Kernels specialised on a layer's geometry come from a factory with a ``geometry_args``
    attribute: its first that many arguments are the layer's sizes, the rest (tile config,
    layout flags, activation) choose the code. Kernels that differ only in geometry form a
    family (same module, factory, kernel, argument types and other arguments), and only the
    first `per_family` distinct geometries of each are compiled (0: all), so the test that
    compiles every launch does not grow with the number of layers it runs. That still checks
    what the simulator cannot: a kernel fails to compile for a GPU because of a construct or a
    type (a NumPy function numba-cuda lacks, types that do not unify, a shared array of
    non-constant shape), and the members of a family are the same source with the same types,
    only other sizes folded in as constants. That needs sizes that never decide a branch on
    their own: Numba prunes a branch on a constant before typing, so a constant flag or
    activation code selects other code, and those stay in the family's key. Every kernel,
    and each of its tile configs, layouts and activations, is still compiled at least once.
    """
    units, skipped = select_records(records, per_family)
    _pretend_device(cc)
    lines = [compile_unit(unit, cc) for unit in units]
    lines.append(f"compiled {len(lines)} distinct kernels, skipped {skipped} more geometries "
                 f"of their families (per_family={per_family})")  # fmt: skip
    return lines


def select_records(records: list[tuple], per_family: int = 1) -> tuple[list[tuple], int]:
    """The records compile_records compiles, in their order, and how many geometries it skips:
    each distinct (kernel, argument types) once, at most `per_family` geometries of a family."""
    done: set[tuple] = set()
    family_size: dict[tuple, int] = {}
    units, skipped = [], 0
    for module, factory, cfg, name, args in records:
        key = (module, factory, cfg, name, args)
        if key in done:
            continue
        done.add(key)
        make = getattr(importlib.import_module(module), factory)
        geo = getattr(make, "geometry_args", 0)
        family = (module, factory, cfg[geo:], name, args)
        family_size[family] = family_size.get(family, 0) + 1
        if geo and per_family and family_size[family] > per_family:
            skipped += 1
            continue
        units.append(key)
    return units, skipped


def _pretend_device(cc: tuple[int, int]) -> None:
    """No driver here: device functions that ask the current device for its compute
    capability are told `cc` (this process compiles, it never launches)."""
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Device()


def compile_unit(record: tuple, cc: tuple[int, int] = (9, 0)) -> str:
    """Compile one record's kernel to PTX: an 'ok LABEL' or 'FAIL LABEL: error' line."""
    from numba import cuda

    module, factory, cfg, name, args = record
    kern = getattr(getattr(importlib.import_module(module), factory)(*cfg), name)
    sig = tuple(_type(a) for a in args)
    label = f"{module.rsplit('.', 1)[-1]}.{name}{list(cfg) if cfg else ''}"
    try:
        cuda.compile_ptx(kern.py_func, sig, cc=cc)
        return f"ok   {label}"
    except Exception as e:  # report every kernel, not just the first failure
        first = str(e).strip().splitlines()
        return f"FAIL {label}: {type(e).__name__}: {first[0] if first else ''}"


@contextlib.contextmanager
def no_driver(cc: tuple[int, int] = (9, 0)) -> Iterator[None]:
    """Compile CUDA kernels through their dispatchers, Numba's on-disk cache included, on a
    machine without a GPU or a driver: within the block Numba sees a device of compute
    capability `cc`, and a compiled kernel is taken as far as PTX (NVVM) and not linked to a
    cubin nor loaded (that needs the driver). The cache key's "codegen magic" is then
    ("no driver", cc) where a GPU's is (CUDA runtime version, cc): the entries written here
    serve only this mode, never a real GPU. What it shows without a GPU is that the kernels of
    the generated modules are cachable at all (a source file, no closure, picklable
    constants) and that a second process finds them: dispatcher.stats counts the hits.
    """
    from numba.cuda import codegen, dispatcher

    class _Device:
        compute_capability = cc
        id = 0

    def bind(kernel) -> None:  # what a cache entry needs: the PTX; no cubin, nothing loaded
        kernel._codelibrary.get_asm_strs(cc=cc)

    saved = [(dispatcher, "get_current_device"), (codegen.JITCUDACodegen, "magic_tuple"),
             (dispatcher._Kernel, "bind"), (codegen.CUDACodeLibrary, "_ensure_cc")]  # fmt: skip
    old = [getattr(owner, name) for owner, name in saved]
    dispatcher.get_current_device = lambda: _Device()
    codegen.JITCUDACodegen.magic_tuple = lambda self: ("no driver", cc)
    dispatcher._Kernel.bind = bind
    codegen.CUDACodeLibrary._ensure_cc = lambda self, want: cc if want is None else want
    try:
        yield
    finally:
        for (owner, name), value in zip(saved, old):
            setattr(owner, name, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netdsl.backends.cuda_ptx")
    parser.add_argument("records", help="a pickled list of cudakit.recording() launches")
    parser.add_argument("--per-family", type=int, default=1, metavar="K",
                        help="at most K geometries of a kernel family (0: all)")  # fmt: skip
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="compile in N processes (NVVM holds one core each)",
    )
    opts = parser.parse_args(argv)
    with open(opts.records, "rb") as f:
        records = pickle.load(f)
    if opts.jobs > 1:
        lines = _compile_in_jobs(records, opts.per_family, opts.jobs)
    else:
        lines = compile_records(records, per_family=opts.per_family)
    print("\n".join(lines))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


def estimated_cost(record: tuple) -> int:
    """A record's compile time, roughly, in units of a small kernel's: the GEMM kernels of conv
    and fc unroll a TM x TN block of accumulators per thread (Numba's time goes into inlining
    and SSA-renaming those multiply-adds), so a kernel whose config holds a GEMM tile costs
    TM * TN (64 for the GPU's 128 x 128 tiles), any other 1. Measured single-process under
    load: a 128 x 128 GEMM kernel 19-64 s, the ~45 others 22 s together."""
    from netdsl.ops import gemm_cuda

    cfg = tuple(record[2])
    for tile in {*gemm_cuda.TILES.values(), *gemm_cuda.SIM_TILES.values()}:
        if any(cfg[i : i + 5] == tile for i in range(len(cfg) - 4)):
            return tile[3] * tile[4]
    return 1


def _compile_in_jobs(records: list[tuple], per_family: int, jobs: int) -> list[str]:
    """compile_records' lines, in its order, from `jobs` worker processes.

    The workers take the next kernel as they finish one, the costliest first (estimated_cost),
    so a few long GEMM compiles are spread over the workers instead of landing in one of them
    (a fixed split by kernel name put conv's and fc's GEMMs, most of the time, into one job).
    Workers are spawned: a fork of a process that imported Numba is not a clean compiler.
    """
    import multiprocessing

    units, skipped = select_records(records, per_family)
    order = sorted(range(len(units)), key=lambda i: -estimated_cost(units[i]))  # stable
    lines: list[str] = [""] * len(units)
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_pretend_device,
                                                   initargs=((9, 0),)) as pool:  # fmt: skip
        done = pool.imap(compile_unit, [units[i] for i in order], chunksize=1)
        for i, line in zip(order, done):
            lines[i] = line
    lines.append(f"compiled {len(units)} distinct kernels, skipped {skipped} more geometries "
                 f"of their families (per_family={per_family}, {jobs} jobs)")  # fmt: skip
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
