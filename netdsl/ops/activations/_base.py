"""What an activation kind declares (one module per kind in netdsl/ops/activations/)."""

from __future__ import annotations

from typing import Any


class Kind:
    """An elementwise activation kind.

    name: the word (`conv ..., elu`, `elu e1`); params/defaults: its call parameters in
    positional order (`elu(alpha=0.5)`, standalone `elu e1: 0.5` fills the first); args():
    each parameter's schema.Arg (kind and range, checked where it is written); order: the
    code order (the first kinds keep their historical codes; leave 100 for a new kind).
    squash: the lint note when the kind is applied to class scores before cross_entropy.

    The float64 reference works from the OUTPUT y in its backward, so the forward may run in
    place; f(v, p0, p1) and df(y, p0, p1) are the same math in float32 as @kernel functions
    (compiled for the CPU kernels and, from the same source, as CUDA device functions). p0,
    p1 are the parameter values in order, 0 where the kind has fewer.
    """

    name: str = ""
    params: tuple[str, ...] = ()
    defaults: tuple[float, ...] = ()
    order: int = 100
    squash: str | None = None
    f: Any = None  # @kernel f(v, p0, p1) -> float32
    df: Any = None  # @kernel df(y, p0, p1) -> float32: f' written through the output y

    def args(self) -> dict:
        """{param: schema.Arg}: imported lazily (schema reads this registry on import)."""
        return {}

    def text(self, values: tuple[float, ...]) -> str:
        """The activation as reports write it: "relu", "leaky(0.1)"."""
        return self.name

    def ref_forward(self, x, values):
        """float64 forward, x: any shape."""
        raise NotImplementedError(self.name)

    def ref_backward(self, dy, y, values):
        """float64 gradient from the forward output y."""
        raise NotImplementedError(self.name)

    def torch(self, y, values, F, torch):  # noqa: N803
        """The PyTorch twin."""
        raise NotImplementedError(self.name)

    # ---------------------------------------------------------------- export (netdsl/export/)
    def onnx(self, g, x: str, values: tuple[float, ...]) -> str:
        """Emit the activation of tensor `x` into the OnnxGraph `g`; the output's name."""
        from ...errors import NetdslError

        raise NetdslError(f"cannot export activation {self.name!r} to ONNX: it declares no mapping")

    def torch_expr(self, x: str, values: tuple[float, ...]) -> str:
        """The activation of the Python expression `x` in generated PyTorch source."""
        from ...errors import NetdslError

        raise NetdslError(f"cannot export activation {self.name!r} to PyTorch: it declares no "
                         "mapping")  # fmt: skip
