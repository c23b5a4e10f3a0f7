"""`prelu p1`: PyTorch's nn.PReLU: y = x where x > 0, else a[c] * x, with a learned slope per
channel (`shared`: one slope for all channels, nn.PReLU(num_parameters=1)). The slopes are
the parameter `weight` of shape (C,) (or (1,)), start at 0.25 unless `init` says otherwise
and, like batch norm's gamma and beta, get no weight decay unless `decay_mult` says so."""

from __future__ import annotations

from ...schema import LEARN_OPTS, Opt, Schema, read_bool, read_float
from ..base import LayerType

INIT_SLOPE = 0.25  # nn.PReLU's default


class PReLU(LayerType):
    name = "prelu"
    schema = Schema(
        {
            "shared": Opt(read_bool, False, "one slope for all channels"),
            "init": LEARN_OPTS["init"],
            "lr_mult": LEARN_OPTS["lr_mult"],
            "decay_mult": Opt(read_float(lo=0.0), 0.0),  # slopes are not decayed by default
        }
    )

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("PReLU",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's PReLU: channel_shared, its filler (Caffe's default is constant 0.25, as
        netdsl's), `param { }` (Caffe decays the slopes unless decay_mult says 0)."""
        from ...interop import NetLine, caffe

        p = src.params.get("prelu_param", {})
        opts = ["shared"] if str(p.get("channel_shared", "false")) == "true" else []
        text, note = caffe.filler(src, "filler", None)
        if text:
            opts.append(f"init {text}")
        opts += caffe.learn_options(src, 1, defaults=((1, 0),))
        return [NetLine("prelu", name, opts, inputs, note)]

    def infer(self, layer):
        c = layer.in_shapes[0][0]
        k = 1 if layer.attrs["shared"] else c
        layer.params = {"weight": (k,)}
        layer.n_params = k
        return layer.in_shapes[0]

    def unsplittable(self, layer, gpus):
        if layer.attrs["shared"]:
            return f"layer {layer.name}: a shared prelu slope is not split over GPUs"
        return None

    def kernel_text(self, layer):
        return "shared" if layer.attrs["shared"] else ""

    def init_spec(self, layer, pname, spec, fan_in):
        # the file's own `init` wins; the train section's default weight init is for weights
        return layer.attrs["init"] or {"kind": "constant", "value": INIT_SLOPE}

    def param_mults(self, layer, pname):
        return layer.attrs["lr_mult"], layer.attrs["decay_mult"]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import prelu

        return prelu.ref_forward(xs[0], p["weight"])

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import prelu

        dx, da = prelu.ref_backward(dy, xs[0], p["weight"])
        grads["weight"] += da
        return [dx]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return F.prelu(ins[0], model.param(layer.name, "weight"))

    def cpu_runner(self):
        from ..prelu import PReLUCPURunner

        return PReLUCPURunner

    def cuda_runner(self):
        from ..prelu import PReLUCUDARunner

        return PReLUCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        x = g.x(layer)
        w, rank = g.tensors(layer)["weight"], g.rank[x]
        slope = w.reshape(-1, 1, 1) if rank == 4 and w.size > 1 else w  # per channel (axis 1)
        return g.node("PRelu", [x, g.param(layer, "weight", slope)]), rank

    def torch_module_lines(self, layer, t):
        k = layer.params["weight"][0]
        return "nn.PReLU()" if k == 1 else f"nn.PReLU({k})"

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer)})", t.rank_of(layer)

    def state_dict_items(self, layer, tensors):
        return [(f"{layer.name}.weight", "weight", tensors["weight"])]


LAYER = PReLU()
