"""Local response normalisation across channels, exactly as in AlexNet (Krizhevsky et al. 2012).

    b[c] = a[c] / (k + alpha * sum_{c'=max(0, c-n//2)}^{min(C-1, c+n//2)} a[c']^2) ** beta

at every (batch, row, column). NOTE: alpha is NOT divided by n here. Caffe and PyTorch
(``torch.nn.functional.local_response_norm``) divide alpha by the window size, so the
same layer in PyTorch is ``local_response_norm(x, size=n, alpha=alpha * n, beta=beta, k=k)``.
The window c - n//2 .. c + n//2 is n channels wide for odd n (AlexNet uses n = 5);
even n gives n + 1 channels, which is why the language should ask for odd n.

Backward, with S[c] = k + alpha * sum(...) (the "scale" the forward kernel saves):

    dx[i] = dy[i] * S[i]^-beta - 2 alpha beta x[i] * sum_{c in window(i)} dy[c] y[c] / S[c]

(the window relation is symmetric, so "c whose window contains i" is window(i)).
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.conv import PARALLEL_MIN_WORK, Workers, num_threads, split
from netdsl.ops.jit import kernel

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _window_sum(v: np.ndarray, n: int) -> np.ndarray:
    """v: (N, C, H, W) -> (N, C, H, W): sum over channels c - n//2 .. c + n//2 (clipped)."""
    half = n // 2
    channels = v.shape[1]
    out = np.zeros_like(v)
    for c in range(channels):
        out[:, c] = v[:, max(0, c - half) : min(channels, c + half + 1)].sum(axis=1)
    return out


def ref_scale(x: np.ndarray, n: int, k: float, alpha: float) -> np.ndarray:
    """S = k + alpha * window sum of x^2. x: (N, C, H, W) -> (N, C, H, W), float64."""
    x = np.asarray(x, dtype=np.float64)
    return k + alpha * _window_sum(x * x, n)


def ref_forward(x: np.ndarray, n: int, k: float, alpha: float, beta: float) -> np.ndarray:
    """x: (N, C, H, W) -> y: (N, C, H, W), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x * ref_scale(x, n, k, alpha) ** -beta


def ref_backward(
    dy: np.ndarray, x: np.ndarray, y: np.ndarray, n: int, k: float, alpha: float, beta: float
) -> np.ndarray:
    """dy, x, y: (N, C, H, W) -> dx: (N, C, H, W), float64."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    s = ref_scale(x, n, k, alpha)
    return dy * s**-beta - 2.0 * alpha * beta * x * _window_sum(dy * y / s, n)


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
# ---------------------------------------------------------------------------------------------


@kernel(nogil=True)
def lrn_forward(x, y, scale, n, k, alpha, beta):
    """x: (N, C, H, W) f32; y: (N, C, H, W) f32 out; scale: (N, C, H, W) f32 out (S, for backward).

    y must not alias x (the backward pass needs x).
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    x3 = x.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    s3 = scale.reshape(n_batch, channels, plane)
    half = n // 2
    k32, a32, nb32 = np.float32(k), np.float32(alpha), np.float32(-beta)
    for b in range(n_batch):
        for c in range(channels):
            # Whole planes at a time: every inner loop runs over contiguous memory.
            for p in range(plane):
                s3[b, c, p] = 0.0
            for c2 in range(max(0, c - half), min(channels, c + half + 1)):
                for p in range(plane):
                    v = x3[b, c2, p]
                    s3[b, c, p] += v * v
            for p in range(plane):
                s = k32 + a32 * s3[b, c, p]
                s3[b, c, p] = s
                y3[b, c, p] = x3[b, c, p] * s**nb32


@kernel(nogil=True)
def lrn_backward(dy, x, y, scale, dx, n, k, alpha, beta):
    """dy, x, y, scale: (N, C, H, W) f32 (scale from lrn_forward); dx: (N, C, H, W) f32 out.

    dx must not alias dy, x, y or scale: neighbouring channels are read after dx[c] is written.
    `k` is unused (it is already folded into scale) but kept so both kernels take the same
    hyper-parameters.
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    d3 = dy.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    x3 = x.reshape(n_batch, channels, plane)
    y3 = y.reshape(n_batch, channels, plane)
    s3 = scale.reshape(n_batch, channels, plane)
    g3 = dx.reshape(n_batch, channels, plane)
    half = n // 2
    nb32 = np.float32(-beta)
    coef = np.float32(2.0 * alpha * beta)
    for b in range(n_batch):
        for c in range(channels):
            # Accumulate sum_{c2 in window} dy y / S in dx[c] itself (no scratch buffer);
            # recomputing the ratio per window member costs n divisions but no allocation.
            for p in range(plane):
                g3[b, c, p] = 0.0
            for c2 in range(max(0, c - half), min(channels, c + half + 1)):
                for p in range(plane):
                    g3[b, c, p] += d3[b, c2, p] * y3[b, c2, p] / s3[b, c2, p]
            for p in range(plane):
                g3[b, c, p] = d3[b, c, p] * s3[b, c, p] ** nb32 - coef * x3[b, c, p] * g3[b, c, p]


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# One thread per element; each sums its own window of n channels (n is 5 in AlexNet), so no
# thread writes what another reads and the result does not depend on the launch shape.
# The kernels are specialised on the layer: sizes, n and the float32 hyperparameters k, alpha,
# beta are compile-time constants (constant index divisions, a constant window), at the price
# of one compilation per distinct layer on first use on a GPU.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("lrn")
def _cuda_kernels(channels: int, plane: int, n: int, k: float, alpha: float, beta: float):
    """LRN kernels for one layer: flat (batch*channels*plane,) float32 arrays (the batch is
    the arrays' size: one compilation serves every batch size)."""
    global cuda
    from numba import cuda

    half = n // 2
    # float32 constants, the same values (and float32 arithmetic) as the CPU kernels'
    k32, alpha32, nbeta, coef = (np.float32(v) for v in (k, alpha, -beta, 2.0 * alpha * beta))

    @cuda.jit
    def lrn_forward(x, y, scale):
        # x, y, scale: (N*C*P,) f32 (y, scale out)
        for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            c = (e // plane) % channels
            base = e - c * plane  # element (b, 0, p)
            s = np.float32(0.0)
            for c2 in range(max(0, c - half), min(channels, c + half + 1)):
                v = x[base + c2 * plane]
                s += v * v
            s = k32 + alpha32 * s
            scale[e] = s
            y[e] = x[e] * s**nbeta

    @cuda.jit
    def lrn_backward(dy, x, y, scale, dx):
        # dy, x, y, scale: (N*C*P,) f32; dx: (N*C*P,) f32 out; coef = 2 alpha beta
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            c = (e // plane) % channels
            base = e - c * plane
            acc = np.float32(0.0)
            for c2 in range(max(0, c - half), min(channels, c + half + 1)):
                f = base + c2 * plane
                acc += dy[f] * y[f] / scale[f]
            dx[e] = dy[e] * scale[e] ** nbeta - coef * x[e] * acc

    return types.SimpleNamespace(lrn_forward=lrn_forward, lrn_backward=lrn_backward)


# cuda_ptx.compile_records: all 6 arguments are the layer's geometry and hyperparameters, the
# constants folded into the code (see there)
_cuda_kernels.geometry_args = 6


class LrnCUDA:
    """AlexNet LRN on flat (N*C*H*W,) float32 device arrays (alpha not divided by n)."""

    def __init__(self, n_batch: int, channels: int, h: int, w: int, n: int, k: float,
                 alpha: float, beta: float) -> None:  # fmt: skip
        from netdsl.ops.cudakit import Launch, grid_1d

        grid, block = grid_1d(n_batch * channels * h * w)
        cfg = (int(channels), int(h * w), int(n), float(k), float(alpha), float(beta))
        self._fwd = Launch(_cuda_kernels, "lrn_forward", grid, block, cfg)
        self._bwd = Launch(_cuda_kernels, "lrn_backward", grid, block, cfg)

    def forward(self, x, y, scale) -> None:
        """y = lrn(x), scale = k + alpha * window sum of x^2 (kept for backward)."""
        self._fwd(x, y, scale)

    def backward(self, dy, x, y, scale, dx) -> None:
        """dx from dy and the forward's x, y, scale; dx must not alias the others."""
        self._bwd(dy, x, y, scale, dx)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class LrnCPURunner(Runner):
    """Images are independent, so the batch is split over the layer's worker threads."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        self.args = (a["size"], np.float32(a["k"]), np.float32(a["alpha"]), np.float32(a["beta"]))
        self.scale = np.zeros_like(self.y)  # (N, C, H, W) k + alpha*sum(a^2), for backward
        work = self.y.size * a["size"]
        self.workers = Workers(num_threads() if work >= PARALLEL_MIN_WORK else 1)
        self.slices = [slice(lo, hi) for lo, hi in split(plan.batch, self.workers.n) if hi > lo]

    def forward(self, train):
        x, y, s = self.x[0], self.y, self.scale
        self.workers.run(lrn_forward, [(x[b], y[b], s[b], *self.args) for b in self.slices])

    def backward(self):
        if self.dx[0] is not None:
            x, y, s, dy, dx = self.x[0], self.y, self.scale, self.dy, self.dx[0]
            jobs = [(dy[b], x[b], y[b], s[b], dx[b], *self.args) for b in self.slices]
            self.workers.run(lrn_backward, jobs)


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class LrnCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.out_shape
        self.op = LrnCUDA(plan.batch, c, h, w, a["size"], a["k"], a["alpha"], a["beta"])
        self.scale = cuda_runner.device_zeros(self.y.size)  # (N*C*H*W,) k + alpha * window sum

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1), self.scale)

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.x[0].reshape(-1), self.y.reshape(-1),
                             self.scale, self.dx[0].reshape(-1))  # fmt: skip
