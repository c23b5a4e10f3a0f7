"""Activation op: reference vs finite differences, kernels vs reference, reference vs torch."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import activation as act

SHAPE = (3, 5, 4, 3)
SLOPE = 0.1


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Inputs with |x| >= 0.1 so finite differences never straddle relu's kink."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (0.1 + np.abs(x))


def test_codes_cover_kinds() -> None:
    assert tuple(act.ACT_CODE) == act.ACTIVATIONS
    assert sorted(act.ACT_CODE.values()) == list(range(len(act.ACTIVATIONS)))
    with pytest.raises(TypeError):
        act.ACT_CODE["relu"] = 7  # type: ignore[index]


@pytest.mark.parametrize("kind", act.ACTIVATIONS)
def test_reference_grad(kind: str) -> None:
    x = away_from_zero(np.random.default_rng(1), SHAPE)
    check_reference_grad(
        lambda x: act.ref_forward(x, kind, SLOPE),
        lambda dy: (act.ref_backward(dy, act.ref_forward(x, kind, SLOPE), kind, SLOPE),),
        [x],
    )


def test_reference_values() -> None:
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_allclose(act.ref_forward(x, "relu"), [0, 0, 0.5, 2])
    np.testing.assert_allclose(act.ref_forward(x, "leaky", 0.1), [-0.2, -0.05, 0.5, 2])
    np.testing.assert_allclose(act.ref_forward(x, "sigmoid"), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(act.ref_forward(np.array([-1000.0]), "sigmoid"), [0.0])
    with pytest.raises(ValueError):
        act.ref_forward(x, "swish")


@pytest.mark.parametrize("kind", act.ACTIVATIONS)
def test_kernels_match_reference(kind: str) -> None:
    rng = np.random.default_rng(2)
    x = (3 * away_from_zero(rng, SHAPE)).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    code = act.ACT_CODE[kind]

    y = np.full_like(x, np.nan)
    act.act_forward(x.reshape(-1), y.reshape(-1), code, SLOPE)
    y_ref = act.ref_forward(x, kind, SLOPE)
    assert_close(y, y_ref, 1e-4, f"{kind} forward")

    dx = np.full_like(x, np.nan)
    act.act_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), code, SLOPE)
    assert_close(dx, act.ref_backward(dy, y_ref, kind, SLOPE), 1e-4, f"{kind} backward")

    # In place, as the compiler runs them: forward x -> x, backward dy -> dy.
    x2, dy2 = x.copy(), dy.copy()
    act.act_forward(x2.reshape(-1), x2.reshape(-1), code, SLOPE)
    act.act_backward(dy2.reshape(-1), x2.reshape(-1), dy2.reshape(-1), code, SLOPE)
    np.testing.assert_array_equal(x2, y)
    np.testing.assert_array_equal(dy2, dx)


def test_kernel_extremes() -> None:
    x = np.array([-1e4, -100.0, 100.0, 1e4, np.nan], dtype=np.float32)
    y = np.empty_like(x)
    act.act_forward(x, y, act.SIGMOID, 0.0)
    np.testing.assert_array_equal(y[:4], [0, 0, 1, 1])
    act.act_forward(x, y, act.RELU, 0.0)
    assert np.isnan(y[4]), "relu must propagate NaN so divergence is visible"


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", ["relu", "leaky", "tanh", "sigmoid"])
def test_reference_matches_torch(kind: str) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    x = away_from_zero(rng, SHAPE)
    dy = rng.standard_normal(SHAPE)
    fn = {
        "relu": F.relu,
        "leaky": lambda t: F.leaky_relu(t, SLOPE),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
    }[kind]
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    y = act.ref_forward(x, kind, SLOPE)
    assert_close(y, yt.detach().numpy(), 1e-12, "forward")
    assert_close(act.ref_backward(dy, y, kind, SLOPE), xt.grad.numpy(), 1e-12, "backward")
