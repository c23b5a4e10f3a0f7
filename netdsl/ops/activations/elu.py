"""elu(alpha): x for x > 0, alpha (exp(x) - 1) otherwise (PyTorch's F.elu), alpha > 0.

Its derivative is written through the output y: 1 for y > 0, else alpha exp(x) = y + alpha
(alpha > 0 keeps the sign of y equal to that of x), so the forward may run in place."""

from __future__ import annotations

import math

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):  # p0: alpha. expm1, not exp - 1: exact near 0, as torch's elu
    return v if v > 0 else p0 * math.expm1(v)


@kernel
def df(y, p0, p1):
    return np.float32(1.0) if y > 0 else y + p0


class Elu(Kind):
    name = "elu"
    params = ("alpha",)
    defaults = (1.0,)
    f, df = f, df

    def args(self):
        from netdsl.schema import POSITIVE

        return {"alpha": POSITIVE}

    def text(self, values):
        return "elu" if values[0] == 1.0 else f"elu({values[0]:g})"

    def ref_forward(self, x, values):
        return np.where(x > 0, x, values[0] * np.expm1(np.minimum(x, 0.0)))

    def ref_backward(self, dy, y, values):
        return dy * np.where(y > 0, 1.0, y + values[0])

    def torch(self, y, values, F, torch):  # noqa: N803
        return F.elu(y, values[0])

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return g.node("Elu", [x], alpha=values[0])

    def torch_expr(self, x, values):
        return f"F.elu({x}, {values[0]!r})"


KIND = Elu()
