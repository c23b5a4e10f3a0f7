"""Maxout across channels (Goodfellow et al. 2013).

Groups of ``k`` CONSECUTIVE input channels are reduced by max:
``y[n, c, h, w] = max_j x[n, c*k + j, h, w]``, so (N, C*k, H, W) -> (N, C, H, W).
Fully connected outputs use the same code as (N, C*k, 1, 1).

The forward kernel records the winning ``j`` per output (int32, shape of y) so the
backward pass is a scatter without re-reading x. Ties go to the first (lowest j)
candidate, as in the reference.
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def _check(x: np.ndarray, k: int) -> None:
    if x.ndim != 4 or k < 1 or x.shape[1] % k:
        raise ValueError(f"maxout needs (N, C, H, W) with C divisible by k={k}, got {x.shape}")


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(x: np.ndarray, k: int) -> np.ndarray:
    """x: (N, C*k, H, W) -> y: (N, C, H, W), float64."""
    _check(x, k)
    n, ck, h, w = x.shape
    return np.asarray(x, dtype=np.float64).reshape(n, ck // k, k, h, w).max(axis=2)


def ref_backward(dy: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """dy: (N, C, H, W), x: (N, C*k, H, W) -> dx: (N, C*k, H, W); dy goes to the first max."""
    _check(x, k)
    n, ck, h, w = x.shape
    groups = np.asarray(x, dtype=np.float64).reshape(n, ck // k, k, h, w)
    win = groups.argmax(axis=2)  # (N, C, H, W); argmax picks the first of equal maxima
    dx = np.zeros_like(groups)
    np.put_along_axis(dx, win[:, :, None], np.asarray(dy, dtype=np.float64)[:, :, None], axis=2)
    return dx.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
# ---------------------------------------------------------------------------------------------


@kernel
def maxout_forward(x, y, idx, k):
    """x: (N, C*k, H, W) f32; y: (N, C, H, W) f32 out; idx: (N, C, H, W) int32 out (winning j)."""
    n_batch, c_out = y.shape[0], y.shape[1]
    plane = y.shape[2] * y.shape[3]
    x3 = x.reshape(n_batch, c_out * k, plane)  # (N, C*k, H*W) view
    y3 = y.reshape(n_batch, c_out, plane)  # (N, C, H*W) view
    i3 = idx.reshape(n_batch, c_out, plane)  # (N, C, H*W) view
    for n in range(n_batch):
        for c in range(c_out):
            # Sweep whole planes so the inner loop is contiguous; strict > keeps the first max.
            for p in range(plane):
                y3[n, c, p] = x3[n, c * k, p]
                i3[n, c, p] = 0
            for j in range(1, k):
                for p in range(plane):
                    v = x3[n, c * k + j, p]
                    if v > y3[n, c, p]:
                        y3[n, c, p] = v
                        i3[n, c, p] = j


@kernel
def maxout_backward(dy, idx, dx, k):
    """dy: (N, C, H, W) f32; idx: (N, C, H, W) int32 from forward; dx: (N, C*k, H, W) f32 out.

    dx is overwritten (zero except at each group's winner).
    """
    n_batch, c_out = dy.shape[0], dy.shape[1]
    plane = dy.shape[2] * dy.shape[3]
    d3 = dy.reshape(n_batch, c_out, plane)  # (N, C, H*W) view
    i3 = idx.reshape(n_batch, c_out, plane)  # (N, C, H*W) view
    dx3 = dx.reshape(n_batch, c_out * k, plane)  # (N, C*k, H*W) view
    for n in range(n_batch):
        for c in range(c_out):
            for j in range(k):
                for p in range(plane):
                    dx3[n, c * k + j, p] = d3[n, c, p] if i3[n, c, p] == j else np.float32(0.0)


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# Specialised on the layer: the group count, k and the plane size are compile-time constants
# (constant index divisions, an unrollable loop over the pieces); one compilation per
# distinct layer on first use on a GPU.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("maxout")
def _cuda_kernels(k: int, plane: int):
    """Maxout forward (one thread per output) and backward (one thread per input) for
    x (groups*k*plane,) -> y (groups*plane,), groups = N*C: the arrays' sizes, so layers of
    one k and plane share the kernels."""
    global cuda
    from numba import cuda

    @cuda.jit
    def maxout_forward(x, y, idx):
        # x: (N*C*k*P,) f32; y: (N*C*P,) f32 out; idx: (N*C*P,) int32 out; plane = H*W
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            nc, p = e // plane, e % plane  # nc = n*C + c, so group j starts at (nc*k + j)*P
            base = nc * k * plane + p
            best, at = x[base], 0
            for j in range(1, k):  # strict > keeps the first maximum, as on the CPU
                v = x[base + j * plane]
                if v > best:
                    best, at = v, j
            y[e] = best
            idx[e] = at

    @cuda.jit
    def maxout_backward(dy, idx, dx):
        # dy: (N*C*P,) f32; idx: (N*C*P,) int32; dx: (N*C*k*P,) f32 out (overwritten)
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            q, p = e // plane, e % plane  # q = (n*C + c)*k + j
            o = (q // k) * plane + p
            dx[e] = dy[o] if idx[o] == q % k else np.float32(0.0)

    return types.SimpleNamespace(maxout_forward=maxout_forward, maxout_backward=maxout_backward)


# cuda_ptx.compile_records: both arguments are the layer's geometry (see there)
_cuda_kernels.geometry_args = 2


class MaxoutCUDA:
    """Maxout of k pieces, (N, C*k, H, W) -> (N, C, H, W), on flat device arrays."""

    def __init__(self, n: int, c_out: int, h: int, w: int, k: int) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        cfg = (int(k), int(h * w))
        self._fwd = Launch(_cuda_kernels, "maxout_forward", *grid_1d(n * c_out * h * w), cfg)
        self._bwd = Launch(_cuda_kernels, "maxout_backward", *grid_1d(n * c_out * k * h * w),
                           cfg)  # fmt: skip

    def forward(self, x, y, idx) -> None:
        """x: (N*C*k*H*W,) f32; y: (N*C*H*W,) f32 out; idx: (N*C*H*W,) int32 out."""
        self._fwd(x, y, idx)

    def backward(self, dy, idx, dx) -> None:
        """dy, idx: (N*C*H*W,); dx: (N*C*k*H*W,) f32 out."""
        self._bwd(dy, idx, dx)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class MaxoutCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.k = layer.attrs["pieces"]
        self.idx = np.zeros(self.y.shape, np.int32)  # (N, C/k, H, W) winning piece

    def forward(self, train):
        maxout_forward(self.x[0], self.y, self.idx, self.k)

    def backward(self):
        if self.dx[0] is not None:
            maxout_backward(self.dy, self.idx, self.dx[0], self.k)


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class MaxoutCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.out_shape
        self.op = MaxoutCUDA(plan.batch, c, h, w, layer.attrs["pieces"])
        self.idx = cuda_runner.device_zeros(self.y.size, np.int32)  # (N*C*H*W,) winning piece

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1), self.idx)

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.idx, self.dx[0].reshape(-1))
