"""The CPU convolution paths added for ResNet-18's speed (issue 15) against the float64
reference, each forced through the module's thresholds and asserted taken:

- one image per GEMM in the gathered layout (the stem, stride-2 layers): the GEMM writes y
  and reads dy in place, without the block's copies (conv_cpu.forward_images /
  backward_images), the forward in bands of output rows (conv_cpu.BAND_BYTES);
- the transposed weight gradient only below TRANSPOSED_DW_OG output channels;
- Winograd's weight gradient split by planes over the workers (winograd_cpu.wgrad_planes
  after the transforms on offset views), in one chunk or several, with more workers than a
  chunk's tile rows;
- Winograd filters kept from the forward for the data gradient up to WINO_KEEP_BYTES;
- Winograd's forward and data gradient split by planes where its weight gradient is
  (winograd_cpu.conv_planes between the transforms on offset views).

Tiny shapes: each case runs in milliseconds once compiled.
"""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import check_conv_layer

from netdsl.ops import conv

TOL = 2e-6  # as tests/test_conv_winograd.py: float32 against float64, max(1, |ref|) scaled


@pytest.fixture
def setup(monkeypatch):
    """Force the algorithm and the worker count for the layers built afterwards."""

    def use(algo: str, workers: int) -> None:
        monkeypatch.setenv("NETDSL_CONV_ALGO", algo)
        monkeypatch.setattr(conv, "num_threads", lambda: workers)
        monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)

    return use


def run_layer(n, c, h, w, o, k, s, p, g=1, bias=True, want_dx=True, seed=0, reuse=False):
    """Forward, then backward twice (no workspace may carry state), against the reference;
    returns the layer. Symmetric padding p, floor-mode output."""
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    geo = ((s, s), (p, p), (1, 1), g, (ho, wo))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    dy = rng.standard_normal((n, o, ho, wo)).astype(np.float32)
    layer = conv.ConvCPU(n, c, h, w, o, k, k, (s, s), (p, p), (1, 1), g, (ho, wo), bias)
    layer.reuse_forward_weights = reuse
    check_conv_layer(layer, geo, x, wt, b, dy, TOL, want_dx)
    return layer


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("want_dx", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_one_image_blocks_write_y_in_place(setup, monkeypatch, workers, want_dx, groups):
    """A 7x7 stride-2 pad-3 layer (the stem's geometry) and a 3x3 stride-2 one, one image
    per GEMM in the gathered layout, plain weight gradient: y, dx, dw and db exact."""
    setup("gemm", workers)
    monkeypatch.setattr(conv, "BLOCK_COLUMNS", 1)  # one image per GEMM
    monkeypatch.setattr(conv, "TRANSPOSED_DW_OG", 0)  # the plain weight gradient
    for n, c, h, w, o, k, s, p in ((3, 2, 11, 9, 4, 7, 2, 3), (3, 4, 7, 8, 6, 3, 2, 1)):
        layer = run_layer(n, c * groups, h, w, o * groups, k, s, p, groups, want_dx=want_dx)
        assert layer.block == 1 and not layer.geo[10] and not layer.tr


def test_stem_forward_in_bands_of_rows(setup) -> None:
    """The stem's geometry (3 -> 7x7 stride 2, pad 3) at 222 px: 111 output rows filled and
    multiplied in bands of BAND_BYTES (8 rows: 14 bands, the last one short)."""
    from netdsl.ops import conv_cpu

    setup("gemm", 1)
    band = conv_cpu.BAND_BYTES // (4 * 147 * 111)
    assert 1 < band and 111 % band  # several bands, a short last one
    assert band * 111 >= conv_cpu.BAND_MIN_COLUMNS
    layer = run_layer(1, 3, 222, 222, 8, 7, 2, 3, want_dx=False)
    assert layer.block == 1 and not layer.geo[10]


def test_transposed_weight_gradient_only_below_64_channels(setup) -> None:
    """TRANSPOSED_DW_OG: transposed at 32 output channels (K >= 64), plain at 64 (ResNet-18's
    stem, 3 -> 64 7x7: transposed ran 1.27x slower there); both exact."""
    setup("gemm", 1)
    assert run_layer(1, 8, 5, 5, 32, 3, 1, 1).tr
    assert not run_layer(1, 8, 5, 5, 64, 3, 1, 1).tr


# (n, c, o, map, groups): the transformed dw sums (o * c / g) outweigh the batch's tiles
# ((c + o) * tiles), as at ResNet-18's 512 channels, 7 px
PLANES = {
    "three-images": (3, 32, 32, 3, 1),
    "odd-map": (2, 48, 32, 5, 1),
    "groups": (2, 64, 64, 3, 2),
}


@pytest.mark.parametrize("case", list(PLANES), ids=list(PLANES))
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("chunk_rows", [0, 1])
def test_winograd_weight_gradient_by_planes(setup, monkeypatch, case, workers, chunk_rows):
    """Split by planes over 2 or 3 workers (at most one an image; 16 planes do not divide
    by 3), in one chunk or in chunks of one tile row (fewer rows than workers: idle
    workers, beta = 1 after the first chunk); dw and db exact, and one (16, O, Cg) sum
    instead of one a worker."""
    n, c, o, hw, g = PLANES[case]
    setup("winograd", workers)
    if chunk_rows:  # the chunk cap: one tile row (the layer's other passes too)
        tw = -(-hw // 2)
        monkeypatch.setattr(conv, "BLOCK_BYTES", 4 * 16 * (c + o) * tw)
    layer = run_layer(n, c, hw, hw, o, 3, 1, 1, g)
    wino = layer.wino
    assert wino is not None and wino.by_planes and wino.du_shape[0] == 1
    chunks = wino.wplanes[4]
    assert len(chunks) == (n * -(-hw // 2) if chunk_rows else 1)
    # the forward and the data gradient split by planes too (run_layer checked y and dx),
    # only when the batch's tiles fit one chunk
    assert set(wino.cplanes) == (set() if chunk_rows and n * -(-hw // 2) > 1 else {"fwd", "bwd"})


@pytest.mark.parametrize("reuse", [False, True])
def test_winograd_conv_by_planes_unpadded(setup, reuse) -> None:
    """Padding 0: the data gradient's tiles (6 x 6 dx, 3 x 3 tiles, padding 2) differ from
    the forward's (4 x 4 y, 2 x 2): each pass its own chunks and plane strides; filters
    kept from the forward or transformed again."""
    setup("winograd", 2)
    layer = run_layer(2, 32, 6, 6, 32, 3, 1, 0, reuse=reuse)
    cp = layer.wino.cplanes
    assert cp["fwd"][5][2:4] == (2, 2) and cp["bwd"][5][2:4] == (3, 3)


def test_winograd_weight_gradient_by_tiles_where_the_sums_are_small(setup) -> None:
    """More tiles than filter sums (ResNet-18's 64-256 channel layers): split by tiles, a
    sum per worker."""
    setup("winograd", 2)
    layer = run_layer(2, 4, 6, 6, 4, 3, 1, 1)
    assert not layer.wino.by_planes and layer.wino.du_shape[0] == 2


def test_winograd_keeps_filters_up_to_the_cap(setup, monkeypatch) -> None:
    """Filters of WINO_KEEP_BYTES or less are the layer's own array, reused by the data
    gradient: with the cap at exactly this layer's 16 * O * Cg floats it keeps them (the
    512 x 512 layers at 16 MiB), one float less and it does not."""
    setup("winograd", 1)
    n, c, o = 1, 8, 6
    monkeypatch.setattr(conv, "WINO_KEEP_BYTES", 4 * 16 * o * c)
    assert run_layer(n, c, 4, 4, o, 3, 1, 1, reuse=True).wino.keep
    monkeypatch.setattr(conv, "WINO_KEEP_BYTES", 4 * 16 * o * c - 1)
    assert not run_layer(n, c, 4, 4, o, 3, 1, 1, reuse=True).wino.keep
    monkeypatch.undo()  # the module's own cap keeps ResNet-18's 512 x 512 filters
    assert 4 * 16 * 512 * 512 <= conv.WINO_KEEP_BYTES


@pytest.mark.parametrize("workers", [1, 2])
def test_gathered_one_image_from_one_image_columns(setup, workers) -> None:
    """Gathered layout (stride 2): one image per GEMM, in place, from ONE_IMAGE_COLUMNS
    columns (ResNet-18's layer3a.conv1 and proj at 14 px: 196); below, blocks of images
    as BLOCK_COLUMNS says (layer4a at 7 px); both exact."""
    setup("gemm", workers)
    big = run_layer(3, 4, 28, 28, 8, 3, 2, 1)  # 14 x 14 = 196 columns an image
    assert not big.geo[10] and big.block == 1 and 196 >= conv.ONE_IMAGE_COLUMNS
    proj = run_layer(3, 4, 28, 28, 8, 1, 2, 0)
    assert proj.block == 1
    small = run_layer(4, 4, 14, 14, 8, 3, 2, 1)  # 7 x 7 = 49 columns
    assert small.block == min(-(-4 // workers), conv.BLOCK_COLUMNS // 49) > 1
