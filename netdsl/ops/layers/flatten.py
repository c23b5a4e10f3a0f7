"""`flatten f`: CxHxW maps as a vector of C*H*W (fc flattens by itself)."""

from __future__ import annotations

from ..base import LayerType


class Flatten(LayerType):
    name = "flatten"
    reshapes_only = True

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Flatten",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Flatten of everything after the batch axis."""
        from ...interop import NetLine, caffe

        caffe.check_axis(src, "flatten_param")
        caffe.check_axis(src, "flatten_param", "end_axis", -1)
        return [NetLine("flatten", name, [], inputs)]

    def infer(self, layer):
        c, h, w = layer.in_shapes[0]
        return (c * h * w, 1, 1)

    def receptive_field(self, layer, r, j):
        return r + (layer.in_shapes[0][1] - 1) * j, j  # sees its whole input

    def needed_interval(self, layer, lo, hi, cin, gpus):
        hw = layer.in_shapes[0][1] * layer.in_shapes[0][2]
        return lo // hw, (hi - 1) // hw + 1  # output element i*H*W + j is input channel i

    def unsplittable(self, layer, gpus):
        return f"layer {layer.name}: flatten is not split over GPUs"

    def ref_forward(self, layer, xs, p, ctx):
        return xs[0].reshape(ctx.n, -1, 1, 1)

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return [dy.reshape(xs[0].shape)]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return ins[0].reshape(ins[0].shape[0], -1, 1, 1)

    def cpu_runner(self):
        from ..flatten import FlattenCPURunner

        return FlattenCPURunner

    def cuda_runner(self):
        from ..flatten import FlattenCUDARunner

        return FlattenCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        return g.x(layer, 0, 2), 2  # (N, C*H*W), channel-major as netdsl's

    def torch_forward_expr(self, layer, t):
        return t.x(layer, 0, 2), 2


LAYER = Flatten()
