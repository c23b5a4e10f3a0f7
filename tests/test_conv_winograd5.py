"""Winograd F(2x2, 5x5) convolution on the CPU (netdsl/ops/winograd5_cpu.py) against the
float64 reference and by central differences: forward, data gradient, weight and bias
gradients, and the auto rule (use_winograd5).

Tolerance: on these shapes the measured error (max |a - b| over max(1, max |b|)) was 3e-7 ..
1.8e-6 for y, dx and dw (the im2col path: 1e-7 .. 7e-7; F(2x2, 5x5)'s transforms round
more, see winograd5_cpu's docstring); 5e-6 leaves room for other BLAS builds and still
catches any wrong tap, tile or transform entry (those give errors of order 1e-2 and up).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from opcheck import assert_close, check_conv_layer, square_conv, square_conv_data

import netdsl
from netdsl.compiler import CompiledNet
from netdsl.ops import conv

TOL = 5e-6


@pytest.fixture
def algo(monkeypatch):
    """Force NETDSL_CONV_ALGO and the worker count for the layers built afterwards."""

    def use(name: str, workers: int = 1) -> None:
        monkeypatch.setenv("NETDSL_CONV_ALGO", name)
        monkeypatch.setattr(conv, "num_threads", lambda: workers)
        monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)

    return use


# 5x5 layers and their random inputs (opcheck)
build = partial(square_conv, 5)
data = partial(square_conv_data, 5)


def check_layer(layer, geo, x, wt, b, dy, want_dx=True) -> None:
    check_conv_layer(layer, geo, x, wt, b, dy, TOL, want_dx)


# (n, c, h, w, o, pad top/left, pad bottom/right, groups): odd sizes overhang the 2x2 tiles
CASES = {
    "square-odd": (2, 4, 5, 5, 6, (2, 2), (2, 2), 1),
    "even": (3, 3, 6, 8, 5, (2, 2), (2, 2), 1),
    "pad-1": (2, 5, 7, 4, 3, (1, 1), (1, 1), 1),
    "no-pad": (2, 4, 7, 6, 4, (0, 0), (0, 0), 1),
    "asymmetric": (2, 3, 6, 6, 4, (3, 0), (0, 1), 1),
    "groups": (3, 6, 5, 7, 9, (2, 2), (2, 2), 3),
    "batch-1": (1, 4, 9, 9, 5, (2, 2), (2, 2), 1),
    "one-pixel": (2, 3, 1, 1, 4, (2, 2), (2, 2), 1),
    "pad-over-4": (2, 3, 4, 5, 4, (5, 4), (4, 5), 1),  # the data gradient's padding is -1, 0
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(algo, case, workers, bias) -> None:
    n, c, h, w, o, p, extra, g = CASES[case]
    algo("winograd", workers)
    layer, geo = build(n, c, h, w, o, p, extra, g, bias)
    assert type(layer.wino).__name__ == "Winograd5"
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
    assert layer.wino.passes["fwd"][1] == -(-tile_columns // 3)
    check_layer(layer, geo, *data(geo, n, c, h, w, o))


def test_central_differences(algo) -> None:
    """The gradients are those of L = sum(y * dy) by central differences of the Winograd
    forward itself. L is linear in x and in w, so a step of 1 has no truncation error: what
    is left is float32 rounding of L (~1e-6 of its size)."""
    algo("winograd")
    n, c, h, w, o = 2, 3, 7, 6, 4
    layer, geo = build(n, c, h, w, o, p=(2, 1), extra=(1, 2))
    x, wt, b, dy = data(geo, n, c, h, w, o, seed=3)
    y = np.empty(dy.shape, np.float32)

    def loss(xx, ww):
        layer.forward(xx, ww, b, y)
        return float(np.dot(y.astype(np.float64).ravel(), dy.astype(np.float64).ravel()))

    dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty(o, np.float32)
    layer.backward(dy, x, wt, dx, dw, db)
    scale = abs(loss(x, wt)) + 1.0
    rng = np.random.default_rng(4)
    for arr, grad, is_x in ((x, dx, True), (wt, dw, False)):
        for _ in range(12):
            i = tuple(int(rng.integers(0, s)) for s in arr.shape)
            plus, minus = arr.copy(), arr.copy()
            plus[i] += 1.0
            minus[i] -= 1.0
            num = (loss(plus, wt) - loss(minus, wt)) / 2 if is_x else (
                loss(x, plus) - loss(x, minus)) / 2  # fmt: skip
            assert abs(num - grad[i]) <= 1e-5 * scale, (is_x, i, num, grad[i])
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_forward_filters_are_reused_only_when_promised(algo) -> None:
    """The data gradient reads the forward's transformed filters (flipped by a permutation,
    see winograd5_cpu) only under the runner's promise and for the same w array."""
    algo("winograd")
    n, c, h, w, o = 2, 3, 6, 6, 4
    layer, geo = build(n, c, h, w, o)
    x, wt, b, dy = data(geo, n, c, h, w, o)
    y = np.empty(dy.shape, np.float32)
    layer.forward(x, wt, b, y)
    layer.reuse_forward_weights = True
    dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty(o, np.float32)
    layer.backward(dy, x, wt, dx, dw, db)  # reused
    assert_close(dx, conv.ref_backward(dy, x, wt, *geo)[0], TOL, "dx, reused")
    wt2 = wt * 2  # a different array: transformed anew even with the promise
    layer.backward(dy, x, wt2, dx, dw, db)
    assert_close(dx, conv.ref_backward(dy, x, wt2, *geo)[0], TOL, "dx, other w")
    layer.reuse_forward_weights = False
    layer.forward(x, wt, b, y)
    wt *= 3  # changed in place, no promise: transformed anew
    layer.backward(dy, x, wt, dx, dw, db)
    assert_close(dx, conv.ref_backward(dy, x, wt, *geo)[0], TOL, "dx, w changed")


def test_shares_scratch_with_other_layers(algo, monkeypatch) -> None:
    """A 5x5 Winograd layer (its filters in the shared Scratch), a 3x3 Winograd layer and an
    im2col layer on one Scratch, in turn: none may depend on what another left there."""
    monkeypatch.setattr(conv, "WINO_KEEP_BYTES", 0)
    scratch = conv.Scratch()
    algo("winograd", 2)
    five, geo5 = build(3, 8, 7, 6, 8, scratch=scratch)
    three = conv.ConvCPU(3, 4, 6, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, (6, 5), True, scratch)
    geo3 = ((1, 1), (1, 1), (1, 1), 1, (6, 5))
    algo("gemm", 2)
    gemm, geog = build(3, 4, 7, 7, 5, scratch=scratch)
    assert not five.wino.keep and type(three.wino).__name__ == "Winograd" and gemm.wino is None
    d3 = np.random.default_rng(5)
    x3 = d3.standard_normal((3, 4, 6, 5)).astype(np.float32)
    w3 = d3.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b3 = d3.standard_normal(6).astype(np.float32)
    dy3 = d3.standard_normal((3, 6, 6, 5)).astype(np.float32)
    cases = [
        (five, geo5, data(geo5, 3, 8, 7, 6, 8)),
        (three, geo3, (x3, w3, b3, dy3)),
        (gemm, geog, data(geog, 3, 4, 7, 7, 5, seed=1)),
    ]
    for _ in range(2):
        for layer, geo, d in cases:
            layer.reuse_forward_weights = True
            check_layer(layer, geo, *d)


def test_auto_rule(algo) -> None:
    algo("auto")
    assert build(8, 32, 8, 8, 32)[0].wino is not None  # 13 M multiply-adds
    assert build(2, 16, 8, 8, 16)[0].wino is None  # 0.8 M: too little work
    assert build(32, 8, 16, 16, 32)[0].wino is None  # too few input channels
    assert build(32, 32, 16, 16, 8)[0].wino is None  # too few output channels
    assert build(64, 32, 4, 4, 64)[0].wino is None  # maps under 8 px: level with im2col
    assert build(16, 96, 13, 13, 256, g=2)[0].wino is not None  # 48 -> 128 a group
    strided = conv.ConvCPU(8, 32, 16, 16, 32, 5, 5, (2, 2), (2, 2), (1, 1), 1, (8, 8), True)
    assert strided.wino is None  # stride 2: not a Winograd layer
    algo("gemm")
    assert build(8, 32, 8, 8, 32)[0].wino is None
    algo("winograd")
    seven = conv.ConvCPU(2, 4, 8, 8, 4, 7, 7, (1, 1), (3, 3), (1, 1), 1, (8, 8), True)
    assert seven.wino is None  # forced or not, only 3x3 and 5x5 layers


NET = """\
network wino5
input image: 3x12x12
conv c1: 16 filters 5x5, pad 2, relu
conv c2: 16 filters 5x5, pad 2, relu
pool p: max 2x2, stride 2
conv c3: 8 filters 5x5, pad 1, relu
fc f: 5
loss cross_entropy
"""


def train(algo_name: str, steps: int = 6) -> list[float]:
    """Losses of a few plain SGD steps of NET on a fixed batch."""
    cn = CompiledNet(netdsl.loads(NET, "wino5.net"), batch=4, seed=0)
    convs = [r.op for r in cn.runners if isinstance(getattr(r, "op", None), conv.ConvCPU)]
    assert len(convs) == 3
    assert all((op.wino is not None) == (algo_name == "winograd") for op in convs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
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
