"""scaled_tanh(A, S): A tanh(S x), LeCun et al. 1998 (Appendix A): A = 1.7159, S = 2/3, so
that f(1) = 1 and f(-1) = -1. Derivative through the output y: A S (1 - (y/A)^2) =
(S / A) (A^2 - y^2)."""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel

from ._base import Kind

# tanh(z) = z N(z^2) / D(z^2) on |z| <= 9, a rational fit of degree 4 over 4 in z^2 (fitted
# here for the least relative error on [0, 9]; 2e-8 in exact arithmetic, at most 6 float32
# ulp (3.6e-7 relative) as float32 evaluates it, libm's tanhf 1.4 ulp). Beyond 9, tanh rounds
# to 1 in float32. Not np.tanh: that is one libm call per element, which LLVM cannot
# vectorise (13 ns a value: 8 of LeNet-5-1998's 20 ms a step went there); this is 9
# multiply-adds, one division and selects, 8 values per AVX instruction. Compares rather than
# min/max for the clamps, so a NaN stays NaN (divergence stays visible).
N1, N2, N3, N4 = (
    0.13381071388721466,
    0.0034956412855535746,
    2.060993756458629e-05,
    1.335581334416247e-08,
)
D1, D2, D3, D4 = (
    0.46714386343955994,
    0.02587718516588211,
    0.0003285720886196941,
    7.777036898914957e-07,
)


@kernel
def f(v, p0, p1):  # p0: A, p1: S
    z = p1 * v
    zc = np.float32(9.0) if z > np.float32(9.0) else z  # keeps u^4 finite
    zc = np.float32(-9.0) if zc < np.float32(-9.0) else zc
    u = zc * zc
    num = np.float32(N4) * u + np.float32(N3)
    num = (num * u + np.float32(N2)) * u + np.float32(N1)
    den = np.float32(D4) * u + np.float32(D3)
    den = (den * u + np.float32(D2)) * u + np.float32(D1)
    t = zc * (num * u + np.float32(1.0)) / (den * u + np.float32(1.0))
    # saturated beyond 9 (tanh(inf) = 1 exactly); |y| <= A, so A^2 - y^2 >= 0 in df
    t = np.float32(1.0) if (t > np.float32(1.0)) | (z > np.float32(9.0)) else t
    t = np.float32(-1.0) if (t < np.float32(-1.0)) | (z < np.float32(-9.0)) else t
    return p0 * t


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
