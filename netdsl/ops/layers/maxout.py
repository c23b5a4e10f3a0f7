"""`maxout m1: 2 pieces`: the maximum over each group of k consecutive channels."""

from __future__ import annotations

from ...schema import REQUIRED, Opt, Schema, read_int
from ..base import LayerType


class Maxout(LayerType):
    name = "maxout"
    schema = Schema(
        {"pieces": Opt(read_int(lo=2), REQUIRED, required="a number of pieces")},
        postfix=("pieces",),
        positional_num="pieces",
    )

    def infer(self, layer):
        c, h, w = layer.in_shapes[0]
        k = layer.attrs["pieces"]
        if c % k:
            raise layer.error(f"{layer.name}: {c} input channels are not divisible into "
                              f"{k} pieces", "pieces")  # fmt: skip
        return (c // k, h, w)

    def needed_interval(self, layer, lo, hi, cin, gpus):
        k = layer.attrs["pieces"]
        return lo * k, hi * k

    def kernel_text(self, layer):
        return f"k={layer.attrs['pieces']}"

    def ref_forward(self, layer, xs, p, ctx):
        from .. import maxout

        return maxout.ref_forward(xs[0], layer.attrs["pieces"])

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import maxout

        return [maxout.ref_backward(dy, xs[0], layer.attrs["pieces"])]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        k = layer.attrs["pieces"]
        n, c, h, w = ins[0].shape
        return ins[0].view(n, c // k, k, h, w).max(dim=2).values

    def cpu_runner(self):
        from ..maxout import MaxoutCPURunner

        return MaxoutCPURunner

    def cuda_runner(self):
        from ..maxout import MaxoutCUDARunner

        return MaxoutCUDARunner

    # ---------------------------------------------------------------- export
    MAXOUT_SOURCE = '''
    def maxout(x, pieces):
        """Maxout: output map j is the maximum of input maps j*pieces .. j*pieces+pieces-1."""
        n, c, h, w = x.shape
        return x.view(n, c // pieces, pieces, h, w).amax(2)
    '''

    def onnx_nodes(self, layer, g):
        c, h, w = layer.in_shapes[0]
        k = layer.attrs["pieces"]
        y = g.node("Reshape", [g.x(layer, 0, 4), g.const([0, c // k, k, h, w])], rank=5)
        return g.node("ReduceMax", [y], axes=[2], keepdims=0, rank=4), 4

    def torch_forward_expr(self, layer, t):
        fn = t.helper("maxout", self.MAXOUT_SOURCE)
        return f"{fn}({t.x(layer, 0, 4)}, {layer.attrs['pieces']})", 4


LAYER = Maxout()
