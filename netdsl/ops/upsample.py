"""Nearest-neighbour upsampling by whole factors (Darknet's [upsample], PyTorch's
``F.interpolate(mode="nearest")`` with an integer scale).

``y[n, c, i, j] = x[n, c, i // fh, j // fw]``, so (N, C, H, W) -> (N, C, H*fh, W*fw).
The backward pass is the adjoint: each input gradient is the sum of dy over its fh x fw
block, ``dx[n, c, a, b] = sum_{u<fh, v<fw} dy[n, c, a*fh + u, b*fw + v]``. Nothing is saved
for the backward (it reads only dy).
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def _check(a: np.ndarray, fh: int, fw: int) -> None:
    if a.ndim != 4 or fh < 1 or fw < 1:
        raise ValueError(f"upsample needs (N, C, H, W) and factors >= 1, got {a.shape}, "
                         f"{fh}x{fw}")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(x: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """x: (N, C, H, W) -> y: (N, C, H*fh, W*fw), float64; each value repeated fh x fw times."""
    _check(x, fh, fw)
    return np.asarray(x, dtype=np.float64).repeat(fh, axis=2).repeat(fw, axis=3)


def ref_backward(dy: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """dy: (N, C, H*fh, W*fw) -> dx: (N, C, H, W), float64; dy summed over each block."""
    _check(dy, fh, fw)
    n, c, ho, wo = dy.shape
    if ho % fh or wo % fw:
        raise ValueError(f"upsample: dy {dy.shape} is not a multiple of {fh}x{fw}")
    blocks = np.asarray(dy, dtype=np.float64).reshape(n, c, ho // fh, fh, wo // fw, fw)
    return blocks.sum(axis=(3, 5))


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
# ---------------------------------------------------------------------------------------------


@kernel
def upsample_forward(x, y, fh, fw):
    """x: (N, C, H, W) f32; y: (N, C, H*fh, W*fw) f32 out."""
    n_batch, c_in, h, w = x.shape
    for n in range(n_batch):
        for c in range(c_in):
            for i in range(h * fh):
                a = i // fh  # input row of output row i
                for j in range(w * fw):
                    y[n, c, i, j] = x[n, c, a, j // fw]


@kernel
def upsample_backward(dy, dx, fh, fw):
    """dy: (N, C, H*fh, W*fw) f32; dx: (N, C, H, W) f32 out (overwritten): block sums of dy."""
    n_batch, c_in, h, w = dx.shape
    for n in range(n_batch):
        for c in range(c_in):
            for a in range(h):
                for b in range(w):
                    s = np.float32(0.0)
                    for u in range(fh):  # the fh x fw block of outputs that copied x[a, b]
                        for v in range(fw):
                            s += dy[n, c, a * fh + u, b * fw + v]
                    dx[n, c, a, b] = s


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# Specialised on the layer: planes (N*C), the input size and the factors are compile-time
# constants (constant index divisions, an unrollable block loop).

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("upsample")
def _cuda_kernels(h: int, w: int, fh: int, fw: int):
    """Upsample forward (one thread per output) and backward (one thread per input, summing
    its block: no atomics) for x (planes*h*w,) <-> y (planes*h*fh*w*fw,); planes = N*C is the
    arrays' (layers of one geometry share the kernels)."""
    global cuda
    from numba import cuda

    ho, wo = h * fh, w * fw

    @cuda.jit
    def upsample_forward(x, y):
        # x: (N*C*H*W,) f32; y: (N*C*Ho*Wo,) f32 out
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            q, j = e // wo, e % wo  # q = plane*Ho + i
            pl, i = q // ho, q % ho
            y[e] = x[(pl * h + i // fh) * w + j // fw]

    @cuda.jit
    def upsample_backward(dy, dx):
        # dy: (N*C*Ho*Wo,) f32; dx: (N*C*H*W,) f32 out (overwritten)
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            q, b = e // w, e % w  # q = plane*H + a
            pl, a = q // h, q % h
            s = np.float32(0.0)
            for u in range(fh):
                row = (pl * ho + a * fh + u) * wo + b * fw  # first output of the block's row u
                for v in range(fw):
                    s += dy[row + v]
            dx[e] = s

    return types.SimpleNamespace(upsample_forward=upsample_forward,
                                 upsample_backward=upsample_backward)  # fmt: skip


# cuda_ptx.compile_records: all 4 arguments are the layer's geometry (see there)
_cuda_kernels.geometry_args = 4


class UpsampleCUDA:
    """Nearest upsampling by fh x fw, (N, C, H, W) -> (N, C, H*fh, W*fw), on flat arrays."""

    def __init__(self, n: int, c: int, h: int, w: int, fh: int, fw: int) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        cfg = (int(h), int(w), int(fh), int(fw))
        size = n * c * h * w
        self._fwd = Launch(_cuda_kernels, "upsample_forward", *grid_1d(size * fh * fw), cfg)
        self._bwd = Launch(_cuda_kernels, "upsample_backward", *grid_1d(size), cfg)

    def forward(self, x, y) -> None:
        """x: (N*C*H*W,) f32; y: (N*C*H*fh*W*fw,) f32 out."""
        self._fwd(x, y)

    def backward(self, dy, dx) -> None:
        """dy: (N*C*H*fh*W*fw,) f32; dx: (N*C*H*W,) f32 out."""
        self._bwd(dy, dx)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class UpsampleCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.fh, self.fw = layer.attrs["factor"]

    def forward(self, train):
        upsample_forward(self.x[0], self.y, self.fh, self.fw)

    def backward(self):
        if self.dx[0] is not None:
            upsample_backward(self.dy, self.dx[0], self.fh, self.fw)


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class UpsampleCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        (c, ho, wo), (fh, fw) = layer.out_shape, layer.attrs["factor"]
        self.op = UpsampleCUDA(plan.batch, c, ho // fh, wo // fw, fh, fw)

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.dx[0].reshape(-1))
