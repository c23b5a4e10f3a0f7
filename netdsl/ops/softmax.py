"""Softmax over the channels of a (N, K) batch (the caller views (N, K, 1, 1) as (N, K)).

Forward subtracts the row maximum before exponentiating so large scores cannot overflow.
Backward from the output: ``dx = y * (dy - sum_k dy_k y_k)`` per row.

For training with cross-entropy use the fused :mod:`netdsl.ops.loss` kernel instead:
its gradient ``softmax - onehot`` is exact where chaining these two would cancel.
"""

from __future__ import annotations

import math
import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def ref_forward(x: np.ndarray) -> np.ndarray:
    """x: (N, K) -> y: (N, K), float64, rows summing to 1."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy, y: (N, K) -> dx: (N, K), float64."""
    dy = np.asarray(dy, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


@kernel
def softmax_forward(x, y):
    """x: (N, K) f32; y: (N, K) f32 out (may be x)."""
    n_batch, classes = x.shape
    for n in range(n_batch):
        top = x[n, 0]
        for j in range(1, classes):
            top = max(top, x[n, j])
        total = 0.0  # float64 accumulator
        for j in range(classes):
            e = np.exp(x[n, j] - top)
            y[n, j] = e
            total += e
        inv = np.float32(1.0 / total)
        for j in range(classes):
            y[n, j] *= inv


@kernel
def softmax_backward(dy, y, dx):
    """dy, y: (N, K) f32; dx: (N, K) f32 out (may be dy: the row sum is taken first)."""
    n_batch, classes = y.shape
    for n in range(n_batch):
        dot = 0.0  # float64 accumulator
        for j in range(classes):
            dot += dy[n, j] * y[n, j]
        d32 = np.float32(dot)
        for j in range(classes):
            dx[n, j] = y[n, j] * (dy[n, j] - d32)


# ---- CUDA kernels
# One warp per row: the lanes stride over the row's classes (a warp reads 32 consecutive
# values) and warp reductions (shuffles on a GPU, cudakit.warp_reducer) give every lane the
# row's maximum and sum in a fixed order. Specialised on the number of classes, a
# compile-time constant (constant loop bounds and row offsets); the number of rows (the batch
# size) is the arrays' (x.size / classes), so every batch size shares one compilation. Every
# thread of a block runs the same number of row steps (a warp past
# the last row reduces nothing), as the simulator's fallback reductions synchronise the block.

cuda = None  # numba.cuda, bound by _cuda_kernels()
# (float64(0.0) starts a float64 sum in the simulator too: there 0.0 + float32 is a float32)


@generated("softmax")
def _cuda_kernels(classes: int, threads: int, shuffles: bool):
    """Softmax kernels for flat (rows*classes,) float32 arrays, rows = the arrays' size /
    classes; `threads` per block (a warp per row), `shuffles`: warp shuffles (GPU) or the
    simulator's fallback."""
    global cuda
    from numba import cuda, float32, float64

    from netdsl.ops.cudakit import WARP, warp_reducer

    warp_sum, warp_max = warp_reducer(shuffles)
    neg_inf = np.float32(-np.inf)
    warps = threads // WARP  # rows per block and step

    @cuda.jit
    def softmax_forward(x, y):  # x, y: (N*K,) f32; y may be x (a lane reads what it writes)
        t = cuda.threadIdx.x
        lane = t % WARP
        buf = cuda.shared.array(threads, float64)
        rows = x.size // classes
        for base in range(cuda.blockIdx.x * warps, rows, cuda.gridDim.x * warps):
            n = base + t // WARP
            active = n < rows
            row = n * classes
            top = neg_inf
            if active:
                for j in range(lane, classes, WARP):
                    top = max(top, x[row + j])
            top = float32(warp_max(float64(top), buf, t))  # exact both ways
            acc = float64(0.0)
            if active:
                for j in range(lane, classes, WARP):
                    e = math.exp(x[row + j] - top)
                    y[row + j] = e
                    acc += e
            total = warp_sum(acc, buf, t)
            if active:
                inv = np.float32(1.0 / total)
                for j in range(lane, classes, WARP):
                    y[row + j] *= inv

    @cuda.jit
    def softmax_backward(dy, y, dx):  # dy, y, dx: (N*K,) f32; dx may be dy
        t = cuda.threadIdx.x
        lane = t % WARP
        buf = cuda.shared.array(threads, float64)
        rows = dx.size // classes
        for base in range(cuda.blockIdx.x * warps, rows, cuda.gridDim.x * warps):
            n = base + t // WARP
            active = n < rows
            row = n * classes
            acc = float64(0.0)
            if active:
                for j in range(lane, classes, WARP):
                    acc += dy[row + j] * y[row + j]
            d32 = np.float32(warp_sum(acc, buf, t))  # every lane has read dy before any writes
            if active:
                for j in range(lane, classes, WARP):
                    dx[row + j] = y[row + j] * (dy[row + j] - d32)

    return types.SimpleNamespace(softmax_forward=softmax_forward, softmax_backward=softmax_backward)


# cuda_ptx.compile_records: the first argument is geometry (see there)
_cuda_kernels.geometry_args = 1


class SoftmaxCUDA:
    """Row softmax of (N, K) float32 device arrays, kernels specialised on K (N is the
    arrays': any batch size runs on the same kernels; `n` sizes the grid).

    `shuffles` forces the warp-shuffle path (else: on a GPU only; tests emulate it),
    `threads` the block size (a multiple of 32; a warp per row).
    """

    def __init__(self, n: int, classes: int, shuffles: bool | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        from netdsl.ops.cudakit import WARP, Launch, cdiv, row_threads, use_shuffles

        threads = row_threads() if threads is None else int(threads)
        shuffles = use_shuffles() if shuffles is None else bool(shuffles)
        cfg = (int(classes), threads, shuffles)
        blocks = cdiv(n, threads // WARP)
        self._fwd = Launch(_cuda_kernels, "softmax_forward", blocks, threads, cfg)
        self._bwd = Launch(_cuda_kernels, "softmax_backward", blocks, threads, cfg)

    def forward(self, x, y) -> None:
        """y = softmax of the rows of x; x, y (N, K), y may be x."""
        self._fwd(x.reshape(-1), y.reshape(-1))

    def backward(self, dy, y, dx) -> None:
        """dx from dy and the forward's y, all (N, K); dx may be dy."""
        self._bwd(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class SoftmaxCPURunner(Runner):
    def forward(self, train):
        n = self.plan.batch
        softmax_forward(self.x[0].reshape(n, -1), self.y.reshape(n, -1))

    def backward(self):
        if self.dx[0] is not None:
            n = self.plan.batch
            softmax_backward(self.dy.reshape(n, -1), self.y.reshape(n, -1),
                                     self.dx[0].reshape(n, -1))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class SoftmaxCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = SoftmaxCUDA(plan.batch, self.y.size // plan.batch)

    def forward(self, train):
        n = self.plan.batch
        self.op.forward(self.x[0].reshape(n, -1), self.y.reshape(n, -1))

    def backward(self):
        if self.dx[0] is not None:
            n = self.plan.batch
            self.op.backward(self.dy.reshape(n, -1), self.y.reshape(n, -1),
                             self.dx[0].reshape(n, -1))  # fmt: skip
