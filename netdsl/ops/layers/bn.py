"""`bn b1: relu`: batch normalisation over (N, H, W) per channel, with a learned scale gamma
and shift beta (Caffe's BatchNorm + Scale) and running statistics for evaluation."""

from __future__ import annotations

from ...schema import ACT_FLAGS, ACT_OPTS, LEARN_OPTS, Opt, Schema, read_float
from ..base import LayerType


class Bn(LayerType):
    name = "bn"
    aliases = ("batchnorm",)
    schema = Schema(
        {
            "eps": Opt(read_float(positive=True), 1e-5),  # eps 0: 0/0 on a constant channel
            "momentum": Opt(read_float(lo=0.0, hi=1.0), 0.1),
            **ACT_OPTS,
            "lr_mult": LEARN_OPTS["lr_mult"],
            "decay_mult": Opt(read_float(lo=0.0), 0.0),
        },
        flags=ACT_FLAGS,
    )

    def infer(self, layer):
        c = layer.in_shapes[0][0]
        layer.params = {"weight": (c,), "bias": (c,)}  # gamma, beta
        layer.state = {"running_mean": (c,), "running_var": (c,)}
        layer.n_params = 2 * c
        return layer.in_shapes[0]

    def init_spec(self, layer, pname, spec, fan_in):
        # gamma 1, beta 0: the layer starts as the plain normalisation
        return {"kind": "constant", "value": 1.0 if pname == "weight" else 0.0}

    def param_mults(self, layer, pname):
        # gamma and beta share one lr_mult and one decay_mult (no decay by default)
        return layer.attrs["lr_mult"], layer.attrs["decay_mult"]

    def state_init(self, sname):
        return 1.0 if sname == "running_var" else 0.0

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("batchnorm",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine

        # Darknet's running statistics move by 0.01 of each batch's
        return [NetLine("bn", name, ["momentum 0.01"], inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import batchnorm

        return batchnorm.ref_forward_train(xs[0], p["weight"], p["bias"], layer.attrs["eps"])[0]

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import batchnorm

        dx, dg, dbt = batchnorm.ref_backward(dy, xs[0], p["weight"], layer.attrs["eps"])
        grads["weight"] += dg
        grads["bias"] += dbt
        return [dx]

    def torch_setup(self, layer, model, torch):
        c = layer.out_shape[0]
        model.register_buffer(f"{layer.name}__rm".replace(".", "_"), torch.zeros(c))
        model.register_buffer(f"{layer.name}__rv".replace(".", "_"), torch.ones(c))

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        a = layer.attrs
        rm = getattr(model, f"{layer.name}__rm".replace(".", "_"))
        rv = getattr(model, f"{layer.name}__rv".replace(".", "_"))
        return F.batch_norm(ins[0], rm, rv, model.param(layer.name, "weight"),
                            model.param(layer.name, "bias"), model.training, a["momentum"],
                            a["eps"])  # fmt: skip

    def cpu_runner(self):
        from ..batchnorm import BnCPURunner

        return BnCPURunner

    def cuda_runner(self):
        from ..batchnorm import BnCUDARunner

        return BnCUDARunner


LAYER = Bn()
