"""Maxout op: reference vs finite differences, kernels vs reference."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close, check_reference_grad

from netdsl.ops import maxout


def distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.01 apart (a shuffled grid) so finite differences never swap a max."""
    size = int(np.prod(shape))
    return rng.permutation(np.arange(size) * 0.01 - size * 0.005).reshape(shape)


def test_reference_values() -> None:
    x = np.array([1.0, 5.0, 3.0, -1.0, -2.0, 0.0]).reshape(1, 6, 1, 1)
    np.testing.assert_array_equal(maxout.ref_forward(x, 2).ravel(), [5, 3, 0])
    np.testing.assert_array_equal(maxout.ref_forward(x, 3).ravel(), [5, 0])
    dx = maxout.ref_backward(np.array([10.0, 20.0]).reshape(1, 2, 1, 1), x, 3)
    np.testing.assert_array_equal(dx.ravel(), [0, 10, 0, 0, 0, 20])
    with pytest.raises(ValueError):
        maxout.ref_forward(x, 4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_reference_grad(k: int) -> None:
    x = distinct(np.random.default_rng(k), (3, 5 * k, 4, 3))
    check_reference_grad(
        lambda x: maxout.ref_forward(x, k), lambda dy: (maxout.ref_backward(dy, x, k),), [x]
    )


@pytest.mark.parametrize("k", [2, 3])
def test_kernels_match_reference(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    x = rng.standard_normal((3, 5 * k, 4, 3)).astype(np.float32)
    x[0, :k] = 1.5  # a tie: the first candidate must win, as in the reference
    dy = rng.standard_normal((3, 5, 4, 3)).astype(np.float32)

    y = np.full((3, 5, 4, 3), np.nan, dtype=np.float32)
    idx = np.full(y.shape, -1, dtype=np.int32)
    maxout.maxout_forward(x, y, idx, k)
    assert_close(y, maxout.ref_forward(x, k), 1e-4, "forward")
    assert (idx[0, 0] == 0).all()

    dx = np.full(x.shape, np.nan, dtype=np.float32)
    maxout.maxout_backward(dy, idx, dx, k)
    assert_close(dx, maxout.ref_backward(dy, x, k), 1e-4, "backward")


def test_kernels_fc_shape() -> None:
    x = np.arange(12, dtype=np.float32)[::-1].copy().reshape(2, 6, 1, 1)
    y = np.empty((2, 2, 1, 1), dtype=np.float32)
    idx = np.empty(y.shape, dtype=np.int32)
    maxout.maxout_forward(x, y, idx, 3)
    np.testing.assert_array_equal(y.ravel(), [11, 8, 5, 2])
    np.testing.assert_array_equal(idx.ravel(), [0, 0, 0, 0])
