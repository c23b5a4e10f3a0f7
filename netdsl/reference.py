"""A float64 executor of the IR built from each op's NumPy reference.

It is the ground truth for whole-network tests: its gradients are checked against
central finite differences, and the compiled float32 kernels against it.
"""

from __future__ import annotations

import numpy as np

from .ir import Network
from .ops import activation, registry
from .ops.base import RefContext


def _act_fwd(y, a):
    act = a.get("activation") or ("linear", 0.0)
    return y if act[0] == "linear" else activation.ref_forward(y, act[0], act[1:])


def _act_bwd(dy, y, a):
    act = a.get("activation") or ("linear", 0.0)
    return dy if act[0] == "linear" else activation.ref_backward(dy, y, act[0], act[1:])


def _own(d: dict, layer) -> dict:
    """A layer's tensors from a dict keyed "<layer>.<name>", keyed by name."""
    return {k: d[f"{layer.name}.{k}"] for k in layer.params if f"{layer.name}.{k}" in d}


def loss_and_grads(net: Network, params: dict[str, np.ndarray], x: np.ndarray,
                   labels: np.ndarray, masks: dict[str, np.ndarray] | None = None,
                   table_masks: dict[str, np.ndarray] | None = None):  # fmt: skip
    """(loss, grads) in float64, train mode. `masks`: dropout keep-masks by layer name."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ctx = RefContext(np.asarray(x, np.float64), masks or {}, table_masks or {}, labels)
    out: dict[str, np.ndarray] = {}
    for lyr in net.layers:  # each type's forward, then its fused activation
        y = registry.of(lyr).ref_forward(lyr, [out[i] for i in lyr.inputs], _own(p, lyr), ctx)
        out[lyr.name] = _act_fwd(y, lyr.attrs)

    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dout: dict[str, np.ndarray] = {lyr.name: np.zeros_like(out[lyr.name]) for lyr in net.layers}
    for lyr in reversed(net.layers):
        xs = [out[i] for i in lyr.inputs]
        dy = _act_bwd(dout[lyr.name], out[lyr.name], lyr.attrs)
        dxs = registry.of(lyr).ref_backward(lyr, dy, xs, out[lyr.name], _own(p, lyr),
                                            _own(grads, lyr), ctx)  # fmt: skip
        for src, d in zip(lyr.inputs, dxs):
            dout[src] = dout[src] + d
    return float(ctx.value), grads
