"""The CPU convolution's data paths (netdsl/ops/conv_cpu.py) against the float64 reference.

ConvCPU picks a path per layer: images per GEMM (the block), the wide or gathered column
layout, the weight gradient accumulated plain or transposed, and no im2col at all for a 1x1
stride-1 unpadded conv. Each test forces the path it names through the module's thresholds
and asserts the layer took it, so that no case passes by falling back to another path.
"""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close

import netdsl
from netdsl import reference
from netdsl.compiler import CompiledNet
from netdsl.ops import conv


def out_len(size: int, k: int, s: int, pad: int, d: int) -> int:
    return (size + pad - d * (k - 1) - 1) // s + 1


def run(n, c, h, w, o, k, s=(1, 1), p=(0, 0), extra=(0, 0), d=(1, 1), g=1, bias=True,
        want_dx=True, seed=0):  # fmt: skip
    """Forward and backward of ConvCPU -> (layer, inputs, outputs, geometry); p is the
    top/left padding, extra the bottom/right one."""
    out_hw = tuple(out_len((h, w)[i], k[i], s[i], p[i] + extra[i], d[i]) for i in range(2))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, *k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    layer = conv.ConvCPU(n, c, h, w, o, k[0], k[1], s, p, d, g, out_hw, bias)
    y = np.full((n, o, *out_hw), np.nan, np.float32)  # NaN: every element must be written
    layer.forward(x, wt, b, y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.full_like(x, np.nan) if want_dx else None
    dw = np.full_like(wt, np.nan)
    db = np.full(o, np.nan, np.float32) if bias else None
    for _ in range(2):  # twice: no workspace may carry state from the last call
        layer.backward(dy, x, wt, dx, dw, db)
    return layer, (x, wt, b, dy), (y, dx, dw, db), (s, p, d, g, out_hw)


def check(result) -> None:
    _, (x, wt, b, dy), (y, dx, dw, db), geo = result
    assert_close(y, conv.ref_forward(x, wt, b, *geo), 1e-4, "forward")
    dx_ref, dw_ref, db_ref = conv.ref_backward(dy, x, wt, *geo)
    assert_close(dw, dw_ref, 1e-4, "dw")
    if dx is not None:
        assert_close(dx, dx_ref, 1e-4, "dx")
    if db is not None:
        assert_close(db, db_ref, 1e-4, "db")


@pytest.fixture
def threads(monkeypatch):
    """Set the worker count (the layers here are below the parallel threshold otherwise)."""

    def use(t: int) -> None:
        monkeypatch.setattr(conv, "num_threads", lambda: t)
        monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)

    return use


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bias, want_dx", [(True, True), (False, False)])
def test_one_by_one_stride_one_uses_no_im2col(threads, workers, bias, want_dx) -> None:
    threads(workers)
    result = run(3, 6, 5, 4, 8, (1, 1), bias=bias, want_dx=want_dx)
    assert result[0].direct and result[0].block == 1
    check(result)


def test_one_by_one_grouped(threads) -> None:
    threads(2)
    result = run(3, 6, 4, 4, 4, (1, 1), g=2)
    assert result[0].direct
    check(result)


@pytest.mark.parametrize("size, pad", [(7, (0, 0)), (8, (0, 0)), (7, (1, 1))])
def test_one_by_one_stride_two_gathers(threads, size, pad) -> None:
    threads(2)
    result = run(5, 4, size, size, 6, (1, 1), s=(2, 2), p=pad, extra=pad)
    assert not result[0].direct and not result[0].geo[10]  # gathered, not wide
    check(result)


def test_one_by_one_padded_stride_one_is_not_direct(threads) -> None:
    threads(1)
    result = run(2, 3, 4, 4, 5, (1, 1), p=(1, 1), extra=(1, 1))
    assert not result[0].direct
    check(result)


# (n, c, h, w, o, k, stride, pad, extra, dilation, groups): small maps, several images a GEMM
SMALL = {
    "3x3-pad1": (7, 4, 5, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
    "3x3-stride2": (7, 4, 7, 6, 6, (3, 3), (2, 2), (1, 1), (0, 1), (1, 1), 1),
    "groups": (5, 6, 5, 5, 9, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 3),
    "dilation": (6, 3, 7, 7, 4, (3, 2), (1, 1), (2, 1), (2, 1), (2, 2), 1),
    "asymmetric-pad": (5, 3, 6, 5, 4, (2, 4), (1, 1), (0, 1), (1, 2), (1, 1), 1),
    "to-one-pixel": (9, 4, 5, 5, 7, (5, 5), (1, 1), (0, 0), (0, 0), (1, 1), 1),
    "k-over-64": (6, 8, 4, 4, 5, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),  # K = 72
}


@pytest.mark.parametrize("case", list(SMALL), ids=list(SMALL))
@pytest.mark.parametrize("layout", ["wide", "gathered"])
@pytest.mark.parametrize("transposed_dw", [True, False])
@pytest.mark.parametrize("workers", [1, 2])
def test_blocks_of_images(threads, monkeypatch, case, layout, transposed_dw, workers) -> None:
    """Two images per GEMM: batch slices of 3 or 4 over 2 workers, 5-9 over one, so some
    blocks are short (the batch does not divide into blocks)."""
    n, c, h, w, o, k, s, p, extra, d, g = SMALL[case]
    threads(workers)
    ho = out_len(h, k[0], s[0], p[0] + extra[0], d[0])
    wo = out_len(w, k[1], s[1], p[1] + extra[1], d[1])
    wp = max(p[1] + w, wo + (k[1] - 1) * d[1])
    wide = layout == "wide" and s == (1, 1) and wp <= 2 * wo  # never wider than twice
    npix = ho * (wp if wide else wo)
    monkeypatch.setattr(conv, "BLOCK_COLUMNS", 2 * npix)
    monkeypatch.setattr(conv, "WIDE_MAX", 1 << 20 if layout == "wide" else -1)
    monkeypatch.setattr(conv, "TRANSPOSED_DW_OG", 1 << 20 if transposed_dw else 0)
    result = run(n, c, h, w, o, k, s, p, extra, d, g)
    layer = result[0]
    assert layer.block == 2
    assert bool(layer.geo[10]) == wide
    assert layer.tr == (transposed_dw and c // g * k[0] * k[1] >= 64)
    check(result)


def test_whole_slice_in_one_block(threads) -> None:
    threads(2)  # 8 images, 4 a worker, 7x7 maps: all 4 in one GEMM
    result = run(8, 8, 7, 7, 8, (3, 3), p=(1, 1), extra=(1, 1))
    assert result[0].block == 4
    check(result)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_image(threads, workers) -> None:
    threads(workers)
    result = run(1, 4, 6, 6, 5, (3, 3), p=(1, 1), extra=(1, 1))
    assert result[0].workers.n == 1 and result[0].block == 1
    check(result)


def test_block_is_capped_by_the_workspace(threads, monkeypatch) -> None:
    threads(1)
    monkeypatch.setattr(conv, "WIDE_MAX", -1)  # gathered: 25 columns an image, 36 rows
    monkeypatch.setattr(conv, "BLOCK_BYTES", 3 * 4 * (4 * 9) * 25)  # 3 images' columns
    result = run(8, 4, 5, 5, 3, (3, 3), p=(1, 1), extra=(1, 1))
    layer = result[0]
    assert layer.block == 3 and 4 * np.prod(layer.shapes["col"]) <= conv.BLOCK_BYTES
    check(result)


def test_connection_table_in_blocks(threads) -> None:
    """A connection table (mask) on a layer run in blocks: masked weights get no gradient,
    the others the reference's."""
    threads(2)
    net = netdsl.loads(
        """
        input image: 3x6x6
        conv c1: 4 filters 3x3, pad 1, connect [[0], [0,1], [1,2], [0,1,2]]
        conv c2: 4 filters 3x3, stride 2, tanh
        fc out: 3
        loss cross_entropy
        """,
        "table.net",
    )
    cn = CompiledNet(net, batch=6, seed=0)
    c1 = next(r for r in cn.runners if r.layer.name == "c1")
    assert c1.op.block > 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    loss, grads = cn.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.loss_and_grads(
        cn.net, cn.params, x.astype(np.float64), y, {}, cn.masks
    )
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    mask = cn.masks["c1"][:, :, 0, 0]
    assert np.all(grads["c1.weight"][mask == 0] == 0)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)


def test_layers_sharing_scratch(threads) -> None:
    """Two layers on one Scratch, called in turn: neither may depend on what the other left
    in the shared buffers (zero borders of the wide layout, gradient sums)."""
    threads(2)
    scratch = conv.Scratch()
    shapes = [(4, 3, 6, 6, 5, 3, 1), (4, 5, 9, 7, 4, 5, 2)]  # (n, c, h, w, o, k, pad)
    layers, data = [], []
    rng = np.random.default_rng(3)
    for n, c, h, w, o, k, p in shapes:
        out_hw = (h + 2 * p - k + 1, w + 2 * p - k + 1)
        layer = conv.ConvCPU(n, c, h, w, o, k, k, (1, 1), (p, p), (1, 1), 1, out_hw, True, scratch)
        assert layer.geo[10]  # wide: xpad's borders matter
        layers.append(layer)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        dy = rng.standard_normal((n, o, *out_hw)).astype(np.float32)
        data.append((x, wt, b, dy, ((1, 1), (p, p), (1, 1), 1, out_hw)))
    for _ in range(2):
        for layer, (x, wt, b, dy, geo) in zip(layers, data, strict=True):
            y = np.empty_like(dy)
            layer.forward(x, wt, b, y)
            assert_close(y, conv.ref_forward(x, wt, b, *geo), 1e-4, "forward")
            dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty_like(b)
            layer.backward(dy, x, wt, dx, dw, db)
            for got, ref, what in zip((dx, dw, db), conv.ref_backward(dy, x, wt, *geo),
                                      ("dx", "dw", "db"), strict=True):  # fmt: skip
                assert_close(got, ref, 1e-4, what)
