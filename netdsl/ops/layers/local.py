"""`local l3: 32 filters 3x3, pad 1, stride 1, relu`: a locally connected layer, a convolution
whose filters are not shared between output locations (cuda-convnet's and Darknet's
`[local]`). Every output value has its own filter and its own bias, as in both of those."""

from __future__ import annotations

from ...schema import (
    ACT_FLAGS,
    ACT_OPTS,
    LEARN_OPTS,
    REQUIRED,
    Opt,
    Schema,
    read_bool,
    read_int,
    read_pad,
    read_pair,
)
from ..base import LayerType
from ..window import same_pad, window, window_rf, window_text

_EXAMPLE = "e.g. local l3: 32 filters 3x3, pad 1"


class Local(LayerType):
    name = "local"
    aliases = ("locally_connected",)
    schema = Schema(
        {
            "filters": Opt(read_int(), REQUIRED, required="a number of filters", hint=_EXAMPLE),
            "kernel": Opt(read_pair(), REQUIRED, required="a kernel size", hint=_EXAMPLE),
            "stride": Opt(read_pair(), (1, 1)),
            "pad": Opt(read_pad, (0, 0)),
            "groups": Opt(read_int(), 1),
            "bias": Opt(read_bool, True),
            **ACT_OPTS,
            **LEARN_OPTS,
        },
        flags=ACT_FLAGS,
        postfix=("filters",),
        positional_dims="kernel",
    )
    colour = "#d0e0e3"

    # cuda-convnet's `type=local` (LocalUnsharedLayer) and Darknet's [local]
    cudaconvnet_types = ("local",)
    darknet_types = ("local",)

    def infer(self, layer):
        (c, h, w), a = layer.in_shapes[0], layer.attrs
        o, g, (kh, kw), (sh, sw) = a["filters"], a["groups"], a["kernel"], a["stride"]
        if c % g:
            raise layer.error(
                f"{layer.name} expects {c} input channels divisible by groups={g}", "groups",
                f"use a groups value that divides {c}")  # fmt: skip
        if o % g:
            raise layer.error(
                f"{layer.name}: {o} filters are not divisible by groups={g}", "groups",
                f"use a number of filters that is a multiple of {g}")  # fmt: skip
        pad = a["pad"]
        if pad == "valid":
            pads = ((0, 0), (0, 0))
        elif pad == "same":
            pads = (same_pad(h, kh, sh, 1), same_pad(w, kw, sw, 1))
        else:
            pads = ((pad[0], pad[0]), (pad[1], pad[1]))
        ho = window(layer, h, kh, sh, 1, pads[0], "height", "kernel")
        wo = window(layer, w, kw, sw, 1, pads[1], "width", "kernel")
        a["pad_tl"] = (pads[0][0], pads[1][0])
        a["out_hw"] = (ho, wo)
        # conv's (O, C/g, kh, kw) with the location after the filter index: a GPU split by
        # output channels takes rows [lo, hi) of both parameters (netdsl/ops/local.py)
        layer.params = {"weight": (o, ho, wo, c // g, kh, kw)}
        if a["bias"]:
            layer.params["bias"] = (o, ho, wo)  # one per output value, as cuda-convnet's
        per_location = o * (c // g) * kh * kw
        layer.n_params = per_location * ho * wo + (o * ho * wo if a["bias"] else 0)
        layer.macs = per_location * ho * wo
        return (o, ho, wo)

    receptive_field = staticmethod(window_rf)

    def needed_interval(self, layer, lo, hi, cin, gpus):
        g, cout = layer.attrs["groups"], layer.out_shape[0]
        per = cin // g  # input channels each group sees
        return (lo * g // cout) * per, ((hi - 1) * g // cout + 1) * per

    def unsplittable(self, layer, gpus):
        g = layer.attrs["groups"]
        if g > 1 and g % gpus:
            return f"layer {layer.name}: groups {g} is not a multiple of gpus {gpus}"
        return None

    def split_hull(self, layer, cin, ivs):
        if layer.attrs["groups"] == 1:
            return 0, cin
        return super().split_hull(layer, cin, ivs)

    def split_attrs(self, attrs, gpus):
        if attrs["groups"] > 1:
            attrs["groups"] = attrs["groups"] // gpus  # a multiple of G: whole groups
        return attrs

    def kernel_text(self, layer):
        a = layer.attrs
        parts = window_text(layer, same=a["pad"] == "same")
        if a["groups"] > 1:
            parts.append(f" g{a['groups']}")
        return "".join(parts)

    def fans(self, layer, weight):
        o, _, _, cg, kh, kw = weight  # per location, as a conv's
        return cg * kh * kw, o * kh * kw / max(1, layer.attrs["groups"])

    def ref_forward(self, layer, xs, p, ctx):
        from .. import local

        a = layer.attrs
        return local.ref_forward(xs[0], p["weight"], p.get("bias"), a["stride"], a["pad_tl"],
                                 a["groups"])  # fmt: skip

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import local

        a = layer.attrs
        dx, dw, db = local.ref_backward(dy, xs[0], p["weight"], a["stride"], a["pad_tl"],
                                        a["groups"])  # fmt: skip
        grads["weight"] += dw
        if "bias" in grads:
            grads["bias"] += db
        return [dx]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        # F.unfold's columns are conv's (c, ky, kx) taps of each location, row-major: one
        # einsum with the per-location filters (O, Ho*Wo, Cg*kh*kw) per group
        a = layer.attrs
        (pt, pl), (ho, wo), (kh, kw) = a["pad_tl"], a["out_hw"], a["kernel"]
        (sh, sw), g = a["stride"], a["groups"]
        c, h, w = layer.in_shapes[0]
        pb = max(0, (ho - 1) * sh + kh - h - pt)
        pr = max(0, (wo - 1) * sw + kw - w - pl)
        x = F.pad(ins[0], (pl, pr, pt, pb))[:, :, : (ho - 1) * sh + kh, : (wo - 1) * sw + kw]
        n, o = x.shape[0], layer.out_shape[0]
        cols = F.unfold(x, (kh, kw), stride=(sh, sw))  # (N, C*kh*kw, Ho*Wo)
        cols = cols.view(n, g, -1, ho * wo)  # (N, G, Cg*kh*kw, L)
        wt = model.param(layer.name, "weight").reshape(g, o // g, ho * wo, -1)  # (G, Og, L, K)
        y = torch.einsum("ngkl,golk->ngol", cols, wt).reshape(n, o, ho, wo)
        b = model.param(layer.name, "bias")
        return y if b is None else y + b[None]

    def cpu_runner(self):
        from ..local import LocalCPURunner

        return LocalCPURunner

    def cuda_runner(self):
        from ..local import LocalCUDARunner

        return LocalCUDARunner

    # ------------------------------------------------------------------------------- import
    def import_cudaconvnet(self, src, inputs, name, ctx):
        """cuda-convnet's `type=local`: the geometry, init and rates as conv's (its filters=F
        with groups=G makes F*G filters; the output size is checked against cuda-convnet's
        rounding), one bias per filter and position as LocalUnsharedLayerParser makes; the
        importer adds `neuron=` as the activation."""
        from ...interop import NetLine
        from ...interop.cudaconvnet import learn_options, window_options

        opts = [*window_options(src, inputs, ctx), *learn_options(src, ctx)]
        return [NetLine("local", name, opts, inputs)]

    def import_darknet(self, src, inputs, name, ctx):
        """Darknet's [local]: filters, size, stride, pad, activation. Darknet pads `pad`
        pixels but sizes the output (h-1)/stride + 1 whenever pad is not 0 (local_layer.c),
        which is the padded window's size only when size = 2*pad + 1; other pads are refused."""
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.darknet import activation, int_opt, lr_options

        filters, size = int_opt(src, "filters", 1, lo=1), int_opt(src, "size", 1, lo=1)
        stride, pad = int_opt(src, "stride", 1, lo=1), int_opt(src, "pad", 0, lo=0)
        if pad and size != 2 * pad + 1:
            raise NetError(f"Darknet's [local] with pad={pad} and size={size} pads {pad} "
                           f"pixels but sizes its output as if it padded {(size - 1) / 2:g}",
                           src.at("pad"), hint=f"use pad=0, or size={2 * pad + 1}")  # fmt: skip
        opts = [f"{filters} filters {size}x{size}"]
        opts += [f"stride {stride}"] if stride != 1 else []
        opts += [f"pad {pad}"] if pad else []
        act = activation(src)  # Darknet's default: logistic
        return [NetLine("local", name, [*opts, *([act] if act else []), *lr_options(src)],
                        inputs)]  # fmt: skip


LAYER = Local()
