"""linear: the identity; linear' = 1."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):
    return v


@kernel
def df(y, p0, p1):
    return np.float32(1.0)


class Linear(Kind):
    name = "linear"
    order = 4
    f, df = f, df

    def ref_forward(self, x, values):
        return x.copy()

    def ref_backward(self, dy, y, values):
        return dy.copy()

    def torch(self, y, values, F, torch):  # noqa: N803
        return y

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return x  # the identity: no node

    def torch_expr(self, x, values):
        return x


KIND = Linear()
