"""`act a1: relu`, or the activation's own word as the type: `relu r1`, `leaky l1: 0.1`.

Every spelling makes an `act` layer; the activation itself is applied by the pipeline, as
for any layer with a fused activation, so this layer's own forward is the identity."""

from __future__ import annotations

from ...schema import (
    ACT_FLAGS,
    ACT_OPTS,
    ACTIVATIONS,
    CALL_ARGS,
    Opt,
    Schema,
    _need,
    arg_value,
)
from .. import activations
from ..base import LayerType, activation_text


def _read_arg(spec):
    """A reader of one number checked against `spec` (its kind's schema.Arg)."""

    def reader(items, key, at):
        return arg_value(spec, _need(items, key, at, "a number"), f"'{key}'"), 1

    return reader


class Act(LayerType):
    name = "act"
    schema = Schema({**ACT_OPTS}, flags=ACT_FLAGS)

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("ReLU", "Sigmoid", "TanH", "ELU")

    def import_caffe(self, src, inputs, name, ctx):
        """A Caffe activation layer as a standalone activation (netdsl/interop/caffe.py folds
        an in-place one into the layer before): ReLU with negative_slope is leaky."""
        from ...interop import NetLine, number

        if src.kind == "ReLU":
            slope = src.params.get("relu_param", {}).get("negative_slope", 0.0)
            if slope:
                return [NetLine("leaky", name, [number(slope)], inputs)]
            return [NetLine("relu", name, [], inputs)]
        if src.kind == "ELU":
            alpha = src.params.get("elu_param", {}).get("alpha", 1.0)
            return [NetLine("elu", name, [number(alpha)] if alpha != 1.0 else [], inputs)]
        return [NetLine(src.kind.lower(), name, [], inputs)]

    def spellings(self):
        words = {self.name: self.schema}
        for a in ACTIVATIONS:  # `relu r1`, `leaky l1: 0.1`, `elu e1: 0.5`, `scaled_tanh s: S 1`
            kind = activations.get(a)
            args = CALL_ARGS["activation"].get(a, {})
            opts = {}
            for p, default in zip(kind.params, kind.defaults):
                opts[p] = Opt(_read_arg(args[p]), default)
            words[a] = Schema(opts, positional_num=kind.params[0] if kind.params else None)
        return words

    def canonical(self, spelling, attrs, locs, loc):
        if spelling == self.name:
            return attrs
        kind = activations.get(spelling)
        values = tuple(attrs.pop(p, d) for p, d in zip(kind.params, kind.defaults))
        locs["activation"] = loc
        return {"activation": (spelling, *(values or (0.0,)))}

    def kernel_text(self, layer):
        return activation_text(layer.attrs["activation"])

    def type_text(self, layer):
        return self.name

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("activation",)
    cudaconvnet_types = ("neuron",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.darknet import activation

        return [NetLine("act", name, [activation(src, default="linear") or "linear"], inputs)]

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.cudaconvnet import activation

        return [NetLine("act", name, [activation(src) or "linear"], inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        return xs[0]

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return [dy]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return ins[0]

    def cpu_runner(self):
        from ..activation import ActCPURunner

        return ActCPURunner

    def cuda_runner(self):
        from ..activation import ActCUDARunner

        return ActCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        x = g.x(layer)  # the identity; the driver adds the activation
        return x, g.rank[x]

    def torch_forward_expr(self, layer, t):
        return t.x(layer), t.rank_of(layer)


LAYER = Act()
