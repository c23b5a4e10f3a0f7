"""Softmax op: reference vs finite differences, kernels vs reference, reference vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import softmax

SHAPE = (3, 7)


def test_reference_grad() -> None:
    x = np.random.default_rng(0).standard_normal(SHAPE) * 2
    check_reference_grad(
        softmax.ref_forward, lambda dy: (softmax.ref_backward(dy, softmax.ref_forward(x)),), [x]
    )


def test_reference_stable_and_normalised() -> None:
    x = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    y = softmax.ref_forward(x)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]])


@pytest.mark.parametrize("offset", [0.0, 80.0])  # 80: exp would overflow float32 unshifted
def test_kernels_match_reference(offset: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(SHAPE) * 3 + offset).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)

    y = np.full_like(x, np.nan)
    softmax.softmax_forward(x, y)
    y_ref = softmax.ref_forward(x)
    assert_close(y, y_ref, 1e-5, "forward")

    dx = dy.copy()  # in place
    softmax.softmax_backward(dx, y, dx)
    assert_close(dx, softmax.ref_backward(dy, y_ref), 1e-5, "backward")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_reference_matches_torch() -> None:
    import torch

    rng = np.random.default_rng(2)
    x = rng.standard_normal(SHAPE) * 2
    dy = rng.standard_normal(SHAPE)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.softmax(xt, dim=1)
    yt.backward(torch.tensor(dy))
    y = softmax.ref_forward(x)
    assert_close(y, yt.detach().numpy(), 1e-12, "forward")
    assert_close(softmax.ref_backward(dy, y), xt.grad.numpy(), 1e-12, "backward")
