"""`lrn n1: size 5, k 2, alpha 1e-4, beta 0.75`: AlexNet's local response normalisation
across channels (alpha is not divided by the window size)."""

from __future__ import annotations

from ...schema import Opt, Schema, read_float, read_int
from ..base import LayerType


class Lrn(LayerType):
    name = "lrn"
    aliases = ("norm",)
    split_over_hull = True  # each map's window reaches into its neighbours on other GPUs
    schema = Schema(
        {
            "size": Opt(read_int(), 5),
            "k": Opt(read_float(positive=True), 2.0),  # k > 0 keeps the denominator positive
            "alpha": Opt(read_float(lo=0.0), 1e-4),
            "beta": Opt(read_float(lo=0.0), 0.75),
        }
    )

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("LRN",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's LRN across channels; Caffe divides alpha by local_size, netdsl does not,
        so the value is converted (and the line says so). WITHIN_CHANNEL is refused."""
        from ...errors import NetError
        from ...interop import NetLine, number

        p = src.params.get("lrn_param", {})
        if str(p.get("norm_region", "ACROSS_CHANNELS")) != "ACROSS_CHANNELS":
            raise NetError("LRN within a channel is not supported; netdsl's lrn normalises "
                           "across channels", src.at("lrn_param.norm_region"))  # fmt: skip
        n, alpha = p.get("local_size", 5), p.get("alpha", 1.0)
        k, beta = p.get("k", 1.0), p.get("beta", 0.75)
        ours = float(f"{alpha / n:.6g}")
        opts = [f"size {n}", f"k {number(k)}", f"alpha {number(ours)}", f"beta {number(beta)}"]
        note = f"Caffe's alpha {number(alpha)} / local_size {n} (netdsl's alpha is not divided)"
        return [NetLine("lrn", name, opts, inputs, note)]

    def infer(self, layer):
        if layer.attrs["size"] % 2 == 0:
            raise layer.error(f"lrn size must be odd (a window centred on each map), got "
                              f"{layer.attrs['size']}", "size")  # fmt: skip
        return layer.in_shapes[0]

    def needed_interval(self, layer, lo, hi, cin, gpus):
        import numpy as np  # placement on several GPUs only

        half = layer.attrs["size"] // 2  # the window reaches this far into the neighbours
        return np.maximum(0, lo - half), np.minimum(cin, hi + half)

    def kernel_text(self, layer):
        return f"n{layer.attrs['size']} k{layer.attrs['k']:g}"

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    cudaconvnet_types = ("cmrnorm",)

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine, number
        from ...interop.cudaconvnet import check_channels, float_opt, int_opt

        check_channels(src, ctx.input_shape(inputs)[0])
        size = int_opt(src, "size", None, lo=1)
        if size % 2 == 0:  # cuda-convnet's window is then c-size/2 .. c+size/2-1
            raise NetError(f"size={size}: an even window is lopsided in cuda-convnet; "
                           "netdsl's lrn window is centred (odd)", src.at("size"))  # fmt: skip
        if src.params.get("blocked", "0").strip().lower() in ("1", "true"):
            raise NetError("blocked cross-map normalisation has no netdsl equivalent",
                           src.at("blocked"))  # fmt: skip
        need = " in the layer-params file (--params)"
        scale, pow_ = float_opt(src, "scale", None, need), float_opt(src, "pow", None, need)
        k = float_opt(src, "minDiv", 1.0)
        if scale < 0 or pow_ < 0 or k <= 0:
            bad = "scale" if scale < 0 else "pow" if pow_ < 0 else "mindiv"
            raise NetError(f"{bad} is out of range for netdsl's lrn", src.at(bad))
        # cuda-convnet divides scale by the window size; netdsl's alpha is not divided
        alpha = f"{number(scale)}/{size}" if scale else "0"
        opts = [f"size {size}", f"k {number(k)}", f"alpha {alpha}", f"beta {number(pow_)}"]
        why = f"cuda-convnet's scale={src.params['scale']} is divided by size {size}"
        return [NetLine("lrn", name, opts, inputs, why)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import lrn

        a = layer.attrs
        return lrn.ref_forward(xs[0], a["size"], a["k"], a["alpha"], a["beta"])

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import lrn

        a = layer.attrs
        yl = lrn.ref_forward(xs[0], a["size"], a["k"], a["alpha"], a["beta"])
        return [lrn.ref_backward(dy, xs[0], yl, a["size"], a["k"], a["alpha"], a["beta"])]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        a = layer.attrs  # ours: alpha not divided by n; torch divides by size
        return F.local_response_norm(ins[0], a["size"], alpha=a["alpha"] * a["size"],
                                     beta=a["beta"], k=a["k"])  # fmt: skip

    def cpu_runner(self):
        from ..lrn import LrnCPURunner

        return LrnCPURunner

    def cuda_runner(self):
        from ..lrn import LrnCUDARunner

        return LrnCUDARunner

    # ---------------------------------------------------------------- export
    # ONNX's LRN and PyTorch's LocalResponseNorm divide alpha by the window size; netdsl's
    # alpha is not divided (AlexNet's paper): they get alpha * size.
    def onnx_nodes(self, layer, g):
        a = layer.attrs
        y = g.node("LRN", [g.x(layer, 0, 4)], size=a["size"], alpha=a["alpha"] * a["size"],
                   beta=a["beta"], bias=a["k"])  # fmt: skip
        g.nodes[-1].doc_string = (f"netdsl lrn alpha {a['alpha']:g} (not divided by the size) "
                                  f"times size {a['size']}")  # fmt: skip
        return y, 4

    def torch_module_lines(self, layer, t):
        a = layer.attrs
        return (
            f"nn.LocalResponseNorm({a['size']}, alpha={t.num(a['alpha'] * a['size'])}, "
            f"beta={t.num(a['beta'])}, k={t.num(a['k'])})  # netdsl alpha {a['alpha']:g}"
        )

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer, 0, 4)})", 4


LAYER = Lrn()
