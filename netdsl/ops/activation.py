"""Elementwise activations, of the kinds registered in netdsl/ops/activations/.

The kind is a string in the language (``activation leaky 0.1``) and a small int in
the kernels (``ACT_CODE[kind]``) so one compiled kernel serves every kind: the
branch on the code is loop-invariant, and LLVM hoists it out of the loop.

Backward is written in terms of the forward OUTPUT ``y`` (never the input), so the
forward may run in place (``x is y``) and the input buffer need not be kept: each kind
declares its f' through y (relu' = [y > 0], tanh' = 1 - y^2, elu' = 1 or y + alpha, ...).
A kind's parameters reach the kernels as two float32 values (p0, p1): leaky's slope, elu's
alpha, scaled tanh's A and S (0 where unused).

Kernels work on C-contiguous float32 arrays of any shape (they flatten internally;
every ndim is one more compilation, so prefer passing ``a.reshape(-1)``).
"""

from __future__ import annotations

import functools
import types
from types import MappingProxyType

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import act_codegen, activations
from netdsl.ops.codegen import generated

ACTIVATIONS: tuple[str, ...] = tuple(activations.kinds())

# Read-only: the codes are baked into compiled kernels and must never change at run time.
ACT_CODE = MappingProxyType({name: code for code, name in enumerate(ACTIVATIONS)})

RELU, LEAKY, TANH, SIGMOID, LINEAR = (ACT_CODE[name] for name in ACTIVATIONS[:5])

DEFAULT_SLOPE = 0.01  # leaky's default slope (its module declares it too)


def _values(kind: str, params) -> tuple[float, ...]:
    """A kind's parameter values from a float (the slope, as callers always passed), a tuple,
    or None (its defaults)."""
    if params is None:
        params = ()
    elif not isinstance(params, (tuple, list)):
        params = (params,)
    return activations.params_of((kind, *params))


def kernel_params(kind: str, params=None) -> tuple[np.float32, np.float32]:
    """(p0, p1) as the kernels take them."""
    p = activations.kernel_params((kind, *_values(kind, params)))
    return np.float32(p[0]), np.float32(p[1])


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(x: np.ndarray, kind: str, slope=None) -> np.ndarray:
    """Reference activation in float64. x: any shape -> y: same shape. slope: the kind's
    parameter (one float) or parameters (a tuple)."""
    x = np.asarray(x, dtype=np.float64)
    if kind not in ACT_CODE:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")
    return activations.get(kind).ref_forward(x, _values(kind, slope))


def ref_backward(dy: np.ndarray, y: np.ndarray, kind: str, slope=None) -> np.ndarray:
    """Reference gradient from the forward output. dy, y: same shape -> dx: same shape."""
    dy = np.asarray(dy, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if kind not in ACT_CODE:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")
    return activations.get(kind).ref_backward(dy, y, _values(kind, slope))


# ---------------------------------------------------------------------------------------------
# Element math and the float32 CPU kernels: act_scalar(v, code, p0, p1),
# act_grad_from_output(y, code, p0, p1), act_forward and act_backward are generated from the
# registered kinds into a source file (netdsl/ops/act_codegen.py), so Numba caches them on
# disk like every other kernel. Arguments are float32 scalars and an int code; all arithmetic
# stays in float32. The CUDA kernels at the end of this file build the same chain.
# ---------------------------------------------------------------------------------------------


def _chain(name: str, arg: str, fn: str, namespace: dict, funcs: list):
    """def name(arg, code, p0, p1): if code == k: return fn_k(arg, p0, p1) ... (the last
    kind without a test), with fn_k = funcs[k] put in `namespace` (for the CUDA device code)."""
    lines = [f"def {name}({arg}, code, p0, p1):"]
    for code, func in enumerate(funcs):
        namespace[f"_{fn}{code}"] = func
        call = f"return _{fn}{code}({arg}, p0, p1)"
        last = code == len(funcs) - 1
        lines.append(f"    {call}" if last else f"    if code == {code}:\n        {call}")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own source, built from the registry
    return namespace.pop(name)


_KINDS = list(activations.kinds().values())
_CPU = act_codegen.load()
act_scalar = _CPU.act_scalar
act_grad_from_output = _CPU.act_grad_from_output
act_forward = _CPU.act_forward
act_backward = _CPU.act_backward


# In-place kernels for the runners' fused activations (netdsl/backends/cpu.py): y = act(y)
# after a layer's forward, dy *= act'(y) before its backward. Called with x is y, act_forward
# and act_backward above ran LLVM's scalar loop (its runtime alias test sees the overlap),
# ~3x slower; these read one array and write it. Compiled with the chain and specialised per
# kind (netdsl/ops/fused.py).


def act_in_place(v, code, p0, p1):
    """v[i] = act(v[i]). v: (size,) f32."""
    for i in range(v.size):
        v[i] = act_scalar(v[i], code, p0, p1)


def act_grad_in_place(dy, y, code, p0, p1):
    """dy[i] *= act'(y[i]). dy, y: (size,) f32, distinct arrays."""
    for i in range(dy.size):
        dy[i] = dy[i] * act_grad_from_output(y[i], code, p0, p1)


@functools.cache
def in_place_kernels(code: int):
    """(act_in_place, act_grad_in_place) specialised for activation `code`."""
    from netdsl.ops import fused

    k = fused.module("actip", [(act_in_place, ""), (act_grad_in_place, "")])
    return fused.kernel_for(k, "act_in_place", code), fused.kernel_for(k, "act_grad_in_place", code)


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# The element math above is compiled a second time, as CUDA device functions, from the very
# same Python source (`py_func`), so CPU and GPU compute the same float32 expressions.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@functools.cache
def cuda_element_math():
    """(act, act_grad) as CUDA device functions: act(v, code, p0, p1), act_grad(y, code, p0,
    p1); the same chain as act_scalar's over the kinds' f and df compiled as device functions."""
    global cuda
    from numba import cuda

    # inlined: a call left in a GEMM epilogue kept the accumulator tile out of registers
    inline = {"device": True, "inline": "always"}
    dev = [(cuda.jit(**inline)(k.f.py_func), cuda.jit(**inline)(k.df.py_func)) for k in _KINDS]
    ns: dict = {}
    act = _chain("act", "v", "f", ns, [f for f, _ in dev])
    act_grad = _chain("act_grad", "y", "df", ns, [df for _, df in dev])
    return cuda.jit(**inline)(act), cuda.jit(**inline)(act_grad)


@generated("activation")
def _cuda_kernels():
    """The activation kernels (grid-stride loops over flat float32 arrays)."""
    global cuda
    from numba import cuda

    act, act_grad = cuda_element_math()

    @cuda.jit
    def act_forward(x, y, code, p0, p1):  # x, y: (size,) f32; y may be x
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = act(x[i], code, p0, p1)

    @cuda.jit
    def act_backward(dy, y, dx, code, p0, p1):  # dy, y, dx: (size,) f32; dx may be dy
        for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
            dx[i] = dy[i] * act_grad(y[i], code, p0, p1)

    return types.SimpleNamespace(act_forward=act_forward, act_backward=act_backward)


class ActCUDA:
    """Elementwise activation of one kind on flat device arrays of `size` float32 values."""

    def __init__(self, size: int, kind: str, slope=None) -> None:
        """slope: the kind's parameter, or a tuple of its parameters."""
        from netdsl.ops.cudakit import Launch, grid_1d

        self.code, self.params = ACT_CODE[kind], kernel_params(kind, slope)
        grid, block = grid_1d(size)
        self._fwd = Launch(_cuda_kernels, "act_forward", grid, block)
        self._bwd = Launch(_cuda_kernels, "act_backward", grid, block)

    def forward(self, x, y) -> None:
        """y = act(x); x, y: (size,) float32 device arrays, y may be x."""
        self._fwd(x, y, self.code, *self.params)

    def backward(self, dy, y, dx) -> None:
        """dx = dy * act'(y); dy, y, dx: (size,) float32 device arrays, dx may be dy."""
        self._bwd(dy, y, dx, self.code, *self.params)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class ActCPURunner(Runner):
    def forward(self, train):
        act_forward(self.x[0].reshape(-1), self.y.reshape(-1), self.act_code,
                    *self.act_params)  # fmt: skip

    def backward(self):
        if self.dx[0] is not None:
            act_backward(
                self.dy.reshape(-1),
                self.y.reshape(-1),
                self.dx[0].reshape(-1),
                self.act_code,
                *self.act_params,
            )


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class ActCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        # the layer IS the activation, not fused. The base builds an op only for a non-linear
        # one; a standalone `linear` is the identity: its kernel copies y = x and passes the
        # gradient through (act' = 1), as on the CPU.
        act = layer.attrs.get("activation") or ("linear", 0.0)
        self.op = self.act_op or ActCUDA(self.y.size, act[0], activations.params_of(act))
        self.fused_act, self.act_op = False, None

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.dx[0].reshape(-1))
