"""`subsample s2: 2x2, tanh`: LeNet-5's S layers: each map's window sum times one trainable
coefficient plus one bias per map."""

from __future__ import annotations

from ...schema import ACT_FLAGS, ACT_OPTS, LEARN_OPTS, REQUIRED, Opt, Schema, read_pair
from ..base import LayerType
from ..window import window, window_rf, window_text


class Subsample(LayerType):
    name = "subsample"
    schema = Schema(
        {
            "kernel": Opt(read_pair(), REQUIRED, required="a kernel size"),
            "stride": Opt(read_pair(), None),
            **ACT_OPTS,
            **LEARN_OPTS,
        },
        flags=ACT_FLAGS,
        positional_dims="kernel",
    )

    def infer(self, layer):
        (c, h, w), a = layer.in_shapes[0], layer.attrs
        (kh, kw) = a["kernel"]
        (sh, sw) = a["stride"] = a["stride"] or (kh, kw)
        ho = window(layer, h, kh, sh, 1, (0, 0), "height", "kernel")
        wo = window(layer, w, kw, sw, 1, (0, 0), "width", "kernel")
        a["pad_tl"], a["out_hw"] = (0, 0), (ho, wo)
        layer.params = {"weight": (c,), "bias": (c,)}  # one coefficient and one bias per map
        layer.n_params = 2 * c
        return (c, ho, wo)

    receptive_field = staticmethod(window_rf)

    def kernel_text(self, layer):
        return "".join(window_text(layer))

    def fans(self, layer, weight):
        kh, kw = layer.attrs["kernel"]
        return kh * kw, 1.0

    def init_spec(self, layer, pname, spec, fan_in):
        if pname == "weight" and spec["kind"] in ("he", "xavier"):
            return {"kind": "constant", "value": 1.0 / fan_in}  # start as an average
        return spec

    def ref_forward(self, layer, xs, p, ctx):
        from .. import subsample

        a = layer.attrs
        return subsample.ref_forward(xs[0], p["weight"], p["bias"], a["kernel"], a["stride"],
                                     a["pad_tl"], a["out_hw"])  # fmt: skip

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        from .. import subsample

        a = layer.attrs
        dx, dc, db = subsample.ref_backward(dy, xs[0], p["weight"], a["kernel"], a["stride"],
                                            a["pad_tl"], a["out_hw"])  # fmt: skip
        grads["weight"] += dc
        grads["bias"] += db
        return [dx]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        k, s = layer.attrs["kernel"], layer.attrs["stride"]
        ssum = F.avg_pool2d(ins[0], k, s) * (k[0] * k[1])
        wt, b = model.param(layer.name, "weight"), model.param(layer.name, "bias")
        return ssum * wt.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

    def cpu_runner(self):
        from ..subsample import SubsampleCPURunner

        return SubsampleCPURunner

    def cuda_runner(self):
        from ..subsample import SubsampleCUDARunner

        return SubsampleCUDARunner

    # ---------------------------------------------------------------- export
    SUBSAMPLE_SOURCE = '''
    class Subsample(nn.Module):
        """LeNet-5's S layers: each map's window sum times a trainable coefficient, plus a
        bias (one of each per map)."""

        def __init__(self, channels, kernel, stride):
            super().__init__()
            self.kernel, self.stride = kernel, stride
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

        def forward(self, x):
            s = F.avg_pool2d(x, self.kernel, self.stride, divisor_override=1)
            return s * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
    '''

    def onnx_nodes(self, layer, g):
        import numpy as np

        a, p = layer.attrs, g.tensors(layer)
        c, (kh, kw) = layer.in_shapes[0][0], a["kernel"]
        # a depthwise convolution whose kernel is the map's coefficient everywhere
        w = np.broadcast_to(p["weight"].reshape(c, 1, 1, 1), (c, 1, kh, kw))
        ins = [g.x(layer, 0, 4), g.param(layer, "weight", w), g.param(layer, "bias")]
        return g.node("Conv", ins, kernel_shape=[kh, kw], strides=list(a["stride"]),
                      group=c), 4  # fmt: skip

    def torch_module_lines(self, layer, t):
        a = layer.attrs
        t.helper("Subsample", self.SUBSAMPLE_SOURCE)
        return (f"Subsample({layer.in_shapes[0][0]}, {t.ints(a['kernel'])}, "
                f"{t.ints(a['stride'])})")  # fmt: skip

    def torch_forward_expr(self, layer, t):
        return f"{t.mod(layer)}({t.x(layer, 0, 4)})", 4

    def state_dict_items(self, layer, tensors):
        return [(f"{layer.name}.{k}", k, tensors[k]) for k in ("weight", "bias")]


LAYER = Subsample()
