"""The registry of layer types: the only list of them, built from netdsl/ops/layers/.

Every module there (except those starting with `_`) defines `LAYER`, a LayerType
(netdsl/ops/base.py); adding a layer type is adding such a module. The pipeline looks
types up here by the name in the IR and asks them everything type-specific.

>>> from netdsl.ops import registry
>>> registry.get("conv").kernel_text(layer)
'5x5/1'

Design note: fused activations (stage 2 of issue 12). Today an activation kind is a word
in schema.ACTIVATIONS and a small int code switched on inside ops/activation.py's element
functions (act_scalar, act_grad_from_output), which the CPU kernels and the CUDA epilogues
of conv, fc, subsample, bn, add and pool compile in. To make `elu(alpha)` one new module
without editing activation.py, the kinds get a registry of their own, parallel to this one
(netdsl/ops/activations/<kind>.py, each defining KIND), declaring:
  - its word and call parameters with their Args (read_activation, ACTIVATION_CALLS and
    CALL_ARGS are then built from it), its report text and its lint note (_SQUASH);
  - float64 ref_forward(x, params) / ref_backward(dy, y, params), written in terms of the
    output y as today's kinds are (so the forward may run in place);
  - its PyTorch twin (torch_ref._act);
  - its float32 element math as two @kernel functions, f(v, p0, p1) and f'(y, p0, p1),
    usable from both backends (numba-cuda compiles an njit function as a device function).
ACT_CODE is then numbered from that registry, and act_scalar / act_grad_from_output are
generated once per process as a chain `if code == k: return f_k(v, p0, p1)` over the
registered kinds (source built and exec'd, as the kernels here are already specialised),
so every fused epilogue picks a new kind up with no edit. The one float `slope` carried in
attrs["activation"] and the kernels widens to two (elu's alpha; scaled tanh's A and S).
prelu is not a kind: its slope is a trainable per-channel tensor, so it is a layer type
(a module here) with its own kernels, init and decay rules.
(Built in stage 2: netdsl/ops/activations/; attrs["activation"] is (kind, *its values), and
the generated element math compiles once per process, uncached: see ops/activation.py.)
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
