"""scaled_tanh(A, S): A tanh(S x), LeCun et al. 1998 (Appendix A): A = 1.7159, S = 2/3, so
that f(1) = 1 and f(-1) = -1. Derivative through the output y: A S (1 - (y/A)^2) =
(S / A) (A^2 - y^2)."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind


@kernel
def f(v, p0, p1):  # p0: A, p1: S
    return p0 * np.tanh(p1 * v)


@kernel
def df(y, p0, p1):
    return p1 / p0 * (p0 * p0 - y * y)


class ScaledTanh(Kind):
    name = "scaled_tanh"
    params = ("A", "S")
    defaults = (1.7159, 2.0 / 3.0)
    squash = "scaled_tanh keeps every score in (-A, A), so the loss cannot get low"
    f, df = f, df

    def args(self):
        from netdsl.schema import DIVISOR, POSITIVE

        return {"A": DIVISOR, "S": POSITIVE}  # df divides by A in float32

    def text(self, values):
        if tuple(values) == self.defaults:
            return self.name
        return f"scaled_tanh(A={values[0]:g}, S={values[1]:g})"

    def ref_forward(self, x, values):
        return values[0] * np.tanh(values[1] * x)

    def ref_backward(self, dy, y, values):
        a, s = values
        return dy * (s / a) * (a * a - y * y)

    def torch(self, y, values, F, torch):  # noqa: N803
        return values[0] * torch.tanh(values[1] * y)

    # ---------------------------------------------------------------- export
    def onnx(self, g, x, values):
        a, s = values  # A tanh(S x): no ONNX op of its own
        y = g.node("Tanh", [g.node("Mul", [x, g.const([s])])])
        return g.node("Mul", [y, g.const([a])])

    def torch_expr(self, x, values):
        return f"{values[0]!r} * torch.tanh({values[1]!r} * {x})"


KIND = ScaledTanh()
