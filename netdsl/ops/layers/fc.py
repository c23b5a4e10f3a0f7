"""`fc f1: 120, relu`: fully connected; it flattens its input by itself."""

from __future__ import annotations

from ...schema import ACT_FLAGS, ACT_OPTS, LEARN_OPTS, REQUIRED, Opt, Schema, read_bool, read_int
from ..base import LayerType


class Fc(LayerType):
    name = "fc"
    aliases = ("dense", "linear_layer")
    schema = Schema(
        {
            "outputs": Opt(read_int(), REQUIRED, required="a number of outputs",
                           hint="e.g. fc f1: 120, relu"),
            "bias": Opt(read_bool, True),
            **ACT_OPTS,
            **LEARN_OPTS,
        },
        flags=ACT_FLAGS,
        postfix=("outputs",),
        positional_num="outputs",
    )  # fmt: skip
    colour = "#d9ead3"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("InnerProduct",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's InnerProduct: num_output, bias_term, fillers, `param { }`."""
        from ...errors import NetError
        from ...interop import NetLine, caffe

        caffe.check_axis(src, "inner_product_param")
        p = src.params.get("inner_product_param", {})
        if "num_output" not in p:
            raise NetError("InnerProduct needs num_output", src.at("inner_product_param"))
        o = p["num_output"]
        bias = str(p.get("bias_term", "true")) == "true"
        opts = [str(o)] + ([] if bias else ["bias off"])
        fans = None
        if caffe.needs_fans(src):
            c, h, w = ctx.input_shape(inputs)
            fans = (c * h * w, o)
        init, notes = caffe.init_options(src, fans)
        opts += init + caffe.learn_options(src, 2 if bias else 1)
        return [NetLine("fc", name, opts, inputs, "; ".join(notes))]

    def infer(self, layer):
        c, h, w = layer.in_shapes[0]
        o = layer.attrs["outputs"]
        f = c * h * w  # fc flattens its input (implicit flatten)
        layer.params = {"weight": (o, f)}
        if layer.attrs["bias"]:
            layer.params["bias"] = (o,)
        layer.n_params = o * f + (o if layer.attrs["bias"] else 0)
        layer.macs = o * f
        return (o, 1, 1)

    def receptive_field(self, layer, r, j):
        return r + (layer.in_shapes[0][1] - 1) * j, j  # sees its whole input

    def needed_interval(self, layer, lo, hi, cin, gpus):
        return lo * 0, lo * 0 + cin  # every input channel

    def fans(self, layer, weight):
        return weight[1], weight[0]

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("connected",)
    cudaconvnet_types = ("fc",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.darknet import activation, int_opt, lr_options

        n, act = int_opt(src, "output", 1, lo=1), activation(src)
        if int_opt(src, "batch_normalize", 0):
            fc = NetLine("fc", name, [str(n), "bias off", *lr_options(src, bias=False)], inputs)
            bn = NetLine("bn", f"{name}_bn", ["momentum 0.01", *([act] if act else []),
                                              *lr_options(src, bias=False)])  # fmt: skip
            return [fc, bn]
        return [NetLine("fc", name, [str(n), *([act] if act else []), *lr_options(src)],
                        inputs)]  # fmt: skip

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.cudaconvnet import int_opt, learn_options, one_input

        one_input(src)
        opts = [str(int_opt(src, "outputs", None, lo=1)), *learn_options(src, ctx)]
        return [NetLine("fc", name, opts, inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import fc

        return fc.ref_forward(xs[0].reshape(ctx.n, -1), p["weight"],
                              p.get("bias")).reshape(ctx.n, -1, 1, 1)  # fmt: skip

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import fc

        n = xs[0].shape[0]
        dx, dw, db = fc.ref_backward(dy.reshape(n, -1), xs[0].reshape(n, -1), p["weight"])
        grads["weight"] += dw
        if "bias" in grads:
            grads["bias"] += db
        return [dx.reshape(xs[0].shape)]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        y = F.linear(ins[0].flatten(1), model.param(layer.name, "weight"),
                     model.param(layer.name, "bias"))  # fmt: skip
        return y.view(ins[0].shape[0], -1, 1, 1)

    def cpu_runner(self):
        from ..fc import FcCPURunner

        return FcCPURunner

    def cuda_runner(self):
        from ..fc import FcCUDARunner

        return FcCUDARunner

    # ---------------------------------------------------------------- export
    def onnx_nodes(self, layer, g):
        p = g.tensors(layer)
        ins = [g.x(layer, 0, 2), g.param(layer, "weight")]
        if "bias" in p:
            ins.append(g.param(layer, "bias"))
        return g.node("Gemm", ins, transB=1, rank=2), 2  # x W^T + b; W is (O, C*H*W)

    def torch_module_lines(self, layer, t):
        f = layer.params["weight"][1]
        bias = "" if layer.attrs["bias"] else ", bias=False"
        return f"nn.Linear({f}, {layer.attrs['outputs']}{bias})"

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer, 0, 2)})", 2

    def state_dict_items(self, layer, tensors):
        return [(f"{layer.name}.{k}", k, tensors[k]) for k in ("weight", "bias") if k in tensors]


LAYER = Fc()
