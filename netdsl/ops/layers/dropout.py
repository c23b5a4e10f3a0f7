"""`dropout d1: 0.5`: inverted dropout (kept units scaled by 1/(1-p) in training)."""

from __future__ import annotations

from ...schema import Opt, Schema, read_float
from ..base import LayerType


class Dropout(LayerType):
    name = "dropout"
    identity_at_eval = True
    schema = Schema({"p": Opt(read_float(lo=0.0, hi=1.0, open_hi=True), 0.5)}, positional_num="p")

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Dropout",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Dropout (inverted, as netdsl's): dropout_ratio."""
        from ...interop import NetLine, number

        p = src.params.get("dropout_param", {}).get("dropout_ratio", 0.5)
        return [NetLine("dropout", name, [number(p)], inputs)]

    def kernel_text(self, layer):
        return f"p={layer.attrs['p']:g}"

    def _mask(self, layer, x, ctx):
        import numpy as np

        return ctx.masks.get(layer.name, np.ones(x.shape, np.uint8))

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("dropout",)
    cudaconvnet_types = ("dropout", "dropout2")

    def import_darknet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine, number
        from ...interop.darknet import float_opt

        p = float_opt(src, "probability", 0.5)
        if not 0 <= p < 1:
            raise NetError("probability must be at least 0 and below 1", src.at("probability"))
        # Darknet's dropout scales the kept units by 1/(1-p) in training, as netdsl's does
        return [NetLine("dropout", name, [number(p)], inputs)]

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine, number
        from ...interop.cudaconvnet import float_opt

        keep = float_opt(src, "keep", 0.5)
        if not 0 < keep <= 1:
            raise NetError("keep must be above 0 and at most 1", src.at("keep"))
        comment = ""
        if src.kind == "dropout2":
            comment = "dropout2 scales by keep at test time instead: the same net up to that factor"
        return [NetLine("dropout", name, [number(1 - keep)], inputs, comment)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import dropout

        return dropout.ref_forward(xs[0], self._mask(layer, xs[0], ctx), layer.attrs["p"], True)

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import dropout

        return [dropout.ref_backward(dy, self._mask(layer, xs[0], ctx), layer.attrs["p"], True)]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return F.dropout(ins[0], layer.attrs["p"], model.training)

    def cpu_runner(self):
        from ..dropout import DropoutCPURunner

        return DropoutCPURunner

    def cuda_runner(self):
        from ..dropout import DropoutCUDARunner

        return DropoutCUDARunner

    def cuda_share_runner(self):
        from ...backends.cuda_groups import SliceDropoutRunner

        return SliceDropoutRunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        x = g.x(layer)  # the identity at inference: no node
        return x, g.rank[x]

    def torch_module_lines(self, layer, t):
        return f"nn.Dropout({t.num(layer.attrs['p'])})"  # the identity in eval mode

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer)})", t.rank_of(layer)


LAYER = Dropout()
