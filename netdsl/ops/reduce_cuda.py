"""Per-channel sums on the GPU, parallel over the channels AND over the batch and pixels.

A layer's bias gradient sums dy (N, C, H, W) over everything but the channel; batch norm
sums x and x^2 (forward) and two products of dy (backward) the same way. One block per
channel leaves most of an H100 idle and makes each block walk 800k values (ResNet-18's
first stage at batch 256), so the values of a channel are cut into `splits` chunks:

* **flat** (a plane of at least 32 pixels): grid (C, splits). Block (c, s) sums the s-th
  chunk of channel c's N*plane values, its threads striding over (image, pixel) with a
  counter and no division in the loop (a warp reads consecutive pixels), then reduces the
  block's partial sums by warp shuffles (cudakit.block_summer) into part[k, s, c];
* **columns** (plane < 32, e.g. an fc layer's (N, O) with plane 1): x viewed as (N, C*plane)
  rows; grid (column blocks, splits); a thread sums one column over the s-th chunk of rows
  (a warp reads 32 consecutive columns: coalesced) into part[k, s, column].

A second small kernel then combines part (K, splits, width) per channel in a fixed order
(splits outer, a channel's columns inner): no atomics, so two runs give the same bits.
Values are loaded as float32 and summed in float64 (the per-thread sums, the shuffles and
the combine), as the one-block kernels did.

:class:`ChannelSumsCUDA` is the bias gradient (conv and fc), built once with the layer::

    sums = ChannelSumsCUDA(n, o, ho * wo)   # conv: dy (N, O, Ho, Wo); an fc layer: (n, o, 1)
    sums(dy, db)                            # db (O,) float32 = dy summed per channel

:class:`Partition` is how a reduction is split (batch norm's kernels in
netdsl/ops/batchnorm.py use it too, with their own combine step). None of these kernels
fold a layer's sizes into their code: sizes are arguments, so one compilation serves every
layer of a plan. Each thread loads 4 values per loop step (4 loads in flight) with uint64
indices. In Numba's simulator the warp step is a shared-memory tree giving the same bits
(netdsl/ops/cudakit.py); tests/test_cuda_reduce.py runs both paths.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from netdsl.ops.codegen import generated
from netdsl.ops.cudakit import WARP, cdiv

# Splitting: enough blocks for ~8 resident 256-thread blocks on each of an H100's 132 SMs,
# but at least MIN_PER_THREAD values per thread (each block pays a reduction) and at most
# MAX_SPLITS chunks per channel (the combine step walks them serially).
GPU_BLOCKS, MIN_PER_THREAD, MIN_ROWS, MAX_SPLITS = 1024, 8, 8, 128
# The simulator runs each CUDA thread as a Python thread: few blocks (tests pass `splits`).
SIM_BLOCKS, SIM_MIN_PER_THREAD, SIM_MIN_ROWS = 4, 2, 2


class Partition:
    """How a per-channel reduction over x (n, c, plane) is cut into blocks.

    columns: True for the column path (plane < 32); splits: chunks per channel (flat) or
    row chunks (columns); per: partial sums per channel and split (plane on the column path,
    else 1); width: part's last axis (c * per); grid: the partial kernel's grid; args: the
    size arguments that follow the arrays in the partial kernels' calls.
    """

    def __init__(self, n: int, c: int, plane: int, threads: int, splits: int | None = None,
                 simulated: bool = False) -> None:  # fmt: skip
        n, c, plane = int(n), int(c), int(plane)
        if min(n, c, plane) < 1:
            raise ValueError(f"nothing to reduce: shape ({n}, {c}, {plane})")
        target, min_per_thread, min_rows = ((SIM_BLOCKS, SIM_MIN_PER_THREAD, SIM_MIN_ROWS)
                                            if simulated else
                                            (GPU_BLOCKS, MIN_PER_THREAD, MIN_ROWS))  # fmt: skip
        self.shape = (n, c, plane)
        self.columns = plane < WARP
        if self.columns:
            width = c * plane
            col_blocks = cdiv(width, threads)
            if splits is None:
                splits = min(cdiv(target, col_blocks), cdiv(n, min_rows), MAX_SPLITS)
            rchunk = cdiv(n, max(1, min(int(splits), n)))
            self.splits, self.per, self.width = cdiv(n, rchunk), plane, width
            self.grid = (col_blocks, self.splits)
            self.args = (width, n, rchunk, plane)
        else:
            count = n * plane
            if splits is None:
                splits = min(cdiv(target, c), cdiv(count, threads * min_per_thread), MAX_SPLITS)
            chunk = cdiv(count, max(1, min(int(splits), count)))
            cp = c * plane
            step_img, step_p = divmod(threads, plane)  # a thread's stride in (image, pixel)
            self.splits, self.per, self.width = cdiv(count, chunk), 1, c
            self.grid = (c, self.splits)  # C on x: no 65,535 limit
            self.args = (plane, count, chunk, cp, step_img * cp + step_p, step_p, cp - plane)
        self.threads = threads


# ---------------------------------------------------------------------------------------------
# The flat path's walk over a channel's values, as plain functions: the kernels use them as
# device functions, and tests/test_cuda_reduce.py runs them on the CPU against NumPy.
# ---------------------------------------------------------------------------------------------


def walk_begin(q, plane, cp, c):
    """(address, pixel) of value q (= image * plane + pixel) of channel c in x (N, C, plane)
    flat, cp = C * plane. The one division of a thread's walk (two: the kernels also take the
    address of the chunk's end, where the walk stops, as addresses grow with q)."""
    img = q // plane
    p = q - img * plane
    return img * cp + c * plane + p, p


def walk_next(addr, p, plane, jump, step_p, wrap):
    """(address, pixel) `threads` values further on: jump = (threads // plane) * cp +
    threads % plane, step_p = threads % plane, wrap = cp - plane (one more image when the
    pixel passes the plane's end; step_p < plane, so at most once)."""
    p += step_p
    addr += jump
    if p >= plane:
        p -= plane
        addr += wrap
    return addr, p


def combine(part, k, c, splits, per):
    """float64 sum of part[k, s, c*per + j] over s (outer) and j < per (inner): one channel's
    partial sums in a fixed order."""
    total = 0.0
    for s in range(splits):
        for j in range(per):
            total += part[k, s, c * per + j]
    return total


# ---------------------------------------------------------------------------------------------
# CUDA kernels, built on first use (see netdsl/ops/cudakit.py)
# ---------------------------------------------------------------------------------------------

# Accumulators start as float64(0.0), not 0.0: compiled, both are float64, but in the
# simulator a Python float plus a NumPy float32 is a float32 (NumPy 2), so a sum started at
# 0.0 would run in float32 there.

cuda = None  # numba.cuda, bound by the factories


@functools.cache
def device_helpers():
    """(walk_begin, walk_next, combine, u64): the first three as inlined device functions,
    u64 numba's uint64 (an array index of that type skips Numba's negative-index wraparound,
    a 64-bit compare and select per load). In the simulator: the plain functions and int
    (there calling a device function or a Numba cast costs microseconds, and these change
    no value: the indices are never negative)."""
    global cuda
    from numba import cuda, uint64

    from netdsl.ops.cudakit import simulator

    if simulator():
        return walk_begin, walk_next, combine, int
    jit = cuda.jit(device=True, inline="always")
    return jit(walk_begin), jit(walk_next), jit(combine), uint64


@generated("reduce")
def _cuda_kernels(threads: int, shuffles: bool):
    """Channel sums and batch norm's moments; `threads` per block (a multiple of 32),
    `shuffles`: warp shuffles (a GPU) or the shared-memory fallback (the simulator)."""
    global cuda
    from numba import cuda, float64

    from netdsl.ops.cudakit import block_summer

    block_total = block_summer(threads, shuffles)
    w_begin, w_next, comb, u64 = device_helpers()
    zero = np.float32(0.0)

    @cuda.jit
    def channel_sums_flat(x, part, plane, count, chunk, cp, jump, step_p, wrap):
        # grid (C, splits). x: (N*C*plane,) f32; part[0, s, c] = sum of chunk s of channel c
        c, s, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        addr, p = w_begin(s * chunk + t, plane, cp, c)
        stop, _ = w_begin(min(s * chunk + chunk, count), plane, cp, c)  # see walk_begin
        acc = float64(0.0)
        while addr < stop:  # 4 values a step: their loads are in flight together
            e1, p = w_next(addr, p, plane, jump, step_p, wrap)
            e2, p = w_next(e1, p, plane, jump, step_p, wrap)
            e3, p = w_next(e2, p, plane, jump, step_p, wrap)
            v0 = x[u64(addr)]
            v1 = x[u64(e1)] if e1 < stop else zero
            v2 = x[u64(e2)] if e2 < stop else zero
            v3 = x[u64(e3)] if e3 < stop else zero
            acc += v0
            acc += v1
            acc += v2
            acc += v3
            addr, p = w_next(e3, p, plane, jump, step_p, wrap)
        total = block_total(acc, buf, t)
        if t == 0:
            part[0, s, c] = total

    @cuda.jit
    def channel_sums_cols(x, part, width, rows, rchunk, plane):
        # grid (cdiv(width, threads), splits). x: (rows*width,) f32; part[0, s, j] = sum of
        # column j over row chunk s
        j, s = cuda.blockIdx.x * threads + cuda.threadIdx.x, cuda.blockIdx.y
        if j < width:
            acc = float64(0.0)
            e = s * rchunk * width + j  # row s * rchunk, column j
            stop = min(s * rchunk + rchunk, rows) * width
            while e < stop:  # 4 rows a step: their loads are in flight together
                v0 = x[u64(e)]
                v1 = x[u64(e + width)] if e + width < stop else zero
                v2 = x[u64(e + 2 * width)] if e + 2 * width < stop else zero
                v3 = x[u64(e + 3 * width)] if e + 3 * width < stop else zero
                acc += v0
                acc += v1
                acc += v2
                acc += v3
                e += 4 * width
            part[0, s, j] = acc

    @cuda.jit
    def bn_moments_flat(x, part, plane, count, chunk, cp, jump, step_p, wrap):
        # grid (C, splits). part[0, s, c] = sum of d, part[1, s, c] = sum of d*d over chunk s,
        # d = x - shift, shift = channel c's first value: the same shift in every block, so
        # the combine step's E[d^2] - E[d]^2 does not cancel (d is small when x is far from 0)
        c, s, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        s32 = x[c * plane]  # the shift, channel c's first value
        shift = float64(s32)
        addr, p = w_begin(s * chunk + t, plane, cp, c)
        stop, _ = w_begin(min(s * chunk + chunk, count), plane, cp, c)  # see walk_begin
        a1 = float64(0.0)
        a2 = float64(0.0)
        while addr < stop:  # 4 values a step; past the chunk's end d = 0
            e1, p = w_next(addr, p, plane, jump, step_p, wrap)
            e2, p = w_next(e1, p, plane, jump, step_p, wrap)
            e3, p = w_next(e2, p, plane, jump, step_p, wrap)
            d0 = x[u64(addr)] - shift
            d1 = (x[u64(e1)] if e1 < stop else s32) - shift
            d2 = (x[u64(e2)] if e2 < stop else s32) - shift
            d3 = (x[u64(e3)] if e3 < stop else s32) - shift
            a1 += d0
            a2 += d0 * d0
            a1 += d1
            a2 += d1 * d1
            a1 += d2
            a2 += d2 * d2
            a1 += d3
            a2 += d3 * d3
            addr, p = w_next(e3, p, plane, jump, step_p, wrap)
        a1 = block_total(a1, buf, t)
        a2 = block_total(a2, buf, t)
        if t == 0:
            part[0, s, c] = a1
            part[1, s, c] = a2

    @cuda.jit
    def bn_moments_cols(x, part, width, rows, rchunk, plane):
        # grid (cdiv(width, threads), splits): the column path of bn_moments_flat
        j, s = cuda.blockIdx.x * threads + cuda.threadIdx.x, cuda.blockIdx.y
        if j < width:
            s32 = x[(j // plane) * plane]  # the shift: image 0, pixel 0 of j's channel
            shift = float64(s32)
            a1 = float64(0.0)
            a2 = float64(0.0)
            e = s * rchunk * width + j
            stop = min(s * rchunk + rchunk, rows) * width
            while e < stop:  # 4 rows a step; past the chunk's end d = 0
                d0 = x[u64(e)] - shift
                d1 = (x[u64(e + width)] if e + width < stop else s32) - shift
                d2 = (x[u64(e + 2 * width)] if e + 2 * width < stop else s32) - shift
                d3 = (x[u64(e + 3 * width)] if e + 3 * width < stop else s32) - shift
                a1 += d0
                a2 += d0 * d0
                a1 += d1
                a2 += d1 * d1
                a1 += d2
                a2 += d2 * d2
                a1 += d3
                a2 += d3 * d3
                e += 4 * width
            part[0, s, j] = a1
            part[1, s, j] = a2

    @cuda.jit
    def sums_finish(part, out, channels, splits, per):
        # out[c] = float32 of channel c's partial sums part[0], combined in a fixed order
        for c in range(cuda.grid(1), channels, cuda.gridsize(1)):
            out[c] = comb(part, 0, c, splits, per)

    return types.SimpleNamespace(
        channel_sums_flat=channel_sums_flat,
        channel_sums_cols=channel_sums_cols,
        bn_moments_flat=bn_moments_flat,
        bn_moments_cols=bn_moments_cols,
        sums_finish=sums_finish,
    )


@generated("reduce_grad")
def _grad_kernels(threads: int, shuffles: bool, code: int, p0: float, p1: float):
    """Batch norm's gradient sums through a fused activation (code, its params p0, p1)."""
    global cuda
    from numba import cuda, float64

    from netdsl.ops.activation import cuda_element_math
    from netdsl.ops.cudakit import block_summer

    _, act_grad = cuda_element_math()
    ap0, ap1 = np.float32(p0), np.float32(p1)
    block_total = block_summer(threads, shuffles)
    w_begin, w_next, _, u64 = device_helpers()
    zero = np.float32(0.0)

    @cuda.jit(device=True, inline="always")
    def term(dy, y, x, mu, e, stop):
        # (dz, x - mean) at address e, dz = dy * act'(y); (0, 0) past the chunk's end
        if e < stop:
            i = u64(e)
            return dy[i] * act_grad(y[i], code, ap0, ap1), x[i] - mu
        return zero, zero

    @cuda.jit
    def bn_grad_flat(dy, y, x, mean, part, plane, count, chunk, cp, jump, step_p, wrap):
        # grid (C, splits). dz = dy * act'(y); part[0, s, c] = sum dz, part[1, s, c] =
        # sum dz * (x - mean[c]) over chunk s of channel c
        c, s, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        mu = mean[c]
        addr, p = w_begin(s * chunk + t, plane, cp, c)
        stop, _ = w_begin(min(s * chunk + chunk, count), plane, cp, c)  # see walk_begin
        a1 = float64(0.0)
        a2 = float64(0.0)
        while addr < stop:  # 4 values a step: their loads are in flight together
            e1, p = w_next(addr, p, plane, jump, step_p, wrap)
            e2, p = w_next(e1, p, plane, jump, step_p, wrap)
            e3, p = w_next(e2, p, plane, jump, step_p, wrap)
            d0, c0 = term(dy, y, x, mu, addr, stop)
            d1, c1 = term(dy, y, x, mu, e1, stop)
            d2, c2 = term(dy, y, x, mu, e2, stop)
            d3, c3 = term(dy, y, x, mu, e3, stop)
            a1 += d0
            a2 += d0 * c0
            a1 += d1
            a2 += d1 * c1
            a1 += d2
            a2 += d2 * c2
            a1 += d3
            a2 += d3 * c3
            addr, p = w_next(e3, p, plane, jump, step_p, wrap)
        a1 = block_total(a1, buf, t)
        a2 = block_total(a2, buf, t)
        if t == 0:
            part[0, s, c] = a1
            part[1, s, c] = a2

    @cuda.jit
    def bn_grad_cols(dy, y, x, mean, part, width, rows, rchunk, plane):
        # grid (cdiv(width, threads), splits): the column path of bn_grad_flat
        j, s = cuda.blockIdx.x * threads + cuda.threadIdx.x, cuda.blockIdx.y
        if j < width:
            mu = mean[j // plane]
            a1 = float64(0.0)
            a2 = float64(0.0)
            e = s * rchunk * width + j
            stop = min(s * rchunk + rchunk, rows) * width
            while e < stop:  # 4 rows a step: their loads are in flight together
                d0, c0 = term(dy, y, x, mu, e, stop)
                d1, c1 = term(dy, y, x, mu, e + width, stop)
                d2, c2 = term(dy, y, x, mu, e + 2 * width, stop)
                d3, c3 = term(dy, y, x, mu, e + 3 * width, stop)
                a1 += d0
                a2 += d0 * c0
                a1 += d1
                a2 += d1 * c1
                a1 += d2
                a2 += d2 * c2
                a1 += d3
                a2 += d3 * c3
                e += 4 * width
            part[0, s, j] = a1
            part[1, s, j] = a2

    return types.SimpleNamespace(bn_grad_flat=bn_grad_flat, bn_grad_cols=bn_grad_cols)


def launch_config() -> tuple[int, bool, bool]:
    """(threads, shuffles, simulated) for kernels built now."""
    from netdsl.ops.cudakit import SIM_THREADS, THREADS, simulator, use_shuffles

    simulated = simulator()
    return (SIM_THREADS if simulated else THREADS), use_shuffles(), simulated


class ChannelSumsCUDA:
    """out[c] = sum of x[:, c, :] for x (n, c, plane) float32 on the device (any view with
    that many elements, C-contiguous: (N, C, H, W) with plane = H*W, or (N, C) with plane 1);
    out: (c,) float32, overwritten. The conv and fc bias gradients.

    Built once per layer (the launches and the (splits, c) float64 workspace are fixed here);
    `splits` forces the number of chunks per channel (tests), else it is chosen to fill the
    GPU. Deterministic: the same x gives the same bits, run after run.
    """

    def __init__(self, n: int, c: int, plane: int, splits: int | None = None,
                 shuffles: bool | None = None, threads: int | None = None) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops.cudakit import Launch, grid_1d

        t0, s0, simulated = launch_config()
        threads = t0 if threads is None else int(threads)
        shuffles = s0 if shuffles is None else bool(shuffles)
        self.part_of = Partition(n, c, plane, threads, splits, simulated)
        pt = self.part_of
        self.part = _cuda.device_array((1, pt.splits, pt.width), np.float64)
        cfg = (threads, shuffles)
        name = "channel_sums_cols" if pt.columns else "channel_sums_flat"
        self._partial = Launch(_cuda_kernels, name, pt.grid, threads, cfg)
        self._finish = Launch(_cuda_kernels, "sums_finish", *grid_1d(c), cfg)
        self.channels = int(c)

    def __call__(self, x, out) -> None:
        """out (C,) = the per-channel sums of x (N, C, plane), both float32 device arrays."""
        pt = self.part_of
        self._partial(x.reshape(-1), self.part, *pt.args)
        self._finish(self.part, out, self.channels, pt.splits, pt.per)
