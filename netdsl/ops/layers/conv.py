"""`conv c1: 6 filters 5x5, stride 1, pad 2, groups 1, relu`: 2-D convolution (PyTorch's
cross-correlation), with dilation, groups, 'same' padding and LeCun's connection tables."""

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
    read_table,
)
from ..base import LayerType
from ..window import same_pad, window, window_rf, window_text

_EXAMPLE = "e.g. conv c1: 6 filters 5x5"


class Conv(LayerType):
    name = "conv"
    aliases = ("convolution",)
    schema = Schema(
        {
            "filters": Opt(read_int(), REQUIRED, required="a number of filters", hint=_EXAMPLE),
            "kernel": Opt(read_pair(), REQUIRED, required="a kernel size", hint=_EXAMPLE),
            "stride": Opt(read_pair(), (1, 1)),
            "pad": Opt(read_pad, (0, 0)),
            "dilation": Opt(read_pair(), (1, 1)),
            "groups": Opt(read_int(), 1),
            "bias": Opt(read_bool, True),
            "connect": Opt(read_table, None),
            **ACT_OPTS,
            **LEARN_OPTS,
        },
        flags=ACT_FLAGS,
        postfix=("filters",),
        positional_dims="kernel",
    )
    colour = "#cfe2f3"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Convolution",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Convolution: num_output, kernel/stride/pad/dilation (or their _h/_w),
        group, bias_term, the fillers (Caffe's own xavier as the uniform range it draws) and
        `param { lr_mult decay_mult }`."""
        from ...errors import NetError
        from ...interop import NetLine, caffe

        caffe.check_axis(src, "convolution_param")
        p = src.params.get("convolution_param", {})
        if "num_output" not in p:
            raise NetError("Convolution needs num_output", src.at("convolution_param"))
        k = caffe.pair(src, "convolution_param", "kernel", None)
        if k is None:
            raise NetError("Convolution needs kernel_size (or kernel_h and kernel_w)",
                           src.at("convolution_param"))  # fmt: skip
        s = caffe.pair(src, "convolution_param", "stride", 1)
        pad = caffe.pair(src, "convolution_param", "pad", 0)
        dil = caffe.pair(src, "convolution_param", "dilation", 1)
        o, g = p["num_output"], p.get("group", 1)
        bias = str(p.get("bias_term", "true")) == "true"
        opts = [f"{o} filters {k[0]}x{k[1]}"]
        for word, v, d in (("stride", s, (1, 1)), ("pad", pad, (0, 0)), ("dilation", dil, (1, 1))):
            if v != d:
                opts.append(f"{word} {caffe.size_text(v)}")
        if g != 1:
            opts.append(f"groups {g}")
        if not bias:
            opts.append("bias off")
        fans = None
        if caffe.needs_fans(src):  # Caffe's fans: count/num and count/channels of the weight
            c = ctx.input_shape(inputs)[0]
            fans = (c // g * k[0] * k[1], o * k[0] * k[1])
        init, notes = caffe.init_options(src, fans)
        opts += init + caffe.learn_options(src, 2 if bias else 1)
        return [NetLine("conv", name, opts, inputs, "; ".join(notes))]

    def infer(self, layer):
        (c, h, w), a = layer.in_shapes[0], layer.attrs
        o, g, (kh, kw), (sh, sw), (dh, dw) = (a["filters"], a["groups"], a["kernel"],
                                              a["stride"], a["dilation"])  # fmt: skip
        table = a["connect"]
        if table is not None:
            if g != 1:
                raise layer.error("a connection table replaces groups; drop 'groups'", "groups")
            if len(table) != o:
                raise layer.error(
                    f"{layer.name}: the connection table has {len(table)} rows but the layer "
                    f"has {o} filters", "connect", "one row per output map")  # fmt: skip
            bad = max(max(r) for r in table)
            if bad >= c:
                raise layer.error(
                    f"{layer.name}: the connection table uses input map {bad} but the input "
                    f"has {c} maps (0..{c - 1})", "connect")  # fmt: skip
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
            pads = (same_pad(h, kh, sh, dh), same_pad(w, kw, sw, dw))
        else:
            pads = ((pad[0], pad[0]), (pad[1], pad[1]))
        ho = window(layer, h, kh, sh, dh, pads[0], "height", "kernel")
        wo = window(layer, w, kw, sw, dw, pads[1], "width", "kernel")
        a["pad_tl"] = (pads[0][0], pads[1][0])
        a["out_hw"] = (ho, wo)
        layer.params = {"weight": (o, c // g, kh, kw)}
        if a["bias"]:
            layer.params["bias"] = (o,)
        links = sum(len(r) for r in table) if table is not None else o * (c // g)
        layer.n_params = links * kh * kw + (o if a["bias"] else 0)
        layer.macs = links * kh * kw * ho * wo
        return (o, ho, wo)

    receptive_field = staticmethod(window_rf)

    def needed_interval(self, layer, lo, hi, cin, gpus):
        g, cout = layer.attrs["groups"], layer.out_shape[0]
        per = cin // g  # input channels each group sees
        return (lo * g // cout) * per, ((hi - 1) * g // cout + 1) * per

    def channel_table(self, layer):
        return layer.attrs["connect"]

    def unsplittable(self, layer, gpus):
        g = layer.attrs["groups"]
        if g > 1 and g % gpus:
            return f"layer {layer.name}: groups {g} is not a multiple of gpus {gpus}"
        return None

    def split_hull(self, layer, cin, ivs):
        if layer.attrs["groups"] == 1:  # every input channel (a table fills only its own)
            return 0, cin
        return super().split_hull(layer, cin, ivs)

    def split_attrs(self, attrs, gpus):
        if attrs["groups"] > 1:
            attrs["groups"] = attrs["groups"] // gpus  # a multiple of G: whole groups
        return attrs

    def kernel_text(self, layer):
        a = layer.attrs
        parts = window_text(layer, same=a["pad"] == "same")
        if a["dilation"] != (1, 1):
            parts.append(f" d{a['dilation'][0]}")
        if a["groups"] > 1:
            parts.append(f" g{a['groups']}")
        if a["connect"] is not None:
            parts.append(" table")
        return "".join(parts)

    def fans(self, layer, weight):
        o, cg, kh, kw = weight
        table = layer.attrs.get("connect")
        fan_in = (sum(len(r) for r in table) / len(table) if table else cg) * kh * kw
        return fan_in, o * kh * kw / max(1, layer.attrs["groups"])

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("convolutional",)
    cudaconvnet_types = ("conv",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...interop import NetLine
        from ...interop.darknet import activation, int_opt, lr_options, refuse

        refuse(src, {"binary": 0, "xnor": 0, "flipped": 0, "dot": 0})
        n, size = int_opt(src, "filters", 1, lo=1), int_opt(src, "size", 1, lo=1)
        stride, groups = int_opt(src, "stride", 1, lo=1), int_opt(src, "groups", 1, lo=1)
        pad = size // 2 if int_opt(src, "pad", 0) else int_opt(src, "padding", 0, lo=0)
        opts = [f"{n} filters {size}x{size}"]
        opts += [f"stride {stride}"] if stride != 1 else []
        opts += [f"pad {pad}"] if pad else []
        opts += [f"groups {groups}"] if groups != 1 else []
        act = activation(src)
        if int_opt(src, "batch_normalize", 0):
            # Darknet's batch norm: the conv's biases are beta, its scales gamma; running
            # statistics move by 0.01 of each batch's
            conv = NetLine("conv", name, [*opts, "bias off", *lr_options(src, bias=False)],
                           inputs)  # fmt: skip
            bn = NetLine("bn", f"{name}_bn", ["momentum 0.01", *([act] if act else []),
                                              *lr_options(src, bias=False)])  # fmt: skip
            return [conv, bn]
        return [NetLine("conv", name, [*opts, *([act] if act else []), *lr_options(src)],
                        inputs)]  # fmt: skip

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.cudaconvnet import int_opt, learn_options, window_options

        if not int_opt(src, "sharedBiases", 1):
            raise NetError("sharedBiases=0 (a bias per filter and position) has no netdsl "
                           "equivalent in conv", src.at("sharedbiases"))  # fmt: skip
        opts = [*window_options(src, inputs, ctx), *learn_options(src, ctx)]
        return [NetLine("conv", name, opts, inputs)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import conv

        a, w = layer.attrs, p["weight"]
        if layer.name in ctx.table_masks:
            w = w * ctx.table_masks[layer.name]
        return conv.ref_forward(xs[0], w, p.get("bias"), a["stride"], a["pad_tl"],
                                a["dilation"], a["groups"], a["out_hw"])  # fmt: skip

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import conv

        a, mask = layer.attrs, ctx.table_masks.get(layer.name)
        wm = p["weight"] * mask if mask is not None else p["weight"]
        dx, dw, db = conv.ref_backward(dy, xs[0], wm, a["stride"], a["pad_tl"], a["dilation"],
                                       a["groups"], a["out_hw"])  # fmt: skip
        grads["weight"] += dw * mask if mask is not None else dw
        if db is not None and "bias" in grads:
            grads["bias"] += db
        return [dx]

    def torch_setup(self, layer, model, torch):
        if layer.attrs["connect"] is not None:
            o, c = layer.out_shape[0], layer.in_shapes[0][0]
            m = torch.zeros(o, c, 1, 1)
            for i, row in enumerate(layer.attrs["connect"]):
                m[i, row] = 1.0
            model.masks[layer.name] = m

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        a = layer.attrs
        (pt, pl), (ho, wo) = a["pad_tl"], a["out_hw"]
        c, h, w = layer.in_shapes[0]
        kh, kw = a["kernel"]
        (sh, sw), (dh, dw) = a["stride"], a["dilation"]
        pb = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - h - pt)
        pr = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - w - pl)
        w_ = model.param(layer.name, "weight")
        if layer.name in model.masks:
            w_ = w_ * model.masks[layer.name]
        y = F.conv2d(F.pad(ins[0], (pl, pr, pt, pb)), w_, model.param(layer.name, "bias"),
                     stride=a["stride"], dilation=a["dilation"], groups=a["groups"])  # fmt: skip
        return y[:, :, :ho, :wo]

    def cpu_runner(self):
        from ..conv import ConvCPURunner

        return ConvCPURunner

    def cuda_runner(self):
        from ..conv import ConvCUDARunner

        return ConvCUDARunner

    # ---------------------------------------------------------------- export
    TABLE_CONV_SOURCE = '''
    class TableConv2d(nn.Conv2d):
        """A convolution whose output map i reads only the input maps table[i] (LeCun's
        connection tables): a dense weight times a fixed 0/1 mask (not in the state_dict)."""

        def __init__(self, *args, table, **kwargs):
            super().__init__(*args, **kwargs)
            mask = torch.zeros(self.out_channels, self.in_channels, 1, 1)
            for i, row in enumerate(table):
                mask[i, list(row)] = 1.0
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, x):
            return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
    '''

    def _dense_weight(self, layer, w):
        """The weight with a connection table's unused links zeroed: a dense conv is exact."""
        import numpy as np

        table = layer.attrs["connect"]
        if table is None:
            return w
        mask = np.zeros(w.shape[:2] + (1, 1), np.float32)
        for i, row in enumerate(table):
            mask[i, row] = 1.0
        return w * mask

    def onnx_nodes(self, layer, g):
        from ...export.common import window_pads

        a, p = layer.attrs, g.tensors(layer)
        ins = [g.x(layer, 0, 4), g.param(layer, "weight", self._dense_weight(layer, p["weight"]))]
        if "bias" in p:
            ins.append(g.param(layer, "bias"))
        return g.node("Conv", ins, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(window_pads(layer)), dilations=list(a["dilation"]),
                      group=a["groups"]), 4  # fmt: skip

    def _torch_padding(self, layer):
        """PyTorch's symmetric `padding` when it gives the layer's output size, else None."""
        from ...export.common import window_pads

        pt, pl, pb, pr = window_pads(layer)
        a, (_, h, w) = layer.attrs, layer.in_shapes[0]
        for size, k, s, d, p, o in ((h, a["kernel"][0], a["stride"][0], a["dilation"][0], pt,
                                     a["out_hw"][0]),
                                    (w, a["kernel"][1], a["stride"][1], a["dilation"][1], pl,
                                     a["out_hw"][1])):  # fmt: skip
            if (size + 2 * p - d * (k - 1) - 1) // s + 1 != o:
                return None
        return pt, pl

    def torch_module_lines(self, layer, t):
        a = layer.attrs
        pad = self._torch_padding(layer) or (0, 0)
        args = [str(layer.in_shapes[0][0]), str(a["filters"]), t.pair(a["kernel"])]
        for key, value, default in (("stride", a["stride"], (1, 1)), ("padding", pad, (0, 0)),
                                    ("dilation", a["dilation"], (1, 1))):  # fmt: skip
            if tuple(value) != default:
                args.append(f"{key}={t.pair(value)}")
        if a["groups"] != 1:
            args.append(f"groups={a['groups']}")
        if not a["bias"]:
            args.append("bias=False")
        if a["connect"] is None:
            return f"nn.Conv2d({', '.join(args)})"
        t.helper("TableConv2d", self.TABLE_CONV_SOURCE)
        rows = [t.ints(r) for r in a["connect"]]
        lines = [", ".join(rows[i : i + 6]) + "," for i in range(0, len(rows), 6)]
        table = "".join(f"\n    {line}" for line in lines)  # output map i reads row i
        return f"TableConv2d({', '.join(args)}, table=({table}\n))"

    def torch_forward_expr(self, layer, t):
        from ...export.common import window_pads

        x = t.x(layer, 0, 4)
        if self._torch_padding(layer) is None:  # asymmetric ('same' with an odd total)
            pt, pl, pb, pr = window_pads(layer)
            x = f"F.pad({x}, ({pl}, {pr}, {pt}, {pb}))"
        return f"{t.mod(layer)}({x})", 4

    def state_dict_items(self, layer, tensors):
        out = [(f"{layer.name}.weight", "weight", self._dense_weight(layer, tensors["weight"]))]
        if "bias" in tensors:
            out.append((f"{layer.name}.bias", "bias", tensors["bias"]))
        return out


LAYER = Conv()
