"""Parameter initialisation: gaussian, uniform, xavier, he, constant; per layer or default.

Defaults come from the train section's `init weight=..., bias=...` (he and 0 unless
given); a layer's own `init` / `bias_init` wins. Batch-norm starts at gamma 1, beta 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .ir import Network
from .ops import registry


def sample(spec: dict[str, Any], shape, fan_in: float, fan_out: float,
           rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Draw one tensor from an initialiser spec like {'kind': 'gaussian', 'std': 0.01}."""
    kind = spec["kind"]
    if kind == "gaussian":
        return rng.normal(spec.get("mean", 0.0), spec["std"], shape)
    if kind == "uniform":
        return rng.uniform(-spec["scale"], spec["scale"], shape)
    if kind == "xavier":  # Glorot and Bengio 2010: U(+-sqrt(6 / (fan_in + fan_out)))
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, shape)
    if kind == "he":  # He et al. 2015: N(0, sqrt(2 / fan_in))
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if kind == "constant":
        return np.full(shape, spec["value"])
    raise ValueError(f"unknown initialiser {kind}")


def init_params(net: Network, slots, theta: np.ndarray, rng: np.random.Generator,
                masks: dict[str, np.ndarray]) -> None:  # fmt: skip
    """Fill the flat parameter buffer in layer order, reproducibly from `rng`."""
    defaults = net.train["init"]
    for s in slots:
        layer = net.layer(s.layer)
        pname = s.key.split(".")[-1]
        view = theta[s.offset : s.offset + s.size].reshape(s.shape)
        lt = registry.of(layer)
        if pname == "bias":
            spec = layer.attrs.get("bias_init") or defaults["bias"]
        else:
            spec = layer.attrs.get("init") or defaults["weight"]
        fan_in, fan_out = lt.fans(layer, layer.params["weight"])
        spec = lt.init_spec(layer, pname, spec, fan_in)  # bn: gamma 1, beta 0
        view[...] = sample(spec, s.shape, fan_in, fan_out, rng)
        if pname == "weight" and layer.name in masks:
            view[...] *= masks[layer.name]
