"""Trainable subsampling op: reference vs finite differences, CPU vs reference, vs torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import subsample as sub

# (name, N, C, H, W, kernel, stride, pad, out_hw)
CASES = [
    ("lenet-2x2", 2, 3, 6, 8, (2, 2), (2, 2), (0, 0), (3, 4)),
    ("2x2-ceil-odd", 2, 2, 7, 5, (2, 2), (2, 2), (0, 0), (4, 3)),
    ("3x3s2-pad", 2, 2, 7, 6, (3, 3), (2, 2), (1, 1), (4, 3)),
    ("global", 2, 3, 3, 4, (3, 4), (1, 1), (0, 0), (1, 1)),
]
IDS = [c[0] for c in CASES]


def tensors(case, seed: int = 0, dtype=np.float64):
    _, n, c, h, w, *_ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    coef = rng.standard_normal(c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    return x, coef, bias


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_grad(case) -> None:
    k, s, p, out_hw = case[5:]
    x, coef, bias = tensors(case)
    check_reference_grad(
        lambda x, coef, bias: sub.ref_forward(x, coef, bias, k, s, p, out_hw),
        lambda dy: sub.ref_backward(dy, x, coef, k, s, p, out_hw),
        [x, coef, bias],
    )


def test_reference_values() -> None:
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = sub.ref_forward(x, np.array([0.5]), np.array([1.0]), (2, 2), (2, 2), (0, 0), (2, 2))
    np.testing.assert_allclose(y[0, 0], 0.5 * np.array([[10, 18], [42, 50]]) + 1)


def run_cpu(case, want_dx: bool = True, seed: int = 1) -> None:
    _, n, c, h, w, k, s, p, out_hw = case
    x, coef, bias = tensors(case, seed, np.float32)
    layer = sub.SubsampleCPU(n, c, h, w, k, s, p, out_hw)
    y = np.full((n, c) + out_hw, np.nan, np.float32)
    layer.forward(x, coef, bias, y)
    assert_close(y, sub.ref_forward(x, coef, bias, k, s, p, out_hw), 1e-4, "forward")
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    dx = np.full_like(x, np.nan) if want_dx else None  # NaN: every element must be written
    dcoef, dbias = np.full_like(coef, np.nan), np.full_like(bias, np.nan)
    for _ in range(2):  # twice: the backward must overwrite, not accumulate
        layer.backward(dy, x, coef, dx, dcoef, dbias)
    dx_ref, dcoef_ref, dbias_ref = sub.ref_backward(dy, x, coef, k, s, p, out_hw)
    if want_dx:
        assert_close(dx, dx_ref, 1e-4, "dx")
    assert_close(dcoef, dcoef_ref, 1e-4, "dcoef")
    assert_close(dbias, dbias_ref, 1e-4, "dbias")


@pytest.mark.parametrize("want_dx", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_matches_reference(case, want_dx: bool) -> None:
    run_cpu(case, want_dx)


def test_cpu_several_workers(monkeypatch) -> None:
    monkeypatch.setattr(sub, "num_threads", lambda: 3)
    monkeypatch.setattr(sub, "PARALLEL_MIN_WORK", 0)
    run_cpu(("workers", 2, 5, 7, 5, (2, 2), (2, 2), (0, 0), (4, 3)))  # 10 planes over 3


def test_import_does_not_load_numba() -> None:
    code = "import sys, netdsl.ops.subsample; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_torch(case) -> None:
    import torch
    import torch.nn.functional as F

    k, s, p, out_hw = case[5:]
    x, coef, bias = tensors(case, seed=2)
    xt, ct, bt = (torch.tensor(a, requires_grad=True) for a in (x, coef, bias))
    ceil = out_hw[0] > (x.shape[2] + 2 * p[0] - k[0]) // s[0] + 1
    window_sum = F.avg_pool2d(xt, k, s, p, ceil_mode=ceil, divisor_override=1)
    yt = ct[None, :, None, None] * window_sum + bt[None, :, None, None]
    assert yt.shape[2:] == out_hw
    dy = np.random.default_rng(3).standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    y = sub.ref_forward(x, coef, bias, k, s, p, out_hw)
    assert_close(y, yt.detach().numpy(), 1e-10, "y")
    grads = sub.ref_backward(dy, x, coef, k, s, p, out_hw)
    for name, mine, theirs in zip(("dx", "dcoef", "dbias"), grads, (xt, ct, bt), strict=True):
        assert_close(mine, theirs.grad.numpy(), 1e-10, name)
