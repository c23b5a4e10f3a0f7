"""2-D convolution (cross-correlation, PyTorch semantics): groups, stride, padding, dilation.

Shapes: x (N, C, H, W), w (O, C//groups, kh, kw) (PyTorch layout), b (O,), y (N, O, Ho, Wo).
The output size (Ho, Wo) is always given (the shape checker computes it), and ``pad`` is
the top/left padding only: output (i, j) reads input rows ``i*sh - ph + ky*dh`` and columns
``j*sw - pw + kx*dw``; taps outside the input are zero. That covers symmetric, 'same',
asymmetric and ceil-mode sizes with one rule.

CPU (ConvCPU; kernels in conv_cpu.py): im2col of a block of images side by side + one
float32 BLAS GEMM per (block, group), sgemm called directly (leading dimensions, transposes,
beta = 1), a 1x1 stride-1 unpadded conv straight from x into y without im2col. The batch is
split into T contiguous slices, one per worker thread, each with private workspaces
allocated in __init__ (nothing is allocated per call): blocks grow at small maps, where one
image's GEMM is too narrow for BLAS, under a workspace cap. Workers are plain threads
running ``nogil`` kernels (``Workers`` below) rather than ``parallel=True`` kernels: Numba
re-optimises every callee of a prange body, which tripled compile time. Weight gradients
are summed per worker and then over workers in a fixed order: results are deterministic
for a fixed thread count.

BLAS threads: the per-image GEMMs of small layers (LeNet) stay under OpenBLAS's threading
threshold; those of big layers (AlexNet) do not, and then every worker's GEMM also starts
OpenBLAS threads (oversubscription). Training processes should limit BLAS to one thread
(``OPENBLAS_NUM_THREADS=1`` or threadpoolctl): these layers bring their own threads.
"""

from __future__ import annotations

import functools
import os
import types
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from netdsl import buffers
from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel

Pair = tuple[int, int]

# A layer splits its work over several threads only when its per-call work exceeds this many
# multiply-adds; below it, the ~50 us hand-off costs more than it saves.
PARALLEL_MIN_WORK = 1 << 18


def num_threads() -> int:
    """Threads a layer may use: Numba's setting (NUMBA_NUM_THREADS / numba.set_num_threads)."""
    import numba  # only when a layer is built, never on import

    return int(numba.get_num_threads())


class Workers:
    """A team of T threads for ``nogil`` kernels; the calling thread is worker 0.

    Owned by one layer object (no module-level state); its threads end with the object.
    """

    def __init__(self, n: int) -> None:
        self.n = max(1, n)
        self._pool = None
        if self.n > 1:
            self._pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="netdsl-op")
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def run(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> None:
        """Call fn(*job) for every job (at most n), in parallel; return when all are done."""
        if isinstance(fn, kernel):
            fn = fn.dispatcher  # create the Numba dispatcher once, on this thread
        if self._pool is None or len(jobs) == 1:
            for job in jobs:
                fn(*job)
            return
        futures = [self._pool.submit(fn, *job) for job in jobs[1:]]
        try:
            fn(*jobs[0])
        finally:
            for f in futures:
                f.result()  # re-raises a worker's exception


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting range(n) into `parts` contiguous, nearly equal pieces."""
    return [(t * n // parts, (t + 1) * n // parts) for t in range(parts)]


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _padded(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair, out_hw: Pair):
    """Zero-padded copy of x (N, C, Hp, Wp) big enough for every tap of every output."""
    n, c, h, w = x.shape
    need_h = (out_hw[0] - 1) * stride[0] + (kh - 1) * dilation[0] + 1  # rows the taps span
    need_w = (out_hw[1] - 1) * stride[1] + (kw - 1) * dilation[1] + 1  # columns the taps span
    xp = np.zeros((n, c, max(need_h, pad[0] + h), max(need_w, pad[1] + w)))  # (N, C, Hp, Wp)
    xp[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = x
    return xp


def _tap(ky: int, kx: int, stride: Pair, dilation: Pair, out_hw: Pair) -> tuple[slice, slice]:
    """Slices of the padded input read by tap (ky, kx) for all outputs (Ho rows, Wo columns)."""
    y0, x0 = ky * dilation[0], kx * dilation[1]  # padded coordinates of output (0, 0)'s tap
    rows = slice(y0, y0 + (out_hw[0] - 1) * stride[0] + 1, stride[0])
    cols = slice(x0, x0 + (out_hw[1] - 1) * stride[1] + 1, stride[1])
    return rows, cols


def ref_forward(
    x: np.ndarray,  # (N, C, H, W)
    w: np.ndarray,  # (O, C // groups, kh, kw)
    b: np.ndarray | None,  # (O,) or None
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    groups: int,
    out_hw: Pair,
) -> np.ndarray:
    """Reference convolution in float64 -> y (N, O, Ho, Wo)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    og = o // groups
    xp = _padded(x, kh, kw, stride, pad, dilation, out_hw)  # (N, C, Hp, Wp)
    y = np.zeros((n, o) + tuple(out_hw))  # (N, O, Ho, Wo)
    for g in range(groups):
        ci, oi = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)  # group's channels
        for ky in range(kh):
            for kx in range(kw):
                rows, cols = _tap(ky, kx, stride, dilation, out_hw)
                patch = xp[:, ci, rows, cols]  # (N, Cg, Ho, Wo)
                y[:, oi] += np.einsum("nchw,oc->nohw", patch, w[oi, :, ky, kx])
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return y


def ref_backward(
    dy: np.ndarray,  # (N, O, Ho, Wo)
    x: np.ndarray,  # (N, C, H, W)
    w: np.ndarray,  # (O, C // groups, kh, kw)
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    groups: int,
    out_hw: Pair,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference gradients in float64 -> (dx (N, C, H, W), dw (O, Cg, kh, kw), db (O,))."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    xp = _padded(x, kh, kw, stride, pad, dilation, out_hw)  # (N, C, Hp, Wp)
    dxp = np.zeros_like(xp)  # (N, C, Hp, Wp)
    dw = np.zeros_like(w)  # (O, Cg, kh, kw)
    for g in range(groups):
        ci, oi = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for ky in range(kh):
            for kx in range(kw):
                rows, cols = _tap(ky, kx, stride, dilation, out_hw)
                patch = xp[:, ci, rows, cols]  # (N, Cg, Ho, Wo)
                dw[oi, :, ky, kx] = np.einsum("nohw,nchw->oc", dy[:, oi], patch)
                dxp[:, ci, rows, cols] += np.einsum("nohw,oc->nchw", dy[:, oi], w[oi, :, ky, kx])
    dx = dxp[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + wd].copy()  # drop the padding
    return dx, dw, dy.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# float32 CPU convolution: kernels in netdsl/ops/conv_cpu.py (imported when a layer is built)
# ---------------------------------------------------------------------------------------------

# Images per GEMM: as many as fit this many columns (BLAS runs near its peak from a few
# hundred columns on; one 7x7 image has 49, where blocks of 4 ran the data-gradient GEMM
# 1.65x faster; one image of 320 columns ran 5% faster alone than two side by side) ...
BLOCK_COLUMNS = 512
# ... but in the gathered layout one image alone from this many columns on, its GEMM writing
# y and reading dy in place (conv_cpu.forward_gather / backward_gather): ResNet-18's
# layer3a.conv1 (3x3 stride 2, 196 columns) ran 32.2-34.0 against 33.1-35.8 ms CPU forward +
# backward in blocks of 2 (batch 8, 2 threads; level in a later A/B against the commit
# before), its 1x1 projection 4.15 against 4.38 ms; layer4a.conv1 (49 columns) stays faster
# in blocks of 4 (37.9 against 44.1 ms one by one)
ONE_IMAGE_COLUMNS = 192
# ... while a worker's column matrix stays under this many bytes (its dy / output block is
# smaller by K / Og): the net's shared workspace (Scratch) is sized by its largest layer, so
# the cap bounds what blocks add to it (one image's columns can be larger: VGG's first
# layers, 111 MiB a worker; splitting an image's rows is not done yet).
BLOCK_BYTES = 8 << 20
# ... and, for GEMMs small enough for OpenBLAS's small-matrix kernels (M*N*K up to 1e6 for
# one image), under that size too: they run 2x faster than the general path (Og 16, K 150).
SMALL_GEMM = 1_000_000
# The weight gradient is accumulated transposed, (K, Og), below this many output channels
# per group and from 64 rows K on (see conv_cpu.backward_images; at Og 6, K 25 the plain
# product ran 1.2x faster). Measured on 1 thread (backward without dx, CPU time): transposed
# 1.2-1.8x faster at Og 16 and 32 (LeNet c3, cifar10 conv2), slower from Og 64 on, where the
# transposed copy of dy costs more than the GEMM saves (ResNet-18's stem 42 against 33 ms,
# AlexNet conv1 (Og 96) 53 against 50 ms, 1x1 64 -> 128 stride 2 2.2 against 1.7 ms).
TRANSPOSED_DW_OG = 64
# The wide layout (stride 1; see conv_cpu) computes (Wp - Wo) garbage columns per output row
# to copy contiguous runs instead of gathering: worth it while Og * (Wp - Wo) <= this * Wo.
WIDE_MAX = 16
# Winograd (3x3 stride 1, see ConvCPU): tiles (2x2 outputs) per GEMM column block (at 64
# channels 192 ran forward + backward 12-15% faster than 256: ResNet-18's layer1 at 56 px
# (7 tile rows of 28 against 10) and VGG-16's conv1_2 at 224 px (2 of 112 against 3); level
# at 128-512 channels; CPU time, 2 threads, loaded machine) ...
WINO_TILE_COLUMNS = 192
# ... and its transformed filters are kept from the forward to the data gradient up to this
# many bytes a layer (larger: transformed again, in a buffer shared by the layers). 16 MiB
# keeps 512 x 512 channels: the second transform cost 9 ms CPU a step at 7 px, batch 8 (70
# against 61 ms forward + backward, 2 threads), for 16 MiB a layer (ResNet-18: 3 layers,
# 48 MiB, less the 16 MiB shared buffer it no longer needs).
WINO_KEEP_BYTES = 16 << 20


def use_winograd(n: int, cg: int, og: int, ho: int, wo: int, groups: int) -> bool:
    """Whether NETDSL_CONV_ALGO=auto runs a 3x3 stride-1 layer through Winograd: from 32
    channels a group in and out, maps from 4 px and 4 M multiply-adds a call. Measured on 1
    thread, forward + backward against im2col: 1.2-1.8x faster at 32-512 channels, 4-224 px
    and 4.7 M-15 G multiply-adds; slower with 3 or 8 channels (0.3x, 0.5x), 16 channels
    (0.6-1.1x), on 3x3 maps (0.7x: the 2x2 tiles overhang to 4x4) and below 4 M (32 channels
    at 8 px, batch 4: 0.85x)."""
    macs = n * groups * og * cg * ho * wo * 9
    return cg >= 32 and og >= 32 and min(ho, wo) >= 4 and macs >= 1 << 22


def use_winograd43(n: int, cg: int, og: int, ho: int, wo: int, groups: int) -> bool:
    """Whether a 3x3 layer that runs Winograd (use_winograd, or NETDSL_CONV_ALGO=winograd)
    takes F(4x4, 3x3) (winograd43_cpu) rather than F(2x2, 3x3): maps from 28 px. Measured
    forward + backward, 1 thread, CPU time (benchmarks/conv_cpu_layers.py --algo wino2,wino4):
    1.2-1.75x faster at 28-224 px and 64-512 channels (ResNet-18's layer1 1.5x and layer2
    1.2x at batch 8, VGG-16's conv1_2 to conv4_2 at batch 4), slower at 14 px (ResNet-18's
    layer3 0.88x, VGG-16's conv5 0.78x) and 7 px (layer4 0.82x), 0.89-1.0x on AlexNet's
    conv3-5 at 13 px: with few tiles an image, the 36 planes of filters (2.25x F(2x2, 3x3)'s)
    and their transforms cost more than the GEMM work saved."""
    return min(ho, wo) >= 28


def use_winograd5(n: int, cg: int, og: int, ho: int, wo: int, groups: int) -> bool:
    """Whether NETDSL_CONV_ALGO=auto runs a 5x5 stride-1 layer through Winograd F(2x2, 5x5)
    (winograd5_cpu): from 16 channels a group in and out, maps from 8 px and 2 M
    multiply-adds a call. Measured on 1 thread, forward + backward against im2col: 1.25-2.1x
    faster at 16-128 channels, 8-27 px and 3.3-640 M multiply-adds (cifar10's conv2 1.9-2.1x,
    conv3 1.75-1.9x, AlexNet's conv2 1.5x); level at 4 px, slower at 3 px (0.8x) and with
    3 or 6 input channels (0.7x, 0.5x)."""
    macs = n * groups * og * cg * ho * wo * 25
    return cg >= 16 and og >= 16 and min(ho, wo) >= 8 and macs >= 1 << 21


class Scratch:
    """Flat float32 work buffers shared by the CPU conv layers of one net.

    The layers of a net run one at a time and every call overwrites the workspace it reads
    (zero borders and sums are reset by the kernels), so one set of buffers, as big as the
    largest layer needs, serves them all: ResNet-18's conv workspaces at batch 8 were 241 MiB
    as one set per layer, 46 MiB shared. A buffer grows when a bigger layer asks for it (during
    compilation); layers take views at each call, so no view keeps an outgrown buffer alive.
    Not for layers that run at the same time (two threads stepping one net).
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self.version = 0  # bumped whenever a buffer is replaced: views taken before are stale

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of `shape` on buffer `key` (contents: whatever was left there)."""
        size = int(np.prod(shape))
        buf = self._bufs.get(key)
        if buf is None or buf.size < size:
            buf = self._bufs[key] = buffers.zeros(max(size, 1))  # huge pages from 2 MiB
            self.version += 1
        return buf[:size].reshape(shape)


class ConvCPU:
    """float32 convolution on the CPU for fixed shapes; workspaces sized here, on `scratch`
    (shared with the net's other conv layers; a private one by default).

    The batch is split into T contiguous slices, one per worker thread; each worker takes its
    images `block` at a time (im2col of the block side by side, then one GEMM per group, see
    conv_cpu). Workers are plain threads running ``nogil`` kernels (``Workers``) rather than
    ``parallel=True`` kernels: Numba re-optimises every callee of a prange body, which
    tripled compile time. Weight gradients are summed per worker and then over workers in a
    fixed order: results are deterministic for a fixed thread count.
    """

    def __init__(
        self,
        n: int,
        c: int,
        h: int,
        w: int,
        o: int,
        kh: int,
        kw: int,
        stride: Pair,
        pad: Pair,
        dilation: Pair,
        groups: int,
        out_hw: Pair,
        bias: bool,
        scratch: Scratch | None = None,
    ) -> None:
        if c % groups or o % groups:
            raise ValueError(f"channels {c} -> {o} do not divide into {groups} groups")
        from netdsl.ops import conv_cpu  # numba: only once a layer is built

        self._k = conv_cpu
        ho, wo = out_hw
        cg, og = c // groups, o // groups
        self.groups, self.og, self.bias = groups, og, bias
        self.k = cg * kh * kw  # rows of the column matrix
        # 1x1, stride 1, no padding: the input is the column matrix (no im2col)
        self.direct = (kh, kw, *stride, *pad) == (1, 1, 1, 1, 0, 0) and (ho, wo) == (h, w)
        hp = max(pad[0] + h, ho + (kh - 1) * dilation[0])  # padded height (wide layout)
        wp = max(pad[1] + w, wo + (kw - 1) * dilation[1])  # padded width = row pitch Wv
        wide = stride == (1, 1) and wp <= 2 * wo and og * (wp - wo) <= WIDE_MAX * wo
        wide = wide and not self.direct
        wv = wp if wide else wo
        npix = ho * wv  # columns of one image
        self.geo = (*stride, *pad, *dilation, kh, kw, ho, wo, int(wide), hp, wp)
        work = n * groups * og * self.k * ho * wv  # multiply-adds of the forward GEMMs
        self.workers = Workers(1 if work < PARALLEL_MIN_WORK else min(n, num_threads()))
        nt = self.workers.n
        self.jobs = split(n, nt)  # each worker's [first, last) image
        per_worker = -(-n // nt)
        fit = max(1, BLOCK_BYTES // (4 * self.k * npix))  # images whose columns fit the cap
        mnk = og * self.k * npix  # one image's forward GEMM
        if mnk <= SMALL_GEMM:
            fit = min(fit, SMALL_GEMM // mnk)
        self.block = 1 if self.direct else max(1, min(per_worker, BLOCK_COLUMNS // npix, fit))
        if not wide and npix >= ONE_IMAGE_COLUMNS:  # gathered: in place (ONE_IMAGE_COLUMNS)
            self.block = 1
        self.tr = og < TRANSPOSED_DW_OG and self.k >= 64 and not self.direct
        cols = 1 if self.direct else self.block * npix  # workspace columns
        npad = hp * wp + (kw - 1) * dilation[1] if wide else 1  # slack: last row's taps
        # Each worker's workspaces (shapes; the arrays are views of `scratch`, see Scratch).
        # Worker 0 sums the weight gradient into dw itself, the others into dwt, added after;
        # when tr, each worker into dwt transposed, added into the first and transposed into dw.
        self.shapes = {
            "col": (1 if self.direct else self.k, cols),  # (K, B*P) column matrix
            "yw": (og, cols),  # (Og, B*P): y or dy of a block
            "ywt": (cols if self.tr else 1, og),  # (B*P, Og): dy of a block, transposed
            "xpad": (cg * npad,),  # (Cg*Hp*Wp + slack,) the zero-bordered image (wide)
            "dxpad": (npad,),  # (Hp*Wp + slack,) one channel's padded dx (wide)
            "dwt": (groups, self.k, og) if self.tr else (groups, og, self.k),
            "dbt": (o,),
        }
        self.scratch = Scratch() if scratch is None else scratch
        for t in range(nt):  # size the shared buffers now (views are taken on first call)
            self._workspace(t)
        self._views: tuple[int, list[dict[str, np.ndarray]]] = (-1, [])  # (version, views)
        self.no_b = np.zeros(o, np.float32)  # (O,) stands in for b without bias
        self.no_dx = np.zeros((1, 1, 1, 1), np.float32)  # stands in for dx when not wanted
        # ---- Winograd for the forward, the data gradient and the weight gradient of stride-1
        # 3x3 layers (F(2x2, 3x3), netdsl/ops/winograd_cpu.py) and 5x5 layers (F(2x2, 5x5),
        # winograd5_cpu.py: the same passes and settings).
        # NETDSL_CONV_ALGO=gemm|winograd|auto (read here, when the layer is built); auto uses
        # it where measured faster (use_winograd, use_winograd5). reuse_forward_weights: the
        # runner's promise that backward's w is the forward's, unchanged (the filters are
        # transformed once).
        self.wino, self.reuse_forward_weights = None, False
        algo = os.environ.get("NETDSL_CONV_ALGO", "auto").strip().lower() or "auto"
        if algo not in ("gemm", "winograd", "auto"):  # a user's setting: no traceback
            from netdsl.errors import NetdslError

            raise NetdslError(f"NETDSL_CONV_ALGO={algo!r}: expected gemm, winograd or auto")
        square_unit = (kh, *stride, *dilation) == (kw, 1, 1, 1, 1)
        rule = {3: use_winograd, 5: use_winograd5}.get(kh) if square_unit else None
        if rule is not None and (
            algo == "winograd" or (algo == "auto" and rule(n, cg, og, ho, wo, groups))
        ):
            # 3x3: F(4x4, 3x3) (winograd43_cpu) where use_winograd43 measured it faster, else
            # F(2x2, 3x3); NETDSL_WINO_TILE=2|4 forces one (tests, comparisons)
            tile = os.environ.get("NETDSL_WINO_TILE", "auto").strip().lower() or "auto"
            if tile not in ("2", "4", "auto"):
                from netdsl.errors import NetdslError

                raise NetdslError(f"NETDSL_WINO_TILE={tile!r}: expected 2, 4 or auto")
            if kh == 5:
                from netdsl.ops.winograd5_cpu import Winograd5 as wino_class
            elif tile == "4" or (tile == "auto" and use_winograd43(n, cg, og, ho, wo, groups)):
                from netdsl.ops.winograd43_cpu import Winograd43 as wino_class
            else:
                from netdsl.ops.winograd_cpu import Winograd as wino_class
            self.wino = wino_class(n, c, h, w, o, pad, groups, out_hw, self.scratch,
                                   self.workers, WINO_TILE_COLUMNS, BLOCK_BYTES,
                                   WINO_KEEP_BYTES)  # fmt: skip
            self.no_c = np.zeros(c, np.float32)  # stands in for a bias in the data gradient

    def _workspace(self, t: int) -> dict[str, np.ndarray]:
        """Worker t's workspaces: views of the current scratch buffers."""
        return {k: self.scratch.get(f"{k}{t}", shape) for k, shape in self.shapes.items()}

    def _workspaces(self) -> list[dict[str, np.ndarray]]:
        """Every worker's workspaces, kept while the scratch buffers stay the same (taking
        the views anew each call cost ~40 us: 20 % of a LeNet layer)."""
        if self._views[0] != self.scratch.version:
            self._views = (
                self.scratch.version,
                [self._workspace(t) for t in range(len(self.jobs))],
            )
        return self._views[1]

    def forward(
        self,
        x: np.ndarray,  # (N, C, H, W) float32
        w: np.ndarray,  # (O, Cg, kh, kw) float32
        b: np.ndarray | None,  # (O,) float32 or None
        y: np.ndarray,  # (N, O, Ho, Wo) float32, written
    ) -> None:
        """y = conv(x, w) + b. All arrays C-contiguous."""
        w3 = w.reshape(self.groups, self.og, self.k)  # (G, Og, K) view
        bb = b if self.bias and b is not None else self.no_b
        if self.wino is not None:  # Winograd (see __init__)
            return self.wino.forward(x, w, bb, y)
        jobs = []
        for (n0, n1), ws in zip(self.jobs, self._workspaces(), strict=True):
            jobs.append((n0, n1, self.block, self.direct, x, w3, bb, y, ws["col"], ws["yw"],
                         ws["xpad"], self.geo))  # fmt: skip
        self.workers.run(self._k.forward_images, jobs)

    def backward(
        self,
        dy: np.ndarray,  # (N, O, Ho, Wo) float32
        x: np.ndarray,  # (N, C, H, W) float32, the forward input
        w: np.ndarray,  # (O, Cg, kh, kw) float32
        dx: np.ndarray | None,  # (N, C, H, W) float32 overwritten, or None to skip
        dw: np.ndarray,  # (O, Cg, kh, kw) float32, overwritten
        db: np.ndarray | None,  # (O,) float32 overwritten, or None without bias
    ) -> None:
        """Overwrite dx (unless None), dw and db (unless None) with the gradients.

        All arrays C-contiguous. Nothing from the forward is reused (any x may be passed)
        unless reuse_forward_weights is set (then w must be the forward's, unchanged).
        """
        if self.wino is not None:  # Winograd (see __init__)
            return self.wino.backward(dy, x, w, dx, dw, db, self.reuse_forward_weights, self.no_c)
        w3 = w.reshape(self.groups, self.og, self.k)  # (G, Og, K) view
        dw3 = dw.reshape(w3.shape)
        want = dx is not None
        dxx = dx if want else self.no_dx
        jobs, dwt, dbt = [], [], []
        for t, ((n0, n1), ws) in enumerate(zip(self.jobs, self._workspaces(), strict=True)):
            dwt.append(dw3 if t == 0 and not self.tr else ws["dwt"])  # this worker's sum
            dbt.append(ws["dbt"])
            jobs.append((n0, n1, self.block, self.direct, self.tr, dy, x, w3, dxx, want,
                         ws["col"], ws["yw"], ws["ywt"], ws["xpad"], ws["dxpad"], dwt[t], dbt[t],
                         self.geo))  # fmt: skip
        self.workers.run(self._k.backward_images, jobs)
        for t in range(1, len(dwt)):  # fixed order over workers
            dwt[0] += dwt[t]
        if self.tr:
            np.copyto(dw3, dwt[0].transpose(0, 2, 1))
        if db is not None:
            np.copyto(db, dbt[0])
            for t in range(1, len(dbt)):
                db += dbt[t]


# ---- CUDA kernels
# Implicit GEMM on netdsl.ops.gemm_cuda's generated SGEMM core: no im2col matrix is ever
# stored. Per group g, with K = Cg*kh*kw and the batch's output pixels as columns:
#   forward     y[o, (n,p)]  = sum_k w[o, k] * col[k, (n,p)]        + bias, activation fused
#   data grad   dx[c, (n,q)] = sum_(o,ky,kx) w[o, c, ky, kx] * dy[o, (n, tap)], STRIDE-AWARE:
#               input pixels are split by phase (iy mod sh, ix mod sw); the pixels of one phase
#               are reached by the same taps (ky, kx), at output offsets (a_ky, b_kx) that do not
#               depend on the pixel, so each phase is a dense GEMM over only the taps that hit
#               (a quarter of all taps at stride 2), one launch per phase;
#   weight grad dw[o, k]     = sum_(n,p) dy[o, (n,p)] * col[k, (n,p)], split over S runs of
#               K slices (pixels, across images) into a workspace, then summed in a fixed order
#               (no atomics)
# where col[k, (n,p)] is the input tap of filter element k for output pixel p of image n,
# gathered straight from x (zero in the padding). What depends on k comes from a table
# computed here, on the host, once per layer (gemm_cuda.pack: the element's offset and its
# (dy, dx) for the bounds test); what depends on the thread's row or column is decomposed once,
# before the K loop; the weight gradient's K (pixels) runs over images by counters. No
# division happens in a K loop.
#
# The geometry (batch, channels, sizes, kernel, stride, padding, dilation, groups), the tile
# and the fused activation are constants of the generated text: one cached module per layer
# geometry and tile (netdsl.ops.codegen), compiled once per machine. sum_splits is generated
# from a factory (@generated, per O*K); the bias gradient is reduce_cuda's ChannelSumsCUDA
# (many blocks per channel, warp shuffles, partials added in a fixed order).

cuda = None  # numba.cuda, bound by _cuda_reductions()


def _conv_text(n: int, c: int, h: int, wi: int, o: int, groups: int, kh: int, kw: int,
               sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int, wo: int,
               tile: tuple, code: int) -> str:  # fmt: skip
    """The generated module of one layer and tile: conv_forward, conv_backward_weights and
    permute_weights (see ConvCUDA for their arguments)."""
    from netdsl.ops import gemm_cuda as G

    bk = tile[2]
    cg, og = c // groups, o // groups
    kc, hw, howo = cg * kh * kw, h * wi, ho * wo
    npix = n * howo
    hwpad = G.padded(howo, bk)
    spi = hwpad // bk  # the weight gradient's K slices per image
    fwd = G.Kernel(
        "conv_forward", "x, w, b, y, tab, has_bias, p0, p1", tile,
        G.Dense("w", True, kc, og, kc, base=f"g * {og * kc}"),
        G.Gather("x", "tab", False, h, wi, ok=f"mn < {npix}", setup=f"""
im = mn // {howo}
pix = mn % {howo}
y0 = (pix // {wo}) * {sh} - {ph}
x0 = (pix % {wo}) * {sw} - {pw}
tbase = im * {c * hw} + g * {cg * hw} + y0 * {wi} + x0"""),
        G.Epilogue("y", f"ro = (g * {og} + row) * {howo}\nrk = row < {og}",
                   f"co = (col // {howo}) * {o * howo} + col % {howo}\nck = col < {npix}",
                   f"act(v + b[g * {og} + row] if has_bias else v, {code}, p0, p1)"),
        G.Kloop(nk=str(-(-kc // bk))), prologue="g = bz",
        notes=["y (N, O, Ho, Wo) = act(w @ im2col(x) + b): M = output channels of group g "
               "(grid z), N = the batch's output pixels, K = Cg*kh*kw; flat arrays"],
    )  # fmt: skip
    bwd_w = G.Kernel(
        "conv_backward_weights", "dy, x, ws, tb, chunk, splits", tile,
        # dy's rows: plain runs of Ho*Wo pixels per image (no table)
        G.Dense("dy", True, howo, og, howo, base=f"g * {og * howo}", istride=o * howo),
        G.Gather("x", "tb", True, h, wi, ok=f"mn < {kc}", istride=c * hw, setup=f"""
ci = mn // {kh * kw}
y0 = ((mn % {kh * kw}) // {kw}) * {dh} - {ph}
x0 = (mn % {kw}) * {dw} - {pw}
tbase = (g * {cg} + ci) * {hw} + y0 * {wi} + x0"""),
        G.Epilogue("ws", f"ro = sp * {o * kc} + (g * {og} + row) * {kc}\nrk = row < {og}",
                   f"co = col\nck = col < {kc}"),
        # split s: the K slices [s*chunk, (s+1)*chunk) of the batch's n * spi (spi per image)
        G.Kloop(nk=f"min(chunk, {n * spi} - sp * chunk)", kt0=f"((sp * chunk) % {spi}) * {bk}",
                wrap=hwpad, img0=f"(sp * chunk) // {spi}"),
        prologue="g = bz // splits\nsp = bz % splits",
        notes=["dw partial sums ws (S, O, Cg*kh*kw) over the K slices [s*chunk, (s+1)*chunk): M = "
               "output channels, N = filter elements, K = pixels (Ho*Wo padded to BK per image)"],
    )  # fmt: skip
    permute = """
@cuda.jit(cache=True)
def permute_weights(w, idx, wp):
    # wp[e] = w[idx[e]], 0 where idx[e] < 0: the data gradient's weights, phase by phase
    for e in range(cuda.grid(1), wp.size, cuda.gridsize(1)):
        i = idx[e]
        wp[e] = w[i] if i >= 0 else float32(0.0)
"""
    return (
        G.module_text("conv", [fwd, bwd_w])
        + permute
        + _zero_text(n, c, h, wi, o, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    )


def _zero_text(n: int, c: int, h: int, wi: int, o: int, groups: int, kh: int, kw: int,
               sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int,
               wo: int) -> str:  # fmt: skip
    """zero_phases(dx): zeros at the input pixels of the data gradient's stride phases that
    no tap reaches (a 1x1 stride-2 conv: 3 phases of 4), one launch instead of a GEMM per
    such phase; "" when every phase with pixels has taps."""
    phases = data_phases(h, wi, 1, kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo))
    if not any(p["tp"] * p["up"] and not p["taps"] for p in phases):
        return ""
    # the phases with taps (at most kh*kw): a pixel of any other phase gets a zero
    hit = " and ".join(f"q != {p['phase']}" for p in phases if p["taps"]) or "True"
    return f"""
@cuda.jit(cache=True)
def zero_phases(dx):
    # dx (N, C, H, W): the pixels (iy, ix) whose phase q = ((iy + ph) % sh) * sw + (ix + pw)
    # % sw has no tap get 0, the others are left to the phases' GEMMs. grid.x covers one
    # plane's pixels; the phase test is done once per pixel, then grid.y strides the planes
    pix = int32(int32(cuda.blockIdx.x) * int32(cuda.blockDim.x) + int32(cuda.threadIdx.x))
    if pix < {h * wi}:
        iy = int32(pix // {wi})
        q = int32(((iy + {ph}) % {sh}) * {sw} + ((pix - iy * {wi}) + {pw}) % {sw})
        if {hit}:
            for plane in range(int32(cuda.blockIdx.y), {n * c}, int32(cuda.gridDim.y)):
                dx[uint32(plane * {h * wi} + pix)] = float32(0.0)
"""


def _conv_data_text(n: int, c: int, h: int, wi: int, o: int, groups: int, kh: int, kw: int,
                    sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int, wo: int,
                    part: int, tile: tuple) -> str:  # fmt: skip
    """The generated module of one phase of a layer's data gradient: conv_backward_data(dy,
    wp, dx, tb), the phase's sizes and table positions folded in as constants."""
    from netdsl.ops import gemm_cuda as G

    bk = tile[2]
    cg, og = c // groups, o // groups
    hw, howo = h * wi, ho * wo
    cgp = G.padded(cg, tile[0])  # the permuted weights' rows: every row a tile reads
    p = conv_tables(c, h, wi, o, groups, kh, kw, (sh, sw), (ph, pw), (dh, dw), (ho, wo),
                    (bk, bk, bk), tile[0])["phases"][part]  # fmt: skip
    kt0, kp, tp, up, iyf, ixf = p["kt0"], p["kp"], p["tp"], p["up"], p["iyf"], p["ixf"]
    wofs, kpp, cols = p["wofs"], p["kpp"], n * p["tp"] * p["up"]
    bwd_data = G.Kernel(
        "conv_backward_data", "dy, wp, dx, tb", tile,
        # the phase's weights, permuted by permute_weights into (G, Cgp, kpp) at wofs: A[ci, k],
        # zero in the padding rows and columns (no bounds test in the loop)
        G.Dense("wp", True, kpp, cg, kp + kt0, base=f"{wofs - kt0} + g * {kpp * cgp}",
                padded=True),
        G.Gather("dy", "tb", False, ho, wo, ok=f"mn < {cols}", setup=f"""
im = mn // {tp * up}
t = (mn % {tp * up}) // {up}
u = mn % {up}
y0 = t
x0 = u
tbase = im * {o * howo} + g * {og * howo} + t * {wo} + u"""),
        G.Epilogue("dx", f"ro = (g * {cg} + row) * {hw}\nrk = row < {cg}", f"""
im = col // {tp * up}
t = (col % {tp * up}) // {up}
u = col % {up}
co = im * {c * hw} + ({iyf} + t * {sh}) * {wi} + {ixf} + u * {sw}
ck = col < {cols}"""),
        G.Kloop(nk=str(-(-kp // bk)), kt0=str(kt0)), prologue="g = bz",
        notes=["one phase of dx (N, C, H, W): the input pixels (iyf + t*sh, ixf + u*sw), "
               f"t < {tp}, u < {up}, and the {kp} taps (o, ky, kx) that reach them (dy's table "
               f"from {kt0}; their weights at {wofs}, {kpp} per input channel)"],
    )  # fmt: skip
    return G.module_text("convd", [bwd_data])


class _Kernels(types.SimpleNamespace):
    """A layer's kernels; conv_backward_data's module is generated on first access."""

    def __init__(self, data, **kernels) -> None:
        super().__init__(**kernels)
        self._data = data

    def __getattr__(self, name: str):
        if name == "conv_backward_data":
            return self._data().conv_backward_data
        raise AttributeError(name)


@generated("conv_sums")
def _cuda_reductions(o: int, kcols: int):
    """sum_splits of a layer: the weight gradient's split-K partials added in a fixed order."""
    global cuda
    from numba import cuda

    @cuda.jit
    def sum_splits(ws, out, mask, has_mask, splits):
        # ws (S, O*K) flat -> out (O*K,) = sum over S in order, times mask (O*K,) for a table
        for e in range(cuda.grid(1), o * kcols, cuda.gridsize(1)):
            v = ws[e]
            for s in range(1, splits):
                v += ws[s * o * kcols + e]
            out[e] = v * mask[e] if has_mask else v

    return types.SimpleNamespace(sum_splits=sum_splits)


@functools.cache
def _cuda_kernels(n: int, c: int, h: int, wi: int, o: int, groups: int, kh: int, kw: int,
                  sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int, wo: int,
                  part: int, bm: int, bn: int, bk: int, tm: int, tn: int,
                  code: int):  # fmt: skip
    """The kernels of one layer: x (n, c, h, wi) -> y (n, o, ho, wo) with a (kh, kw) kernel,
    stride (sh, sw), top/left padding (ph, pw), dilation (dh, dw) and `groups`; tile (bm, bn,
    bk, tm, tn); activation `code`.

    `part` says which piece of the work a launch does: the data gradient's phase py*sw + px
    (its own generated module, the phase's sizes folded in), the weight gradient's K slices
    per split (for benchmarks/gpu_static.py; the same code for every split).
    """
    from netdsl.ops.codegen import kernel_module

    text = _conv_text(n, c, h, wi, o, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                      (bm, bn, bk, tm, tn), code)  # fmt: skip
    mod = kernel_module("conv", text)
    geo = (n, c, h, wi, o, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)

    def data():  # only a data-gradient launch (part = its phase) generates its module
        return kernel_module("convd", _conv_data_text(*geo, part, (bm, bn, bk, tm, tn)))

    sums = _cuda_reductions(o, (c // groups) * kh * kw)
    return _Kernels(data, conv_forward=mod.conv_forward, permute_weights=mod.permute_weights,
                    conv_backward_weights=mod.conv_backward_weights,
                    zero_phases=getattr(mod, "zero_phases", None),
                    sum_splits=sums.sum_splits)  # fmt: skip


# netdsl.backends.cuda_ptx compiles only a few geometries of each kernel (per tile config,
# layout and activation): the first 17 arguments are sizes, which decide no branch alone
_cuda_kernels.geometry_args = 17


def data_phases(h: int, w: int, o: int, kh: int, kw: int, stride: Pair, pad: Pair,
                dilation: Pair, out_hw: Pair) -> list[dict]:  # fmt: skip
    """The backward-data phases of a convolution (host side; the tables' index math).

    Input row iy is reached from output row oy = (iy + ph - ky*dh) / sh by the taps ky for
    which that division is exact: which ones depends only on (iy + ph) mod sh. For each
    phase (py, px) with input pixels: the first input row and column (iyf, ixf), the numbers
    of rows and columns (tp, up: iy = iyf + t*sh), and the taps: a list of (o, ky, kx, a, b)
    where (a, b) is the output pixel offset, oy = t + a and ox = u + b.
    """
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    phases = []
    for py in range(sh):
        for px in range(sw):
            iyf, ixf = (py - ph) % sh, (px - pw) % sw  # first iy with (iy + ph) % sh == py
            tp, up = -(-(h - iyf) // sh), -(-(w - ixf) // sw)
            taps = [
                (oc, ky, kx, (iyf + ph - ky * dh) // sh, (ixf + pw - kx * dw) // sw)
                for oc in range(o)
                for ky in range(kh)
                for kx in range(kw)
                if (iyf + ph - ky * dh) % sh == 0 and (ixf + pw - kx * dw) % sw == 0
            ]
            phases.append({"phase": py * sw + px, "iyf": iyf, "ixf": ixf, "tp": max(0, tp),
                           "up": max(0, up), "taps": taps})  # fmt: skip
    return phases


def conv_tables(
    c: int,
    h: int,
    w: int,
    o: int,
    groups: int,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    out_hw: Pair,
    bk: tuple[int, int, int],
    rows_d: int = 1,
) -> dict:
    """The host tables of the generated kernels (uint32 (K, 2), gemm_cuda.pack): forward
    `fwd`; backward data `data_b` (dy), the phases concatenated, each padded to its BK, with
    `phases` (data_phases plus kt0, kp, and wofs and kpp: where the phase's weights start in
    the permuted copy whose int32 source indices are `data_w`, -1 for zero); weight gradient
    `w_b` (x; dy needs no table) over one image's output pixels, padded to BK. bk: the BK of
    the forward, data and weight tiles; rows_d: the data tile's BM, to which the permuted
    weights' input channels are padded (with zeros), so that its loads need no bounds test."""
    from netdsl.ops import gemm_cuda as G

    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_hw
    cg, og = c // groups, o // groups
    kc = cg * kh * kw
    ci, ky, kx = np.unravel_index(np.arange(kc), (cg, kh, kw))
    out = {"fwd": G.pack(ci * h * w + ky * dh * w + kx * dw, ky * dh, kx * dw, G.padded(kc, bk[0]))}
    phases = data_phases(h, w, og, kh, kw, stride, pad, dilation, out_hw)
    tw, tb, kt, wofs = [], [], 0, 0
    for p in phases:
        t = np.array(p["taps"], np.int64).reshape(-1, 5)
        size = G.padded(len(t), bk[1])
        oc, y, x, a, b = t.T
        tb.append(G.pack(oc * ho * wo + a * wo + b, a, b, size))
        # weights of the phase, (G, Cgp, size): w[g*og + oc, ci, ky, kx] at [g, ci, k]
        idx = np.full((groups, G.padded(cg, rows_d), size), -1, np.int64)
        g_, ci_ = np.arange(groups)[:, None, None], np.arange(cg)[None, :, None]
        idx[:, :cg, : len(t)] = (g_ * og + oc[None, None, :]) * kc + ci_ * kh * kw + y * kw + x
        tw.append(idx.reshape(-1))
        p.update(kt0=kt, kp=len(t), wofs=wofs, kpp=size)
        kt += size
        wofs += idx.size
    out["data_b"] = np.concatenate(tb) if kt else G.pack([], [], [], bk[1])
    out["data_w"] = (np.concatenate(tw) if wofs else np.full(1, -1)).astype(np.int32)
    out["phases"] = phases
    pix = np.arange(ho * wo)
    oy, ox = pix // wo, pix % wo
    hwpad = G.padded(ho * wo, bk[2])
    out["w_b"] = G.pack(oy * sh * w + ox * sw, oy * sh, ox * sw, hwpad)
    return out


def weight_splits(slices: int, tiles: int, threads: int, unit: int = 1) -> tuple[int, int]:
    """(K slices per split, splits) of the weight gradient's `slices` (every image's Ho*Wo
    padded to BK): enough blocks of `threads` to fill the GPU, 264 blocks of 256 threads
    (2 per SM on 132 SMs) or as many threads in smaller blocks, with `tiles` output tiles;
    a split is a multiple of `unit` slices (the simulator: whole images, fewer blocks)."""
    want = max(1, (264 * 256 // threads) // tiles)  # at most one full wave of blocks
    chunk = -(-slices // max(1, min(slices, want)))
    chunk = -(-chunk // unit) * unit
    return chunk, -(-slices // chunk)


class ConvCUDA:
    """float32 convolution on the GPU for fixed shapes, with the activation fused in forward.

    Same arguments as ConvCPU plus the fused activation and an optional connection-table mask
    (O, Cg, 1, 1) applied to the weight gradient. Launch configurations, the kernels' geometry,
    their index tables and the split-K workspace are fixed here, once: the arrays passed later
    must have exactly the shapes given here.
    """

    def __init__(self, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, stride: Pair,
                 pad: Pair, dilation: Pair, groups: int, out_hw: Pair, bias: bool,
                 act_code: int = 4, act_params: tuple = (0.0, 0.0),
                 mask: np.ndarray | None = None) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops import gemm_cuda
        from netdsl.ops.activation import LINEAR
        from netdsl.ops.cudakit import Launch, cdiv, grid_1d, pick_tile, simulator
        from netdsl.ops.reduce_cuda import ChannelSumsCUDA

        if c % groups or o % groups:
            raise ValueError(f"channels {c} -> {o} do not divide into {groups} groups")
        ho, wo = out_hw
        cg, og = c // groups, o // groups
        kcols = cg * kh * kw
        npix = n * ho * wo
        self.bias = bias
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        phases = data_phases(h, w, og, kh, kw, stride, pad, dilation, out_hw)
        widest = max((n * p["tp"] * p["up"] for p in phases), default=1)
        t_f, t_d, t_w = pick_tile(og, npix), pick_tile(cg, widest), pick_tile(og, kcols)
        tabs = conv_tables(c, h, w, o, groups, kh, kw, stride, pad, dilation, out_hw,
                           (t_f[2], t_d[2], t_w[2]), t_d[0])  # fmt: skip
        # weight gradient split over K (runs of slices, across images): enough blocks to fill
        # the GPU
        tiles = cdiv(kcols, t_w[1]) * cdiv(og, t_w[0]) * groups
        spi = cdiv(ho * wo, t_w[2])  # K slices per image
        chunk, self.splits = weight_splits(n * spi, tiles, gemm_cuda.threads_of(t_w),
                                           spi if simulator() else 1)  # fmt: skip
        geo = tuple(int(v) for v in (n, c, h, w, o, groups, kh, kw, *stride, *pad, *dilation,
                                     ho, wo))  # fmt: skip

        def launch(name, grid, t, part=0, block=None, code=LINEAR):  # t: the tile config
            # only the forward kernel has the activation: the others are built with the linear
            # code, so that layers differing only in activation share them
            block = gemm_cuda.threads_of(t) if block is None else block
            return Launch(_cuda_kernels, name, grid, block, (*geo, part, *t, int(code)))

        dev = _cuda.to_device
        self.tab_f = dev(tabs["fwd"].reshape(-1))
        self._fwd = launch("conv_forward", (cdiv(npix, t_f[1]), cdiv(og, t_f[0]), groups), t_f,
                           code=act_code)  # fmt: skip
        self.tab_db = dev(tabs["data_b"].reshape(-1))
        self.perm = dev(tabs["data_w"])
        self.wp = _cuda.device_array(len(tabs["data_w"]), np.float32)  # permuted weights
        blocks, block = grid_1d(len(tabs["data_w"]))
        self._permute = launch("permute_weights", blocks, t_d, block=block)
        self._bwd_data = []  # a launch per phase with taps
        self._zero = None  # one launch zeroing the pixels of the phases without a tap
        for p in tabs["phases"]:
            cols = n * p["tp"] * p["up"]
            if cols == 0:
                continue  # no input pixel in this phase (an input smaller than the stride)
            if not p["taps"]:  # nothing reaches these pixels: zeros, no GEMM
                if self._zero is None:  # x: a plane's pixels; y: planes (strided)
                    block = grid_1d(h * w)[1]
                    grid = (cdiv(h * w, block), min(n * c, 4 if simulator() else 64))
                    self._zero = launch("zero_phases", grid, t_d, block=block)
                continue
            run = launch("conv_backward_data", (cdiv(cols, t_d[1]), cdiv(cg, t_d[0]), groups),
                         t_d, part=p["phase"])  # fmt: skip
            self._bwd_data.append(run)
        self.tab_wb = dev(tabs["w_b"].reshape(-1))
        grid_w = (cdiv(kcols, t_w[1]), cdiv(og, t_w[0]), groups * self.splits)
        self._bwd_w = launch("conv_backward_weights", grid_w, t_w, part=chunk)
        self.chunk = chunk
        self.ws = _cuda.device_array(self.splits * o * kcols, np.float32)  # (S, O, Cg*kh*kw)
        blocks, block = grid_1d(o * kcols)
        self._sum = launch("sum_splits", blocks, t_w, block=block)
        self._db = ChannelSumsCUDA(n, o, ho * wo)  # db (O,) = dy (N, O, Ho, Wo) summed
        full = np.ones((o, cg, kh, kw), np.float32) if mask is None else np.broadcast_to(
            np.asarray(mask, np.float32), (o, cg, kh, kw))  # fmt: skip
        self.mask = _cuda.to_device(np.ascontiguousarray(full).reshape(-1))  # (O*Cg*kh*kw,)
        self.has_mask = mask is not None
        self.no_b = _cuda.to_device(np.zeros(o, np.float32))  # (O,) stands in without bias

    def forward(self, x, w, b, y) -> None:
        """y = act(conv(x, w) + b). x (N, C, H, W), w (O, Cg, kh, kw), b (O,) or None,
        y (N, O, Ho, Wo): float32 device arrays."""
        bb = b if self.bias and b is not None else self.no_b
        self._fwd(x.reshape(-1), w.reshape(-1), bb, y.reshape(-1), self.tab_f,
                  self.bias and b is not None, *self.act_params)  # fmt: skip

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None). dy (N, O, Ho, Wo) is the
        gradient BEFORE the fused activation's output, i.e. already through act'."""
        dyf = dy.reshape(-1)
        if dx is not None:
            dxf = dx.reshape(-1)
            self._permute(w.reshape(-1), self.perm, self.wp)
            for run in self._bwd_data:
                run(dyf, self.wp, dxf, self.tab_db)
            if self._zero is not None:
                self._zero(dxf)
        self._bwd_w(dyf, x.reshape(-1), self.ws, self.tab_wb, self.chunk, self.splits)
        self._sum(self.ws, dw.reshape(-1), self.mask, self.has_mask, self.splits)
        if db is not None:
            self._db(dy, db)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class ConvCPURunner(Runner):
    shares_forward_kernels = True  # its backward compiles im2col and gemm too (compile_ahead)

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
        if not hasattr(plan, "conv_cpu_scratch"):  # one for all the plan's conv layers
            plan.conv_cpu_scratch = Scratch()
        # (s5-smallnets) a kernel covering the whole unpadded input (LeNet-5's C5) runs as the
        # fc product it is (netdsl/ops/conv_fc.py); every other conv through ConvCPU
        from netdsl.ops.conv_fc import whole_input

        self.op = whole_input(n, c, h, w, o, a)
        if self.op is None:
            self.op = ConvCPU(n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"],
                              a["dilation"], a["groups"], a["out_hw"], a["bias"],
                              plan.conv_cpu_scratch)  # fmt: skip
            self.op.reuse_forward_weights = True  # each backward follows a forward of the same w
        self.mask = plan.masks.get(layer.name)  # (O, C, 1, 1) for a connection table
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip
        if self.mask is not None:
            self.g["weight"] *= self.mask  # links absent from the table get no gradient


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class ConvCUDARunner(cuda_runner.LinearMapRunner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
        self.op = ConvCUDA(n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"], a["dilation"],
                           a["groups"], a["out_hw"], a["bias"], self.act_code, self.act_params,
                           plan.masks.get(layer.name))  # fmt: skip
