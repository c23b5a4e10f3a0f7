"""Winograd F(2x2, 3x3) convolution on the CPU (netdsl/ops/winograd_cpu.py) against the
float64 reference: forward, data gradient, weight and bias gradients.

The Winograd path is float32 only (its GEMMs are direct sgemm calls), so the gradients are
checked against the float64 reference's (ref_backward), which tests/test_op_conv.py checks
by finite differences. Tolerance: on these shapes the measured error (max |a - b| over
max(1, max |b|)) was 1e-7 .. 7e-7 for y, dx and dw (the im2col path: about the same); 2e-6
leaves room for other BLAS builds and still catches any wrong tap, tile or transform entry
(those give errors of order 1e-2 and up).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from opcheck import assert_close, check_conv_layer, square_conv, square_conv_data

import netdsl
from netdsl.compiler import CompiledNet
from netdsl.errors import NetdslError
from netdsl.ops import conv

TOL = 2e-6


@pytest.fixture
def algo(monkeypatch):
    """Force NETDSL_CONV_ALGO and the worker count for the layers built afterwards."""

    def use(name: str, workers: int = 1) -> None:
        monkeypatch.setenv("NETDSL_CONV_ALGO", name)
        monkeypatch.setattr(conv, "num_threads", lambda: workers)
        monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)

    return use


# 3x3 layers and their random inputs (opcheck)
build = partial(square_conv, 3)
data = partial(square_conv_data, 3)


def check_layer(layer, geo, x, wt, b, dy, want_dx=True) -> None:
    check_conv_layer(layer, geo, x, wt, b, dy, TOL, want_dx)


# (n, c, h, w, o, pad top/left, pad bottom/right, groups): odd sizes overhang the 2x2 tiles
CASES = {
    "square-odd": (2, 4, 5, 5, 6, (1, 1), (1, 1), 1),
    "even": (3, 3, 6, 8, 5, (1, 1), (1, 1), 1),
    "rect-odd": (2, 5, 7, 4, 3, (1, 1), (1, 1), 1),
    "no-pad": (2, 4, 6, 5, 4, (0, 0), (0, 0), 1),
    "asymmetric": (2, 3, 6, 6, 4, (2, 0), (0, 1), 1),
    "groups": (3, 6, 5, 7, 9, (1, 1), (1, 1), 3),
    "batch-1": (1, 4, 9, 9, 5, (1, 1), (1, 1), 1),
    "one-pixel": (2, 3, 1, 1, 4, (1, 1), (1, 1), 1),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(algo, case, workers, bias) -> None:
    n, c, h, w, o, p, extra, g = CASES[case]
    algo("winograd", workers)
    layer, geo = build(n, c, h, w, o, p, extra, g, bias)
    assert layer.wino is not None
    check_layer(layer, geo, *data(geo, n, c, h, w, o, g, bias), want_dx=bias)


@pytest.mark.parametrize("tile_columns", [1, 3, 7])
@pytest.mark.parametrize("workers", [1, 2])
def test_chunks_across_images(algo, monkeypatch, tile_columns, workers) -> None:
    """Chunks of 1, 2 or 4 tile rows (3 per image): chunks start and end inside images and
    span image boundaries, and the last chunk of a worker is short."""
    monkeypatch.setattr(conv, "WINO_TILE_COLUMNS", tile_columns)
    algo("winograd", workers)
    n, c, h, w, o = 5, 3, 6, 5, 4
    layer, geo = build(n, c, h, w, o)
    rows = layer.wino.passes["fwd"][1]
    assert rows == -(-tile_columns // 3)
    check_layer(layer, geo, *data(geo, n, c, h, w, o))


def test_forward_filters_are_reused_only_when_promised(algo) -> None:
    """backward reuses the filters the forward transformed only when the runner promises
    the same, unchanged w (reuse_forward_weights) and it is the same array."""
    algo("winograd")
    n, c, h, w, o = 2, 3, 5, 5, 4
    layer, geo = build(n, c, h, w, o)
    x, wt, b, dy = data(geo, n, c, h, w, o)
    y = np.empty(dy.shape, np.float32)
    layer.forward(x, wt, b, y)
    wt2 = wt * 2  # a different array: transformed anew even with the promise
    layer.reuse_forward_weights = True
    dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty(o, np.float32)
    layer.backward(dy, x, wt2, dx, dw, db)
    assert_close(dx, conv.ref_backward(dy, x, wt2, *geo)[0], TOL, "dx, other w")
    layer.reuse_forward_weights = False
    layer.forward(x, wt, b, y)
    wt *= 3  # changed in place, no promise: transformed anew
    layer.backward(dy, x, wt, dx, dw, db)
    assert_close(dx, conv.ref_backward(dy, x, wt, *geo)[0], TOL, "dx, w changed")


def test_shared_filters_are_transformed_again(algo, monkeypatch) -> None:
    """Filters over WINO_KEEP_BYTES live in the shared Scratch: another layer's forward
    overwrites them, so the data gradient transforms them again even when promised."""
    monkeypatch.setattr(conv, "WINO_KEEP_BYTES", 0)
    algo("winograd")
    scratch = conv.Scratch()
    first, geo1 = build(2, 3, 5, 5, 4, scratch=scratch)
    second, geo2 = build(2, 4, 6, 6, 3, scratch=scratch)
    assert not first.wino.keep and not second.wino.keep
    d1, d2 = data(geo1, 2, 3, 5, 5, 4), data(geo2, 2, 4, 6, 6, 3, seed=1)
    for layer, (x, wt, b, dy) in ((first, d1), (second, d2)):
        layer.reuse_forward_weights = True
        layer.forward(x, wt, b, np.empty(dy.shape, np.float32))
    x, wt, b, dy = d1
    dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty(4, np.float32)
    first.backward(dy, x, wt, dx, dw, db)
    assert_close(dx, conv.ref_backward(dy, x, wt, *geo1)[0], TOL, "dx")


def test_shares_scratch_with_gemm_layers(algo, monkeypatch) -> None:
    """A Winograd layer and an im2col layer on one Scratch, in turn: neither may depend on
    what the other left in the shared buffers."""
    scratch = conv.Scratch()
    algo("winograd", 2)
    wino, geo_w = build(3, 16, 6, 5, 16, scratch=scratch)
    algo("gemm", 2)
    gemm, geo_g = build(3, 4, 7, 7, 5, scratch=scratch)
    assert wino.wino is not None and gemm.wino is None
    cases = [(wino, geo_w, data(geo_w, 3, 16, 6, 5, 16)), (gemm, geo_g, data(geo_g, 3, 4, 7, 7, 5))]
    for _ in range(2):
        for layer, geo, d in cases:
            check_layer(layer, geo, *d)


def test_auto_rule_and_bad_setting(algo, monkeypatch) -> None:
    algo("auto")
    assert build(8, 32, 8, 8, 32)[0].wino is not None  # 4.7 M multiply-adds
    assert build(4, 32, 8, 8, 32)[0].wino is None  # 2.4 M: too little work
    assert build(8, 16, 16, 16, 32)[0].wino is None  # too few input channels
    assert build(64, 32, 3, 3, 32)[0].wino is None  # maps under 4 px: tiles mostly overhang
    grouped = build(8, 64, 8, 8, 64, g=2)[0]  # 32 channels a group in and out
    assert grouped.wino is not None
    strided = conv.ConvCPU(8, 32, 8, 8, 32, 3, 3, (2, 2), (1, 1), (1, 1), 1, (4, 4), True)
    assert strided.wino is None  # stride 2: not a Winograd layer
    algo("gemm")
    assert build(8, 32, 8, 8, 32)[0].wino is None
    algo("winograd")
    assert build(2, 4, 8, 8, 32)[0].wino is not None
    five = conv.ConvCPU(2, 4, 8, 8, 4, 5, 5, (1, 1), (2, 2), (1, 1), 1, (8, 8), True)
    assert type(five.wino).__name__ == "Winograd5"  # 5x5: F(2x2, 5x5), test_conv_winograd5
    monkeypatch.setenv("NETDSL_CONV_ALGO", "fft")
    with pytest.raises(NetdslError, match="NETDSL_CONV_ALGO='fft'"):
        build(2, 4, 8, 8, 4)


NET = """\
network wino
input image: 3x9x9
conv c1: 16 filters 3x3, pad 1, relu
conv c2: 16 filters 3x3, pad 1, relu
pool p: max 2x2, stride 2, ceil
conv c3: 24 filters 3x3, pad 1, relu
fc f: 5
loss cross_entropy
"""


def train(algo_name: str, steps: int = 6) -> list[float]:
    """Losses of a few plain SGD steps of NET on a fixed batch."""
    cn = CompiledNet(netdsl.loads(NET, "wino.net"), batch=4, seed=0)
    convs = [r.op for r in cn.runners if isinstance(getattr(r, "op", None), conv.ConvCPU)]
    assert len(convs) == 3
    assert all((op.wino is not None) == (algo_name == "winograd") for op in convs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    y = rng.integers(0, 5, 4)
    losses = []
    for _ in range(steps):
        losses.append(cn.step_grads(x, y))
        cn.theta -= np.float32(0.05) * cn.grad
    return losses


def test_training_agrees_with_im2col(algo) -> None:
    algo("gemm")
    ref = train("gemm")
    algo("winograd")
    got = train("winograd")
    assert ref[-1] < ref[0]  # it trains
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
