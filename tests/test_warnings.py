"""The test session's warning filters (pyproject.toml and tests/conftest.py).

Every warning fails a test ("error"), except the ones numba and numba-cuda raise about things
outside netdsl's control. numba-cuda raises its own NumbaPerformanceWarning class
(numba.cuda.core.errors, not numba.core.errors) from modules named numba.cuda.*, e.g. for
every launch of a grid under 128 blocks on a real GPU; the simulator never warns, so these
tests raise the real class the way numba-cuda does, attributed to numba-cuda's modules.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# How numba-cuda 0.30 warns: numba/cuda/dispatcher.py and cudadrv/devicearray.py call
# warn(NumbaPerformanceWarning(msg)), so the warning belongs to these modules.
NUMBA_CUDA_WARNS = [
    ("numba.cuda.dispatcher", "Grid size 1 will likely result in GPU under-utilization due to "
     "low occupancy."),
    ("numba.cuda.cudadrv.devicearray", "Host array used in CUDA kernel will incur copy overhead "
     "to/from device."),
]  # fmt: skip


def _warn_from(module: str, message: str, category: type[Warning]) -> None:
    """warnings.warn as code in `module` calls it (the filters match the warning's module)."""
    code = compile("warnings.warn(message, category)", module.replace(".", "/") + ".py", "exec")
    exec(code, {"__name__": module, "warnings": warnings, "message": message, "category": category})


def test_the_simulator_is_still_selected():
    """The class filter imports numba.cuda at configure time: after conftest.py chose."""
    from numba import config, cuda

    if os.environ.get("NETDSL_REAL_GPU", "") not in ("", "0"):
        pytest.skip("NETDSL_REAL_GPU=1: the real driver is selected")
    assert config.ENABLE_CUDASIM
    assert cuda.is_available() and "numba.cuda.simulator" in sys.modules


@pytest.mark.parametrize("module, message", NUMBA_CUDA_WARNS)
def test_numba_cuda_performance_warning_does_not_fail_a_test(module, message):
    from numba.cuda.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings(record=True) as seen:
        # record=True keeps the session's filters; "ignore" means nothing is recorded
        _warn_from(module, message, NumbaPerformanceWarning)
    assert seen == []


def test_a_netdsl_warning_still_fails_a_test():
    with pytest.raises(UserWarning, match="netdsl's own"):
        _warn_from("netdsl.backends.cuda", "netdsl's own warning", UserWarning)


def test_the_filters_end_to_end(tmp_path):
    """A generated test file run by pytest with this project's pyproject.toml and conftest.py:
    numba-cuda's performance warnings pass, netdsl's warnings and numba-cuda's other
    warnings fail."""
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_generated.py").write_text(textwrap.dedent('''
        import warnings

        from numba import config


        def warn_from(module, message, category):
            exec("warnings.warn(message, category)", {"__name__": module, "warnings": warnings,
                 "message": message, "category": category})


        def test_numba_cuda_grid_warning():
            from numba.cuda.core.errors import NumbaPerformanceWarning
            assert config.ENABLE_CUDASIM
            warn_from("numba.cuda.dispatcher", "Grid size 1 will likely result in GPU "
                      "under-utilization due to low occupancy.", NumbaPerformanceWarning)


        def test_numba_cuda_host_array_warning():
            from numba.cuda.core.errors import NumbaPerformanceWarning
            warn_from("numba.cuda.cudadrv.devicearray", "Host array used in CUDA kernel will "
                      "incur copy overhead to/from device.", NumbaPerformanceWarning)


        def test_numba_cuda_deprecation():
            warn_from("numba.cuda.core.config", "going away", DeprecationWarning)


        def test_netdsl_user_warning():
            warn_from("netdsl.backends.cuda", "netdsl says so", UserWarning)


        def test_netdsl_runtime_warning():
            warn_from("netdsl.train.trainer", "overflow in netdsl", RuntimeWarning)


        def test_numba_cuda_other_warning():
            from numba.cuda.core.errors import NumbaWarning
            warn_from("numba.cuda.target", "not a performance warning", NumbaWarning)
    '''))  # fmt: skip
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NUMBA_ENABLE_CUDASIM", "NETDSL_REAL_GPU", "PYTHONWARNINGS")
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
         "--confcutdir", str(tmp_path), "-p", "no:cacheprovider", "-rA", "-q",
         str(tmp_path / "test_generated.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outcome = {name: word for word, name in re.findall(r"^(PASSED|FAILED) \S*::(\w+)", out.stdout,
                                                       re.M)}  # fmt: skip
    assert outcome == {
        "test_numba_cuda_grid_warning": "PASSED",
        "test_numba_cuda_host_array_warning": "PASSED",
        "test_numba_cuda_deprecation": "PASSED",
        "test_netdsl_user_warning": "FAILED",
        "test_netdsl_runtime_warning": "FAILED",
        "test_numba_cuda_other_warning": "FAILED",
    }, out.stdout + out.stderr
    assert "UserWarning: netdsl says so" in out.stdout
    assert "RuntimeWarning: overflow in netdsl" in out.stdout
