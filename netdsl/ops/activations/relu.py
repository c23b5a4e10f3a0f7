"""relu: max(x, 0); relu' = [y > 0]."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):  # v, p0, p1: float32 -> float32
    return v if v > 0 else v * np.float32(0.0)


@kernel
def df(y, p0, p1):
    return np.float32(1.0) if y > 0 else np.float32(0.0)


class Relu(Kind):
    name = "relu"
    order = 0
    squash = "relu sets negative scores to 0 and stops their gradients"
    f, df = f, df

    def ref_forward(self, x, values):
        return np.maximum(x, 0.0)

    def ref_backward(self, dy, y, values):
        return dy * (y > 0)

    def torch(self, y, values, F, torch):  # noqa: N803
        return F.relu(y)

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return g.node("Relu", [x])

    def torch_expr(self, x, values):
        return f"F.relu({x})"


KIND = Relu()
