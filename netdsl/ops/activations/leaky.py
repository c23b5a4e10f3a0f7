"""leaky(slope): max(x, slope * x) for slope > 0; leaky' = 1 or slope by the sign of y."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):  # p0: the slope
    return v if v > 0 else p0 * v


@kernel
def df(y, p0, p1):  # slope > 0 keeps the sign of y equal to that of x
    return np.float32(1.0) if y > 0 else p0


class Leaky(Kind):
    name = "leaky"
    params = ("slope",)
    defaults = (0.01,)
    order = 1
    f, df = f, df

    def args(self):
        from netdsl.schema import FINITE

        return {"slope": FINITE}

    def text(self, values):
        return f"leaky({values[0]:g})"

    def ref_forward(self, x, values):
        return np.where(x > 0, x, values[0] * x)

    def ref_backward(self, dy, y, values):
        return dy * np.where(y > 0, 1.0, values[0])

    def torch(self, y, values, F, torch):  # noqa: N803
        return F.leaky_relu(y, values[0])

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return g.node("LeakyRelu", [x], alpha=values[0])

    def torch_expr(self, x, values):
        return f"F.leaky_relu({x}, {values[0]!r})"


KIND = Leaky()
