"""sigmoid: 1 / (1 + exp(-x)); sigmoid' = y (1 - y)."""

from __future__ import annotations

import math

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):  # exp(-v) overflows to inf for v << 0 and 1/inf = 0, so no branch
    # math.exp, not np.exp: the same float32 expf on the CPU, and numba-cuda has no np.exp
    return np.float32(1.0) / (np.float32(1.0) + math.exp(-v))


@kernel
def df(y, p0, p1):
    return y * (np.float32(1.0) - y)


class Sigmoid(Kind):
    name = "sigmoid"
    order = 3
    squash = "sigmoid keeps every score in (0, 1), so the loss cannot get low"
    f, df = f, df

    def ref_forward(self, x, values):
        # exp(-x) may overflow to inf for x << 0, giving exactly 0: silence the warning only.
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-x))

    def ref_backward(self, dy, y, values):
        return dy * y * (1.0 - y)

    def torch(self, y, values, F, torch):  # noqa: N803
        return torch.sigmoid(y)

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        return g.node("Sigmoid", [x])

    def torch_expr(self, x, values):
        return f"torch.sigmoid({x})"


KIND = Sigmoid()
