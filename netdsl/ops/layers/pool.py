"""`pool p1: max 2x2, stride 2`: max, average or sum pooling; `global`; floor or ceil rounding
(Caffe's rule: the last window must start inside the input)."""

from __future__ import annotations

from ...schema import REQUIRED, Opt, Schema, read_bool, read_pair
from ..base import LayerType, fmt
from ..window import window, window_rf, window_text

POOL_MODES = ("max", "avg", "sum")


class Pool(LayerType):
    name = "pool"
    aliases = ("pooling",)
    schema = Schema(
        {
            "mode": Opt(None, REQUIRED, required="a mode: max, avg or sum",
                        hint="e.g. pool p1: max 2x2, stride 2"),
            "kernel": Opt(read_pair(), None),
            "stride": Opt(read_pair(), None),
            "pad": Opt(read_pair(lo=0), (0, 0)),
            "round": Opt(None, None),
            "global": Opt(read_bool, False),
        },
        flags={
            **{m: ("mode", m) for m in POOL_MODES},
            "ceil": ("round", "ceil"),
            "floor": ("round", "floor"),
        },
        positional_dims="kernel",
    )  # fmt: skip
    colour = "#fff2cc"

    # ---------------------------------------------------------------- import: Caffe
    caffe_types = ("Pooling",)

    def import_caffe(self, src, inputs, name, ctx):
        """Caffe's Pooling: MAX or AVE, rounded up (`ceil`, Caffe's rule: the last window
        starts inside the input or its padding), stride 1 by default; AVE with padding is
        refused (Caffe divides by the padded window, netdsl's avg by the pixels inside)."""
        from ...errors import NetError
        from ...interop import NetLine, caffe

        p = src.params.get("pooling_param", {})
        mode = str(p.get("pool", "MAX"))
        if mode not in ("MAX", "AVE"):
            raise NetError(f"{mode} pooling is not supported", src.at("pooling_param.pool"),
                           hint="netdsl pools by max or avg")  # fmt: skip
        word = "max" if mode == "MAX" else "avg"
        k = caffe.pair(src, "pooling_param", "kernel", None)
        s = caffe.pair(src, "pooling_param", "stride", 1)
        pad = caffe.pair(src, "pooling_param", "pad", 0)
        if str(p.get("global_pooling", "false")) == "true":
            if k is not None or s != (1, 1) or pad != (0, 0):
                raise NetError(
                    "global pooling takes no kernel size, stride or pad (Caffe refuses them too)",
                    src.at("pooling_param.global_pooling"),
                )
            return [NetLine("pool", name, [word, "global"], inputs)]
        if k is None:
            raise NetError("Pooling needs kernel_size (or global_pooling)",
                           src.at("pooling_param"))  # fmt: skip
        if word == "avg" and pad != (0, 0):
            raise NetError(
                "average pooling with padding is not supported: Caffe divides by the window "
                "including the padding, netdsl's avg by the pixels inside the input",
                src.at("pooling_param.pad"),
                hint="drop the pad, or use max pooling")  # fmt: skip
        rounding = str(p.get("round_mode", "CEIL")).lower()
        if rounding == "ceil" and pad == (0, 0) and (s[0] > k[0] or s[1] > k[1]):
            # without padding Caffe keeps a last window that starts beyond the input
            h, w = ctx.input_shape(inputs)[1:]
            for size, kk, ss in ((h, k[0], s[0]), (w, k[1], s[1])):
                if -(-(size - kk) // ss) * ss >= size:
                    raise NetError("Caffe's ceil rounding here makes a last window that lies "
                                   "wholly outside the input; netdsl does not",
                                   src.at("pooling_param.stride"))  # fmt: skip
        opts = [f"{word} {k[0]}x{k[1]}", f"stride {caffe.size_text(s)}"]
        if pad != (0, 0):
            opts.append(f"pad {caffe.size_text(pad)}")
        opts.append(rounding)
        return [NetLine("pool", name, opts, inputs)]

    def infer(self, layer):
        (c, h, w), a = layer.in_shapes[0], layer.attrs
        if a["global"]:
            if a["kernel"] is not None:
                raise layer.error("global pooling takes no kernel size", "kernel")
            a["kernel"], a["stride"], a["round"] = (h, w), (1, 1), a["round"] or "floor"
        if a["kernel"] is None:
            raise layer.error("pool needs a kernel size", None,
                              "e.g. pool p1: max 2x2, stride 2")  # fmt: skip
        (kh, kw), (ph, pw) = a["kernel"], a["pad"]
        (sh, sw) = a["stride"] = a["stride"] or (kh, kw)
        if ph >= kh or pw >= kw:
            raise layer.error(f"{layer.name}: padding {ph}x{pw} must be smaller than the "
                              f"kernel {kh}x{kw}", "pad")  # fmt: skip
        floor_hw, ceil_hw = [], []
        for size, k, s, p, axis in ((h, kh, sh, ph, "height"), (w, kw, sw, pw, "width")):
            fl = window(layer, size, k, s, 1, (p, p), axis, "kernel")
            ce = -(-(size + 2 * p - k) // s) + 1
            if (ce - 1) * s >= size + p:  # Caffe's rule: the last window must start inside
                ce -= 1
            floor_hw.append(fl)
            ceil_hw.append(ce)
        if a["round"] is None:
            if floor_hw != ceil_hw:
                raise layer.error(
                    f"{layer.name}: output is {fmt(floor_hw)} with floor rounding and "
                    f"{fmt(ceil_hw)} with ceil rounding; say which",
                    None,
                    "add `ceil` (Caffe, cuda-convnet) or `floor` (Darknet, PyTorch's default)",
                )
            a["round"] = "floor"
        ho, wo = floor_hw if a["round"] == "floor" else ceil_hw
        a["pad_tl"], a["out_hw"] = (ph, pw), (ho, wo)
        return (c, ho, wo)

    receptive_field = staticmethod(window_rf)

    def kernel_text(self, layer):
        a = layer.attrs
        parts = [a["mode"] + " ", *window_text(layer)]
        if a["round"] == "ceil":
            parts.append(" ceil")
        return "".join(parts)

    # ---------------------------------------------------------------- import: Darknet, cuda-convnet
    darknet_types = ("maxpool", "avgpool")
    cudaconvnet_types = ("pool",)

    def import_darknet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.darknet import int_opt

        if src.kind == "avgpool":  # Darknet's average pooling is always global
            return [NetLine("pool", name, ["avg", "global"], inputs)]
        stride = int_opt(src, "stride", 1, lo=1)
        size = int_opt(src, "size", stride, lo=1)
        padding = int_opt(src, "padding", size - 1, lo=0)
        _, h, w = ctx.input_shape(inputs)
        # Darknet: out = (in + padding - size) / stride + 1, rounded down, the first window
        # starting padding/2 before the image; pixels outside are skipped. netdsl's pool
        # starts at -pad and pads both sides alike: pad = padding/2 and floor or ceil
        # rounding give Darknet's windows exactly when they give its count.
        p = padding // 2
        want = [(n + padding - size) // stride + 1 for n in (h, w)]
        if min(want) < 1 or p >= size or size > min(h, w) + 2 * p:
            raise NetError(
                f"Darknet's maxpool {size}x{size}/{stride} with padding {padding} reaches past "
                f"this {h}x{w} input; netdsl's pool window must fit in the input padded by "
                f"{p} on each side",
                src.loc,
                hint="netdsl cannot import this maxpool exactly",
            )
        floor = [(n + 2 * p - size) // stride + 1 for n in (h, w)]
        ceil = [-(-(n + 2 * p - size) // stride) + 1 for n in (h, w)]
        ceil = [c - 1 if (c - 1) * stride >= n + p else c for c, n in zip(ceil, (h, w))]
        opts = [f"max {size}x{size}", f"stride {stride}", *([f"pad {p}"] if p else [])]
        if want == floor:
            opts += ["floor"] if floor != ceil else []
        elif want == ceil:
            opts += ["ceil"]
        else:
            netdsl = " or ".join(sorted({f"{a}x{b}" for a, b in (floor, ceil)}))
            raise NetError(
                f"Darknet's maxpool {size}x{size}/{stride} gives {want[0]}x{want[1]} on this "
                f"{h}x{w} input (it pads {p} before and {padding - p} after); netdsl's pool "
                f"pads both sides alike and gives {netdsl}",
                src.loc,
                hint="netdsl cannot import this maxpool exactly",
            )
        comment = ""
        if floor != ceil or p:
            comment = f"Darknet: out = (in + {padding} - {size})/{stride} + 1"
        return [NetLine("pool", name, opts, inputs, comment)]

    def import_cudaconvnet(self, src, inputs, name, ctx):
        from ...errors import NetError
        from ...interop import NetLine
        from ...interop.cudaconvnet import check_channels, int_opt

        c, h, _ = ctx.input_shape(inputs)
        check_channels(src, c)
        mode = src.params.get("pool", "").strip()
        if mode not in ("max", "avg"):
            raise NetError(f"pool={mode or '(none)'}: netdsl pools by max, avg or sum",
                           src.at("pool"))  # fmt: skip
        if mode == "avg" and src.params.get("sum", "0").strip().lower() in ("1", "true"):
            mode = "sum"
        size, stride = int_opt(src, "sizeX", None, lo=1), int_opt(src, "stride", None, lo=1)
        start = int_opt(src, "start", 0)
        if start > 0:
            raise NetError(f"start={start} skips the first pixels; netdsl's windows start at "
                           "or before the image", src.at("start"))  # fmt: skip
        # cuda-convnet: windows at start + i*stride, clipped to the image (max ignores and
        # avg does not count what is outside); outputsX=0 means ceil((h - start - sizeX)
        # / stride) + 1 of them. netdsl's pool with pad -start has the same windows; its
        # floor or ceil rounding must give the same count.
        p = -start
        want = int_opt(src, "outputsX", 0, lo=0) or -(-(h - start - size) // stride) + 1
        floor = (h + 2 * p - size) // stride + 1 if h + 2 * p >= size else 0
        ceil = -(-(h + 2 * p - size) // stride) + 1
        ceil -= 1 if (ceil - 1) * stride >= h + p else 0
        if p >= size or want not in (floor, ceil) or want < 1:
            raise NetError(
                f"cuda-convnet's pool gives {want}x{want} here; netdsl's pool with the same "
                f"windows gives {floor}x{floor} (floor) or {ceil}x{ceil} (ceil)",
                src.at("outputsx") if "outputsx" in src.params else src.loc,
            )
        opts = [f"{mode} {size}x{size}", f"stride {stride}", *([f"pad {p}"] if p else [])]
        if floor != ceil:
            opts.append("floor" if want == floor else "ceil")
        clipped = bool(p) or (want == ceil and floor != ceil)
        comment = "cuda-convnet rounds up: the last window may be clipped" if want == ceil \
            and floor != ceil else ""  # fmt: skip
        if mode == "avg" and clipped:
            # cuda-convnet2 divides a clipped window's sum by the pixels inside it, as
            # netdsl's avg does; the first cuda-convnet (2011) divided by sizeX*sizeX
            comment = ("clipped windows average the pixels inside (cuda-convnet2); "
                       "cuda-convnet 2011 divided by sizeX^2")  # fmt: skip
        return [NetLine("pool", name, opts, inputs, comment)]

    def ref_forward(self, layer, xs, p, ctx):
        from .. import pool

        a = layer.attrs
        return pool.ref_forward(xs[0], a["mode"], a["kernel"], a["stride"], a["pad_tl"],
                                a["out_hw"])  # fmt: skip

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import pool

        a = layer.attrs
        return [pool.ref_backward(dy, xs[0], a["mode"], a["kernel"], a["stride"], a["pad_tl"],
                                  a["out_hw"])]  # fmt: skip

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        a, x = layer.attrs, ins[0]
        (kh, kw), (sh, sw), (ph, pw), (ho, wo) = a["kernel"], a["stride"], a["pad_tl"], a["out_hw"]
        h, w = x.shape[2], x.shape[3]
        pb = max(0, (ho - 1) * sh + kh - h - ph)
        pr = max(0, (wo - 1) * sw + kw - w - pw)
        if a["mode"] == "max":
            xp = F.pad(x, (pw, pr, ph, pb), value=float("-inf"))
            return F.max_pool2d(xp, (kh, kw), (sh, sw))[:, :, :ho, :wo]
        ones = torch.ones(1, 1, h, w, dtype=x.dtype)
        s = F.avg_pool2d(F.pad(x, (pw, pr, ph, pb)), (kh, kw), (sh, sw)) * (kh * kw)
        if a["mode"] == "sum":
            return s[:, :, :ho, :wo]
        cnt = F.avg_pool2d(F.pad(ones, (pw, pr, ph, pb)), (kh, kw), (sh, sw)) * (kh * kw)
        return (s / cnt)[:, :, :ho, :wo]

    def cpu_runner(self):
        from ..pool import PoolCPURunner

        return PoolCPURunner

    def cuda_runner(self):
        from ..pool import PoolCUDARunner

        return PoolCUDARunner

    # ---------------------------------------------------------------- export
    PADDED_POOL_SOURCE = '''
    def padded_pool(x, mode, kernel, stride, pads):
        """netdsl's pool with explicit (left, right, top, bottom) padding (more than PyTorch's
        pools accept): max ignores the padding, avg divides by the inputs in the window."""
        if mode == "max":
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)
        total = F.avg_pool2d(F.pad(x, pads), kernel, stride, divisor_override=1)
        if mode == "sum":
            return total
        ones = torch.ones_like(x[:1, :1])
        return total / F.avg_pool2d(F.pad(ones, pads), kernel, stride, divisor_override=1)
    '''

    def _is_global(self, layer):
        a, (_, h, w) = layer.attrs, layer.in_shapes[0]
        return tuple(a["kernel"]) == (h, w) and tuple(a["pad"]) == (0, 0)

    def onnx_nodes(self, layer, g):
        from ...export.common import window_pads

        a, x = layer.attrs, g.x(layer, 0, 4)
        (kh, kw), mode = a["kernel"], a["mode"]
        if self._is_global(layer):
            y = g.node("GlobalMaxPool" if mode == "max" else "GlobalAveragePool", [x])
        else:
            attrs = {
                "kernel_shape": [kh, kw],
                "strides": list(a["stride"]),
                "pads": list(window_pads(layer)),
            }  # ceil's overhang as explicit padding
            if mode == "max":
                y = g.node("MaxPool", [x], **attrs)
            else:  # avg: divide by the inputs in the window; sum: the mean over all k*k
                y = g.node("AveragePool", [x], count_include_pad=int(mode == "sum"), **attrs)
        if mode == "sum":
            y = g.node("Mul", [y, g.const([float(kh * kw)])])
        return y, 4

    def _torch_ok(self, layer):
        """PyTorch's pools take the layer as it is (padding at most half the kernel)."""
        (kh, kw), (ph, pw) = layer.attrs["kernel"], layer.attrs["pad_tl"]
        return ph <= kh // 2 and pw <= kw // 2

    def torch_module_lines(self, layer, t):
        a = layer.attrs
        mode = a["mode"]
        if self._is_global(layer):
            if mode == "sum":
                return None
            return f"nn.Adaptive{'Max' if mode == 'max' else 'Avg'}Pool2d(1)"
        if not self._torch_ok(layer):
            return None
        args = [t.pair(a["kernel"])]
        if tuple(a["stride"]) != tuple(a["kernel"]):
            args.append(f"stride={t.pair(a['stride'])}")
        if tuple(a["pad"]) != (0, 0):
            args.append(f"padding={t.pair(a['pad'])}")
        if a["round"] == "ceil":
            args.append("ceil_mode=True")
        if mode == "max":
            return f"nn.MaxPool2d({', '.join(args)})"
        if mode == "avg":
            if tuple(a["pad"]) != (0, 0) or a["round"] == "ceil":
                args.append("count_include_pad=False")  # netdsl divides by the inputs only
            return f"nn.AvgPool2d({', '.join(args)})"
        return f"nn.AvgPool2d({', '.join(args)}, divisor_override=1)"  # a window's sum

    def torch_forward_expr(self, layer, t):
        from ...export.common import window_pads

        x, a = t.x(layer, 0, 4), layer.attrs
        if self._is_global(layer) and a["mode"] == "sum":
            return f"{x}.sum((2, 3), keepdim=True)", 4
        if self._is_global(layer) or self._torch_ok(layer):
            return f"{t.mod(layer)}({x})", 4
        pt, pl, pb, pr = window_pads(layer)
        fn = t.helper("padded_pool", self.PADDED_POOL_SOURCE)
        return (f'{fn}({x}, "{a["mode"]}", {t.ints(a["kernel"])}, {t.ints(a["stride"])}, '
                f"({pl}, {pr}, {pt}, {pb}))"), 4  # fmt: skip


LAYER = Pool()
