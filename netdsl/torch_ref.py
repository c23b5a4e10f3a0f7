"""Build the same network in PyTorch from netdsl's IR, for tests and benchmarks.

Only imported where PyTorch is installed. Parameters use the same names and layouts
as CompiledNet.params, so weights can be copied across and outputs compared.
"""

from __future__ import annotations

import numpy as np

from .ir import Network
from .ops import registry


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
                registry.of(lyr).torch_setup(lyr, self, torch)  # buffers, table masks

        def param(self, layer: str, pname: str):
            key = f"{layer}.{pname}".replace(".", "__")
            return self.p[key] if key in self.p else None

        def forward(self, x):
            self.x = x  # what the input layer returns
            out = {}
            for lyr in net.layers:  # each type's forward, then its fused activation
                ins = [out[n] for n in lyr.inputs]
                y = registry.of(lyr).torch_forward(lyr, ins, self, F, torch)
                if "activation" in lyr.attrs:
                    y = _act(y, lyr.attrs["activation"], F, torch)
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
    from .ops import activations  # each kind's PyTorch twin

    return activations.get(act[0]).torch(y, activations.params_of(act), F, torch)
