"""`input image: 1x28x28`: the network's input, CxHxW (HxW is one channel)."""

from __future__ import annotations

from ...schema import REQUIRED, Opt, Schema
from ..base import LayerType, fmt


class Input(LayerType):
    name = "input"
    schema = Schema(
        {"shape": Opt(None, REQUIRED, required="a shape CxHxW",
                      hint="e.g. input image: 1x28x28")},
        positional_dims="shape", min_inputs=0, max_inputs=0,
    )  # fmt: skip
    source = True
    colour = "#eeeeee"

    def infer(self, layer):
        shape = tuple(layer.attrs["shape"])
        if len(shape) == 2:  # HxW: one channel
            shape = (1, *shape)
        if len(shape) != 3:
            raise layer.error(f"input shape must be CxHxW, got {fmt(shape)}", "shape",
                              "e.g. input image: 3x32x32")  # fmt: skip
        if min(shape) < 1:
            raise layer.error(f"input shape {fmt(shape)} has a zero size", "shape")
        return shape

    def receptive_field(self, layer, r, j):
        return 1, 1

    def ref_forward(self, layer, xs, p, ctx):
        return ctx.x

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return []

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return model.x

    def cpu_runner(self):
        from ...backends.cpu import SourceRunner

        return SourceRunner

    def cuda_runner(self):
        from ...backends.cuda_runner import SourceRunner

        return SourceRunner

    # ---------------------------------------------------------------- export
    # the graph's input is made by the drivers (netdsl/export/onnx.py, pytorch.py)
    def onnx_nodes(self, layer, g):
        return "input", 4

    def torch_forward_expr(self, layer, t):
        return "x", 4


LAYER = Input()
