"""Upsample (nearest, whole factors): reference vs finite differences, CPU and CUDA
(simulator) kernels vs reference, PyTorch; the language; a route net that trains."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, assert_net_matches_torch, check_reference_grad

import netdsl
from netdsl import reference
from netdsl.backends import compile_network
from netdsl.errors import NetError
from netdsl.ops import upsample
from netdsl.report import summary_json, summary_text

FACTORS = [(1, 1), (2, 2), (2, 3), (3, 1)]


def test_reference_values() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    y = upsample.ref_forward(x, 2, 3)
    assert y.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(y[0, 0, 1], [1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(y[0, 0, 2], [3, 3, 3, 4, 4, 4])
    dx = upsample.ref_backward(np.arange(24.0).reshape(1, 1, 4, 6), 2, 3)
    # dx[0, 0] sums rows 0-1 x columns 0-2: 0+1+2 + 6+7+8
    np.testing.assert_array_equal(dx.ravel(), [24, 42, 96, 114])
    with pytest.raises(ValueError):
        upsample.ref_backward(np.zeros((1, 1, 3, 6)), 2, 3)


@pytest.mark.parametrize("fh,fw", FACTORS)
def test_reference_grad(fh: int, fw: int) -> None:
    x = np.random.default_rng(fh * 10 + fw).standard_normal((2, 3, 3, 2))
    check_reference_grad(lambda x: upsample.ref_forward(x, fh, fw),
                         lambda dy: (upsample.ref_backward(dy, fh, fw),), [x])  # fmt: skip


def _case(fh: int, fw: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 3 * fh, 4 * fw)).astype(np.float32)
    return x, dy


@pytest.mark.parametrize("fh,fw", FACTORS)
def test_cpu_kernels_match_reference(fh: int, fw: int) -> None:
    x, dy = _case(fh, fw)
    y = np.full(dy.shape, np.nan, dtype=np.float32)
    upsample.upsample_forward(x, y, fh, fw)
    assert_close(y, upsample.ref_forward(x, fh, fw), 1e-7, "forward")
    dx = np.full(x.shape, np.nan, dtype=np.float32)
    upsample.upsample_backward(dy, dx, fh, fw)
    assert_close(dx, upsample.ref_backward(dy, fh, fw), 1e-5, "backward")


@pytest.mark.parametrize("fh,fw", [(2, 2), (2, 3)])
def test_cuda_kernels_match_reference(fh: int, fw: int) -> None:
    from numba import cuda

    x, dy = _case(fh, fw, seed=1)
    op = upsample.UpsampleCUDA(2, 3, 3, 4, fh, fw)
    y = cuda.to_device(np.full(dy.size, np.nan, np.float32))
    dx = cuda.to_device(np.full(x.size, np.nan, np.float32))
    op.forward(cuda.to_device(x.reshape(-1)), y)
    assert_close(y.copy_to_host().reshape(dy.shape), upsample.ref_forward(x, fh, fw), 1e-7,
                 "forward")  # fmt: skip
    op.backward(cuda.to_device(dy.reshape(-1)), dx)
    assert_close(dx.copy_to_host().reshape(x.shape), upsample.ref_backward(dy, fh, fw), 1e-5,
                 "backward")  # fmt: skip


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("fh,fw", FACTORS)
def test_reference_matches_torch(fh: int, fw: int) -> None:
    import torch
    import torch.nn.functional as F

    x, dy = (a.astype(np.float64) for a in _case(fh, fw, seed=2))
    for module in (False, True):  # F.interpolate and nn.Upsample
        xt = torch.tensor(x, requires_grad=True)
        if module:
            yt = torch.nn.Upsample(scale_factor=(fh, fw), mode="nearest")(xt)
        else:
            yt = F.interpolate(xt, scale_factor=(fh, fw), mode="nearest")
        yt.backward(torch.tensor(dy))
        assert_close(upsample.ref_forward(x, fh, fw), yt.detach().numpy(), 1e-12, "y")
        assert_close(upsample.ref_backward(dy, fh, fw), xt.grad.numpy(), 1e-12, "dx")


def test_import_does_not_load_numba() -> None:
    code = ("import sys, netdsl.ops.upsample, netdsl.ops.layers.upsample; "
            "assert 'numba' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- the language


def one(text: str) -> netdsl.Network:
    return netdsl.loads(f"input image: 2x4x5\n{text}\nfc out: 3\nloss cross_entropy\n", "u.net")


@pytest.mark.parametrize(
    ("text", "factor", "shape"),
    [
        ("upsample u: 2", (2, 2), (2, 8, 10)),
        ("upsample u: 2x3", (2, 3), (2, 8, 15)),
        ("upsample u: factor 3", (3, 3), (2, 12, 15)),
        ("upsample u: factor=1x2", (1, 2), (2, 4, 10)),
    ],
)
def test_factor_spellings(text, factor, shape) -> None:
    u = one(text).layer("u")
    assert u.attrs["factor"] == factor
    assert u.out_shape == shape
    assert u.macs == 0 and u.n_params == 0


@pytest.mark.parametrize(
    ("text", "message", "col"),
    [
        ("upsample u: 0", "'factor' must be at least 1, got 0", 13),
        ("upsample u: 2x0", "'factor' must be at least 1, got 0", 13),
        (
            "upsample u: 1.5",
            "'factor' expects a whole number or a size like 3x3, found number 1.5",
            13,
        ),
        ("upsample u: 65", "'factor' must be at most 64, got 65", 13),
        ("upsample u", "upsample needs a factor", 1),
        ("upsample u: 2, pad 1", "unknown option 'pad' for upsample", 16),
    ],
)
def test_option_errors_are_located(text, message, col) -> None:
    with pytest.raises(NetError) as info:
        one(text)
    assert info.value.message == message
    assert (info.value.loc.line, info.value.loc.col) == (2, col)


def test_a_factor_past_the_element_limit_is_a_located_error() -> None:
    src = "input image: 64x1024x1024\nupsample u: 64\nfc out: 3\nloss cross_entropy\n"
    with pytest.raises(NetError) as info:
        netdsl.loads(src, "big.net")
    assert info.value.message == ("u: output 64x65536x65536 or its 0 parameters exceed "
                                  "2,147,483,647 elements per image")  # fmt: skip
    assert info.value.loc.line == 2


def test_a_route_of_mismatched_sizes_names_the_upsample() -> None:
    src = ("input image: 3x8x8\nconv c: 4 filters 3x3, pad 1\npool p: max 2x2, stride 2\n"
           "upsample u: 3\nconcat r(u, c)\nfc out: 3\nloss cross_entropy\n")  # fmt: skip
    with pytest.raises(NetError) as info:
        netdsl.loads(src, "route.net")
    assert "u is 12x12, c is 8x8" in info.value.message


# --------------------------------------------------------------------------------- the report

ROUTE = """network route
input image: 3x8x8
conv c1: 4 filters 3x3, pad 1, leaky(0.1)
pool p1: max 2x2, stride 2
conv c2: 6 filters 3x3, pad 1, leaky(0.1)
upsample u2: 2
concat r(u2, c1)
conv c3: 4 filters 3x3, pad 1, leaky(0.1)
upsample u3: 2x3
conv c4: 3 filters 2x2, relu
fc out: 5
loss cross_entropy
"""


def test_report_rows_and_fractional_jump() -> None:
    """The jump shrinks by the height factor, exactly: 2 -> 1 at u2, 1 -> 1/2 at u3, where a
    2x2 conv then widens the field by (2-1)/2 input pixels."""
    net = netdsl.loads(ROUTE, "route.net")
    text = summary_text(net)
    assert " u2     upsample         x2             6x4x4        6x8x8" in text
    assert " u3     upsample         x2x3           4x8x8        4x16x24" in text
    rows = {r["name"]: r for r in json.loads(summary_json(net))["layers"]}
    assert (rows["c2"]["receptive_field"], rows["c2"]["jump"]) == (8, 2)
    assert (rows["u2"]["receptive_field"], rows["u2"]["jump"]) == (8, 1)
    assert (rows["u3"]["receptive_field"], rows["u3"]["jump"]) == (10, 0.5)
    assert (rows["c4"]["receptive_field"], rows["c4"]["jump"]) == (10.5, 0.5)
    assert isinstance(rows["u2"]["jump"], int)
    line = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["c4"])
    assert line.split()[-2:] == ["21/2", "1/2"]


# ------------------------------------------------------------------------------- whole nets


def test_route_net_matches_the_reference_and_finite_differences() -> None:
    cn = compile_network(netdsl.loads(ROUTE, "route.net"), device="cpu", batch=2, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 2)
    loss, grads = cn.loss_and_grads(x, y)
    params = {k: v.astype(np.float64) for k, v in cn.params.items()}
    ref_loss, ref_grads = reference.loss_and_grads(cn.net, params, x.astype(np.float64), y,
                                                   {}, cn.masks)  # fmt: skip
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)
    w = params["c2.weight"].reshape(-1)  # c2 reaches the loss only through u2
    for i in (0, 7, 31):
        old, eps = w[i], 1e-6
        w[i] = old + eps
        lp, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
        w[i] = old - eps
        lm, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
        w[i] = old
        num = (lp - lm) / (2 * eps)
        assert abs(ref_grads["c2.weight"].reshape(-1)[i] - num) <= 1e-6 * max(1.0, abs(num))


def test_route_net_trains_on_cpu() -> None:
    cn = compile_network(netdsl.loads(ROUTE, "route.net"), device="cpu", batch=8, seed=0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    first, _ = cn.loss_and_grads(x, y)
    for _ in range(30):
        loss, grads = cn.loss_and_grads(x, y)
        cn.set_params({k: v - 0.05 * grads[k] for k, v in cn.params.items()})
    assert loss < 0.5 * first, (first, loss)


def test_route_net_cuda_matches_cpu() -> None:
    net = netdsl.loads(ROUTE, "route.net")
    cpu = compile_network(net, device="cpu", batch=2, seed=0)
    gpu = compile_network(net, device="cuda", batch=2, seed=0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 2)
    l1, g1 = cpu.loss_and_grads(x, y)
    l2, g2 = gpu.loss_and_grads(x, y)
    assert abs(l1 - l2) <= 1e-4 * max(1.0, abs(l1)), (l1, l2)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert_close(g2[k], g1[k], 1e-4, k)
    assert_close(gpu.forward(x), cpu.forward(x), 1e-4, "eval forward")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_route_net_matches_pytorch() -> None:

    cn = compile_network(netdsl.loads(ROUTE, "route.net"), device="cpu", batch=3, seed=1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 3)
    assert_net_matches_torch(cn, x, y)
