"""Kernels compiled by Numba on first use.

Op modules define their CPU kernels with ``@kernel`` instead of ``@numba.njit`` so
that importing an op (for its shape rule, say, in ``netdsl check``) never imports
numba. The first call of any kernel compiles it with ``numba.njit(cache=True)``;
before that, every ``@kernel`` object reachable from the kernel's module globals is
swapped for its Numba dispatcher, so kernels may call each other (and shared element
math) as in plain Numba code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

_JIT_OPTIONS = {"cache": True, "fastmath": False, "error_model": "numpy"}
_llvm_tuned = False


def tune_llvm() -> None:
    """Set the LLVM options netdsl compiles its CPU kernels with, once per process, before
    its first kernel compiles (kernel.dispatcher and netdsl.ops.conv_cpu, which every other
    module of kernels imports, call this).

    ``-disable-lsr``: LLVM's loop strength reduction, a pass of the x86 code generator that
    rewrites the integer address arithmetic of loops, took a fifth to a third of the
    machine-code stage (Winograd's filter_gradient: 0.25 of 1.2 s). Without it a cold
    AlexNet start compiled 19.6 -> 16.4 s of CPU in process (LeNet-5 and the other nets
    alike), while every net's training step ran as fast within the noise of a 2-core VM and
    computed the same bits: it touches no floating-point operation (tested). LLVM's options
    are per process: other Numba code compiled in the same process gets them too.
    ``NETDSL_LLVM_LSR=1`` keeps the pass (for measuring)."""
    global _llvm_tuned
    if _llvm_tuned:
        return
    _llvm_tuned = True
    if os.environ.get("NETDSL_LLVM_LSR") == "1":
        return
    import llvmlite.binding as llvm

    llvm.set_option("netdsl", "-disable-lsr")


class kernel:  # noqa: N801 - used as a decorator, lower case like numba.njit
    """Decorator: ``@kernel`` or ``@kernel(parallel=True)``; compiles with numba on first call.

    >>> @kernel
    ... def axpy(a, x, y):
    ...     for i in range(x.size):
    ...         y[i] += a * x[i]
    """

    def __init__(self, fn: Callable | None = None, **options: Any):
        self.options = {**_JIT_OPTIONS, **options}
        self.fn = fn
        self._dispatcher = None
        if fn is not None:
            self.__name__ = fn.__name__
            self.__doc__ = fn.__doc__
            self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:  # used as @kernel(parallel=True)
            return kernel(args[0], **self.options)
        return self.dispatcher(*args, **kwargs)

    @property
    def dispatcher(self) -> Any:
        """The numba dispatcher (compiling lazily per signature)."""
        if self._dispatcher is None:
            tune_llvm()
            import numba

            self._dispatcher = numba.njit(**self.options)(self.fn)
            _bind_module(self.fn.__module__, set())
        return self._dispatcher

    @property
    def py_func(self) -> Callable:
        """The plain Python function, for debugging and coverage."""
        return self.fn


def _bind_module(name: str, seen: set[str]) -> None:
    """Replace every @kernel in module `name` (and modules they come from) by its dispatcher."""
    if name in seen or name not in sys.modules:
        return
    seen.add(name)
    namespace = vars(sys.modules[name])
    for attr, value in list(namespace.items()):
        if isinstance(value, kernel) and value.fn is not None:
            namespace[attr] = value.dispatcher
            _bind_module(value.fn.__module__, seen)


def probe() -> None:
    """A plain function of netdsl.ops: netdsl.compile_ahead asks Numba where it would cache
    this package's kernels (the same locators, in the same order, as for a real one)."""
