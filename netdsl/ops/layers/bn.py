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

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("BatchNorm", "Scale")

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's BatchNorm: eps, moving_average_fraction as netdsl's momentum. Alone it has
        no scale and shift: gamma 1 and beta 0 are held (`lr_mult 0`) until the Scale that
        follows it in place is folded in (netdsl/interop/caffe.py); a Scale elsewhere is
        refused."""
        from ...errors import NetError
        from ...interop import NetLine, number, unsupported

        if src.kind == "Scale":
            raise unsupported(
                src,
                "caffe",
                "netdsl learns a per-channel scale and shift only "
                "in bn: a Scale right after a BatchNorm is folded into it",
            )
        p = src.params.get("batch_norm_param", {})
        eps, maf = p.get("eps", 1e-5), p.get("moving_average_fraction", 0.999)
        if eps <= 0:
            raise NetError("eps must be above 0", src.at("batch_norm_param.eps"))
        opts, notes = [], ["Caffe's BatchNorm without a Scale: gamma 1, beta 0 held"]
        if eps != 1e-5:
            opts.append(f"eps {number(eps)}")
        momentum = float(f"{1 - maf:.6g}")
        if momentum != 0.1:
            opts.append(f"momentum {number(momentum)}")
            notes.insert(0, f"momentum 1 - Caffe's moving_average_fraction {number(maf)}")
        opts.append("lr_mult 0")
        return [NetLine("bn", name, opts, inputs, "; ".join(notes))]

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

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        x = g.x(layer)  # (N, C, H, W) or (N, C): BatchNormalization takes both
        ins = [x] + [g.param(layer, k) for k in ("weight", "bias", "running_mean", "running_var")]
        return g.node("BatchNormalization", ins, epsilon=layer.attrs["eps"]), g.rank[x]

    def torch_module_lines(self, layer, t):
        a, c = layer.attrs, layer.out_shape[0]
        d = "1d" if t.rank_of(layer) == 2 else "2d"
        args = [str(c)]
        if a["eps"] != 1e-5:
            args.append(f"eps={t.num(a['eps'])}")
        if a["momentum"] != 0.1:
            args.append(f"momentum={t.num(a['momentum'])}")
        return f"nn.BatchNorm{d}({', '.join(args)})"

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer)})", t.rank_of(layer)

    def state_dict_items(self, layer, tensors):
        import numpy as np

        out = [(f"{layer.name}.{k}", k, tensors[k])
               for k in ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        # PyTorch counts the batches it has seen; netdsl does not (its momentum is fixed)
        out.append((f"{layer.name}.num_batches_tracked", None, np.zeros((), np.int64)))
        return out


LAYER = Bn()
