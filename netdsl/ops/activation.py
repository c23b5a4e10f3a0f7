"""Elementwise activations: relu, leaky relu, tanh, sigmoid, linear.

The kind is a string in the language (``activation leaky 0.1``) and a small int in
the kernels (``ACT_CODE[kind]``) so one compiled kernel serves every kind: the
branch on the code is loop-invariant, and LLVM hoists it out of the loop.

Backward is written in terms of the forward OUTPUT ``y`` (never the input), so the
forward may run in place (``x is y``) and the input buffer need not be kept:
relu' = [y > 0], leaky' = 1 or slope by the sign of y (slope > 0), tanh' = 1 - y^2,
sigmoid' = y (1 - y), linear' = 1.

Kernels work on C-contiguous float32 arrays of any shape (they flatten internally;
every ndim is one more compilation, so prefer passing ``a.reshape(-1)``).
"""

from __future__ import annotations

import functools
import math
import types
from types import MappingProxyType

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.jit import kernel

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky", "tanh", "sigmoid", "linear")

# Read-only: the codes are baked into compiled kernels and must never change at run time.
ACT_CODE = MappingProxyType({name: code for code, name in enumerate(ACTIVATIONS)})

RELU, LEAKY, TANH, SIGMOID, LINEAR = (ACT_CODE[name] for name in ACTIVATIONS)

DEFAULT_SLOPE = 0.01


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(x: np.ndarray, kind: str, slope: float = DEFAULT_SLOPE) -> np.ndarray:
    """Reference activation in float64. x: any shape -> y: same shape."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "leaky":
        return np.where(x > 0, x, slope * x)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "sigmoid":
        # exp(-x) may overflow to inf for x << 0, giving exactly 0: silence the warning only.
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-x))
    if kind == "linear":
        return x.copy()
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def ref_backward(
    dy: np.ndarray, y: np.ndarray, kind: str, slope: float = DEFAULT_SLOPE
) -> np.ndarray:
    """Reference gradient from the forward output. dy, y: same shape -> dx: same shape."""
    dy = np.asarray(dy, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if kind == "relu":
        return dy * (y > 0)
    if kind == "leaky":
        return dy * np.where(y > 0, 1.0, slope)
    if kind == "tanh":
        return dy * (1.0 - y * y)
    if kind == "sigmoid":
        return dy * y * (1.0 - y)
    if kind == "linear":
        return dy.copy()
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


# ---------------------------------------------------------------------------------------------
# Element math, shared by the CPU kernels below and the CUDA kernels at the end of this file
# (compiled there as CUDA device functions from the same Python source).
# Arguments are float32 scalars and an int code; all arithmetic stays in float32.
# ---------------------------------------------------------------------------------------------


@kernel
def act_scalar(v, code, slope):  # v: float32, code: int, slope: float32 -> float32
    """Activation of one float32 value."""
    if code == 0:  # relu
        return v if v > 0 else v * np.float32(0.0)
    if code == 1:  # leaky
        return v if v > 0 else slope * v
    if code == 2:  # tanh
        return np.tanh(v)
    if code == 3:  # sigmoid: exp(-v) overflows to inf for v << 0 and 1/inf = 0, so no branch
        # math.exp, not np.exp: the same float32 expf on the CPU, and numba-cuda has no np.exp
        return np.float32(1.0) / (np.float32(1.0) + math.exp(-v))
    return v  # linear


@kernel
def act_grad_from_output(y, code, slope):  # y: float32, code: int, slope: float32 -> float32
    """Derivative of the activation, expressed through its output y."""
    one = np.float32(1.0)
    if code == 0:  # relu
        return one if y > 0 else np.float32(0.0)
    if code == 1:  # leaky (slope > 0 keeps the sign of y equal to that of x)
        return one if y > 0 else slope
    if code == 2:  # tanh
        return one - y * y
    if code == 3:  # sigmoid
        return y * (one - y)
    return one  # linear


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
# ---------------------------------------------------------------------------------------------


@kernel
def act_forward(x, y, code, slope):
    """y = act(x). x, y: same shape, float32 C-contiguous; x may be y (in place).

    code: ACT_CODE[kind]; slope: leaky slope (ignored by other kinds).
    """
    xf = x.reshape(-1)  # (size,) view
    yf = y.reshape(-1)  # (size,) view
    s = np.float32(slope)
    for i in range(xf.size):
        yf[i] = act_scalar(xf[i], code, s)


@kernel
def act_backward(dy, y, dx, code, slope):
    """dx = dy * act'(from y). dy, y, dx: same shape, float32 C-contiguous; dx may be dy."""
    dyf = dy.reshape(-1)  # (size,)
    yf = y.reshape(-1)  # (size,)
    dxf = dx.reshape(-1)  # (size,)
    s = np.float32(slope)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * act_grad_from_output(yf[i], code, s)


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# The element math above is compiled a second time, as CUDA device functions, from the very
# same Python source (`py_func`), so CPU and GPU compute the same float32 expressions.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@functools.cache
def cuda_element_math():
    """(act, act_grad) as CUDA device functions: act(v, code, slope), act_grad(y, code, slope)."""
    global cuda
    from numba import cuda

    # inlined: a call left in a GEMM epilogue kept the accumulator tile out of registers
    inline = {"device": True, "inline": "always"}
    return cuda.jit(**inline)(act_scalar.py_func), cuda.jit(**inline)(act_grad_from_output.py_func)


@functools.cache
def _cuda_kernels():
    """The activation kernels (grid-stride loops over flat float32 arrays)."""
    global cuda
    from numba import cuda

    act, act_grad = cuda_element_math()

    @cuda.jit
    def act_forward(x, y, code, slope):  # x, y: (size,) f32; y may be x
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = act(x[i], code, slope)

    @cuda.jit
    def act_backward(dy, y, dx, code, slope):  # dy, y, dx: (size,) f32; dx may be dy
        for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
            dx[i] = dy[i] * act_grad(y[i], code, slope)

    return types.SimpleNamespace(act_forward=act_forward, act_backward=act_backward)


class ActCUDA:
    """Elementwise activation of one kind on flat device arrays of `size` float32 values."""

    def __init__(self, size: int, kind: str, slope: float = DEFAULT_SLOPE) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        self.code, self.slope = ACT_CODE[kind], np.float32(slope)
        grid, block = grid_1d(size)
        self._fwd = Launch(_cuda_kernels, "act_forward", grid, block)
        self._bwd = Launch(_cuda_kernels, "act_backward", grid, block)

    def forward(self, x, y) -> None:
        """y = act(x); x, y: (size,) float32 device arrays, y may be x."""
        self._fwd(x, y, self.code, self.slope)

    def backward(self, dy, y, dx) -> None:
        """dx = dy * act'(y); dy, y, dx: (size,) float32 device arrays, dx may be dy."""
        self._bwd(dy, y, dx, self.code, self.slope)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class ActCPURunner(Runner):
    def forward(self, train):
        act_forward(self.x[0].reshape(-1), self.y.reshape(-1), self.act_code,
                               self.act_slope)  # fmt: skip

    def backward(self):
        if self.dx[0] is not None:
            act_backward(
                self.dy.reshape(-1),
                self.y.reshape(-1),
                self.dx[0].reshape(-1),
                self.act_code,
                self.act_slope,
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
        kind, slope = layer.attrs.get("activation") or ("linear", 0.0)
        self.op = self.act_op or ActCUDA(self.y.size, kind, slope)
        self.fused_act, self.act_op = False, None

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.dx[0].reshape(-1))
