"""tanh; tanh' = 1 - y^2."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):
    return np.tanh(v)


@kernel
def df(y, p0, p1):
    return np.float32(1.0) - y * y


class Tanh(Kind):
    name = "tanh"
    order = 2
    squash = "tanh keeps every score in (-1, 1), so the loss cannot get low"
    f, df = f, df

    def ref_forward(self, x, values):
        return np.tanh(x)

    def ref_backward(self, dy, y, values):
        return dy * (1.0 - y * y)

    def torch(self, y, values, F, torch):  # noqa: N803
        return torch.tanh(y)

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return g.node("Tanh", [x])

    def torch_expr(self, x, values):
        return f"torch.tanh({x})"


KIND = Tanh()
