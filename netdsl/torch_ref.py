"""Build the same network in PyTorch from netdsl's IR, for tests and benchmarks.

Only imported where PyTorch is installed. Parameters use the same names and layouts
as CompiledNet.params, so weights can be copied across and outputs compared.
"""

from __future__ import annotations

import numpy as np

from .ir import Network


def build(net: Network):
    """A torch.nn.Module whose forward(x) returns the scores before the loss."""
    import torch
    import torch.nn.functional as F

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.p = torch.nn.ParameterDict()
            self.masks = {}
            for lyr in net.layers:
                for pname, shape in lyr.params.items():
                    key = f"{lyr.name}.{pname}".replace(".", "__")
                    self.p[key] = torch.nn.Parameter(torch.zeros(shape))
                if lyr.type == "bn":
                    c = lyr.out_shape[0]
                    self.register_buffer(f"{lyr.name}__rm".replace(".", "_"), torch.zeros(c))
                    self.register_buffer(f"{lyr.name}__rv".replace(".", "_"), torch.ones(c))
                if lyr.type == "conv" and lyr.attrs["connect"] is not None:
                    o, c = lyr.out_shape[0], lyr.in_shapes[0][0]
                    m = torch.zeros(o, c, 1, 1)
                    for i, row in enumerate(lyr.attrs["connect"]):
                        m[i, row] = 1.0
                    self.masks[lyr.name] = m

        def param(self, layer: str, pname: str):
            key = f"{layer}.{pname}".replace(".", "__")
            return self.p[key] if key in self.p else None

        def forward(self, x):
            out = {}
            for lyr in net.layers:
                a = lyr.attrs
                ins = [out[n] for n in lyr.inputs]
                t = lyr.type
                if t == "input":
                    y = x
                elif t == "conv":
                    (pt, pl), (ho, wo) = a["pad_tl"], a["out_hw"]
                    c, h, w = lyr.in_shapes[0]
                    kh, kw = a["kernel"]
                    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
                    pb = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - h - pt)
                    pr = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - w - pl)
                    w_ = self.param(lyr.name, "weight")
                    if lyr.name in self.masks:
                        w_ = w_ * self.masks[lyr.name]
                    y = F.conv2d(
                        F.pad(ins[0], (pl, pr, pt, pb)),
                        w_,
                        self.param(lyr.name, "bias"),
                        stride=a["stride"],
                        dilation=a["dilation"],
                        groups=a["groups"],
                    )
                    y = y[:, :, :ho, :wo]
                elif t == "pool":
                    y = _pool(ins[0], a, F, torch)
                elif t == "subsample":
                    k, s = a["kernel"], a["stride"]
                    ssum = F.avg_pool2d(ins[0], k, s) * (k[0] * k[1])
                    wt, b = self.param(lyr.name, "weight"), self.param(lyr.name, "bias")
                    y = ssum * wt.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
                elif t == "fc":
                    y = F.linear(
                        ins[0].flatten(1),
                        self.param(lyr.name, "weight"),
                        self.param(lyr.name, "bias"),
                    ).view(x.shape[0], -1, 1, 1)
                elif t == "act":
                    y = ins[0]
                elif t == "maxout":
                    k = a["pieces"]
                    n, c, h, w = ins[0].shape
                    y = ins[0].view(n, c // k, k, h, w).max(dim=2).values
                elif t == "lrn":  # ours: alpha not divided by n; torch divides by size
                    y = F.local_response_norm(
                        ins[0], a["size"], alpha=a["alpha"] * a["size"], beta=a["beta"], k=a["k"]
                    )
                elif t == "dropout":
                    y = F.dropout(ins[0], a["p"], self.training)
                elif t == "bn":
                    rm = getattr(self, f"{lyr.name}__rm".replace(".", "_"))
                    rv = getattr(self, f"{lyr.name}__rv".replace(".", "_"))
                    y = F.batch_norm(
                        ins[0],
                        rm,
                        rv,
                        self.param(lyr.name, "weight"),
                        self.param(lyr.name, "bias"),
                        self.training,
                        a["momentum"],
                        a["eps"],
                    )
                elif t == "softmax":
                    y = F.softmax(ins[0], dim=1)
                elif t == "flatten":
                    y = ins[0].reshape(x.shape[0], -1, 1, 1)
                elif t == "add":
                    y = ins[0]
                    for other in ins[1:]:
                        y = y + other
                elif t == "concat":
                    y = torch.cat(ins, dim=1)
                elif t == "loss":
                    return ins[0].flatten(1)
                else:
                    raise NotImplementedError(t)
                if "activation" in a:
                    y = _act(y, a["activation"], F, torch)
                out[lyr.name] = y
            return out[net.layers[-1].name].flatten(1)

        def load_numpy(self, params: dict[str, np.ndarray]) -> None:
            with torch.no_grad():
                for k, v in params.items():
                    layer, pname = k.rsplit(".", 1)
                    if pname in ("running_mean", "running_var"):
                        suffix = "rm" if pname == "running_mean" else "rv"
                        getattr(self, f"{layer}__{suffix}".replace(".", "_")).copy_(
                            torch.from_numpy(np.asarray(v))
                        )
                    else:
                        self.param(layer, pname).copy_(torch.from_numpy(np.asarray(v)))

        def loss(self, scores, labels):
            kind = net.loss.attrs["kind"] if net.loss else "cross_entropy"
            if kind == "cross_entropy":
                return F.cross_entropy(scores, labels)
            onehot = F.one_hot(labels, scores.shape[1]).to(scores.dtype)
            return 0.5 * ((scores - onehot) ** 2).sum(dim=1).mean()

        def grads_numpy(self) -> dict[str, np.ndarray]:
            return {
                k.replace("__", "."): p.grad.detach().numpy().copy()
                for k, p in self.p.items()
                if p.grad is not None
            }

    return Model()


def _act(y, act, F, torch):
    kind, slope = act
    if kind == "relu":
        return F.relu(y)
    if kind == "leaky":
        return F.leaky_relu(y, slope)
    if kind == "tanh":
        return torch.tanh(y)
    if kind == "sigmoid":
        return torch.sigmoid(y)
    return y


def _pool(x, a, F, torch):
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
