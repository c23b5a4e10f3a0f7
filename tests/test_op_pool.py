"""Pooling op: reference vs finite differences, CPU kernel vs reference, reference vs torch."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import pool


def out_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling output size for symmetric padding p (ceil mode included)."""
    span = size + 2 * p - k
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # the last window may not start in the padding
        out -= 1
    return out


# (name, N, C, H, W, kernel, stride, pad, ceil): pad symmetric as in PyTorch; out sizes below.
CASES = [
    ("2x2-fast", 2, 3, 6, 8, (2, 2), (2, 2), (0, 0), False),
    ("2x2-ceil-odd", 2, 3, 7, 5, (2, 2), (2, 2), (0, 0), True),
    ("2x2-floor-odd", 1, 2, 7, 5, (2, 2), (2, 2), (0, 0), False),  # tiled, last row/col unread
    ("3x3s2-all-whole", 2, 3, 9, 7, (3, 3), (2, 2), (0, 0), False),  # AlexNet's pools' kernel
    ("3x3s2-overlap-pad", 2, 2, 7, 6, (3, 3), (2, 2), (1, 1), False),
    ("3x3s2-ceil", 1, 2, 8, 7, (3, 3), (2, 2), (0, 1), True),
    ("asym-kernel", 2, 2, 7, 6, (3, 2), (1, 2), (1, 0), True),
    ("global", 2, 3, 5, 4, (5, 4), (1, 1), (0, 0), False),
]
IDS = [c[0] for c in CASES]


def geometry(case):
    _, n, c, h, w, k, s, p, ceil = case
    out_hw = (out_size(h, k[0], s[0], p[0], ceil), out_size(w, k[1], s[1], p[1], ceil))
    return n, c, h, w, k, s, p, out_hw


def distinct_input(shape, seed: int) -> np.ndarray:
    """A shuffled grid with gaps of 0.01: no ties, so max is differentiable under 1e-6 steps."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(math.prod(shape)) * 0.01 - 1.0).reshape(shape)


@pytest.mark.parametrize("mode", pool.MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_grad(case, mode: str) -> None:
    n, c, h, w, k, s, p, out_hw = geometry(case)
    x = distinct_input((n, c, h, w), 0)
    check_reference_grad(
        lambda x: pool.ref_forward(x, mode, k, s, p, out_hw),
        lambda dy: (pool.ref_backward(dy, x, mode, k, s, p, out_hw),),
        [x],
    )


def test_reference_values() -> None:
    # 3x3 input, 2x2 windows at stride 2 in ceil mode: partial windows at the bottom/right.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    args = ((2, 2), (2, 2), (0, 0), (2, 2))
    np.testing.assert_allclose(pool.ref_forward(x, "max", *args)[0, 0], [[4, 5], [7, 8]])
    np.testing.assert_allclose(pool.ref_forward(x, "avg", *args)[0, 0], [[2, 3.5], [6.5, 8]])
    np.testing.assert_allclose(pool.ref_forward(x, "sum", *args)[0, 0], [[8, 7], [13, 8]])
    with pytest.raises(ValueError):
        pool.ref_forward(x, "median", *args)
    with pytest.raises(ValueError):
        pool.PoolCPU(1, 1, 3, 3, "median", *args)


def run_cpu(case, mode: str, seed: int = 1):
    n, c, h, w, k, s, p, out_hw = geometry(case)
    rng = np.random.default_rng(seed)
    x = distinct_input((n, c, h, w), seed).astype(np.float32)
    layer = pool.PoolCPU(n, c, h, w, mode, k, s, p, out_hw)
    y = np.full((n, c) + out_hw, np.nan, np.float32)
    layer.forward(x, y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.full_like(x, np.nan)  # NaN: every element must be written
    for _ in range(2):  # twice: the backward must overwrite, not accumulate
        layer.backward(dy, dx)
    geo = (mode, k, s, p, out_hw)
    assert_close(y, pool.ref_forward(x, *geo), 1e-4, f"{mode} forward")
    assert_close(dx, pool.ref_backward(dy, x, *geo), 1e-4, f"{mode} backward")


@pytest.mark.parametrize("mode", pool.MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_matches_reference(case, mode: str) -> None:
    run_cpu(case, mode)


@pytest.mark.parametrize("mode", pool.MODES)
def test_cpu_several_workers(mode: str, monkeypatch) -> None:
    monkeypatch.setattr(pool, "num_threads", lambda: 3)
    monkeypatch.setattr(pool, "PARALLEL_MIN_WORK", 0)
    run_cpu(("workers", 2, 5, 7, 5, (2, 2), (2, 2), (0, 0), True), mode)  # 10 planes / 3


def test_max_ties_go_to_first() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is a tie
    out_hw = (2, 2)
    for k, s in (((2, 2), (2, 2)), ((3, 3), (1, 1))):  # fast path, generic path
        layer = pool.PoolCPU(1, 1, 4, 4, "max", k, s, (0, 0), out_hw)
        y, dx = np.empty((1, 1) + out_hw, np.float32), np.empty_like(x)
        layer.forward(x, y)
        layer.backward(np.ones_like(y), dx)
        expect = pool.ref_backward(np.ones(y.shape), x, "max", k, s, (0, 0), out_hw)
        np.testing.assert_array_equal(dx, expect)


def test_import_does_not_load_numba() -> None:
    code = "import sys, netdsl.ops.pool; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("mode", pool.MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_torch(case, mode: str) -> None:
    import torch
    import torch.nn.functional as F

    n, c, h, w, k, s, p, out_hw = geometry(case)
    ceil = case[-1]
    x = distinct_input((n, c, h, w), 2)
    xt = torch.tensor(x, requires_grad=True)
    if mode == "max":
        yt = F.max_pool2d(xt, k, s, p, ceil_mode=ceil)
    else:  # sum = the average's numerator: divisor 1
        yt = F.avg_pool2d(
            xt, k, s, p, ceil_mode=ceil, count_include_pad=False,
            divisor_override=None if mode == "avg" else 1,
        )  # fmt: skip
    assert yt.shape[2:] == out_hw
    dy = np.random.default_rng(3).standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    assert_close(pool.ref_forward(x, mode, k, s, p, out_hw), yt.detach().numpy(), 1e-10, "y")
    dx = pool.ref_backward(dy, x, mode, k, s, p, out_hw)
    assert_close(dx, xt.grad.numpy(), 1e-10, "dx")
