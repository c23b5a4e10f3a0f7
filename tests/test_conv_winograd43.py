"""Winograd F(4x4, 3x3) convolution on the CPU (netdsl/ops/winograd43_cpu.py) against the
float64 reference and by central differences: forward, data gradient, weight and bias
gradients, the split by planes, and the choice between F(4x4, 3x3) and F(2x2, 3x3)
(use_winograd43, NETDSL_WINO_TILE).

Tolerance: on these shapes the measured error (max |a - b| over max(1, max |b|)) was 1e-7 ..
1.5e-6 for y, dx and dw (F(4x4, 3x3)'s transforms round more than F(2x2, 3x3)'s, see
winograd43_cpu's docstring); 5e-6 leaves room for other BLAS builds and still catches any
wrong tap, tile or transform entry (those give errors of order 1e-2 and up).
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

TOL = 5e-6


@pytest.fixture
def algo(monkeypatch):
    """Force NETDSL_CONV_ALGO, NETDSL_WINO_TILE and the worker count for the layers built
    afterwards."""

    def use(name: str, workers: int = 1, tile: str = "4") -> None:
        monkeypatch.setenv("NETDSL_CONV_ALGO", name)
        monkeypatch.setenv("NETDSL_WINO_TILE", tile)
        monkeypatch.setattr(conv, "num_threads", lambda: workers)
        monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)

    return use


# 3x3 layers and their random inputs (opcheck)
build = partial(square_conv, 3)
data = partial(square_conv_data, 3)


def check_layer(layer, geo, x, wt, b, dy, want_dx=True) -> None:
    check_conv_layer(layer, geo, x, wt, b, dy, TOL, want_dx)


# (n, c, h, w, o, pad top/left, pad bottom/right, groups): maps that are not multiples of 4
# overhang the 4x4 tiles by 1, 2 or 3 rows and columns
CASES = {
    "square-5": (2, 4, 5, 5, 6, (1, 1), (1, 1), 1),
    "odd-7x9": (3, 3, 7, 9, 5, (1, 1), (1, 1), 1),
    "even-8": (2, 3, 8, 8, 4, (1, 1), (1, 1), 1),
    "no-pad": (2, 5, 9, 6, 3, (0, 0), (0, 0), 1),
    "pad-2": (2, 3, 5, 7, 4, (2, 2), (2, 2), 1),
    "asymmetric": (2, 3, 6, 6, 4, (2, 0), (0, 1), 1),
    "groups": (3, 6, 5, 7, 9, (1, 1), (1, 1), 3),
    "batch-1": (1, 4, 9, 9, 5, (1, 1), (1, 1), 1),
    "one-pixel": (2, 3, 1, 1, 4, (1, 1), (1, 1), 1),
    "pad-over-2": (2, 3, 4, 5, 4, (3, 2), (2, 3), 1),  # the data gradient's padding is -1, 0
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(algo, case, workers, bias) -> None:
    n, c, h, w, o, p, extra, g = CASES[case]
    algo("winograd", workers)
    layer, geo = build(n, c, h, w, o, p, extra, g, bias)
    assert type(layer.wino).__name__ == "Winograd43"
    check_layer(layer, geo, *data(geo, n, c, h, w, o, g, bias), want_dx=bias)


@pytest.mark.parametrize("tile_columns", [1, 3, 5])
@pytest.mark.parametrize("workers", [1, 2])
def test_chunks_across_images(algo, monkeypatch, tile_columns, workers) -> None:
    """Chunks of 1, 2 or 3 tile rows (3 per image at 9 px, 2 tiles a row at 7 px): chunks
    start and end inside images and span image boundaries, the last chunk of a worker is
    short."""
    monkeypatch.setattr(conv, "WINO_TILE_COLUMNS", tile_columns)
    algo("winograd", workers)
    n, c, h, w, o = 5, 3, 9, 7, 4
    layer, geo = build(n, c, h, w, o)
    assert layer.wino.passes["fwd"][1] == -(-tile_columns // 2)
    check_layer(layer, geo, *data(geo, n, c, h, w, o))


@pytest.mark.parametrize("block_bytes", [1 << 22, 40_000])
def test_split_by_planes(algo, monkeypatch, block_bytes) -> None:
    """Where the filters outweigh the batch's tiles (ResNet-18's layer4), two workers split
    the 36 planes instead of the tiles: in one chunk (forward and data gradient by planes
    too) or, with a small block cap, several chunks (weight gradient only)."""
    monkeypatch.setattr(conv, "BLOCK_BYTES", block_bytes)
    algo("winograd", 2)
    n, c, h, w, o = 3, 40, 9, 6, 48
    layer, geo = build(n, c, h, w, o)
    assert layer.wino.by_planes
    assert sorted(layer.wino.cplanes) == (["bwd", "fwd"] if block_bytes > 1e6 else [])
    x, wt, b, dy = data(geo, n, c, h, w, o)
    check_layer(layer, geo, x, wt / np.float32(np.sqrt(9 * c)), b, dy)


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
    see winograd43_cpu) only under the runner's promise and for the same w array; filters
    not kept (in the shared Scratch) are transformed again."""
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
    """An F(4x4, 3x3) layer (its filters in the shared Scratch), an F(2x2, 3x3) layer and an
    im2col layer on one Scratch, in turn: none may depend on what another left there."""
    monkeypatch.setattr(conv, "WINO_KEEP_BYTES", 0)
    scratch = conv.Scratch()
    algo("winograd", 2)
    four, geo4 = build(3, 8, 7, 6, 8, scratch=scratch)
    algo("winograd", 2, tile="2")
    two, geo2 = build(3, 4, 6, 5, 6, scratch=scratch)
    algo("gemm", 2)
    gemm, geog = build(3, 4, 7, 7, 5, scratch=scratch)
    assert not four.wino.keep and type(four.wino).__name__ == "Winograd43"
    assert type(two.wino).__name__ == "Winograd" and gemm.wino is None
    cases = [
        (four, geo4, data(geo4, 3, 8, 7, 6, 8)),
        (two, geo2, data(geo2, 3, 4, 6, 5, 6, seed=2)),
        (gemm, geog, data(geog, 3, 4, 7, 7, 5, seed=1)),
    ]
    for _ in range(2):
        for layer, geo, d in cases:
            layer.reuse_forward_weights = True
            check_layer(layer, geo, *d)


def test_rule_and_settings(algo, monkeypatch) -> None:
    """auto: F(4x4, 3x3) for Winograd layers with maps from 28 px, F(2x2, 3x3) below; the
    tile setting forces one; 5x5 layers stay F(2x2, 5x5); a bad setting is a clear error."""
    name = lambda layer: type(layer.wino).__name__  # noqa: E731
    algo("auto", tile="auto")
    assert name(build(1, 32, 28, 28, 32)[0]) == "Winograd43"  # ResNet-18 layer2, VGG conv4
    assert name(build(1, 32, 28, 27, 32)[0]) == "Winograd"  # 27 px: F(2x2, 3x3)
    assert name(build(8, 64, 14, 14, 64)[0]) == "Winograd"  # ResNet-18 layer3
    assert build(1, 16, 32, 32, 32)[0].wino is None  # use_winograd's rule first: im2col
    algo("winograd", tile="auto")
    assert name(build(1, 4, 28, 28, 4)[0]) == "Winograd43"
    algo("winograd", tile="2")
    assert name(build(1, 4, 28, 28, 4)[0]) == "Winograd"
    algo("auto", tile="4")
    assert name(build(8, 64, 14, 14, 64)[0]) == "Winograd43"
    assert build(1, 16, 32, 32, 32)[0].wino is None  # the tile never forces Winograd
    five = conv.ConvCPU(2, 4, 8, 8, 4, 5, 5, (1, 1), (2, 2), (1, 1), 1, (8, 8), True)
    assert five.wino is None  # auto: too little work for 5x5 Winograd
    algo("winograd", tile="4")
    five = conv.ConvCPU(2, 4, 8, 8, 4, 5, 5, (1, 1), (2, 2), (1, 1), 1, (8, 8), True)
    assert name(five) == "Winograd5"
    monkeypatch.setenv("NETDSL_WINO_TILE", "6")
    with pytest.raises(NetdslError, match="NETDSL_WINO_TILE='6'"):
        build(1, 4, 8, 8, 4)


NET = """\
network wino43
input image: 3x10x10
conv c1: 16 filters 3x3, pad 1, relu
conv c2: 16 filters 3x3, pad 1, relu
pool p: max 2x2, stride 2
conv c3: 24 filters 3x3, pad 1, relu
fc f: 5
loss cross_entropy
"""


def train(steps: int = 6) -> tuple[list[float], list[str]]:
    """Losses of a few plain SGD steps of NET on a fixed batch, and its convs' algorithms."""
    cn = CompiledNet(netdsl.loads(NET, "wino43.net"), batch=4, seed=0)
    convs = [r.op for r in cn.runners if isinstance(getattr(r, "op", None), conv.ConvCPU)]
    assert len(convs) == 3
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    y = rng.integers(0, 5, 4)
    losses = []
    for _ in range(steps):
        losses.append(cn.step_grads(x, y))
        cn.theta -= np.float32(0.05) * cn.grad
    return losses, [type(op.wino).__name__ for op in convs]


def test_training_agrees_with_im2col(algo) -> None:
    algo("gemm")
    ref, kinds = train()
    assert kinds == ["NoneType"] * 3
    algo("winograd")
    got, kinds = train()
    assert kinds == ["Winograd43"] * 3
    assert ref[-1] < ref[0]  # it trains
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
