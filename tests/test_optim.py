"""Optimizer updates: reference semantics, kernels vs reference, reference vs torch.optim."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close

from netdsl.ops import optim

SIZES = (7, 3, 5)  # e.g. weights, biases, another layer's weights
P = sum(SIZES)


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(P), rng.standard_normal(P)


def test_make_segments() -> None:
    start, end, lr_mult, decay_mult = optim.make_segments(SIZES, [1, 2, 1], [1, 0, 1])
    np.testing.assert_array_equal(start, [0, 7, 10])
    np.testing.assert_array_equal(end, [7, 10, 15])
    assert (
        start.dtype == np.int64 and lr_mult.dtype == np.float32 and decay_mult.dtype == np.float32
    )
    with pytest.raises(ValueError):
        optim.make_segments(SIZES, [1, 2], [1, 0, 1])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_without_momentum_is_plain_descent(nesterov: bool) -> None:
    w, g = data(0)
    segs = optim.make_segments(SIZES, [1, 1, 1], [1, 1, 1])
    w_new, v_new = optim.ref_sgd_update(w, g, np.zeros(P), *segs, 0.1, 0.0, 0.01, nesterov)
    np.testing.assert_allclose(w_new, w - 0.1 * (g + 0.01 * w), rtol=1e-14)
    np.testing.assert_allclose(v_new, -0.1 * (g + 0.01 * w), rtol=1e-14)

    w32, g32 = w.astype(np.float32), g.astype(np.float32)
    v32 = np.zeros(P, np.float32)
    optim.sgd_update(w32, g32, v32, *segs, 0.1, 0.0, 0.01, nesterov)
    assert_close(w32, w_new, 1e-6, "kernel")


def test_sgd_multipliers_and_uncovered_elements() -> None:
    w, g = data(1)
    v = np.random.default_rng(2).standard_normal(P)
    # Only the first two segments; the last 5 elements belong to no segment.
    start, end, lr_mult, decay_mult = optim.make_segments(SIZES[:2], [0.0, 2.0], [1.0, 0.0])
    w_new, v_new = optim.ref_sgd_update(w, g, v, start, end, lr_mult, decay_mult, 0.1, 0.9, 0.5)
    np.testing.assert_allclose(w_new[:7], w[:7] + 0.9 * v[:7])  # lr_mult 0: momentum only
    np.testing.assert_allclose(v_new[7:10], 0.9 * v[7:10] - 0.2 * g[7:10])  # no decay, lr x2
    np.testing.assert_array_equal(w_new[10:], w[10:])
    np.testing.assert_array_equal(v_new[10:], v[10:])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_kernel_matches_reference(nesterov: bool) -> None:
    w, _ = data(3)
    segs = optim.make_segments(SIZES[:2], [1.0, 2.0], [1.0, 0.0])
    w32, v32 = w.astype(np.float32), np.zeros(P, np.float32)
    w64, v64 = w32.astype(np.float64), np.zeros(P)
    rng = np.random.default_rng(4)
    for step in range(4):
        lr = 0.1 if step < 2 else 0.01  # a learning-rate drop between steps
        g32 = rng.standard_normal(P).astype(np.float32)
        optim.sgd_update(w32, g32, v32, *segs, lr, 0.9, 5e-4, nesterov)
        w64, v64 = optim.ref_sgd_update(w64, g32, v64, *segs, lr, 0.9, 5e-4, nesterov)
    assert_close(w32, w64, 1e-5, "w")
    assert_close(v32, v64, 1e-5, "v")


def test_adam_kernel_matches_reference() -> None:
    w, _ = data(5)
    segs = optim.make_segments(SIZES, [1.0, 2.0, 0.5], [1.0, 0.0, 1.0])
    w32, m32, v32 = w.astype(np.float32), np.zeros(P, np.float32), np.zeros(P, np.float32)
    w64, m64, v64 = w32.astype(np.float64), np.zeros(P), np.zeros(P)
    rng = np.random.default_rng(6)
    for t in range(1, 5):
        g32 = rng.standard_normal(P).astype(np.float32)
        optim.adam_update(w32, g32, m32, v32, *segs, 1e-2, 0.9, 0.999, 1e-8, 1e-2, t)
        w64, m64, v64 = optim.ref_adam_update(
            w64, g32, m64, v64, *segs, 1e-2, 0.9, 0.999, 1e-8, 1e-2, t
        )
    assert_close(w32, w64, 1e-5, "w")
    assert_close(m32, m64, 1e-5, "m")
    assert_close(v32, v64, 1e-5, "v")


def test_adam_first_step_moves_by_lr() -> None:
    # Bias correction makes the first step +-lr * lr_mult per element (for |g| >> eps).
    w, g = data(7)
    segs = optim.make_segments(SIZES, [1.0, 2.0, 1.0], [0.0, 0.0, 0.0])
    w_new, _, _ = optim.ref_adam_update(
        w, g, np.zeros(P), np.zeros(P), *segs, 0.01, 0.9, 0.99, 1e-12, 0.0, 1
    )
    lr_per_elem = np.repeat([0.01, 0.02, 0.01], SIZES)
    np.testing.assert_allclose(w - w_new, lr_per_elem * np.sign(g), rtol=1e-8)


def test_kernels_reject_bad_segments() -> None:
    w = np.zeros(4, np.float32)
    segs = optim.make_segments([5], [1.0], [1.0])
    with pytest.raises(ValueError):
        optim.sgd_update(w, w.copy(), w.copy(), *segs, 0.1, 0.9, 0.0, False)
    with pytest.raises(ValueError):
        optim.adam_update(w, w.copy(), w.copy(), w.copy(), *segs, 0.1, 0.9, 0.99, 1e-8, 0.0, 1)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_reference_matches_torch(nesterov: bool) -> None:
    import torch

    w, _ = data(8)
    segs = optim.make_segments([P], [1.0], [1.0])
    param = torch.tensor(w, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    v = np.zeros(P)
    rng = np.random.default_rng(9)
    for _ in range(5):  # constant lr: the conventions coincide
        g = rng.standard_normal(P)
        param.grad = torch.tensor(g)
        opt.step()
        w, v = optim.ref_sgd_update(w, g, v, *segs, 0.05, 0.9, 1e-2, nesterov)
    assert_close(w, param.detach().numpy(), 1e-12, "w")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_adam_reference_matches_torch() -> None:
    import torch

    w, _ = data(10)
    segs = optim.make_segments([P], [1.0], [1.0])
    param = torch.tensor(w, requires_grad=True)
    opt = torch.optim.Adam([param], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)
    m, v = np.zeros(P), np.zeros(P)
    rng = np.random.default_rng(11)
    for t in range(1, 6):
        g = rng.standard_normal(P)
        param.grad = torch.tensor(g)
        opt.step()
        w, m, v = optim.ref_adam_update(w, g, m, v, *segs, 1e-2, 0.9, 0.99, 1e-8, 1e-2, t)
    assert_close(w, param.detach().numpy(), 1e-12, "w")
