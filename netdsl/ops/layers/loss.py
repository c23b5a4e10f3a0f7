"""`loss cross_entropy` (softmax included) or `loss mse`: the last layer; it reads the class
scores and, in training, writes their gradient."""

from __future__ import annotations

from ...schema import REQUIRED, Opt, Schema
from ..base import LayerType
from ._scores import all_channels, vector

LOSS_KINDS = ("cross_entropy", "mse")


class Loss(LayerType):
    name = "loss"
    schema = Schema(
        {"kind": Opt(None, REQUIRED, required="a kind: cross_entropy or mse",
                     hint="e.g. loss: cross_entropy")},
        flags={k: ("kind", k) for k in LOSS_KINDS},
    )  # fmt: skip
    short_form = "kind"  # `loss cross_entropy`: the name word is the kind
    is_loss = True
    gathered = True
    keeps_output = False
    colour = "#f4cccc"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("SoftmaxWithLoss", "EuclideanLoss")

    def import_caffe(self, src, inputs, name, ctx):
        """SoftmaxWithLoss is cross_entropy, EuclideanLoss mse (against one-hot labels);
        the label bottom is the data's and is left out."""
        from ...errors import NetError
        from ...interop import NetLine

        weights = src.params.get("loss_weight", [])
        if any(w != 1 for w in weights):
            raise NetError(
                "a loss_weight other than 1 is not supported: netdsl trains one loss, of weight 1",
                src.at("loss_weight"),
                hint="remove this loss and the layers only it reads (an auxiliary "
                "classifier), or make its weight 1",
            )
        p = src.params.get("loss_param", {})
        for key in ("ignore_label", "normalization", "normalize"):
            if key in p:
                raise NetError(f"loss_param {key} is not supported", src.at(f"loss_param.{key}"))
        if src.kind == "SoftmaxWithLoss":
            return [NetLine("loss", name, ["cross_entropy"], inputs)]
        return [NetLine("loss", name, ["mse"], inputs, "against one-hot labels")]

    def infer(self, layer):
        return vector(layer, "the loss")

    def needed_interval(self, layer, lo, hi, cin, gpus):
        return all_channels(lo, cin)

    def kernel_text(self, layer):
        return layer.attrs["kind"]

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("cost",)
    cudaconvnet_types = ("cost.logreg", "cost.crossent")

    def import_darknet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.darknet import refuse, softmax_checks

        if src.kind == "softmax":  # the last layer: Darknet's softmax trains as cross-entropy
            refuse(src, {"groups": 1, "temperature": 1, "spatial": 0})
            softmax_checks(src, inputs, ctx)
            why = "Darknet's [softmax]: softmax and cross-entropy in training"
            return [NetLine("loss", name, ["cross_entropy"], inputs, why)]
        refuse(src, {"scale": 1})
        softmax_checks(src, inputs, ctx)
        kind = src.params.get("type", "sse")
        if kind != "sse":
            raise NetError(
                f"cost type '{kind}' has no netdsl equivalent",
                src.at("type"),
                hint="netdsl's losses: cross_entropy and mse (Darknet's sse)",
            )
        why = "Darknet's sse; its gradient is that of half the squared error, as here"
        return [NetLine("loss", name, ["mse"], inputs, why)]

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...interop import NetLine

        return [NetLine("loss", name, ["cross_entropy"], inputs,
                        "the softmax it reads is part of netdsl's cross-entropy loss")]  # fmt: skip

    def ref_forward(self, layer, xs, p, ctx):
        from .. import loss

        z = xs[0].reshape(ctx.n, -1)
        rule = loss.ref_xent if layer.attrs["kind"] == "cross_entropy" else loss.ref_mse
        ctx.value, dz = rule(z, ctx.labels)
        ctx.saved[layer.name] = dz.reshape(xs[0].shape)
        return xs[0]

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return [ctx.saved[layer.name]]  # the gradient of the loss itself, from forward

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return ins[0]

    def cpu_runner(self):
        from ..loss import LossCPURunner

        return LossCPURunner

    def cuda_runner(self):
        from ..loss import LossCUDARunner

        return LossCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        x = g.x(layer)  # the scores the loss reads are the output
        return x, g.rank[x]

    def torch_forward_expr(self, layer, t):
        return t.x(layer), t.rank_of(layer)


LAYER = Loss()
