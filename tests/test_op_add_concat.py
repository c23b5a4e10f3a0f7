"""Add and concat ops: reference vs finite differences, kernels vs reference."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close, check_reference_grad

from netdsl.ops import add, concat

SHAPE = (3, 5, 4, 3)


def test_add_reference_grad() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(SHAPE) for _ in range(3)]
    check_reference_grad(add.ref_forward, lambda dy: add.ref_backward(dy, 3), xs)
    with pytest.raises(ValueError):
        add.ref_forward(xs[0], xs[1][:, :2])


def test_add_kernel_matches_reference() -> None:
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
    y = np.full_like(a, np.nan)
    add.add_forward(a.reshape(-1), b.reshape(-1), y.reshape(-1))
    add.add_forward(y.reshape(-1), c.reshape(-1), y.reshape(-1))  # chained, in place
    assert_close(y, add.ref_forward(a, b, c), 1e-6, "forward")
    y4 = np.full_like(a, np.nan)
    add.add_forward(a, b, y4)  # any ndim works
    np.testing.assert_array_equal(y4, a + b)


def test_concat_reference_grad() -> None:
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, c, 4, 3)) for c in (2, 5, 1)]
    check_reference_grad(
        lambda *xs: concat.ref_forward(xs), lambda dy: concat.ref_backward(dy, [2, 5, 1]), xs
    )


def test_concat_matches_reference() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((3, c, 4, 3)).astype(np.float32) for c in (2, 5, 1)]
    y = np.full((3, 8, 4, 3), np.nan, np.float32)
    concat.concat_forward(xs, y)
    np.testing.assert_array_equal(y, concat.ref_forward(xs))

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dxs = [np.full_like(x, np.nan) for x in xs]
    concat.concat_backward(dy, dxs)
    for dx, want in zip(dxs, concat.ref_backward(dy, [2, 5, 1]), strict=True):
        np.testing.assert_array_equal(dx, want)

    with pytest.raises(ValueError):
        concat.concat_forward(xs, np.empty((3, 9, 4, 3), np.float32))
