"""Activation kinds: reference vs finite differences, CPU and CUDA (simulator) kernels vs
reference, reference vs torch; the registry (netdsl/ops/activations/) and its parsing."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

import netdsl
from netdsl.ops import activation as act

SHAPE = (3, 5, 4, 3)
SLOPE = 0.1
# each kind's parameters in the tests: leaky's slope, elu's alpha, scaled tanh's A and S (not
# their defaults, so that a kernel reading a default instead of its argument fails)
PARAMS = {"leaky": (SLOPE,), "elu": (0.5,), "scaled_tanh": (1.5, 0.75)}


def params(kind: str) -> tuple[float, ...]:
    return PARAMS.get(kind, ())


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
    p = params(kind)
    check_reference_grad(
        lambda x: act.ref_forward(x, kind, p),
        lambda dy: (act.ref_backward(dy, act.ref_forward(x, kind, p), kind, p),),
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
    code, p, kp = act.ACT_CODE[kind], params(kind), act.kernel_params(kind, params(kind))

    y = np.full_like(x, np.nan)
    act.act_forward(x.reshape(-1), y.reshape(-1), code, *kp)
    y_ref = act.ref_forward(x, kind, p)
    assert_close(y, y_ref, 1e-4, f"{kind} forward")

    dx = np.full_like(x, np.nan)
    act.act_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), code, *kp)
    assert_close(dx, act.ref_backward(dy, y_ref, kind, p), 1e-4, f"{kind} backward")

    # In place, as the compiler runs them: forward x -> x, backward dy -> dy.
    x2, dy2 = x.copy(), dy.copy()
    act.act_forward(x2.reshape(-1), x2.reshape(-1), code, *kp)
    act.act_backward(dy2.reshape(-1), x2.reshape(-1), dy2.reshape(-1), code, *kp)
    np.testing.assert_array_equal(x2, y)
    np.testing.assert_array_equal(dy2, dx)


def test_kernel_extremes() -> None:
    x = np.array([-1e4, -100.0, 100.0, 1e4, np.nan], dtype=np.float32)
    y = np.empty_like(x)
    act.act_forward(x, y, act.SIGMOID, 0.0, 0.0)
    np.testing.assert_array_equal(y[:4], [0, 0, 1, 1])
    act.act_forward(x, y, act.RELU, 0.0, 0.0)
    assert np.isnan(y[4]), "relu must propagate NaN so divergence is visible"


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", ["relu", "leaky", "tanh", "sigmoid", "elu", "scaled_tanh"])
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
        "elu": lambda t: F.elu(t, 0.5),
        "scaled_tanh": lambda t: 1.5 * torch.tanh(0.75 * t),  # LeCun 1998: A tanh(S a)
    }[kind]
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    y = act.ref_forward(x, kind, params(kind))
    assert_close(y, yt.detach().numpy(), 1e-12, "forward")
    assert_close(act.ref_backward(dy, y, kind, params(kind)), xt.grad.numpy(), 1e-12, "backward")


# ---- the new kinds: elu(alpha), scaled_tanh(A, S)


def test_new_kind_values() -> None:
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(act.ref_forward(x, "elu"), np.where(x > 0, x, np.exp(x) - 1))
    np.testing.assert_allclose(
        act.ref_forward(x, "elu", 0.5), np.where(x > 0, x, 0.5 * np.expm1(x))
    )
    # LeCun 1998, Appendix A: f(a) = 1.7159 tanh(2a/3), so that f(1) = 1 and f(-1) = -1 (nearly)
    y = act.ref_forward(np.array([-1.0, 1.0]), "scaled_tanh")
    np.testing.assert_allclose(y, [-1.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(act.ref_forward(x, "scaled_tanh", (2.0, 0.5)), 2 * np.tanh(x / 2))
    # the derivative through y at x = 0 is 1 (elu) and A*S (scaled tanh)
    one = np.ones(1)
    np.testing.assert_allclose(act.ref_backward(one, np.zeros(1), "elu", 0.5), [0.5])
    np.testing.assert_allclose(act.ref_backward(one, np.zeros(1), "scaled_tanh", (2.0, 0.5)), [1.0])


def test_elu_large_negative_no_overflow() -> None:
    x = np.array([-1e4, -100.0, 100.0], dtype=np.float32)
    y = np.empty_like(x)
    act.act_forward(x, y, act.ACT_CODE["elu"], *act.kernel_params("elu", 1.0))
    np.testing.assert_allclose(y, [-1.0, -1.0, 100.0])
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("kind", ["elu", "scaled_tanh"])
def test_new_kinds_cuda_sim(kind: str) -> None:
    """CUDA (in the simulator) vs CPU kernel vs reference, forward and backward."""
    rng = np.random.default_rng(4)
    x = (2 * away_from_zero(rng, (2, 3, 2, 2))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    from numba import cuda

    op = act.ActCUDA(x.size, kind, params(kind))
    y = cuda.device_array(x.size, np.float32)
    dx = cuda.device_array(x.size, np.float32)
    op.forward(cuda.to_device(x.reshape(-1)), y)
    yh = y.copy_to_host().reshape(x.shape)
    assert_close(yh, act.ref_forward(x, kind, params(kind)), 1e-4, "cuda forward")
    y_cpu = np.empty_like(x)
    act.act_forward(x.reshape(-1), y_cpu.reshape(-1), act.ACT_CODE[kind],
                    *act.kernel_params(kind, params(kind)))  # fmt: skip
    assert_close(yh, y_cpu, 1e-6, "cuda forward vs CPU")
    op.backward(cuda.to_device(dy.reshape(-1)), y, dx)
    ref = act.ref_backward(dy, yh, kind, params(kind))
    assert_close(dx.copy_to_host().reshape(x.shape), ref, 1e-4, "cuda backward")


def test_registry_lists_every_module() -> None:
    """A kind is its module: every module in netdsl/ops/activations/ is a registered kind, and
    the language, the codes, the call tables and the reports all take it from there."""
    import pkgutil

    from netdsl import schema
    from netdsl.ops import activations

    modules = {m.name for m in pkgutil.iter_modules(activations.__path__)}
    modules = {m for m in modules if not m.startswith("_")}
    kinds = activations.kinds()
    assert {k.__class__.__module__.rsplit(".", 1)[-1] for k in kinds.values()} == modules
    assert set(kinds) == set(act.ACTIVATIONS) == set(schema.ACTIVATIONS) >= {"elu", "scaled_tanh"}
    assert act.ACTIVATIONS[:5] == ("relu", "leaky", "tanh", "sigmoid", "linear")  # codes kept
    for name, k in kinds.items():
        assert set(schema.ACTIVATION_CALLS.get(name, [])) == set(zip(k.params, k.defaults))
        assert set(schema.CALL_ARGS["activation"].get(name, {})) == set(k.params)


def test_new_kind_from_its_module_alone(monkeypatch) -> None:
    """A kind added as a module (here: a fake `softsign` put in the registry) reaches the
    generated element math, so every fused kernel computes it with no other edit."""
    import types as pytypes

    from netdsl.ops.activations._base import Kind

    src = (
        "import numpy as np\n"
        "def f(v, p0, p1):\n    return v / (np.float32(1.0) + abs(v))\n"
        "def df(y, p0, p1):\n    d = np.float32(1.0) - abs(y)\n    return d * d\n"
    )
    mod = pytypes.ModuleType("netdsl.ops.activations.softsign_test")
    exec(src, vars(mod))
    kind = Kind()
    kind.name, kind.f, kind.df = "softsign", mod.f, mod.df
    chain_f = act._chain("g", "v", "f", {}, [k.f.py_func for k in act._KINDS] + [mod.f])
    chain_df = act._chain("h", "y", "df", {}, [k.df.py_func for k in act._KINDS] + [mod.df])
    code = len(act._KINDS)
    v = np.float32(-3.0)
    assert chain_f(v, code, 0, 0) == np.float32(-0.75)
    assert chain_df(np.float32(-0.75), code, 0, 0) == np.float32(0.0625)
    # and the kinds before it keep their codes
    assert chain_f(v, act.RELU, 0, 0) == 0 and chain_f(v, act.LINEAR, 0, 0) == v


def net_text(act_word: str) -> str:
    return (
        "input image: 1x6x6\n"
        f"conv c1: 3 filters 3x3, pad 1, {act_word}\n"
        "pool p1: max 2x2\n"
        "fc f1: 4\n"
        "loss l: cross_entropy\n"
    )


@pytest.mark.parametrize(
    "word, expect",
    [
        ("elu", ("elu", 1.0)),
        ("elu(alpha=0.5)", ("elu", 0.5)),
        ("elu(0.5)", ("elu", 0.5)),
        ("activation elu(alpha=0.25)", ("elu", 0.25)),
        ("scaled_tanh", ("scaled_tanh", 1.7159, 2.0 / 3.0)),
        ("scaled_tanh(A=1.7159, S=0.6667)", ("scaled_tanh", 1.7159, 0.6667)),
        ("scaled_tanh(S=0.5)", ("scaled_tanh", 1.7159, 0.5)),
    ],
)
def test_parse_fused(word: str, expect: tuple) -> None:
    net = netdsl.loads(net_text(word))
    assert net.layer("c1").attrs["activation"] == expect


@pytest.mark.parametrize(
    "line, expect",
    [
        ("elu e1", ("elu", 1.0)),
        ("elu e1: 0.5", ("elu", 0.5)),
        ("elu e1: alpha 0.5", ("elu", 0.5)),
        ("scaled_tanh s1", ("scaled_tanh", 1.7159, 2.0 / 3.0)),
        ("scaled_tanh s1: A 2, S 0.5", ("scaled_tanh", 2.0, 0.5)),
    ],
)
def test_parse_standalone(line: str, expect: tuple) -> None:
    net = netdsl.loads(f"input image: 1x6x6\nconv c1: 3 filters 3x3\n{line}\n")
    lyr = net.layers[-1]
    assert lyr.type == "act" and lyr.attrs["activation"] == expect


@pytest.mark.parametrize(
    "word, message",
    [
        ("elu(alpha=0)", "'alpha' of elu() must be positive, got 0"),
        ("elu(alpha=-1)", "'alpha' of elu() must be positive, got -1"),
        ("scaled_tanh(A=0)", "'A' of scaled_tanh() must be positive, got 0"),
        ("scaled_tanh(B=1)", "scaled_tanh() has no parameter 'B'; it takes A, S"),
        ("elu(1, 2)", "elu() takes at most 1 value"),
    ],
)
def test_parse_errors(word: str, message: str) -> None:
    from netdsl.errors import NetError

    with pytest.raises(NetError) as e:
        netdsl.loads(net_text(word))
    assert message in str(e.value)


def test_standalone_range_error() -> None:
    from netdsl.errors import NetError

    with pytest.raises(NetError) as e:
        netdsl.loads("input image: 1x6x6\nelu e1: -0.5\n")
    assert "'alpha' must be positive, got -0.5" in str(e.value)


def test_report_text() -> None:
    from netdsl.ops.base import activation_text

    assert activation_text(("elu", 1.0)) == "elu"
    assert activation_text(("elu", 0.5)) == "elu(0.5)"
    assert activation_text(("scaled_tanh", 1.7159, 2.0 / 3.0)) == "scaled_tanh"
    assert activation_text(("scaled_tanh", 2.0, 0.5)) == "scaled_tanh(A=2, S=0.5)"
    assert activation_text(("leaky", 0.1)) == "leaky(0.1)"
    assert activation_text(("relu", 0.0)) == "relu"
