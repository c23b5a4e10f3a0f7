"""The registry of activation kinds: one module per kind here, each defining `KIND`.

A kind (netdsl/ops/activations/_base.py's Kind) declares its word and call parameters, its
report text and lint note, its float64 reference, its PyTorch twin and its float32 element
math (two @kernel functions). schema.ACTIVATIONS, ops.activation.ACT_CODE and the element
functions every fused CPU kernel and CUDA epilogue calls are built from this registry, so
adding a kind is adding a module here (no module starting with `_` is a kind).

Codes number the kinds by (order, name): the five kinds netdsl started with keep their
codes 0..4 (relu, leaky, tanh, sigmoid, linear), as compiled kernels and add.py's
`linear = 4` rely on; every later kind comes after them.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import MappingProxyType

from ._base import Kind

__all__ = ["Kind", "kinds", "get", "params_of", "kernel_params"]


@cache
def kinds() -> MappingProxyType:
    """Every kind by its word, in code order (ACT_CODE[word] is its position)."""
    found: list[Kind] = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            found.append(importlib.import_module(f"{__name__}.{info.name}").KIND)
    found.sort(key=lambda k: (k.order, k.name))
    by_name: dict[str, Kind] = {}
    for k in found:
        if k.name in by_name:
            raise RuntimeError(f"activation kind {k.name} is declared twice")
        by_name[k.name] = k
    return MappingProxyType(by_name)


def get(name: str) -> Kind:
    """The kind of a word: get("elu")."""
    return kinds()[name]


def params_of(act: tuple) -> tuple[float, ...]:
    """A fused activation's parameter values: attrs["activation"] is (kind, *values), a kind
    without parameters written (kind, 0.0) as it always was (checkpoints keep that form)."""
    k = kinds()[act[0]]
    values = tuple(float(v) for v in act[1 : 1 + len(k.params)])
    return values + tuple(k.defaults[len(values) :])


def kernel_params(act: tuple) -> tuple[float, float]:
    """The two floats (p0, p1) the kernels pass to a kind's element math, unused ones 0."""
    values = params_of(act) + (0.0, 0.0)
    return values[0], values[1]


def as_pair(params) -> tuple[float, float]:
    """(p0, p1) from a kernel constructor's argument: a tuple, or one float (a slope, as the
    constructors took before kinds had two parameters)."""
    values = tuple(params) if isinstance(params, (tuple, list)) else (params,)
    values = tuple(float(v) for v in values) + (0.0, 0.0)
    return values[0], values[1]
