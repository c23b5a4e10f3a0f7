"""Channel concatenation of (N, C_i, H, W) pieces into (N, sum C_i, H, W).

Pure data movement, so plain NumPy slice assignment (a strided memcpy per piece) is as fast
as a kernel and needs no compilation. Backward slices dy back into one gradient per piece.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence

import numpy as np


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
# Channel slices of NCHW are strided on the device too, so each piece is one copy kernel.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@functools.cache
def _cuda_kernels():
    global cuda
    from numba import cuda

    @cuda.jit
    def copy_in(src, dst, piece, total, c0):
        # src: (N*Ci*P,) f32; dst: (N*C*P,) f32; piece = Ci*P, total = C*P, c0 = offset*P
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[(i // piece) * total + c0 + i % piece] = src[i]

    @cuda.jit
    def copy_out(src, dst, piece, total, c0):
        # src: (N*C*P,) f32; dst: (N*Ci*P,) f32 (overwritten)
        for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            dst[i] = src[(i // piece) * total + c0 + i % piece]

    @cuda.jit
    def move_channels(src, dst, c_src, s0, c_dst, d0, nch, plane, accumulate):
        # dst[:, d0:d0+nch] (+)= src[:, s0:s0+nch] for flat (N*C*P,) f32 buffers; the channel
        # moves of GPU groups (gathering maps, scattering their gradients back)
        piece = nch * plane
        total = (dst.size // (c_dst * plane)) * piece
        for i in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, r = i // piece, i % piece
            v = src[(n * c_src + s0) * plane + r]
            j = (n * c_dst + d0) * plane + r
            if accumulate:
                dst[j] += v
            else:
                dst[j] = v

    @cuda.jit
    def fill(dst, value):  # dst: (size,) f32
        for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            dst[i] = value

    return types.SimpleNamespace(copy_in=copy_in, copy_out=copy_out, move_channels=move_channels,
                                 fill=fill)  # fmt: skip


class ChannelMoveCUDA:
    """Copy or add channels [s0, s0+nch) of a (N, c_src, H, W) buffer to channels [d0, d0+nch)
    of a (N, c_dst, H, W) buffer (float32 device arrays)."""

    def __init__(self, n: int, c_src: int, s0: int, c_dst: int, d0: int, nch: int,
                 plane: int) -> None:  # fmt: skip
        from netdsl.ops.cudakit import Launch, grid_1d

        self.args = tuple(np.int64(v) for v in (c_src, s0, c_dst, d0, nch, plane))
        self.nbytes = n * nch * plane * 4  # float32 moved per call
        self._run = Launch(_cuda_kernels, "move_channels", *grid_1d(n * nch * plane))

    def copy(self, src, dst) -> None:
        """dst channels = src channels (device arrays of any shape, C-contiguous)."""
        self._run(src.reshape(-1), dst.reshape(-1), *self.args, False)

    def add(self, src, dst) -> None:
        """dst channels += src channels."""
        self._run(src.reshape(-1), dst.reshape(-1), *self.args, True)


def fill_cuda(dst, value: float = 0.0) -> None:
    """Set every element of a flat float32 device array to `value`."""
    from netdsl.ops.cudakit import Launch, grid_1d

    Launch(_cuda_kernels, "fill", *grid_1d(dst.size))(dst, np.float32(value))


class ConcatCUDA:
    """Channel concat of (N, C_i, H, W) pieces on flat float32 device arrays."""

    def __init__(self, n: int, channels: Sequence[int], plane: int) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        total = sum(channels)
        starts = _offsets(channels, total)
        self.args = [(np.int64(c * plane), np.int64(total * plane), np.int64(s * plane))
                     for c, s in zip(channels, starts[:-1], strict=True)]  # fmt: skip
        self._in = [Launch(_cuda_kernels, "copy_in", *grid_1d(n * c * plane)) for c in channels]
        self._out = [Launch(_cuda_kernels, "copy_out", *grid_1d(n * c * plane)) for c in channels]

    def forward(self, xs, y) -> None:
        """xs: the pieces, flat; y: (N*C*P,) flat."""
        for launch, x, a in zip(self._in, xs, self.args, strict=True):
            launch(x, y, *a)

    def backward(self, dy, dxs) -> None:
        """dxs[i] = channel slice i of dy; a None entry is skipped."""
        for launch, dx, a in zip(self._out, dxs, self.args, strict=True):
            if dx is not None:
                launch(dy, dx, *a)
