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


# Values drawn per chunk: AlexNet's 61M float64 draws at once were a 488 MB temporary,
# written three times (draw, scale, shift) before the cast; chunks stay in the cache.
CHUNK = 1 << 20


def sample_into(out: np.ndarray, spec: dict[str, Any], fan_in: float, fan_out: float,
                rng: np.random.Generator, chunk: int = CHUNK) -> None:  # fmt: skip
    """out[...] = sample(spec, out.shape, ...) cast to out's dtype, bit for bit the same
    values (the generator's stream is consumed in order, chunk after chunk, and
    ``loc + scale * z`` is computed in float64 as numpy's Generator.normal/uniform do), with
    no full-size float64 temporary. `out`: C-contiguous."""
    kind = spec["kind"]
    if kind == "gaussian":
        loc, scale, draw = spec.get("mean", 0.0), spec["std"], rng.standard_normal
    elif kind == "he":
        loc, scale, draw = 0.0, math.sqrt(2.0 / fan_in), rng.standard_normal
    elif kind in ("uniform", "xavier"):
        a = spec["scale"] if kind == "uniform" else math.sqrt(6.0 / (fan_in + fan_out))
        loc, scale, draw = -a, a - -a, rng.random  # low + (high - low) * U[0, 1)
    else:
        out[...] = sample(spec, out.shape, fan_in, fan_out, rng)
        return
    flat = out.reshape(-1)  # a view: out is contiguous
    buf = np.empty(min(chunk, flat.size))
    for lo in range(0, flat.size, chunk):
        part = buf[: min(chunk, flat.size - lo)]
        draw(out=part)
        part *= scale
        part += loc
        flat[lo : lo + part.size] = part


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
        sample_into(view, spec, fan_in, fan_out, rng)
        if pname == "weight" and layer.name in masks:
            view[...] *= masks[layer.name]
