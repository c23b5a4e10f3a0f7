"""Channel concatenation of (N, C_i, H, W) pieces into (N, sum C_i, H, W).

Pure data movement, so plain NumPy slice assignment (a strided memcpy per piece) is as fast
as a kernel and needs no compilation. Backward slices dy back into one gradient per piece.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated


def _offsets(channels: Sequence[int], total: int) -> list[int]:
    """Start channel of every piece, plus `total` at the end; checks the pieces fill `total`."""
    starts = [0]
    for c in channels:
        starts.append(starts[-1] + c)
    if starts[-1] != total:
        raise ValueError(f"concat pieces have {starts[-1]} channels in all, output has {total}")
    return starts


def ref_forward(xs: Sequence[np.ndarray]) -> np.ndarray:
    """xs: pieces (N, C_i, H, W) -> (N, sum C_i, H, W), float64."""
    return np.concatenate([np.asarray(x, dtype=np.float64) for x in xs], axis=1)


def ref_backward(dy: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    """dy: (N, sum C_i, H, W), channels: the C_i -> gradients (N, C_i, H, W), float64."""
    starts = _offsets(channels, dy.shape[1])
    dy = np.asarray(dy, dtype=np.float64)
    return [dy[:, s:e].copy() for s, e in zip(starts[:-1], starts[1:], strict=True)]


def concat_forward(inputs: Sequence[np.ndarray], y: np.ndarray) -> None:
    """Copy pieces (N, C_i, H, W) into y (N, sum C_i, H, W), in order along channels."""
    starts = _offsets([x.shape[1] for x in inputs], y.shape[1])
    for x, s, e in zip(inputs, starts[:-1], starts[1:], strict=True):
        y[:, s:e] = x


def concat_backward(dy: np.ndarray, dxs: Sequence[np.ndarray]) -> None:
    """Copy channel slices of dy (N, sum C_i, H, W) into each dx (N, C_i, H, W) (overwrite)."""
    starts = _offsets([dx.shape[1] for dx in dxs], dy.shape[1])
    for dx, s, e in zip(dxs, starts[:-1], starts[1:], strict=True):
        dx[...] = dy[:, s:e]


# ---- CUDA kernels
# Channel slices of NCHW are strided on the device too, so each piece is one channel move:
# per image b, nch*plane contiguous floats from src[b, s0:] to dst[b, d0:]. A 2-D grid (x
# along the piece, y over the images) needs no index division, so the move's geometry costs
# nothing as run-time arguments: one kernel serves every move (two: copy and add), where a
# kernel per move was compiled once per distinct move (37 in AlexNet's two-column plan).

cuda = None  # numba.cuda, bound by _cuda_kernels() and _cuda_fill()


@generated("concat")
def _cuda_kernels(accumulate: bool):
    """move_channels(src, dst, n, piece, src_image, src_at, dst_image, dst_at): for each of n
    images b, dst[b * dst_image + dst_at + r] (+)= src[b * src_image + src_at + r] for r in
    [0, piece); flat f32 buffers (image = channels * plane floats, at = first channel * plane).
    """
    global cuda
    from numba import cuda

    @cuda.jit
    def move_channels(src, dst, n, piece, src_image, src_at, dst_image, dst_at):
        first = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.x * cuda.blockDim.x
        for b in range(cuda.blockIdx.y, n, cuda.gridDim.y):
            s, d = b * src_image + src_at, b * dst_image + dst_at
            for r in range(first, piece, step):
                if accumulate:
                    dst[d + r] += src[s + r]
                else:
                    dst[d + r] = src[s + r]

    return types.SimpleNamespace(move_channels=move_channels)


@generated("fill")
def _cuda_fill():
    """fill(dst, value): a plain grid-stride loop, deliberately generic over the length (a
    constant length would buy nothing here and cost a compilation per buffer size)."""
    global cuda
    from numba import cuda

    @cuda.jit
    def fill(dst, value):  # dst: (size,) f32
        for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            dst[i] = value

    return types.SimpleNamespace(fill=fill)


class ChannelMoveCUDA:
    """Copy or add channels [s0, s0+nch) of a (N, c_src, H, W) buffer to channels [d0, d0+nch)
    of a (N, c_dst, H, W) buffer (float32 device arrays): the channel moves of GPU groups
    (gathering maps, scattering their gradients back) and of concat."""

    def __init__(self, n: int, c_src: int, s0: int, c_dst: int, d0: int, nch: int,
                 plane: int) -> None:  # fmt: skip
        from netdsl.ops.cudakit import SIM_MAX_BLOCKS, Launch, grid_1d, simulator

        self.nbytes = n * nch * plane * 4  # float32 moved per call
        piece = nch * plane
        self._geo = tuple(np.int64(v) for v in (n, piece, c_src * plane, s0 * plane,
                                                c_dst * plane, d0 * plane))  # fmt: skip
        blocks, threads = grid_1d(piece)
        grid = (blocks, min(n, SIM_MAX_BLOCKS if simulator() else 65535))
        self._copy = Launch(_cuda_kernels, "move_channels", grid, threads, (False,))
        self._add = Launch(_cuda_kernels, "move_channels", grid, threads, (True,))

    def copy(self, src, dst) -> None:
        """dst channels = src channels (device arrays of any shape, C-contiguous)."""
        self._copy(src.reshape(-1), dst.reshape(-1), *self._geo)

    def add(self, src, dst) -> None:
        """dst channels += src channels."""
        self._add(src.reshape(-1), dst.reshape(-1), *self._geo)


def fill_cuda(dst, value: float = 0.0) -> None:
    """Set every element of a flat float32 device array to `value`."""
    _fill_launch(dst.size)(dst, np.float32(value))


@functools.cache
def _fill_launch(size: int):
    """The fill launcher for `size` elements, built once (fills run every backward step)."""
    from netdsl.ops.cudakit import Launch, grid_1d

    return Launch(_cuda_fill, "fill", *grid_1d(size))


class ConcatCUDA:
    """Channel concat of (N, C_i, H, W) pieces on flat float32 device arrays."""

    def __init__(self, n: int, channels: Sequence[int], plane: int) -> None:
        total = sum(channels)
        starts = _offsets(channels, total)
        pieces = list(zip(channels, starts[:-1], strict=True))
        self._in = [ChannelMoveCUDA(n, c, 0, total, s, c, plane) for c, s in pieces]
        self._out = [ChannelMoveCUDA(n, total, s, c, 0, c, plane) for c, s in pieces]

    def forward(self, xs, y) -> None:
        """xs: the pieces, flat; y: (N*C*P,) flat."""
        for move, x in zip(self._in, xs, strict=True):
            move.copy(x, y)

    def backward(self, dy, dxs) -> None:
        """dxs[i] = channel slice i of dy; a None entry is skipped."""
        for move, dx in zip(self._out, dxs, strict=True):
            if dx is not None:
                move.copy(dy, dx)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class ConcatCPURunner(Runner):
    def forward(self, train):
        concat_forward(self.x, self.y)

    def backward(self):
        if all(d is not None for d in self.dx):
            concat_backward(self.dy, self.dx)
        else:
            c0 = 0
            for x, d in zip(self.x, self.dx):
                if d is not None:
                    np.copyto(d, self.dy[:, c0 : c0 + x.shape[1]])
                c0 += x.shape[1]


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class ConcatCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        _, h, w = layer.out_shape
        self.op = ConcatCUDA(plan.batch, [s[0] for s in layer.in_shapes], h * w)

    def forward(self, train):
        self.op.forward([x.reshape(-1) for x in self.x], self.y.reshape(-1))

    def backward(self):
        self.op.backward(self.dy.reshape(-1), [None if d is None else d.reshape(-1)
                                               for d in self.dx])  # fmt: skip
