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

    # ------------------------------------------------------------------------------- export
    LOCAL_SOURCE = '''
    class LocallyConnected2d(nn.Module):
        """A convolution whose filters are not shared between output locations (netdsl's
        `local`): output (o, i, j) has its own filter weight[o, i, j] (C/groups, kh, kw) and
        its own bias[o, i, j]. padding: an int, (ph, pw), or F.pad's (left, right, top,
        bottom)."""

        def __init__(self, in_channels, out_channels, out_size, kernel_size, stride=1,
                     padding=0, groups=1, bias=True):
            super().__init__()
            pair = self._pair
            (kh, kw), (ho, wo), pad = pair(kernel_size), pair(out_size), pair(padding)
            self.kernel_size, self.stride, self.groups = (kh, kw), pair(stride), groups
            self.padding = (pad[1], pad[1], pad[0], pad[0]) if len(pad) == 2 else pad
            shape = (out_channels, ho, wo, in_channels // groups, kh, kw)
            bound = (in_channels // groups * kh * kw) ** -0.5  # nn.Conv2d's default range
            self.weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
            self.bias = (nn.Parameter(torch.empty(shape[:3]).uniform_(-bound, bound))
                         if bias else None)

        @staticmethod
        def _pair(v):
            return (v, v) if isinstance(v, int) else tuple(v)

        def forward(self, x):
            o, ho, wo = self.weight.shape[:3]
            n, g = x.shape[0], self.groups
            if any(self.padding):
                x = F.pad(x, self.padding)
            cols = F.unfold(x, self.kernel_size, stride=self.stride)  # (N, C*kh*kw, Ho*Wo)
            cols = cols.reshape(n, g, -1, ho * wo)  # (N, G, Cg*kh*kw, L), taps (c, ky, kx)
            w = self.weight.reshape(g, o // g, ho * wo, -1)  # (G, Og, L, Cg*kh*kw)
            y = torch.einsum("ngkl,golk->ngol", cols, w).reshape(n, o, ho, wo)
            return y if self.bias is None else y + self.bias
    '''

    def onnx_nodes(self, layer, g):
        """ONNX has no locally connected op: the input is padded and laid out (G, Hp, Wp,
        N, Cg), each tap (ky, kx) is a strided Slice of it (G, Ho, Wo, N, Cg), the taps are
        concatenated on the last axis into patches (G, L, N, K) (K = kh*kw*Cg, tap-major),
        and one batched MatMul by the weights laid out (G, L, K, Og) gives every location's
        outputs. Only data movement besides that MatMul (exact), and no large transpose:
        the one before the slices moves the input, the one after the MatMul the output."""
        import numpy as np

        from ...export.common import window_pads

        a, p, name = layer.attrs, g.tensors(layer), layer.name
        o, ho, wo, cg, kh, kw = p["weight"].shape
        gr, (sh, sw), (_, h, w) = a["groups"], a["stride"], layer.in_shapes[0]
        x = g.x(layer, 0, 4)
        pt, pl, pb, pr = window_pads(layer)
        if (pt, pl, pb, pr) != (0, 0, 0, 0):
            pads = g.const([0, 0, pt, pl, 0, 0, pb, pr], f"{name}.pads")
            x = g.node("Pad", [x, pads], name=f"{name}.pad")
        x = g.node("Reshape", [x, g.const([0, gr, cg, h + pt + pb, w + pl + pr],
                                          f"{name}.groups")], name=f"{name}.grouped")  # fmt: skip
        x = g.node("Transpose", [x], name=f"{name}.hwnc", perm=[1, 3, 4, 0, 2], rank=5)
        axes, steps = g.const([1, 2], f"{name}.axes"), g.const([sh, sw], f"{name}.steps")
        taps = []
        for ky in range(kh):
            for kx in range(kw):  # rows ky, ky+sh, ... (Ho of them); columns likewise
                starts = g.const([ky, kx], f"{name}.start")
                ends = g.const([ky + (ho - 1) * sh + 1, kx + (wo - 1) * sw + 1], f"{name}.end")
                taps.append(g.node("Slice", [x, starts, ends, axes, steps],
                                   name=f"{name}.tap", rank=5))  # fmt: skip
        cols = taps[0] if len(taps) == 1 else g.node("Concat", taps, name=f"{name}.taps",
                                                      axis=-1, rank=5)  # fmt: skip
        shape = g.const([gr, ho * wo, -1, kh * kw * cg], f"{name}.cols_shape")
        cols = g.node("Reshape", [cols, shape], name=f"{name}.cols", rank=4)  # (G, L, N, K)
        # (O, Ho, Wo, Cg, kh, kw) -> (G, L, kh, kw, Cg, Og) -> (G, L, K, Og): the taps' order
        wt = p["weight"].reshape(gr, o // gr, ho * wo, cg, kh, kw).transpose(0, 2, 4, 5, 3, 1)
        wt = g.param(layer, "weight", np.ascontiguousarray(wt).reshape(gr, ho * wo, -1, o // gr))
        y = g.node("MatMul", [cols, wt], name=f"{name}.matmul")  # (G, L, N, Og)
        y = g.node("Transpose", [y], name=f"{name}.ngol", perm=[2, 0, 3, 1])  # (N, G, Og, L)
        y = g.node("Reshape", [y, g.const([0, o, ho, wo], f"{name}.y_shape")])
        if "bias" in p:  # (O, Ho, Wo), broadcast over the batch
            y = g.node("Add", [y, g.param(layer, "bias")], name=f"{name}.bias_add")
        return y, 4

    def _torch_padding(self, layer) -> str:
        """The helper's padding argument: (ph, pw) when symmetric padding gives the layer's
        output size, else F.pad's (left, right, top, bottom) ('same' with an odd total)."""
        from ...export.common import window_pads

        a, (_, h, w) = layer.attrs, layer.in_shapes[0]
        (pt, pl), (kh, kw), (sh, sw) = a["pad_tl"], a["kernel"], a["stride"]
        if ((h + 2 * pt - kh) // sh + 1, (w + 2 * pl - kw) // sw + 1) == tuple(a["out_hw"]):
            return "" if (pt, pl) == (0, 0) else f", padding={_pair(pt, pl)}"
        pt, pl, pb, pr = window_pads(layer)
        return f", padding=({pl}, {pr}, {pt}, {pb})"

    def torch_module_lines(self, layer, t):
        a = layer.attrs
        t.helper("LocallyConnected2d", self.LOCAL_SOURCE)
        args = (f"{layer.in_shapes[0][0]}, {a['filters']}, {_pair(*a['out_hw'])}, "
                f"{_pair(*a['kernel'])}")  # fmt: skip
        if tuple(a["stride"]) != (1, 1):
            args += f", stride={_pair(*a['stride'])}"
        args += self._torch_padding(layer)
        if a["groups"] != 1:
            args += f", groups={a['groups']}"
        if not a["bias"]:
            args += ", bias=False"
        return f"LocallyConnected2d({args})"

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer, 0, 4)})", 4

    def state_dict_items(self, layer, tensors):
        # netdsl's own layouts, which LocallyConnected2d keeps: weight (O, Ho, Wo, C/g, kh,
        # kw), bias (O, Ho, Wo)
        return [(f"{layer.name}.{k}", k, tensors[k]) for k in ("weight", "bias") if k in tensors]


def _pair(a: int, b: int) -> str:
    """3, 3 -> "3"; 3, 2 -> "(3, 2)": an argument of the generated module's source."""
    return str(a) if a == b else f"({a}, {b})"


LAYER = Local()
