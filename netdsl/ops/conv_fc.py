"""A convolution whose kernel covers its whole unpadded input, run as the fc layer it is.

LeNet-5's C5 (16 maps of 5x5 -> 120 maps of 1x1 through 5x5 kernels) is such a layer: each
output is a dot product of the whole input image with one filter, so y (N, O) = x (N, C*H*W)
@ w (O, C*kh*kw).T, the weight's PyTorch layout (O, C, kh, kw) flattening exactly as the
input (N, C, H, W) does. ConvCPU's im2col + GEMM path gathered a 400-row column matrix one
image column at a time and ran 128 GEMMs of one column each (0.84 ms forward, 1.5 ms
backward at batch 128, one thread); as one fc product it is three BLAS calls on the
arrays themselves, no copy.
"""

from __future__ import annotations

import numpy as np

from netdsl.ops.fc import FcCPU


class WholeInputConvCPU:
    """ConvCPU's interface (forward/backward) for a conv whose kernel is its whole input."""

    def __init__(self, n: int, c: int, h: int, w: int, o: int, bias: bool) -> None:
        self.n, self.o = n, o
        self.fc = FcCPU(n, c * h * w, o, bias)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, y: np.ndarray) -> None:
        """y (N, O, 1, 1) = conv(x (N, C, H, W), w (O, C, H, W)) + b (O,)."""
        n, o = self.n, self.o
        self.fc.forward(x.reshape(n, -1), w.reshape(o, -1), b, y.reshape(n, o))

    def backward(self, dy: np.ndarray, x: np.ndarray, w: np.ndarray, dx: np.ndarray | None,
                 dw: np.ndarray, db: np.ndarray | None) -> None:  # fmt: skip
        """Overwrite dx (unless None), dw and db (unless None), as ConvCPU.backward does."""
        n, o = self.n, self.o
        dx2 = None if dx is None else dx.reshape(n, -1)
        self.fc.backward(dy.reshape(n, o), x.reshape(n, -1), w.reshape(o, -1), dx2,
                         dw.reshape(o, -1), db)  # fmt: skip


def whole_input(n: int, c: int, h: int, w: int, o: int, attrs: dict) -> WholeInputConvCPU | None:
    """The fc form of a conv layer (its attrs) when its kernel covers the whole unpadded input
    in one position without groups or dilation, else None (ConvCPU then runs it)."""
    whole = (
        tuple(attrs["kernel"]) == (h, w)
        and tuple(attrs["out_hw"]) == (1, 1)
        and tuple(attrs["pad_tl"]) == (0, 0)
        and attrs["groups"] == 1
        and (tuple(attrs["dilation"]) == (1, 1) or (h, w) == (1, 1))
    )
    return WholeInputConvCPU(n, c, h, w, o, attrs["bias"]) if whole else None
