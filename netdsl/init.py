"""Parameter initialisation: gaussian, uniform, xavier, he, constant; per layer or default.

Defaults come from the train section's `init weight=..., bias=...` (he and 0 unless
given); a layer's own `init` / `bias_init` wins. Batch-norm starts at gamma 1, beta 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .ir import Network


def _fans(layer, shape: tuple[int, ...]) -> tuple[float, float]:
    if layer.type == "conv":
        o, cg, kh, kw = shape
        table = layer.attrs.get("connect")
        fan_in = (sum(len(r) for r in table) / len(table) if table else cg) * kh * kw
        return fan_in, o * kh * kw / max(1, layer.attrs["groups"])
    if layer.type == "fc":
        return shape[1], shape[0]
    if layer.type == "subsample":
        kh, kw = layer.attrs["kernel"]
        return kh * kw, 1.0
    return 1.0, 1.0


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
        if layer.type == "bn":
            view[...] = 1.0 if pname == "weight" else 0.0
            continue
        if pname == "bias":
            spec = layer.attrs.get("bias_init") or defaults["bias"]
        else:
            spec = layer.attrs.get("init") or defaults["weight"]
        fan_in, fan_out = _fans(layer, layer.params["weight"])
        if layer.type == "subsample" and pname == "weight" and spec["kind"] in ("he", "xavier"):
            spec = {"kind": "constant", "value": 1.0 / fan_in}  # start as an average
        view[...] = sample(spec, s.shape, fan_in, fan_out, rng)
        if pname == "weight" and layer.name in masks:
            view[...] *= masks[layer.name]
