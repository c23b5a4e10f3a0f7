"""Parametric ReLU (He et al. 2015), PyTorch's nn.PReLU: a learned slope for the negatives.

    y[n, c, i, j] = x            if x > 0
                    a[c] * x     otherwise
    dx = dy where x > 0, else a[c] * dy;   da[c] = sum over (n, i, j) of dy * min(x, 0)

Shapes: x, y, dx, dy (N, C, H, W); a, da (K,) with K = C (one slope per channel) or K = 1
(one slope shared by all channels). With x viewed as (P, H*W) planes, P = N*C, plane pl
uses slope a[pl % K]. At x = 0 the output is 0 either way and dx takes PyTorch's choice,
a * dy.
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _slopes(a: np.ndarray) -> np.ndarray:
    """a (K,) as (1, K, 1, 1) float64, broadcasting over (N, C, H, W) for K = C or 1."""
    return np.asarray(a, dtype=np.float64).reshape(1, -1, 1, 1)


def ref_forward(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """x (N, C, H, W), a (K,) -> y (N, C, H, W) float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, _slopes(a) * x)


def ref_backward(dy: np.ndarray, x: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (dx (N, C, H, W), da (K,)) float64."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    dx = np.where(x > 0, dy, _slopes(a) * dy)
    da = (dy * np.minimum(x, 0.0)).sum(axis=(0, 2, 3))  # (C,)
    return dx, da if np.size(a) == x.shape[1] else da.sum(keepdims=True)


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels over planes (x viewed as (P, H*W)); the slope gradient is summed per
# plane in float64 and then over the planes of each slope in a fixed order.
# ---------------------------------------------------------------------------------------------


@kernel(nogil=True)
def _prelu_forward_planes(x, a, y):
    """y = x if x > 0 else a * x. x, y (P, HW) f32, a (K,) f32."""
    nk = a.shape[0]
    for pl in range(x.shape[0]):
        s = a[pl % nk]  # this plane's slope
        for j in range(x.shape[1]):
            v = x[pl, j]
            y[pl, j] = v if v > 0 else s * v


@kernel(nogil=True)
def _prelu_backward_planes(dy, x, a, dx, want_dx, part):
    """dx (if want_dx) and part[pl] = sum of dy * min(x, 0) over plane pl.

    dy, x, dx (P, HW) f32 (dx a dummy when not wanted), a (K,) f32, part (P,) f64."""
    nk = a.shape[0]
    for pl in range(x.shape[0]):
        s = a[pl % nk]
        acc = 0.0
        for j in range(x.shape[1]):
            v, g = x[pl, j], dy[pl, j]
            if v > 0:
                if want_dx:
                    dx[pl, j] = g
            else:
                if want_dx:
                    dx[pl, j] = s * g
                acc += g * v
        part[pl] = acc


class PReLUCPU:
    """float32 PReLU on the CPU for fixed shapes: n * c planes of h * w, k slopes."""

    def __init__(self, n: int, c: int, h: int, w: int, k: int) -> None:
        self.planes, self.hw, self.k = n * c, h * w, k
        self.part = np.zeros(n * c, np.float64)  # (P,) per-plane slope-gradient sums
        self.no_dx = np.zeros((1, 1), np.float32)  # stands in for dx when not wanted

    def forward(self, x, a, y) -> None:
        """y = prelu(x); x, y (N, C, H, W) f32, a (K,) f32."""
        _prelu_forward_planes(x.reshape(self.planes, self.hw), a,
                              y.reshape(self.planes, self.hw))  # fmt: skip

    def backward(self, dy, x, a, dx, da) -> None:
        """Overwrite dx (unless None) and da (K,) with the gradients."""
        x2 = x.reshape(self.planes, self.hw)  # (P, HW) view
        dx2 = self.no_dx if dx is None else dx.reshape(x2.shape)
        _prelu_backward_planes(dy.reshape(x2.shape), x2, a, dx2, dx is not None, self.part)
        da[...] = self.part.reshape(-1, self.k).sum(axis=0)  # plane pl feeds slope pl % K


# ---- CUDA kernels
# Forward and dx: one thread per element (grid-stride). da: one block per slope, float64
# partial sums reduced by a tree in shared memory (cudakit.block_reducer; fixed order, no
# atomics). Arrays are flat; the plane size and the number of slopes are compile-time
# constants, the number of planes (N*C) is the arrays': one compilation serves every batch size.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("prelu")
def _cuda_kernels(slopes: int, hw: int, threads: int):
    """PReLU kernels for x (planes * hw,) flat, plane pl using slope pl % slopes; `threads`
    per block of the slope-gradient reduction (a power of two). The number of planes is the
    arrays' (x.size / hw), so every batch size shares the kernels."""
    global cuda
    from numba import cuda, float64

    from netdsl.ops.cudakit import block_reducer

    block_sum = block_reducer(threads)

    @cuda.jit
    def prelu_forward(x, a, y):  # x, y (P*HW,), a (K,) f32
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            v = x[e]
            y[e] = v if v > 0 else a[(e // hw) % slopes] * v

    @cuda.jit
    def prelu_backward_data(dy, x, a, dx):  # dy, x, dx (P*HW,), a (K,) f32
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            g = dy[e]
            dx[e] = g if x[e] > 0 else a[(e // hw) % slopes] * g

    @cuda.jit
    def prelu_backward_slopes(dy, x, da):
        # grid = K blocks: da[k] = sum of dy * min(x, 0) over the planes pl with pl % K == k
        k, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(threads, float64)
        count = x.size // slopes  # elements per slope: P / K planes of HW (K divides P)
        s = 0.0
        for q in range(t, count, threads):
            e = ((q // hw) * slopes + k) * hw + q % hw  # the q-th element of slope k
            v = x[e]
            if v < 0:
                s += dy[e] * v
        buf[t] = s
        total = block_sum(buf, t)
        if t == 0:
            da[k] = total

    return types.SimpleNamespace(prelu_forward=prelu_forward,
                                 prelu_backward_data=prelu_backward_data,
                                 prelu_backward_slopes=prelu_backward_slopes)  # fmt: skip


# cuda_ptx.compile_records: the first 2 arguments are the layer's sizes (see there)
_cuda_kernels.geometry_args = 2


class PReLUCUDA:
    """float32 PReLU on the GPU: n * c planes of h * w, k slopes."""

    def __init__(self, n: int, c: int, h: int, w: int, k: int) -> None:
        from netdsl.ops.cudakit import SIM_THREADS, THREADS, Launch, grid_1d, simulator

        threads = SIM_THREADS if simulator() else THREADS
        cfg = (int(k), int(h * w), threads)
        size = n * c * h * w
        self._fwd = Launch(_cuda_kernels, "prelu_forward", *grid_1d(size), cfg)
        self._bwd_x = Launch(_cuda_kernels, "prelu_backward_data", *grid_1d(size), cfg)
        self._bwd_a = Launch(_cuda_kernels, "prelu_backward_slopes", k, threads, cfg)

    def forward(self, x, a, y) -> None:
        """y = prelu(x); x, y (N, C, H, W), a (K,) device arrays."""
        self._fwd(x.reshape(-1), a, y.reshape(-1))

    def backward(self, dy, x, a, dx, da) -> None:
        """Overwrite dx (unless None) and da."""
        if dx is not None:
            self._bwd_x(dy.reshape(-1), x.reshape(-1), a, dx.reshape(-1))
        self._bwd_a(dy.reshape(-1), x.reshape(-1), da)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class PReLUCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.in_shapes[0]
        self.op = PReLUCPU(plan.batch, c, h, w, self.p["weight"].shape[0])

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.y)

    def backward(self):
        self.op.backward(self.dy, self.x[0], self.p["weight"], self.dx[0], self.g["weight"])


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class PReLUCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.in_shapes[0]
        self.op = PReLUCUDA(plan.batch, c, h, w, self.p["weight"].shape[0])

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.y)

    def backward(self):
        self.op.backward(self.dy, self.x[0], self.p["weight"], self.dx[0], self.g["weight"])
