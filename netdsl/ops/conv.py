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
import types
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations
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
# product ran 1.2x faster).
TRANSPOSED_DW_OG = 256
# The wide layout (stride 1; see conv_cpu) computes (Wp - Wo) garbage columns per output row
# to copy contiguous runs instead of gathering: worth it while Og * (Wp - Wo) <= this * Wo.
WIDE_MAX = 16


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
            buf = self._bufs[key] = np.zeros(max(size, 1), np.float32)
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

        All arrays C-contiguous. Nothing from the forward is reused: any x may be passed.
        """
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
# Implicit GEMM: no im2col matrix is ever stored. Per group g (grid z), with K = Cg*kh*kw and
# the batch's output pixels as columns:
#   forward    y[o, (n,p)]  = sum_k w[o, k] * col[k, (n,p)]        + bias, activation fused
#   data grad  dx[c, (n,q)] = sum_(o,ky,kx) w[o, c, ky, kx] * dy[o, (n, tap)]
#   weight grad dw[o, k]    = sum_(n,p) dy[o, (n,p)] * col[k, (n,p)]  split over S slices of
#                             (n,p) into a workspace, then summed in a fixed order (no atomics)
# where col[k, (n,p)] is the input tap of filter element k for output pixel p of image n,
# gathered straight from x into shared memory (zero in the padding). Tiles and the register
# step are netdsl.ops.cudakit's.
#
# Every kernel is compiled for one layer: its whole geometry (batch, channels, sizes, kernel,
# stride, padding, dilation, groups, the weight-gradient split), the tile config and the fused
# activation are arguments of the cached factory, and the kernels close over them. Numba
# freezes closure ints into the code, so the index arithmetic's divisions and modulos by
# Ho*Wo, Wo, kh*kw and kw become multiply-shift sequences (or vanish, for a stride of 1), loop
# bounds and bounds checks are constants, and no geometry is passed or read at run time. The
# price: one compilation per distinct layer geometry, on the layer's first use (five kernels
# per convolution, less than a second each), where one per tile config served every layer.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@functools.cache
def _cuda_kernels(n: int, c: int, h: int, wi: int, o: int, groups: int, kh: int, kw: int,
                  sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int, wo: int,
                  chunk: int, bm: int, bn: int, bk: int, tm: int, tn: int, code: int,
                  threads: int):  # fmt: skip
    """The kernels of one layer: x (n, c, h, wi) -> y (n, o, ho, wo) with a (kh, kw) kernel,
    stride (sh, sw), top/left padding (ph, pw), dilation (dh, dw) and `groups`; the weight
    gradient sums `chunk` output pixels per split; tile (bm, bn, bk, tm, tn); activation `code`;
    `threads` (a power of two) per block of bias_grad.

    The activation code is a constant too: with a run-time code, the five-way branch copied
    into every cell of the unrolled epilogue made NVVM give up unrolling it, and the
    accumulator tile went to local memory.
    """
    global cuda
    from numba import cuda, float32, float64, int64, uint32

    from netdsl.ops.activation import cuda_element_math
    from netdsl.ops.cudakit import block_reducer, gemm_tile, simulator

    act, _ = cuda_element_math()
    fma_tile = gemm_tile(bm, bn, bk, tm, tn)
    block_sum = block_reducer(threads)
    tx_n, ty_n = bn // tn, bm // tm
    nt = tx_n * ty_n  # threads per block
    cg, og = c // groups, o // groups  # input and output channels per group
    kcols = cg * kh * kw  # K
    npix = n * ho * wo  # output pixels of the batch: the forward GEMM's columns
    splits = -(-npix // chunk)  # weight-gradient slices of the pixels, chunk a multiple of BK

    if simulator():
        # The simulator runs kernels as Python, where calling a device function swaps the
        # cuda module in and out of its globals and a Numba integer cast builds a NumPy
        # scalar (microseconds each): the helpers below made the conv tests 2-3x slower. They
        # use no cuda and their casts change no value (see unravel): plain functions there.
        device, u32, i64 = (lambda f: f), int, int
    else:
        device, u32, i64 = cuda.jit(device=True, inline="always"), uint32, int64

    @device
    def unravel(i, rows, cols):
        # flat index i of an (*, rows, cols) array -> its 3 indices; rows and cols are the
        # factory's constants. i is a pixel or filter index, never negative and far below
        # 2**32: in unsigned 32 bits a division by a constant is a multiply-high and a shift,
        # in int64 a 64-bit multiply-high (several instructions) with floor corrections. The
        # results are int64 again, so taps that fall in the padding go negative, not wrap.
        u, plane, row = u32(i), u32(rows * cols), u32(cols)
        return i64(u // plane), i64((u % plane) // row), i64(u % row)

    @device
    def input_tap(x, g, k, col):
        # col[k, col] of group g: x at filter element k = (c, ky, kx) for output pixel `col`
        # = (n, oy, ox) of the batch, zero in the padding (forward and weight grad read it)
        ci, ky, kx = unravel(k, kh, kw)
        im, oy, ox = unravel(col, ho, wo)
        iy = oy * sh - ph + ky * dh
        ix = ox * sw - pw + kx * dw
        if iy >= 0 and iy < h and ix >= 0 and ix < wi:
            return x[im, g * cg + ci, iy, ix]
        return float32(0.0)

    @cuda.jit
    def conv_forward(x, w, b, y, has_bias, p0, p1):
        # x (N, C, H, W), w (O, Cg, kh, kw), b (O,), y (N, O, Ho, Wo), all f32.
        # grid (cdiv(N*Ho*Wo, BN), cdiv(Og, BM), G), block (BN/TN, BM/TM)
        tx, ty, g = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        tid = ty * tx_n + tx
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        As = cuda.shared.array((bk, bm), float32)
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)  # registers (see gemm_tile)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0.0
        for k0 in range(0, kcols, bk):
            for e in range(tid, bm * bk, nt):  # weights: consecutive threads, consecutive k
                r, kq = e // bk, e % bk
                oc, k = m0 + r, k0 + kq
                v = float32(0.0)
                if oc < og and k < kcols:
                    ci, ky, kx = unravel(k, kh, kw)
                    v = w[g * og + oc, ci, ky, kx]
                As[kq, r] = v
            for e in range(tid, bk * bn, nt):  # input taps: consecutive threads, pixels
                kq, q = e // bn, e % bn
                col, k = n0 + q, k0 + kq
                v = float32(0.0)
                if col < npix and k < kcols:
                    v = input_tap(x, g, k, col)
                Bs[kq, q] = v
            cuda.syncthreads()
            fma_tile(As, Bs, acc, tx, ty)
            cuda.syncthreads()
        for i in range(tm):
            oc = m0 + ty + i * ty_n
            if oc < og:
                bias = b[g * og + oc] if has_bias else float32(0.0)
                for j in range(tn):
                    col = n0 + tx + j * tx_n
                    if col < npix:
                        im, oy, ox = unravel(col, ho, wo)
                        y[im, g * og + oc, oy, ox] = act(acc[i, j] + bias, code, p0, p1)

    @cuda.jit
    def conv_backward_data(dy, w, dx):
        # dy (N, O, Ho, Wo), w (O, Cg, kh, kw), dx (N, C, H, W) overwritten.
        # grid (cdiv(N*H*W, BN), cdiv(Cg, BM), G); rows are input channels of group g,
        # K runs over (o, ky, kx), and a tap that no output reads contributes zero.
        tx, ty, g = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        tid = ty * tx_n + tx
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        As = cuda.shared.array((bk, bm), float32)
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)  # registers (see gemm_tile)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0.0
        for k0 in range(0, og * kh * kw, bk):
            for e in range(tid, bm * bk, nt):
                r, kq = e // bk, e % bk
                ci, k = m0 + r, k0 + kq
                v = float32(0.0)
                if ci < cg and k < og * kh * kw:
                    oc, ky, kx = unravel(k, kh, kw)
                    v = w[g * og + oc, ci, ky, kx]
                As[kq, r] = v
            for e in range(tid, bk * bn, nt):
                kq, q = e // bn, e % bn
                col, k = n0 + q, k0 + kq
                v = float32(0.0)
                if col < n * h * wi and k < og * kh * kw:
                    im, iy, ix = unravel(col, h, wi)
                    oc, ky, kx = unravel(k, kh, kw)
                    oy = iy + ph - ky * dh  # = i * sh for the output row i
                    ox = ix + pw - kx * dw
                    if oy >= 0 and ox >= 0 and oy % sh == 0 and ox % sw == 0:
                        oy //= sh
                        ox //= sw
                        if oy < ho and ox < wo:
                            v = dy[im, g * og + oc, oy, ox]
                Bs[kq, q] = v
            cuda.syncthreads()
            fma_tile(As, Bs, acc, tx, ty)
            cuda.syncthreads()
        for i in range(tm):
            ci = m0 + ty + i * ty_n
            if ci < cg:
                for j in range(tn):
                    col = n0 + tx + j * tx_n
                    if col < n * h * wi:
                        im, iy, ix = unravel(col, h, wi)
                        dx[im, g * cg + ci, iy, ix] = acc[i, j]

    @cuda.jit
    def conv_backward_weights(dy, x, ws):
        # dy (N, O, Ho, Wo), x (N, C, H, W), ws (S, O, Cg*kh*kw) partial sums out.
        # grid (cdiv(Cg*kh*kw, BN), cdiv(Og, BM), G*S): block z = g*S + s sums the output
        # pixels [s*chunk, (s+1)*chunk) of the batch.
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * tx_n + tx
        g, s = cuda.blockIdx.z // splits, cuda.blockIdx.z % splits
        r_lo = s * chunk
        r_hi = min(npix, r_lo + chunk)
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        As = cuda.shared.array((bk, bm), float32)
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)  # registers (see gemm_tile)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0.0
        for k0 in range(r_lo, r_hi, bk):
            for e in range(tid, bm * bk, nt):  # dy: consecutive threads, consecutive pixels
                r, kq = e // bk, e % bk
                oc, col = m0 + r, k0 + kq
                v = float32(0.0)
                if oc < og and col < r_hi:
                    im, oy, ox = unravel(col, ho, wo)
                    v = dy[im, g * og + oc, oy, ox]
                As[kq, r] = v
            for e in range(tid, bk * bn, nt):
                q, kq = e // bk, e % bk  # pixel fastest: neighbouring threads, neighbouring x
                k, col = n0 + q, k0 + kq
                v = float32(0.0)
                if k < kcols and col < r_hi:
                    v = input_tap(x, g, k, col)
                Bs[kq, q] = v
            cuda.syncthreads()
            fma_tile(As, Bs, acc, tx, ty)
            cuda.syncthreads()
        for i in range(tm):
            oc = m0 + ty + i * ty_n
            if oc < og:
                for j in range(tn):
                    k = n0 + tx + j * tx_n
                    if k < kcols:
                        ws[s, g * og + oc, k] = acc[i, j]

    @cuda.jit
    def sum_splits(ws, out, mask, has_mask):
        # ws (S, O, K) -> out (O*K,) = sum over S in order, times mask (O*K,) for a table
        for e in range(cuda.grid(1), o * kcols, cuda.gridsize(1)):
            oc, k = e // kcols, e % kcols
            v = ws[0, oc, k]
            for s in range(1, splits):
                v += ws[s, oc, k]
            out[e] = v * mask[e] if has_mask else v

    @cuda.jit
    def bias_grad(dy, db):
        # grid = O blocks of `threads`: db[o] = sum of dy[:, o] (float64 partial sums)
        oc, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        total = 0.0
        for col in range(t, npix, threads):
            im, oy, ox = unravel(col, ho, wo)
            total += dy[im, oc, oy, ox]
        buf[t] = total
        total = block_sum(buf, t)
        if t == 0:
            db[oc] = total

    return types.SimpleNamespace(conv_forward=conv_forward, conv_backward_data=conv_backward_data,
                                 conv_backward_weights=conv_backward_weights,
                                 sum_splits=sum_splits, bias_grad=bias_grad)  # fmt: skip


# netdsl.backends.cuda_ptx compiles only a few geometries of each kernel (per tile config,
# layout and activation): the first 17 arguments are sizes, which decide no branch alone
_cuda_kernels.geometry_args = 17


class ConvCUDA:
    """float32 convolution on the GPU for fixed shapes, with the activation fused in forward.

    Same arguments as ConvCPU plus the fused activation and an optional connection-table mask
    (O, Cg, 1, 1) applied to the weight gradient. Launch configurations, the kernels' geometry
    and the split-K workspace are fixed here, once: the arrays passed later must have exactly
    the shapes given here.
    """

    def __init__(self, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, stride: Pair,
                 pad: Pair, dilation: Pair, groups: int, out_hw: Pair, bias: bool,
                 act_code: int = 4, act_params: tuple = (0.0, 0.0),
                 mask: np.ndarray | None = None) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops.activation import LINEAR
        from netdsl.ops.cudakit import (
            SIM_THREADS,
            THREADS,
            Launch,
            cdiv,
            grid_1d,
            pick_tile,
            simulator,
        )

        if c % groups or o % groups:
            raise ValueError(f"channels {c} -> {o} do not divide into {groups} groups")
        ho, wo = out_hw
        cg, og = c // groups, o // groups
        kcols = cg * kh * kw
        self.bias = bias
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        t_f, t_d, t_w = pick_tile(og), pick_tile(cg), pick_tile(og)
        # split-K for the weight gradient: enough blocks to fill the GPU, each summing at least
        # 8 BK-deep slices of the N*Ho*Wo pixels
        npix, bk = n * ho * wo, t_w[2]
        tiles = cdiv(kcols, t_w[1]) * cdiv(og, t_w[0]) * groups
        splits = max(1, min(cdiv(264, tiles), cdiv(npix, 8 * bk)))
        chunk = cdiv(cdiv(npix, splits), bk) * bk
        splits = cdiv(npix, chunk)
        geo = tuple(int(v) for v in (n, c, h, w, o, groups, kh, kw, *stride, *pad, *dilation,
                                     ho, wo, chunk))  # fmt: skip

        threads = SIM_THREADS if simulator() else THREADS  # per block of bias_grad

        def launch(name, grid, t, block=None, code=LINEAR):  # t: the tile config
            # only the forward kernel has the activation: the others are built with the linear
            # code, so that layers differing only in activation share them
            block = (t[1] // t[4], t[0] // t[3]) if block is None else block
            return Launch(_cuda_kernels, name, grid, block, (*geo, *t, int(code), threads))

        grid_f = (cdiv(npix, t_f[1]), cdiv(og, t_f[0]), groups)
        self._fwd = launch("conv_forward", grid_f, t_f, code=act_code)
        grid_d = (cdiv(n * h * w, t_d[1]), cdiv(cg, t_d[0]), groups)
        self._bwd_data = launch("conv_backward_data", grid_d, t_d)
        grid_w = (cdiv(kcols, t_w[1]), cdiv(og, t_w[0]), groups * splits)
        self._bwd_w = launch("conv_backward_weights", grid_w, t_w)
        self.ws = _cuda.device_array((splits, o, kcols), np.float32)  # (S, O, Cg*kh*kw)
        blocks, block = grid_1d(o * kcols)
        self._sum = launch("sum_splits", blocks, t_w, block)
        self._db = launch("bias_grad", o, t_w, threads)
        full = np.ones((o, cg, kh, kw), np.float32) if mask is None else np.broadcast_to(
            np.asarray(mask, np.float32), (o, cg, kh, kw))  # fmt: skip
        self.mask = _cuda.to_device(np.ascontiguousarray(full).reshape(-1))  # (O*Cg*kh*kw,)
        self.has_mask = mask is not None
        self.no_b = _cuda.to_device(np.zeros(o, np.float32))  # (O,) stands in without bias

    def forward(self, x, w, b, y) -> None:
        """y = act(conv(x, w) + b). x (N, C, H, W), w (O, Cg, kh, kw), b (O,) or None,
        y (N, O, Ho, Wo): float32 device arrays."""
        bb = b if self.bias and b is not None else self.no_b
        self._fwd(x, w, bb, y, self.bias and b is not None, *self.act_params)

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None). dy (N, O, Ho, Wo) is the
        gradient BEFORE the fused activation's output, i.e. already through act'."""
        if dx is not None:
            self._bwd_data(dy, w, dx)
        self._bwd_w(dy, x, self.ws)
        self._sum(self.ws, dw.reshape(-1), self.mask, self.has_mask)
        if db is not None:
            self._db(dy, db)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class ConvCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
        if not hasattr(plan, "conv_cpu_scratch"):  # one for all the plan's conv layers
            plan.conv_cpu_scratch = Scratch()
        self.op = ConvCPU(n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"], a["dilation"],
                          a["groups"], a["out_hw"], a["bias"], plan.conv_cpu_scratch)  # fmt: skip
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
