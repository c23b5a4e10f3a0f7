"""CPU kernels that apply an activation inside another op's loop, compiled with the activations.

An op that fuses its activation into its own loop (batch norm's normalising pass, add's sum)
calls the chain of the registered kinds, ``act_scalar`` / ``act_grad_from_output``. Numba
caches a compiled kernel per source file and does not notice when a function it calls
changes, so such a kernel must live in the same generated file as the chain: its cache is
then keyed on the kinds too (netdsl/ops/act_codegen.py). An op module writes the kernel as a
plain function calling those two names (imported from netdsl.ops.activation, so the module
reads as ordinary Python), and ``module`` writes the activation module's text followed by the
functions' source, each under ``@kernel(...)``, into the kernel cache and imports it.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Sequence
from types import ModuleType

from netdsl.ops import act_codegen
from netdsl.ops.codegen import kernel_module


def source(fns: Sequence[tuple[Callable, str]]) -> str:
    """The generated module's text: the activation kernels, then each (function, options)
    as ``@kernel(options)`` over the function's own source."""
    parts = [act_codegen.source()]
    for fn, options in fns:
        body = textwrap.dedent(inspect.getsource(fn))
        parts.append(f"\n\n@kernel({options})\n{body}")
    return "".join(parts)


def module(kind: str, fns: Sequence[tuple[Callable, str]]) -> ModuleType:
    """Write (once) and import the module of `fns` (see `source`); `kind` starts its name.

    The functions may call each other, act_scalar, act_grad_from_output and np, nothing else.
    """
    return kernel_module(kind, source(fns))
