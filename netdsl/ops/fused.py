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
import re
import textwrap
from collections.abc import Callable, Sequence
from types import ModuleType

from netdsl.ops import act_codegen, activations
from netdsl.ops.codegen import kernel_module

# A call of the chain as the op's functions must write it: act_scalar(<value>, code, p0, p1)
_CALL = re.compile(r"\b(act_scalar|act_grad_from_output)\((.*?), code, ")
_FN = {"act_scalar": "f", "act_grad_from_output": "df"}


def _kinds() -> int:
    return len(activations.kinds())


def source(fns: Sequence[tuple[Callable, str]]) -> str:
    """The generated module's text: the activation kernels, then each (function, options)
    as ``@kernel(options)`` over the function's own source, once as written and once per
    kind as ``<name>_<code>``, calling that kind's f and df directly (see `kernel_for`)."""
    parts = [act_codegen.source()]
    for fn, options in fns:
        body = textwrap.dedent(inspect.getsource(fn))
        parts.append(f"\n\n@kernel({options})\n{body}")
        for code in range(_kinds()):
            spec = body.replace(f"def {fn.__name__}(", f"def {fn.__name__}_{code}(", 1)
            spec = _CALL.sub(lambda m, c=code: f"_{_FN[m[1]]}{c}({m[2]}, ", spec)
            parts.append(f"\n\n@kernel({options})\n{spec}")
    return "".join(parts)


def module(kind: str, fns: Sequence[tuple[Callable, str]]) -> ModuleType:
    """Write (once) and import the module of `fns` (see `source`); `kind` starts its name.

    The functions may call each other, act_scalar, act_grad_from_output and np, nothing else;
    they call the chain as ``act_scalar(value, code, p0, p1)`` (those argument names).
    """
    return kernel_module(kind, source(fns))


def kernel_for(mod: ModuleType, name: str, code: int):
    """Function `name` of a module from `module`, specialised for activation `code`.

    The specialised copy calls the kind's functions directly instead of the chain that
    branches on the code: LLVM vectorises a loop over two or more arrays only without that
    chain (measured: add + relu over 1.6 M values 1.8 ms with the chain, 0.3 ms without).
    Its `code`, `p0`, `p1` arguments stay (p0, p1 are the kind's parameters).
    """
    return getattr(mod, f"{name}_{int(code)}")
