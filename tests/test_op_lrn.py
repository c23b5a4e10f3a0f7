"""LRN op: reference vs finite differences, kernels vs reference, reference vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import lrn

SHAPE = (3, 7, 4, 3)
# alpha larger than AlexNet's 1e-4 so the normalisation (and its gradient) is not negligible.
PARAMS = [(5, 2.0, 0.1, 0.75), (3, 1.0, 0.5, 0.6), (1, 1.5, 0.2, 1.0), (9, 2.0, 0.05, 0.75)]


def test_reference_formula() -> None:
    # One pixel, 3 channels, n=3: each window is clipped at the channel edges.
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = lrn.ref_forward(x, 3, 2.0, 0.1, 0.75).ravel()
    expect = [1 / (2 + 0.1 * 5) ** 0.75, 2 / (2 + 0.1 * 14) ** 0.75, 3 / (2 + 0.1 * 13) ** 0.75]
    np.testing.assert_allclose(y, expect, rtol=1e-14)


@pytest.mark.parametrize("n,k,alpha,beta", PARAMS)
def test_reference_grad(n: int, k: float, alpha: float, beta: float) -> None:
    x = np.random.default_rng(n).standard_normal(SHAPE) * 2
    check_reference_grad(
        lambda x: lrn.ref_forward(x, n, k, alpha, beta),
        lambda dy: (
            lrn.ref_backward(dy, x, lrn.ref_forward(x, n, k, alpha, beta), n, k, alpha, beta),
        ),
        [x],
    )


@pytest.mark.parametrize("n,k,alpha,beta", PARAMS + [(5, 2.0, 1e-4, 0.75)])
def test_kernels_match_reference(n: int, k: float, alpha: float, beta: float) -> None:
    rng = np.random.default_rng(20 + n)
    x = (rng.standard_normal(SHAPE) * 2).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)

    y = np.full_like(x, np.nan)
    scale = np.full_like(x, np.nan)
    lrn.lrn_forward(x, y, scale, n, k, alpha, beta)
    assert_close(scale, lrn.ref_scale(x, n, k, alpha), 1e-4, "scale")
    y_ref = lrn.ref_forward(x, n, k, alpha, beta)
    assert_close(y, y_ref, 1e-4, "forward")

    dx = np.full_like(x, np.nan)
    lrn.lrn_backward(dy, x, y, scale, dx, n, k, alpha, beta)
    assert_close(dx, lrn.ref_backward(dy, x, y_ref, n, k, alpha, beta), 1e-4, "backward")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("n,k,alpha,beta", PARAMS)
def test_reference_matches_torch(n: int, k: float, alpha: float, beta: float) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(30 + n)
    x = rng.standard_normal(SHAPE) * 2
    dy = rng.standard_normal(SHAPE)
    xt = torch.tensor(x, requires_grad=True)
    # PyTorch divides alpha by the window size; AlexNet (and netdsl) does not.
    yt = F.local_response_norm(xt, size=n, alpha=alpha * n, beta=beta, k=k)
    yt.backward(torch.tensor(dy))
    y = lrn.ref_forward(x, n, k, alpha, beta)
    assert_close(y, yt.detach().numpy(), 1e-10, "forward")
    assert_close(lrn.ref_backward(dy, x, y, n, k, alpha, beta), xt.grad.numpy(), 1e-10, "backward")
