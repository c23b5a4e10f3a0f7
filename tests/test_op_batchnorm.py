"""Batch norm op: reference vs finite differences, kernels vs reference, reference vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import batchnorm as bn

EPS = 1e-5
MOMENTUM = 0.1
SHAPES = [(3, 5, 4, 3), (6, 5, 1, 1)]  # conv output and fc output as (N, C, 1, 1)


def make_inputs(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    c = shape[1]
    # Channel offsets and spreads differ so per-channel (not global) statistics are tested.
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c, 1, 1)) + rng.normal(
        0, 5, (1, c, 1, 1)
    )
    gamma = rng.uniform(0.5, 2.0, c)
    beta = rng.standard_normal(c)
    running_mean = rng.standard_normal(c)
    running_var = rng.uniform(0.5, 2.0, c)
    return x, gamma, beta, running_mean, running_var


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_grad(shape: tuple[int, ...]) -> None:
    x, gamma, beta, _, _ = make_inputs(shape, 0)
    check_reference_grad(
        lambda x, g, b: bn.ref_forward_train(x, g, b, EPS)[0],
        lambda dy: bn.ref_backward(dy, x, gamma, EPS),
        [x, gamma, beta],
    )


def test_reference_normalises() -> None:
    x, gamma, beta, _, _ = make_inputs((3, 5, 4, 3), 1)
    y, mean, var = bn.ref_forward_train(x, np.ones(5), np.zeros(5), 0.0)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-12)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)))


@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_reference(shape: tuple[int, ...]) -> None:
    x64, gamma64, beta64, rm64, rv64 = make_inputs(shape, 2)
    x, gamma, beta, rm, rv = (a.astype(np.float32) for a in (x64, gamma64, beta64, rm64, rv64))
    c = shape[1]
    count = shape[0] * shape[2] * shape[3]
    dy = np.random.default_rng(3).standard_normal(shape).astype(np.float32)

    y = np.full_like(x, np.nan)
    mean = np.full(c, np.nan, np.float32)
    invstd = np.full(c, np.nan, np.float32)
    bn.bn_forward_train(x, gamma, beta, y, mean, invstd, rm, rv, EPS, MOMENTUM)
    y_ref, mean_ref, var_ref = bn.ref_forward_train(x, gamma, beta, EPS)
    assert_close(y, y_ref, 1e-4, "forward")
    assert_close(mean, mean_ref, 1e-5, "mean")
    assert_close(invstd, 1 / np.sqrt(var_ref + EPS), 1e-5, "invstd")
    rm_ref, rv_ref = bn.ref_update_running(rm64, rv64, mean_ref, var_ref, count, MOMENTUM)
    assert_close(rm, rm_ref, 1e-5, "running mean")
    assert_close(rv, rv_ref, 1e-5, "running var")

    dx = dy.copy()  # in place, as allowed
    dgamma = np.full(c, np.nan, np.float32)
    dbeta = np.full(c, np.nan, np.float32)
    bn.bn_backward(dx, x, gamma, mean, invstd, dx, dgamma, dbeta)
    dx_ref, dgamma_ref, dbeta_ref = bn.ref_backward(dy, x, gamma, EPS)
    assert_close(dx, dx_ref, 1e-4, "dx")
    assert_close(dgamma, dgamma_ref, 1e-4, "dgamma")
    assert_close(dbeta, dbeta_ref, 1e-4, "dbeta")

    y_eval = np.full_like(x, np.nan)
    bn.bn_forward_eval(x, gamma, beta, rm, rv, y_eval, EPS)
    assert_close(y_eval, bn.ref_forward_eval(x, gamma, beta, rm, rv, EPS), 1e-4, "eval")


def test_kernel_large_offset_is_accurate() -> None:
    # Mean 1000, std 1: a one-pass E[x^2] - E[x]^2 in float32 would lose the variance entirely.
    rng = np.random.default_rng(4)
    x = (1000 + rng.standard_normal((8, 2, 5, 5))).astype(np.float32)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    y, mean, invstd = np.empty_like(x), np.empty(2, np.float32), np.empty(2, np.float32)
    bn.bn_forward_train(x, ones, zeros, y, mean, invstd, zeros.copy(), ones.copy(), EPS, MOMENTUM)
    assert_close(y, bn.ref_forward_train(x, ones, zeros, EPS)[0], 1e-4, "forward")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_torch(shape: tuple[int, ...]) -> None:
    import torch
    import torch.nn.functional as F

    x, gamma, beta, rm, rv = make_inputs(shape, 5)
    count = shape[0] * shape[2] * shape[3]
    dy = np.random.default_rng(6).standard_normal(shape)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=MOMENTUM, eps=EPS)
    yt.backward(torch.tensor(dy))

    y, mean, var = bn.ref_forward_train(x, gamma, beta, EPS)
    assert_close(y, yt.detach().numpy(), 1e-10, "forward")
    rm_new, rv_new = bn.ref_update_running(rm, rv, mean, var, count, MOMENTUM)
    assert_close(rm_new, rmt.numpy(), 1e-10, "running mean")
    assert_close(rv_new, rvt.numpy(), 1e-10, "running var")
    grads = bn.ref_backward(dy, x, gamma, EPS)
    for got, want, what in zip(
        grads, (xt.grad, gt.grad, bt.grad), ("dx", "dgamma", "dbeta"), strict=True
    ):
        assert_close(got, want.numpy(), 1e-10, what)

    ye = F.batch_norm(torch.tensor(x), rmt, rvt, torch.tensor(gamma), torch.tensor(beta), eps=EPS)
    assert_close(
        bn.ref_forward_eval(x, gamma, beta, rm_new, rv_new, EPS), ye.numpy(), 1e-10, "eval"
    )
