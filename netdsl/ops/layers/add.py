"""`add s(a, b), relu`: the elementwise sum of two or more equal-shaped inputs (residuals)."""

from __future__ import annotations

from ...schema import ACT_FLAGS, ACT_OPTS, Schema
from ..base import LayerType, fmt


class Add(LayerType):
    name = "add"
    schema = Schema({**ACT_OPTS}, flags=ACT_FLAGS, min_inputs=2, max_inputs=None)
    split_mode = "elementwise"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Eltwise",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Eltwise SUM without coefficients; PROD, MAX and coefficients refused."""
        from ...errors import NetError
        from ...interop import NetLine

        p = src.params.get("eltwise_param", {})
        op = str(p.get("operation", "SUM"))
        if op != "SUM":
            raise NetError(f"Eltwise {op} is not supported; netdsl's add sums",
                           src.at("eltwise_param.operation"))  # fmt: skip
        if any(c != 1 for c in p.get("coeff", [])):
            raise NetError("Eltwise with coefficients is not supported; netdsl's add sums",
                           src.at("eltwise_param.coeff"))  # fmt: skip
        return [NetLine("add", name, [], inputs)]

    def infer(self, layer):
        first = layer.in_shapes[0]
        for i, (name, shape) in enumerate(zip(layer.inputs, layer.in_shapes)):
            if shape != first:
                raise layer.error(
                    f"{layer.name}: add operands differ: {layer.inputs[0]} is {fmt(first)}, "
                    f"{name} is {fmt(shape)}", f"__input{i}__",
                    "add needs equal shapes; project the shortcut with a 1x1 conv")  # fmt: skip
        return first

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("shortcut",)
    cudaconvnet_types = ("eltsum",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.darknet import activation, refuse

        refuse(src, {"alpha": 1, "beta": 1})
        act = activation(src, default="linear")
        return [NetLine("add", name, [act] if act else [], inputs)]  # (layer before, from)

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine

        coeffs = [c.strip() for c in src.params.get("coeffs", "").split(",") if c.strip()]
        for c in coeffs:
            try:
                one = float(c) == 1
            except ValueError:
                one = False
            if not one:
                raise NetError(f"coeffs: netdsl's add sums its inputs with coefficient 1, "
                               f"not {c}", src.at("coeffs"))  # fmt: skip
        return [NetLine("add", name, [], inputs)]  # neuron=: added by the importer

    def ref_forward(self, layer, xs, p, ctx):
        return sum(xs[1:], xs[0].copy())

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return [dy for _ in xs]  # d(a + b)/da = 1

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        y = ins[0]
        for other in ins[1:]:
            y = y + other
        return y

    def cpu_runner(self):
        from ..add import AddCPURunner

        return AddCPURunner

    def cuda_runner(self):
        from ..add import AddCUDARunner

        return AddCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        ranks = {g.rank[g.x(layer, i)] for i in range(len(layer.inputs))}
        rank = ranks.pop() if len(ranks) == 1 else 4
        y = g.x(layer, 0, rank)
        for i in range(1, len(layer.inputs)):
            y = g.node("Add", [y, g.x(layer, i, rank)])
        return y, rank

    def torch_forward_expr(self, layer, t):
        ranks = {t.rank_of(layer, i) for i in range(len(layer.inputs))}
        rank = ranks.pop() if len(ranks) == 1 else 4
        return " + ".join(t.x(layer, i, rank) for i in range(len(layer.inputs))), rank


LAYER = Add()
