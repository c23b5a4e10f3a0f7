"""The registry of layer types: the only list of them, built from netdsl/ops/layers/.

Every module there (except those starting with `_`) defines `LAYER`, a LayerType
(netdsl/ops/base.py); adding a layer type is adding such a module. The pipeline looks
types up here by the name in the IR and asks them everything type-specific.

>>> from netdsl.ops import registry
>>> registry.get("conv").kernel_text(layer)
'5x5/1'

Design note: fused activations (stage 2 of issue 12). Today an activation is a word in
schema.ACTIVATIONS and a small int code switched on inside ops/activation.py's CPU and
CUDA element functions (act_scalar, act_grad_from_output), which conv, fc, bn, subsample,
add and pool compile into their epilogues. To make `elu(alpha)` one new module, that
switch should become a second, parallel registry of activation kinds, each module giving:
its spelling and call parameters (for read_activation and ACTIVATION_CALLS / CALL_ARGS),
its report text, its float64 ref_forward / ref_backward (in terms of the output y, or
saying it needs the input), its PyTorch twin, and its float32 element math as a pair of
@kernel functions f(v, p0) and f'(y, p0). ACT_CODE would then be assigned from that
registry, and act_scalar / act_grad_from_output generated once per process from it (a
chain of `if code == k: return f_k(v, p)` over the registered kinds, built with exec as
the kernels already are built per geometry), so every fused epilogue picks a new kind up
without an edit. The slope slot generalises to one float parameter per kind (alpha for
elu, (A, S) needs a second: carry a fixed-size parameter tuple). prelu is different: its
slope is a learned per-channel tensor, so it is a layer type here, not an activation kind.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import MappingProxyType

from ..schema import Schema
from . import layers
from .base import LayerType


@cache
def _load() -> tuple[MappingProxyType, MappingProxyType, MappingProxyType]:
    """(types by name, (type, schema) by every type word, name by alias), read once."""
    by_name: dict[str, LayerType] = {}
    for info in sorted(pkgutil.iter_modules(layers.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        lt = importlib.import_module(f"{layers.__name__}.{info.name}").LAYER
        if lt.name in by_name:
            raise RuntimeError(f"layer type {lt.name} is declared twice")
        by_name[lt.name] = lt
    words: dict[str, tuple[LayerType, Schema]] = {}
    aliases: dict[str, str] = {}
    for lt in by_name.values():
        for word, schema in lt.spellings().items():
            words[word] = (lt, schema)
        for alias in lt.aliases:
            aliases[alias] = lt.name
    return MappingProxyType(by_name), MappingProxyType(words), MappingProxyType(aliases)


def types() -> MappingProxyType:
    """Every layer type by its name in the IR (`layer.type`)."""
    return _load()[0]


def get(name: str) -> LayerType:
    """The layer type of `layer.type`."""
    return _load()[0][name]


def of(layer) -> LayerType:
    """The layer type of an IR layer."""
    return _load()[0][layer.type]


def words() -> MappingProxyType:
    """Every word that starts a layer statement -> (its layer type, the options it takes):
    the types' names and their other spellings (`relu` for an act layer)."""
    return _load()[1]


def aliases() -> MappingProxyType:
    """Other names of a type word: `batchnorm` -> `bn`."""
    return _load()[2]
