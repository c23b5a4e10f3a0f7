"""The small nets' CPU paths (issue 15): scaled_tanh's vectorisable tanh, a conv whose kernel
covers its whole input run as an fc product (LeNet-5-1998's C5), max and average pooling's
whole-window loops; each against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close

import netdsl
from netdsl import reference
from netdsl.compiler import CompiledNet
from netdsl.ops import activation as act
from netdsl.ops import pool
from netdsl.ops.conv_fc import WholeInputConvCPU, whole_input


def scaled_tanh(x: np.ndarray, params=None) -> np.ndarray:
    """The CPU kernel's output, through the in-place kernel the runners call."""
    code = act.ACT_CODE["scaled_tanh"]
    fwd, _ = act.in_place_kernels(code)
    y = x.astype(np.float32).copy()
    fwd(y, code, *act.kernel_params("scaled_tanh", params))
    return y


@pytest.mark.parametrize("params", [None, (1.5, 0.75)])
def test_scaled_tanh_close_to_float64(params) -> None:
    """Within a few float32 ulp of A tanh(S x) everywhere: tiny, moderate, saturated inputs."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-30, 30, 200_000), rng.standard_normal(50_000) * 1e-3,
                        np.geomspace(1e-38, 40, 5_000), -np.geomspace(1e-38, 40, 5_000),
                        [0.0]]).astype(np.float32)  # fmt: skip
    y = scaled_tanh(x, params)
    a, s = act.kernel_params("scaled_tanh", params)
    ref = float(a) * np.tanh(s * x.astype(np.float64))  # S x rounded as the kernel rounds it
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    assert rel.max() < 5e-7, f"max relative error {rel.max():.3g} at x = {x[rel.argmax()]}"
    assert np.all(np.abs(y) <= a)  # so that the derivative (S / A)(A^2 - y^2) is >= 0
    np.testing.assert_array_equal(scaled_tanh(-x, params), -y)  # odd, exactly


def test_scaled_tanh_extremes() -> None:
    y = scaled_tanh(np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0], np.float32))
    assert np.isnan(y[0]), "a NaN must stay NaN so that divergence is visible"
    a = act.kernel_params("scaled_tanh")[0]
    np.testing.assert_array_equal(y[1:], [a, -a, a, -a, 0.0])


def test_whole_input_conv_only_where_it_is_an_fc() -> None:
    base = {"kernel": (5, 5), "out_hw": (1, 1), "pad_tl": (0, 0), "groups": 1,
            "dilation": (1, 1), "bias": True, "stride": (1, 1)}  # fmt: skip
    assert isinstance(whole_input(4, 16, 5, 5, 8, base), WholeInputConvCPU)
    assert isinstance(whole_input(4, 16, 5, 5, 8, {**base, "stride": (2, 3)}), WholeInputConvCPU)
    assert whole_input(4, 16, 6, 6, 8, base) is None  # kernel smaller than the input
    assert whole_input(4, 16, 5, 5, 8, {**base, "groups": 2}) is None
    assert whole_input(4, 16, 3, 3, 8, {**base, "kernel": (3, 3), "pad_tl": (1, 1)}) is None


NET = """
input image: 3x12x12
conv  c1: 6 filters 3x3, scaled_tanh
subsample s2: 2x2, scaled_tanh
conv  c3: 4 filters 3x3, connect [[0, 1], [1, 2, 3], [3, 4, 5], [0, 1, 2, 3, 4, 5]], scaled_tanh
conv  c5: 7 filters 3x3, scaled_tanh
fc    out: 5
loss  mse
"""


@pytest.mark.parametrize("bias", [True, False])
def test_lenet98_like_net_matches_reference(bias: bool) -> None:
    """A LeNet-5-1998 in miniature (C5's kernel is its whole 3x3 input, a connection table,
    scaled_tanh, subsampling, mse): loss and every gradient as the float64 reference's."""
    text = NET if bias else NET.replace("7 filters 3x3,", "7 filters 3x3, bias off,")
    cn = CompiledNet(netdsl.loads(text, "small98.net"), batch=5, seed=0)
    c5 = next(r for r in cn.runners if r.layer.name == "c5")
    assert isinstance(c5.op, WholeInputConvCPU)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 5, 5)
    loss, grads = cn.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.loss_and_grads(cn.net, cn.params, x.astype(np.float64), y,
                                                   {}, cn.masks)  # fmt: skip
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert set(grads) == set(ref_grads)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)


def run_pool(x: np.ndarray, mode: str, kernel, stride, pad, out_hw, dy: np.ndarray):
    n, c, h, w = x.shape
    op = pool.PoolCPU(n, c, h, w, mode, kernel, stride, pad, out_hw)
    y = np.full((n, c, *out_hw), np.nan, np.float32)
    op.forward(x, y)
    dx = np.full_like(x, np.nan)
    op.backward(dy, dx)
    return y, dx


CASES = [  # kernel, stride, pad, input size, output size (ceil mode where it is larger)
    ((3, 3), (2, 2), (0, 0), (13, 13), (6, 6)),
    ((3, 3), (2, 2), (0, 0), (12, 12), (6, 6)),  # ceil: the last row and column clipped
    ((3, 3), (2, 2), (1, 1), (9, 10), (5, 5)),  # padded: the first ones clipped
    ((3, 3), (1, 1), (0, 0), (7, 6), (5, 4)),
    ((2, 3), (1, 2), (0, 1), (6, 9), (5, 5)),  # not 3x3: the loop over runtime taps
]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_pool_whole_windows_match_reference(mode: str, case) -> None:
    """Max and avg pooling's whole-window loops (and the clipped windows around them): y and
    dx as the reference's. Small integer inputs make ties: the gradient must go to the first
    maximum in row-major order, as the reference sends it."""
    kernel, stride, pad, (h, w), out_hw = case
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, (2, 3, h, w)).astype(np.float32)
    dy = rng.standard_normal((2, 3, *out_hw)).astype(np.float32)
    y, dx = run_pool(x, mode, kernel, stride, pad, out_hw, dy)
    y_ref = pool.ref_forward(x, mode, kernel, stride, pad, out_hw)
    dx_ref = pool.ref_backward(dy, x, mode, kernel, stride, pad, out_hw)
    if mode == "max":
        np.testing.assert_array_equal(y, y_ref)
    assert_close(y, y_ref, 1e-6, "forward")
    assert_close(dx, dx_ref, 1e-6, "backward")


def test_max_pool_keeps_nan() -> None:
    """A NaN in a window shows in its output (divergence stays visible)."""
    x = np.zeros((1, 1, 7, 7), np.float32)
    x[0, 0, 2, 2] = np.nan  # the first tap of output (1, 1)
    y, _ = run_pool(x, "max", (3, 3), (2, 2), (0, 0), (3, 3), np.ones((1, 1, 3, 3), np.float32))
    assert np.isnan(y[0, 0, 1, 1])


def test_blas_pinned_before_numpy_loads() -> None:
    """`netdsl train/bench/...` pin BLAS to one thread before anything imports numpy (its
    OpenBLAS reads the setting once, on import): building the parser imports numpy (compile's
    --emit option), and with BLAS on every core an fc product of LeNet-5's size ran its own
    spinning threads beside the layers' workers (an epoch 3 -> 22 s under load)."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from netdsl import cli\n"
        "seen = {}\n"
        "build = cli.build_parser\n"
        "def spy():\n"
        "    seen['blas'] = os.environ.get('OPENBLAS_NUM_THREADS')\n"
        "    seen['numpy'] = 'numpy' in sys.modules\n"
        "    return build()\n"
        "cli.build_parser = spy\n"
        "try:\n"
        "    cli.main(['train', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen['blas'], seen['numpy'], file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True)  # fmt: skip
    assert r.stderr.split()[-2:] == ["1", "False"], r.stderr
