"""A float64 executor of the IR built from each op's NumPy reference.

It is the ground truth for whole-network tests: its gradients are checked against
central finite differences, and the compiled float32 kernels against it.
"""

from __future__ import annotations

import numpy as np

from .ir import Network
from .ops import (
    activation,
    batchnorm,
    concat,
    conv,
    dropout,
    fc,
    loss,
    lrn,
    maxout,
    pool,
    softmax,
    subsample,
)


def _act_fwd(y, a):
    kind, slope = a.get("activation") or ("linear", 0.0)
    return y if kind == "linear" else activation.ref_forward(y, kind, slope)


def _act_bwd(dy, y, a):
    kind, slope = a.get("activation") or ("linear", 0.0)
    return dy if kind == "linear" else activation.ref_backward(dy, y, kind, slope)


def loss_and_grads(net: Network, params: dict[str, np.ndarray], x: np.ndarray,
                   labels: np.ndarray, masks: dict[str, np.ndarray] | None = None,
                   table_masks: dict[str, np.ndarray] | None = None):  # fmt: skip
    """(loss, grads) in float64, train mode. `masks`: dropout keep-masks by layer name."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    masks = masks or {}
    table_masks = table_masks or {}
    out: dict[str, np.ndarray] = {}
    saved: dict[str, object] = {}
    n = x.shape[0]
    value = 0.0
    for lyr in net.layers:
        a, t = lyr.attrs, lyr.type
        xs = [out[i] for i in lyr.inputs]
        w, b = p.get(f"{lyr.name}.weight"), p.get(f"{lyr.name}.bias")
        if t == "input":
            y = np.asarray(x, np.float64)
        elif t == "conv":
            if lyr.name in table_masks:
                w = w * table_masks[lyr.name]
            y = conv.ref_forward(xs[0], w, b, a["stride"], a["pad_tl"], a["dilation"],
                                 a["groups"], a["out_hw"])  # fmt: skip
        elif t == "fc":
            y = fc.ref_forward(xs[0].reshape(n, -1), w, b).reshape(n, -1, 1, 1)
        elif t == "pool":
            y = pool.ref_forward(xs[0], a["mode"], a["kernel"], a["stride"], a["pad_tl"],
                                 a["out_hw"])  # fmt: skip
        elif t == "subsample":
            y = subsample.ref_forward(xs[0], w, b, a["kernel"], a["stride"], a["pad_tl"],
                                      a["out_hw"])  # fmt: skip
        elif t == "act":
            y = xs[0]
        elif t == "maxout":
            y = maxout.ref_forward(xs[0], a["pieces"])
        elif t == "lrn":
            y = lrn.ref_forward(xs[0], a["size"], a["k"], a["alpha"], a["beta"])
        elif t == "dropout":
            m = masks.get(lyr.name, np.ones(xs[0].shape, np.uint8))
            y = dropout.ref_forward(xs[0], m, a["p"], True)
        elif t == "bn":
            y, _, _ = batchnorm.ref_forward_train(xs[0], w, b, a["eps"])
        elif t == "softmax":
            y = softmax.ref_forward(xs[0].reshape(n, -1)).reshape(xs[0].shape)
        elif t == "flatten":
            y = xs[0].reshape(n, -1, 1, 1)
        elif t == "add":
            y = sum(xs[1:], xs[0].copy())
        elif t == "concat":
            y = concat.ref_forward(xs)
        elif t == "loss":
            z = xs[0].reshape(n, -1)
            value, dz = (loss.ref_xent if a["kind"] == "cross_entropy" else loss.ref_mse)(z, labels)
            saved["dloss"] = dz.reshape(xs[0].shape)
            y = xs[0]
        else:
            raise NotImplementedError(t)
        out[lyr.name] = _act_fwd(y, a)

    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dout: dict[str, np.ndarray] = {lyr.name: np.zeros_like(out[lyr.name]) for lyr in net.layers}
    for lyr in reversed(net.layers):
        a, t = lyr.attrs, lyr.type
        xs = [out[i] for i in lyr.inputs]
        if t == "input":
            continue
        if t == "loss":
            dxs = [saved["dloss"]]
        else:
            dy = _act_bwd(dout[lyr.name], out[lyr.name], a)
            w = p.get(f"{lyr.name}.weight")
            if t == "conv":
                wm = w * table_masks[lyr.name] if lyr.name in table_masks else w
                dx, dw, db = conv.ref_backward(dy, xs[0], wm, a["stride"], a["pad_tl"],
                                               a["dilation"], a["groups"], a["out_hw"])  # fmt: skip
                if lyr.name in table_masks:
                    dw = dw * table_masks[lyr.name]
                grads[f"{lyr.name}.weight"] += dw
                if db is not None and f"{lyr.name}.bias" in grads:
                    grads[f"{lyr.name}.bias"] += db
                dxs = [dx]
            elif t == "fc":
                dx, dw, db = fc.ref_backward(dy.reshape(xs[0].shape[0], -1),
                                             xs[0].reshape(xs[0].shape[0], -1), w)  # fmt: skip
                grads[f"{lyr.name}.weight"] += dw
                if f"{lyr.name}.bias" in grads:
                    grads[f"{lyr.name}.bias"] += db
                dxs = [dx.reshape(xs[0].shape)]
            elif t == "pool":
                dxs = [pool.ref_backward(dy, xs[0], a["mode"], a["kernel"], a["stride"],
                                         a["pad_tl"], a["out_hw"])]  # fmt: skip
            elif t == "subsample":
                dx, dc, db = subsample.ref_backward(dy, xs[0], w, a["kernel"], a["stride"],
                                                    a["pad_tl"], a["out_hw"])  # fmt: skip
                grads[f"{lyr.name}.weight"] += dc
                grads[f"{lyr.name}.bias"] += db
                dxs = [dx]
            elif t == "act":
                dxs = [dy]
            elif t == "maxout":
                dxs = [maxout.ref_backward(dy, xs[0], a["pieces"])]
            elif t == "lrn":
                yl = lrn.ref_forward(xs[0], a["size"], a["k"], a["alpha"], a["beta"])
                dxs = [lrn.ref_backward(dy, xs[0], yl, a["size"], a["k"], a["alpha"], a["beta"])]
            elif t == "dropout":
                m = masks.get(lyr.name, np.ones(xs[0].shape, np.uint8))
                dxs = [dropout.ref_backward(dy, m, a["p"], True)]
            elif t == "bn":
                dx, dg, dbt = batchnorm.ref_backward(dy, xs[0], w, a["eps"])
                grads[f"{lyr.name}.weight"] += dg
                grads[f"{lyr.name}.bias"] += dbt
                dxs = [dx]
            elif t == "softmax":
                nn = xs[0].shape[0]
                dxs = [softmax.ref_backward(dy.reshape(nn, -1), out[lyr.name].reshape(nn, -1))
                       .reshape(xs[0].shape)]  # fmt: skip
            elif t == "flatten":
                dxs = [dy.reshape(xs[0].shape)]
            elif t == "add":
                dxs = [dy for _ in xs]
            elif t == "concat":
                dxs = concat.ref_backward(dy, [v.shape[1] for v in xs])
            else:
                raise NotImplementedError(t)
        for src, d in zip(lyr.inputs, dxs):
            dout[src] = dout[src] + d
    return float(value), grads
