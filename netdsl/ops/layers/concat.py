"""`concat c(a, b)`: inputs joined along channels; heights and widths must match."""

from __future__ import annotations

from ...schema import Schema
from ..base import LayerType


class Concat(LayerType):
    name = "concat"
    schema = Schema({}, min_inputs=2, max_inputs=None)
    split_mode = "gather"

    def infer(self, layer):
        _, h, w = layer.in_shapes[0]
        for i, (name, shape) in enumerate(zip(layer.inputs, layer.in_shapes)):
            if shape[1:] != (h, w):
                raise layer.error(
                    f"{layer.name}: concat operands differ in size: {layer.inputs[0]} is "
                    f"{h}x{w}, {name} is {shape[1]}x{shape[2]}", f"__input{i}__",
                    "concat joins channels; heights and widths must match")  # fmt: skip
        return (sum(s[0] for s in layer.in_shapes), h, w)

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("route",)
    cudaconvnet_types = ("concat",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine

        return [NetLine("concat", name, [], inputs)]  # the route's layers, resolved

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...interop import NetLine

        return [NetLine("concat", name, [], inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import concat

        return concat.ref_forward(xs)

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import concat

        return concat.ref_backward(dy, [v.shape[1] for v in xs])

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return torch.cat(ins, dim=1)

    def cpu_runner(self):
        from ..concat import ConcatCPURunner

        return ConcatCPURunner

    def cuda_runner(self):
        from ..concat import ConcatCUDARunner

        return ConcatCUDARunner


LAYER = Concat()
