"""Dropout op: mask generation, reference vs finite differences, kernels vs reference."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close, check_reference_grad

from netdsl.ops import dropout

SHAPE = (3, 5, 4, 3)


def test_mask_statistics_and_dtype() -> None:
    mask = dropout.make_mask(np.random.default_rng(0), (200, 500), 0.3)
    assert mask.dtype == np.uint8 and mask.shape == (200, 500)
    assert set(np.unique(mask)) <= {0, 1}
    assert abs(mask.mean() - 0.7) < 0.01
    assert dropout.make_mask(np.random.default_rng(0), (50,), 0.0).all()


def test_mask_is_reproducible_from_generator_state() -> None:
    rng = np.random.default_rng(42)
    state = rng.bit_generator.state
    first = dropout.make_mask(rng, SHAPE, 0.5)
    second = dropout.make_mask(rng, SHAPE, 0.5)
    assert not np.array_equal(first, second)
    rng.bit_generator.state = state  # what restoring a checkpoint does
    np.testing.assert_array_equal(dropout.make_mask(rng, SHAPE, 0.5), first)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_probability(p: float) -> None:
    with pytest.raises(ValueError):
        dropout.make_mask(np.random.default_rng(0), SHAPE, p)


def test_reference_grad_and_eval() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE)
    mask = dropout.make_mask(rng, SHAPE, 0.4)
    check_reference_grad(
        lambda x: dropout.ref_forward(x, mask, 0.4),
        lambda dy: (dropout.ref_backward(dy, mask, 0.4),),
        [x],
    )
    y = dropout.ref_forward(x, mask, 0.4)
    np.testing.assert_allclose(y[mask == 1], x[mask == 1] / 0.6)
    assert (y[mask == 0] == 0).all()
    np.testing.assert_array_equal(dropout.ref_forward(x, mask, 0.4, train=False), x)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_kernels_match_reference(p: float) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    mask = dropout.make_mask(rng, SHAPE, p)
    scale = dropout.keep_scale(p)

    y = np.full_like(x, np.nan)
    dropout.dropout_forward(x.reshape(-1), mask.reshape(-1), y.reshape(-1), scale)
    assert_close(y, dropout.ref_forward(x, mask, p), 1e-6, "forward")

    dx = dy.copy()  # in place, as the compiler runs it
    dropout.dropout_backward(dx.reshape(-1), mask.reshape(-1), dx.reshape(-1), scale)
    assert_close(dx, dropout.ref_backward(dy, mask, p), 1e-6, "backward")


def test_kernel_dropped_nonfinite_is_zero() -> None:
    x = np.array([np.inf, np.nan, 1.0], dtype=np.float32)
    mask = np.array([0, 0, 1], dtype=np.uint8)
    dropout.dropout_forward(x, mask, x, 2.0)
    np.testing.assert_array_equal(x, [0, 0, 2])
