"""Fully connected op: reference vs finite differences, CPU vs reference, reference vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import fc

SHAPES = [(3, 7, 5), (1, 4, 1), (6, 12, 10)]  # (N, F, O)


def tensors(n: int, f: int, o: int, seed: int = 0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)).astype(dtype)
    w = rng.standard_normal((o, f)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("n, f, o", SHAPES)
def test_reference_grad(n: int, f: int, o: int) -> None:
    x, w, b = tensors(n, f, o)
    check_reference_grad(fc.ref_forward, lambda dy: fc.ref_backward(dy, x, w), [x, w, b])


def test_reference_values() -> None:
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 3.0]])
    np.testing.assert_allclose(fc.ref_forward(x, w, np.array([0.0, 1.0, -1.0])), [[1, -0.5, 5]])
    np.testing.assert_allclose(fc.ref_forward(x, w, None), [[1, -1.5, 6]])


@pytest.mark.parametrize("n, f, o", SHAPES)
@pytest.mark.parametrize("bias, want_dx", [(True, True), (False, False)])
def test_cpu_matches_reference(n: int, f: int, o: int, bias: bool, want_dx: bool) -> None:
    x, w, b = tensors(n, f, o, seed=1, dtype=np.float32)
    b = b if bias else None
    layer = fc.FcCPU(n, f, o, bias)
    y = np.full((n, o), np.nan, np.float32)
    layer.forward(x, w, b, y)
    assert_close(y, fc.ref_forward(x, w, b), 1e-4, "forward")
    dy = np.random.default_rng(2).standard_normal((n, o)).astype(np.float32)
    dx = np.full_like(x, np.nan) if want_dx else None  # NaN: every element must be written
    dw = np.full_like(w, np.nan)
    db = np.full(o, np.nan, np.float32) if bias else None
    for _ in range(2):  # twice: the backward must overwrite, not accumulate
        layer.backward(dy, x, w, dx, dw, db)
    dx_ref, dw_ref, db_ref = fc.ref_backward(dy, x, w)
    assert_close(dw, dw_ref, 1e-4, "dw")
    if want_dx:
        assert_close(dx, dx_ref, 1e-4, "dx")
    if bias:
        assert_close(db, db_ref, 1e-4, "db")


def test_cpu_flattened_activation() -> None:
    """The caller passes an (N, C, H, W) activation reshaped to (N, C*H*W): a view works."""
    rng = np.random.default_rng(3)
    x4 = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    w = rng.standard_normal((5, 12)).astype(np.float32)
    y = np.empty((2, 5), np.float32)
    fc.FcCPU(2, 12, 5, False).forward(x4.reshape(2, -1), w, None, y)
    assert_close(y, fc.ref_forward(x4.reshape(2, -1), w, None), 1e-4, "forward")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_reference_matches_torch() -> None:
    import torch
    import torch.nn.functional as F

    x, w, b = tensors(4, 9, 6, seed=4)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = F.linear(xt, wt, bt)
    dy = np.random.default_rng(5).standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    assert_close(fc.ref_forward(x, w, b), yt.detach().numpy(), 1e-12, "y")
    grads = fc.ref_backward(dy, x, w)
    for name, mine, theirs in zip(("dx", "dw", "db"), grads, (xt, wt, bt), strict=True):
        assert_close(mine, theirs.grad.numpy(), 1e-12, name)
