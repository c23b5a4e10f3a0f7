"""`upsample u1: 2` or `upsample u1: 2x3`: nearest-neighbour upsampling by whole factors,
(C, H, W) -> (C, H*fh, W*fw); Darknet's [upsample] with a positive stride."""

from __future__ import annotations

from fractions import Fraction

from ...schema import REQUIRED, Opt, Schema, read_pair
from ..base import LayerType

MAX_FACTOR = 64  # per axis: a larger factor is not upsampling a feature map, it is a typo


class Upsample(LayerType):
    name = "upsample"
    schema = Schema(
        {"factor": Opt(read_pair(lo=1, hi=MAX_FACTOR), REQUIRED, "whole factor per axis",
                       required="a factor", hint="e.g. upsample u1: 2, or 2x3 for HxW")},
        positional_num="factor",
        positional_dims="factor",
    )  # fmt: skip
    colour = "#e2f0d9"

    def infer(self, layer):
        (c, h, w), (fh, fw) = layer.in_shapes[0], layer.attrs["factor"]
        return (c, h * fh, w * fw)

    def receptive_field(self, layer, r, j):
        # Each output repeats one input value: the field stays, neighbouring outputs are
        # 1/fh of a jump apart (an exact fraction; the report prints it as "1/2").
        jump = Fraction(j) / layer.attrs["factor"][0]
        return r, int(jump) if jump.denominator == 1 else jump

    def kernel_text(self, layer):
        fh, fw = layer.attrs["factor"]
        return f"x{fh}" if fh == fw else f"x{fh}x{fw}"

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("upsample",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.darknet import int_opt, refuse

        refuse(src, {"scale": 1})
        stride = int_opt(src, "stride", 2)
        if not 1 <= stride <= MAX_FACTOR:
            raise NetError(
                f"upsample stride={stride}: netdsl upsamples by 1 to {MAX_FACTOR}",
                src.at("stride"),
                hint="a negative stride (Darknet's downsampling) is `pool` in netdsl",
            )
        return [NetLine("upsample", name, [str(stride)], inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import upsample

        return upsample.ref_forward(xs[0], *layer.attrs["factor"])

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import upsample

        return [upsample.ref_backward(dy, *layer.attrs["factor"])]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        fh, fw = layer.attrs["factor"]
        return F.interpolate(ins[0], scale_factor=(float(fh), float(fw)), mode="nearest")

    def cpu_runner(self):
        from ..upsample import UpsampleCPURunner

        return UpsampleCPURunner

    def cuda_runner(self):
        from ..upsample import UpsampleCUDARunner

        return UpsampleCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        fh, fw = layer.attrs["factor"]
        scales = g.const([1.0, 1.0, float(fh), float(fw)])
        # asymmetric + floor: output pixel i reads input pixel i // factor, exactly
        y = g.node("Resize", [g.x(layer, 0, 4), "", scales], mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
        return y, 4

    def torch_forward_expr(self, layer, t):
        fh, fw = layer.attrs["factor"]
        # repeat_interleave, not nn.Upsample: nearest with a float 1/factor can round a
        # source index down by one for factors that are not powers of two
        return f"{t.x(layer, 0, 4)}.repeat_interleave({fh}, 2).repeat_interleave({fw}, 3)", 4


LAYER = Upsample()
