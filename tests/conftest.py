"""Test session setup: the CUDA backend runs in Numba's CUDA simulator unless told otherwise.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so it is set here, at
collection, for every test module (and for subprocesses, which inherit it). It changes only
what `numba.cuda` is: CPU kernels and their on-disk cache are unaffected. NETDSL_REAL_GPU=1
keeps the real CUDA driver, for a session on a machine with a GPU (tests marked `gpu` run
only then).
"""

from __future__ import annotations

import os
import sys

# One process per test: no compile-ahead helper forked from pytest (tests/test_coldstart.py
# turns it on where it tests it); CI's cores stay with the tests.
os.environ.setdefault("NETDSL_COMPILE_AHEAD", "0")

if os.environ.get("NETDSL_REAL_GPU", "") in ("", "0"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    # pytest imports numba.core (for the filterwarnings in pyproject.toml) before this file
    # runs; numba-cuda reads the same config module when numba.cuda is first imported, so
    # re-reading the environment now is early enough.
    if "numba.core.config" in sys.modules:
        sys.modules["numba.core.config"].reload_config()


def pytest_configure(config) -> None:
    """Ignore numba-cuda's NumbaPerformanceWarning, named by its class, now that the simulator
    (or the real driver) is chosen.

    numba-cuda raises its own class, numba.cuda.core.errors.NumbaPerformanceWarning (not
    numba's), from numba.cuda.dispatcher (grids under 128 blocks, as tests launch) and
    numba.cuda.cudadrv.devicearray (host arrays passed to a kernel). Importing it imports
    numba.cuda, which reads NUMBA_ENABLE_CUDASIM once, so the filter cannot sit in
    pyproject.toml's list (pytest resolves that before this file runs); appended here it
    follows "error" there and wins over it for every test. Other warnings, netdsl's above all,
    still fail the test. numba-cuda releases before numba.cuda.core.errors existed raised
    numba's class, which pyproject.toml already ignores.
    """
    try:
        from numba.cuda.core import errors
    except ImportError:
        return
    if hasattr(errors, "NumbaPerformanceWarning"):
        config.addinivalue_line(
            "filterwarnings", "ignore::numba.cuda.core.errors.NumbaPerformanceWarning"
        )
