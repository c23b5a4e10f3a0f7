"""`softmax s`: probabilities from class scores (a vector per image)."""

from __future__ import annotations

from ..base import LayerType
from ._scores import all_channels, vector


class Softmax(LayerType):
    name = "softmax"
    normalises_scores = True
    gathered = True

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Softmax",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Softmax over the channels."""
        from ...interop import NetLine, caffe

        caffe.check_axis(src, "softmax_param")
        return [NetLine("softmax", name, [], inputs)]

    def infer(self, layer):
        return vector(layer, "softmax")

    def needed_interval(self, layer, lo, hi, cin, gpus):
        return all_channels(lo, cin)

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("softmax",)
    cudaconvnet_types = ("softmax",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.darknet import refuse, softmax_checks

        refuse(src, {"groups": 1, "temperature": 1, "spatial": 0})
        softmax_checks(src, inputs, ctx)
        return [NetLine("softmax", name, [], inputs)]

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...interop import NetLine

        return [NetLine("softmax", name, [], inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import softmax

        return softmax.ref_forward(xs[0].reshape(ctx.n, -1)).reshape(xs[0].shape)

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import softmax

        n = xs[0].shape[0]
        return [softmax.ref_backward(dy.reshape(n, -1), y.reshape(n, -1)).reshape(xs[0].shape)]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return F.softmax(ins[0], dim=1)

    def cpu_runner(self):
        from ..softmax import SoftmaxCPURunner

        return SoftmaxCPURunner

    def cuda_runner(self):
        from ..softmax import SoftmaxCUDARunner

        return SoftmaxCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        return g.node("Softmax", [g.x(layer, 0, 2)], axis=1), 2

    def torch_forward_expr(self, layer, t):
        return f"F.softmax({t.x(layer, 0, 2)}, 1)", 2


LAYER = Softmax()
