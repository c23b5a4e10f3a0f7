"""Inverted dropout (Srivastava et al. 2014, scaled at training time).

Training: ``y = x * mask * scale`` with ``mask ~ Bernoulli(1 - p)`` and ``scale = 1 / (1 - p)``,
so the expected activation is unchanged and evaluation is the identity (no kernel at all).

The mask is drawn by the CALLER with NumPy (:func:`make_mask`) rather than inside a kernel,
so the random stream lives in one ``np.random.Generator`` whose state can be checkpointed
and restored bit for bit. Backward is the same product: ``dx = dy * mask * scale``.
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import add
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def keep_scale(p: float) -> float:
    """The factor 1 / (1 - p) applied to kept units; p in [0, 1)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return 1.0 / (1.0 - p)


def make_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Keep-mask of `shape`, uint8 (1 = keep with probability 1 - p, 0 = drop)."""
    keep_scale(p)  # validates p
    # float32 uniforms: half the random bits of float64, and 2^-24 resolution is ample for p.
    return (rng.random(shape, dtype=np.float32) >= np.float32(p)).view(np.uint8)


def ref_forward(x: np.ndarray, mask: np.ndarray, p: float, train: bool = True) -> np.ndarray:
    """x: any shape, mask: same shape -> y: same shape, float64. Eval mode is the identity."""
    x = np.asarray(x, dtype=np.float64)
    if not train:
        return x.copy()
    return np.where(np.asarray(mask) != 0, x * keep_scale(p), 0.0)


def ref_backward(dy: np.ndarray, mask: np.ndarray, p: float, train: bool = True) -> np.ndarray:
    """dy: any shape, mask: same shape -> dx: same shape, float64."""
    return ref_forward(dy, mask, p, train)


@kernel
def dropout_forward(x, mask, y, scale):
    """y = x * mask * scale. x, y: f32, mask: uint8, all the same shape, C-contiguous.

    y may be x (in place). scale = keep_scale(p). Any shape works (flattened inside).
    """
    xf = x.reshape(-1)  # (size,) views
    mf = mask.reshape(-1)
    yf = y.reshape(-1)
    s = np.float32(scale)
    zero = np.float32(0.0)
    for i in range(xf.size):
        # A select, not x * 0, so a dropped inf/NaN does not turn into NaN.
        yf[i] = xf[i] * s if mf[i] else zero


# Backward is the same masked product: dropout_backward(dy, mask, dx, scale); dx may be dy.
# One compiled function serves both directions.
dropout_backward = dropout_forward


# ---- CUDA kernels
# The keep-mask is still drawn on the host (make_mask, from the run's generator) and uploaded:
# one byte per unit per step, and the random stream stays the CPU's, checkpointable bit for bit.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("dropout")
def _cuda_kernels():
    global cuda
    from numba import cuda

    @cuda.jit
    def masked_scale(x, mask, y, scale):  # x, y: (size,) f32 (y may be x); mask: (size,) u8
        zero = np.float32(0.0)
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = x[i] * scale if mask[i] else zero  # a select: a dropped inf stays out

    return types.SimpleNamespace(masked_scale=masked_scale)


class DropoutCUDA:
    """Inverted dropout on flat (size,) float32 device arrays with a uint8 device mask."""

    def __init__(self, size: int, p: float) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        self.scale = np.float32(keep_scale(p))
        self._run = Launch(_cuda_kernels, "masked_scale", *grid_1d(size))

    def forward(self, x, mask, y) -> None:
        """y = x * mask * scale."""
        self._run(x, mask, y, self.scale)

    def backward(self, dy, mask, dx) -> None:
        """dx = dy * mask * scale (the same product)."""
        self._run(dy, mask, dx, self.scale)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class DropoutCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.p_drop = layer.attrs["p"]
        self.scale = np.float32(keep_scale(self.p_drop))
        self.mask = np.ones(self.y.shape, np.uint8)  # (N, C, H, W) 1 = kept

    def forward(self, train):
        if train and self.p_drop > 0:
            self.mask = make_mask(self.plan.rng, self.y.shape, self.p_drop)
            dropout_forward(self.x[0], self.mask, self.y, self.scale)
        else:
            np.copyto(self.y, self.x[0])

    def backward(self):
        if self.dx[0] is not None:
            dropout_backward(self.dy, self.mask, self.dx[0], self.scale)


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class DropoutCUDARunner(cuda_runner.Runner):
    """The keep-mask is drawn on the host from the plan's generator (as on the CPU) and sent."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.p_drop = layer.attrs["p"]
        self.op = DropoutCUDA(self.y.size, self.p_drop)
        self.copy = add.AddCUDA(self.y.size)
        self.mask = np.ones(self.y.shape, np.uint8)  # (N, C, H, W) host copy, 1 = kept
        cuda = cuda_runner._cuda()
        self.mask_d = cuda.to_device(self.mask.reshape(-1))  # (N*C*H*W,) on the device
        self.staging = cuda_runner.Staging(self.y.shape, np.uint8)

    def prepare(self, train):
        """A training step's keep-mask, drawn on the host and queued for upload (evaluation
        copies x through and needs none)."""
        if train and self.p_drop > 0:
            self.mask = self.staging.next()
            self.mask[...] = self.draw()
            cuda_runner.upload(self.mask_d, self.mask.reshape(-1))

    def draw(self) -> np.ndarray:
        return make_mask(self.plan.rng, self.y.shape, self.p_drop)

    def forward(self, train):
        if train and self.p_drop > 0:
            self.op.forward(self.x[0].reshape(-1), self.mask_d, self.y.reshape(-1))
        else:
            self.copy.copy(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.mask_d, self.dx[0].reshape(-1))
