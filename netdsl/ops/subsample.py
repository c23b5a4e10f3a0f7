"""LeNet-1998 trainable subsampling: a per-channel scaled window sum plus a per-channel bias.

    y[n, c, i, j] = coef[c] * sum of x[n, c] over window (i, j) + bias[c]

Shapes: x (N, C, H, W), coef (C,), bias (C,), y (N, C, Ho, Wo). Windows follow pooling's
rule (netdsl.ops.pool): output (i, j) covers input rows [i*sh - ph, i*sh - ph + kh) and
columns [j*sw - pw, j*sw - pw + kw); taps outside the input are ignored. LeNet-5 uses a
2x2 window at stride 2 (followed by a sigmoid-like activation, a separate op).
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations, pool
from netdsl.ops.codegen import generated
from netdsl.ops.conv import PARALLEL_MIN_WORK, Workers, num_threads, split
from netdsl.ops.jit import kernel
from netdsl.ops.pool import fast_extent, window_range

Pair = tuple[int, int]

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(
    x: np.ndarray,  # (N, C, H, W)
    coef: np.ndarray,  # (C,)
    bias: np.ndarray,  # (C,)
    kernel: Pair,
    stride: Pair,
    pad: Pair,
    out_hw: Pair,
) -> np.ndarray:
    """Reference subsampling in float64 -> y (N, C, Ho, Wo)."""
    s = pool.ref_forward(x, "sum", kernel, stride, pad, out_hw)  # (N, C, Ho, Wo) window sums
    coef = np.asarray(coef, dtype=np.float64)[None, :, None, None]
    return coef * s + np.asarray(bias, dtype=np.float64)[None, :, None, None]


def ref_backward(
    dy: np.ndarray,  # (N, C, Ho, Wo)
    x: np.ndarray,  # (N, C, H, W)
    coef: np.ndarray,  # (C,)
    kernel: Pair,
    stride: Pair,
    pad: Pair,
    out_hw: Pair,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference gradients in float64 -> (dx (N, C, H, W), dcoef (C,), dbias (C,))."""
    dy = np.asarray(dy, dtype=np.float64)
    s = pool.ref_forward(x, "sum", kernel, stride, pad, out_hw)  # (N, C, Ho, Wo)
    ds = dy * np.asarray(coef, dtype=np.float64)[None, :, None, None]  # d loss / d window sum
    dx = pool.ref_backward(ds, x, "sum", kernel, stride, pad, out_hw)
    return dx, (dy * s).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels: plane-range workers (x viewed as (N*C, H, W), plane pl has channel
# pl % C) run by conv.Workers; the parameter gradients are summed per plane and then over
# planes in a fixed order. geo = (kh, kw, sh, sw, ph, pw); 2x2 windows at stride 2 take the
# fixed-size fast path described in netdsl.ops.pool.
# ---------------------------------------------------------------------------------------------


@kernel(nogil=True, fastmath=True)
def _sub_forward_planes(p0, p1, x, coef, bias, y, geo):
    """y[p0:p1] = coef * window sum + bias. x (P, H, W), coef (C,), bias (C,), y (P, Ho, Wo)."""
    kh, kw, sh, sw, ph, pw = geo
    h, w = x.shape[1], x.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    hf, wf = fast_extent(geo, h, w, ho, wo)
    nc = coef.shape[0]
    for pl in range(p0, p1):
        xp, yp = x[pl], y[pl]  # (H, W), (Ho, Wo)
        a, b = coef[pl % nc], bias[pl % nc]  # this plane's channel parameters
        for i in range(hf):
            for j in range(wf):
                s = (xp[2 * i, 2 * j] + xp[2 * i, 2 * j + 1]) + (
                    xp[2 * i + 1, 2 * j] + xp[2 * i + 1, 2 * j + 1]
                )
                yp[i, j] = a * s + b
        for i in range(ho):
            r0, r1 = window_range(i, kh, sh, ph, h)
            for j in range(wf if i < hf else 0, wo):  # outputs the fast path did not cover
                c0, c1 = window_range(j, kw, sw, pw, w)
                s = np.float32(0.0)
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        s += xp[r, c]
                yp[i, j] = a * s + b


@kernel(nogil=True, fastmath=True)
def _sub_backward_planes(p0, p1, dy, x, coef, dx, want_dx, part, geo):
    """dx[p0:p1] (if want_dx) and part[p0:p1] = (sum dy * window sum, sum dy) per plane.

    dy (P, Ho, Wo), x (P, H, W), coef (C,), dx (P, H, W) (or a dummy), part (P, 2).
    """
    kh, kw, sh, sw, ph, pw = geo
    h, w = x.shape[1], x.shape[2]
    ho, wo = dy.shape[1], dy.shape[2]
    hf, wf = fast_extent(geo, h, w, ho, wo)
    nc = coef.shape[0]
    # the 2x2 windows (disjoint) of the fast path write every input's gradient once: then dx
    # needs no zeroing first and they store rather than add (s2: 0.37 -> 0.25 ms, 1 thread)
    tiled = 2 * hf == h and 2 * wf == w
    for pl in range(p0, p1):
        xp, gp, dp = x[pl], dy[pl], dx[pl if want_dx else 0]  # (H, W), (Ho, Wo), (H, W)
        a = coef[pl % nc]
        if want_dx and not tiled:
            dp[:] = 0.0
        sc, sb = np.float32(0.0), np.float32(0.0)  # plane sums for dcoef and dbias
        for i in range(hf):
            for j in range(wf):
                g = gp[i, j]
                s = (xp[2 * i, 2 * j] + xp[2 * i, 2 * j + 1]) + (
                    xp[2 * i + 1, 2 * j] + xp[2 * i + 1, 2 * j + 1]
                )
                sc += g * s
                sb += g
                if want_dx:  # disjoint windows: each input once
                    dp[2 * i, 2 * j] = a * g
                    dp[2 * i, 2 * j + 1] = a * g
                    dp[2 * i + 1, 2 * j] = a * g
                    dp[2 * i + 1, 2 * j + 1] = a * g
        for i in range(ho):
            r0, r1 = window_range(i, kh, sh, ph, h)
            for j in range(wf if i < hf else 0, wo):
                c0, c1 = window_range(j, kw, sw, pw, w)
                g = gp[i, j]
                s = np.float32(0.0)
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        s += xp[r, c]
                        if want_dx:
                            dp[r, c] += a * g
                sc += g * s
                sb += g
        part[pl, 0] = sc
        part[pl, 1] = sb


class SubsampleCPU:
    """float32 trainable subsampling on the CPU for fixed shapes."""

    def __init__(
        self, n: int, c: int, h: int, w: int, kernel: Pair, stride: Pair, pad: Pair, out_hw: Pair
    ) -> None:
        self.c, self.planes = c, n * c
        self.geo = (*kernel, *stride, *pad)
        work = n * c * max(h * w, out_hw[0] * out_hw[1] * kernel[0] * kernel[1])
        nt = 1 if work < PARALLEL_MIN_WORK else min(num_threads(), self.planes)
        self.workers = Workers(nt)
        self.jobs = split(self.planes, self.workers.n)  # each worker's [first, last) plane
        self.part = np.zeros((n, c, 2), np.float32)  # (N, C, 2) per-plane gradient sums
        self.no_dx = np.zeros((1, h, w), np.float32)  # stands in for dx when not wanted

    def forward(
        self,
        x: np.ndarray,  # (N, C, H, W) float32
        coef: np.ndarray,  # (C,) float32
        bias: np.ndarray,  # (C,) float32
        y: np.ndarray,  # (N, C, Ho, Wo) float32, written
    ) -> None:
        """y = coef * window sum of x + bias."""
        x3 = x.reshape(self.planes, x.shape[2], x.shape[3])  # (N*C, H, W) view
        y3 = y.reshape(self.planes, y.shape[2], y.shape[3])  # (N*C, Ho, Wo) view
        jobs = [(p0, p1, x3, coef, bias, y3, self.geo) for p0, p1 in self.jobs]
        self.workers.run(_sub_forward_planes, jobs)

    def backward(
        self,
        dy: np.ndarray,  # (N, C, Ho, Wo) float32
        x: np.ndarray,  # (N, C, H, W) float32, the forward input
        coef: np.ndarray,  # (C,) float32
        dx: np.ndarray | None,  # (N, C, H, W) float32 overwritten, or None to skip
        dcoef: np.ndarray,  # (C,) float32, overwritten
        dbias: np.ndarray,  # (C,) float32, overwritten
    ) -> None:
        """Overwrite dx (unless None), dcoef and dbias with the gradients."""
        dy3 = dy.reshape(self.planes, dy.shape[2], dy.shape[3])  # (N*C, Ho, Wo) view
        x3 = x.reshape(self.planes, x.shape[2], x.shape[3])  # (N*C, H, W) view
        dx3 = self.no_dx if dx is None else dx.reshape(x3.shape)  # (N*C, H, W) view
        part = self.part.reshape(self.planes, 2)  # (N*C, 2) view
        jobs = [
            (p0, p1, dy3, x3, coef, dx3, dx is not None, part, self.geo) for p0, p1 in self.jobs
        ]
        self.workers.run(_sub_backward_planes, jobs)
        np.sum(self.part[:, :, 0], axis=0, out=dcoef)  # fixed order over the batch
        np.sum(self.part[:, :, 1], axis=0, out=dbias)


# ---- CUDA kernels
# Forward: one thread per output, the activation fused. Backward: dx gathers like sum pooling
# (one thread per input); dcoef and dbias are per-channel sums, one block per channel with
# float64 partial sums and a tree in shared memory (fixed order, no atomics). Arrays are flat.
# As for pooling, the kernels are specialised on the layer (sizes, window geometry and the
# fused activation are compile-time constants): one compilation per distinct layer on a GPU.
# The number of planes (N*C) is the arrays', so every batch size shares the kernels.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("subsample")
def _cuda_kernels(channels: int, h: int, w: int, ho: int, wo: int, kh: int, kw: int, sh: int,
                  sw: int, ph: int, pw: int, act_params: tuple, threads: int,
                  code: int):  # fmt: skip
    """Subsampling kernels for one layer: x (planes, h, w) -> y (planes, ho, wo), flat; plane
    pl has channel pl % channels. code, act_params (p0, p1): the fused activation; `threads`
    per block of the per-channel reduction (a power of two). The number of planes is the
    arrays' (y.size / (ho*wo)), so every batch size shares the kernels."""
    global cuda
    from numba import cuda, float32, float64

    from netdsl.ops.activation import cuda_element_math
    from netdsl.ops.cudakit import block_reducer

    block_sum = block_reducer(threads)  # per-block sums of the parameter gradients

    act, _ = cuda_element_math()
    span, outputs_over = pool._cuda_window_math()
    ap0, ap1 = (np.float32(v) for v in act_params)  # float32 constants, as on the CPU
    hw, howo = h * w, ho * wo

    @cuda.jit(device=True, inline="always")
    def window_sum(x, pl, i, j):  # x (P*H*W,): sum of window (i, j) of plane pl
        r0, r1 = span(i, kh, sh, ph, h)
        c0, c1 = span(j, kw, sw, pw, w)
        s = float32(0.0)
        for r in range(r0, r1):
            for c in range(c0, c1):
                s += x[pl * hw + r * w + c]
        return s

    @cuda.jit
    def sub_forward(x, coef, bias, y):
        # x (P*H*W,), coef, bias (C,), y (P*Ho*Wo,) f32
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            pl, q = e // howo, e % howo
            ch = pl % channels
            s = window_sum(x, pl, q // wo, q % wo)
            y[e] = act(coef[ch] * s + bias[ch], code, ap0, ap1)

    @cuda.jit
    def sub_backward_data(dy, coef, dx):
        # dy (P*Ho*Wo,), coef (C,), dx (P*H*W,) f32 out (overwritten)
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            pl, q = e // hw, e % hw
            r, c = q // w, q % w
            i0, i1 = outputs_over(r, kh, sh, ph, ho)
            j0, j1 = outputs_over(c, kw, sw, pw, wo)
            g = float32(0.0)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    g += dy[pl * howo + i * wo + j]
            dx[e] = coef[pl % channels] * g

    @cuda.jit
    def sub_backward_params(dy, x, dcoef, dbias):
        # grid = C blocks: dcoef[c] = sum dy * window sum, dbias[c] = sum dy over (n, i, j)
        ch, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        count = dy.size // channels  # outputs per channel (C divides the planes)
        sc = 0.0
        sb = 0.0
        for q in range(t, count, threads):
            pl = (q // howo) * channels + ch
            i, j = (q % howo) // wo, q % wo
            g = dy[pl * howo + i * wo + j]
            sc += g * window_sum(x, pl, i, j)
            sb += g
        buf[t] = sc
        total_c = block_sum(buf, t)
        buf[t] = sb
        total_b = block_sum(buf, t)
        if t == 0:
            dcoef[ch] = total_c
            dbias[ch] = total_b

    return types.SimpleNamespace(sub_forward=sub_forward, sub_backward_data=sub_backward_data,
                                 sub_backward_params=sub_backward_params)  # fmt: skip


# cuda_ptx.compile_records: the first 12 arguments are the layer's geometry and activation
# parameters, the constants folded into the code (see there)
_cuda_kernels.geometry_args = 12


class SubsampleCUDA:
    """float32 trainable subsampling on the GPU, the activation fused into the forward."""

    def __init__(self, n: int, c: int, h: int, w: int, kernel: Pair, stride: Pair, pad: Pair,
                 out_hw: Pair, act_code: int = 4,
                 act_params: tuple = (0.0, 0.0)) -> None:  # fmt: skip
        from netdsl.ops.cudakit import SIM_THREADS, THREADS, Launch, grid_1d, simulator

        threads = SIM_THREADS if simulator() else THREADS
        planes, (ho, wo) = n * c, out_hw
        cfg = (*(int(v) for v in (c, h, w, ho, wo, *kernel, *stride, *pad)),
               activations.as_pair(act_params), threads, int(act_code))  # fmt: skip
        self._fwd = Launch(_cuda_kernels, "sub_forward", *grid_1d(planes * ho * wo), cfg)
        self._bwd_x = Launch(_cuda_kernels, "sub_backward_data", *grid_1d(planes * h * w), cfg)
        self._bwd_p = Launch(_cuda_kernels, "sub_backward_params", c, threads, cfg)

    def forward(self, x, coef, bias, y) -> None:
        """y = act(coef * window sum of x + bias); x (N, C, H, W), y (N, C, Ho, Wo)."""
        self._fwd(x.reshape(-1), coef, bias, y.reshape(-1))

    def backward(self, dy, x, coef, dx, dcoef, dbias) -> None:
        """Overwrite dx (unless None), dcoef and dbias; dy is already through act'."""
        if dx is not None:
            self._bwd_x(dy.reshape(-1), coef, dx.reshape(-1))
        self._bwd_p(dy.reshape(-1), x.reshape(-1), dcoef, dbias)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class SubsampleCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = SubsampleCPU(plan.batch, c, h, w, a["kernel"], a["stride"], a["pad_tl"],
                               a["out_hw"])  # fmt: skip
        self.dz = np.empty_like(self.y) if self.fused_act else None
        self.no_dx = np.empty_like(self.x[0])

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p["bias"], self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        dx = self.no_dx if self.dx[0] is None else self.dx[0]
        self.op.backward(dz, self.x[0], self.p["weight"], dx, self.g["weight"], self.g["bias"])


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class SubsampleCUDARunner(cuda_runner.Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = SubsampleCUDA(plan.batch, c, h, w, a["kernel"], a["stride"], a["pad_tl"],
                                a["out_hw"], self.act_code, self.act_params)  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p["bias"], self.y)

    def backward(self):
        dz = self._act_backward()
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g["bias"])  # fmt: skip
