"""`concat c(a, b)`: inputs joined along channels; heights and widths must match."""

from __future__ import annotations

from ...schema import Schema
from ..base import LayerType


class Concat(LayerType):
    name = "concat"
    schema = Schema({}, min_inputs=2, max_inputs=None)
    split_mode = "gather"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Concat",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Concat along the channels (axis 1, the old concat_dim 1)."""
        from ...errors import NetError
        from ...interop import NetLine, caffe

        caffe.check_axis(src, "concat_param")
        caffe.check_axis(src, "concat_param", "concat_dim")
        if not inputs or len(inputs) < 2:
            raise NetError("Concat of one bottom is not supported; netdsl's concat joins two "
                           "or more", src.loc)  # fmt: skip
        return [NetLine("concat", name, [], inputs)]

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

    # ---------------------------------------------------------------- export
    def _export_rank(self, layer, ranks):
        return ranks[0] if len(set(ranks)) == 1 else 4

    def onnx_nodes(self, layer, g):
        rank = self._export_rank(layer, [g.rank[g.x(layer, i)] for i in range(len(layer.inputs))])
        xs = [g.x(layer, i, rank) for i in range(len(layer.inputs))]
        return g.node("Concat", xs, axis=1), rank

    def torch_forward_expr(self, layer, t):
        rank = self._export_rank(layer, [t.rank_of(layer, i) for i in range(len(layer.inputs))])
        xs = [t.x(layer, i, rank) for i in range(len(layer.inputs))]
        return f"torch.cat([{', '.join(xs)}], 1)", rank


LAYER = Concat()
