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

if os.environ.get("NETDSL_REAL_GPU", "") in ("", "0"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    # pytest imports numba.core (for the filterwarnings in pyproject.toml) before this file
    # runs; numba-cuda reads the same config module when numba.cuda is first imported, so
    # re-reading the environment now is early enough.
    if "numba.core.config" in sys.modules:
        sys.modules["numba.core.config"].reload_config()
