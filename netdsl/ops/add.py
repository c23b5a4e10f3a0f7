"""Elementwise sum of several same-shaped inputs (residual joins, gradient fan-in).

Forward: ``y = x_1 + x_2 + ... + x_m``, computed pairwise with :func:`add_forward`:
``add_forward(a, b, y)`` then ``add_forward(y, c, y)`` and so on (y may alias a or b).

Backward: d(sum)/dx_i is the identity, so every input's gradient is ``dy`` itself. There is
no backward kernel: the compiler routes ``dy`` to each input (sharing the buffer or copying
it). The same kernel also accumulates gradients where one tensor feeds several layers:
``add_forward(dx_total, dx_branch, dx_total)``.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activation, activations, fused
from netdsl.ops.activation import act_grad_from_output, act_scalar
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def ref_forward(*xs: np.ndarray) -> np.ndarray:
    """xs: one or more arrays of one shape -> their sum, float64."""
    if not xs:
        raise ValueError("add needs at least one input")
    out = np.asarray(xs[0], dtype=np.float64).copy()
    for x in xs[1:]:
        if np.shape(x) != out.shape:
            raise ValueError(f"add inputs differ in shape: {out.shape} vs {np.shape(x)}")
        out += x
    return out


def ref_backward(dy: np.ndarray, count: int) -> list[np.ndarray]:
    """dy: any shape -> `count` copies of dy (float64), one per input."""
    return [np.asarray(dy, dtype=np.float64).copy() for _ in range(count)]


@kernel
def add_forward(a, b, y):
    """y = a + b. a, b, y: f32, one shape, C-contiguous (any ndim); y may be a or b."""
    af = a.reshape(-1)  # (size,) views
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    for i in range(af.size):
        yf[i] = af[i] + bf[i]


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("add")
def _cuda_kernels():
    """Elementwise add (with an optional fused activation), accumulate and copy."""
    global cuda
    from numba import cuda

    from netdsl.ops.activation import cuda_element_math

    act, _ = cuda_element_math()

    @cuda.jit
    def add_act(a, b, y, code, p0, p1):  # a, b, y: (size,) f32; y may alias a or b
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            y[i] = act(a[i] + b[i], code, p0, p1)

    @cuda.jit
    def copy(x, y):  # x, y: (size,) f32
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            y[i] = x[i]

    return types.SimpleNamespace(add_act=add_act, copy=copy)


class AddCUDA:
    """y = x_1 + ... + x_m (then an optional activation) on flat device arrays of `size` f32."""

    def __init__(self, size: int, act_code: int = 4, act_params: tuple = (0.0, 0.0)) -> None:
        from netdsl.ops.cudakit import Launch, grid_1d

        grid, block = grid_1d(size)
        self.code, self.params = (
            act_code,
            tuple(np.float32(v) for v in activations.as_pair(act_params)),
        )
        self._add = Launch(_cuda_kernels, "add_act", grid, block)
        self._copy = Launch(_cuda_kernels, "copy", grid, block)

    def forward(self, xs, y) -> None:
        """y = act(sum of xs); xs: two or more (size,) device arrays, y: (size,) (may be xs[0])."""
        linear = np.int64(4)  # ACT_CODE["linear"]: the activation goes on the last sum only
        for j in range(1, len(xs)):
            code = self.code if j == len(xs) - 1 else linear
            self._add(xs[0] if j == 1 else y, xs[j], y, code, *self.params)

    def accumulate(self, dst, src) -> None:
        """dst += src (fan-out gradient accumulation); (size,) device arrays."""
        self._add(dst, src, dst, np.int64(4), *self.params)

    def copy(self, src, dst) -> None:
        """dst = src; (size,) device arrays."""
        self._copy(src, dst)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


# The CPU runner's kernels: the sum and the activation in one pass, and the activation's
# gradient written to every input in one pass. Plain functions calling the activation chain,
# compiled with it into one generated file and specialised per kind (netdsl/ops/fused.py);
# each takes a flat index range [i0, i1), so the runner splits big arrays over worker
# threads (conv.Workers). They loop over slices from 0: a loop index that might be negative
# (range(i0, i1)) keeps Numba's wraparound check in the loop, which stops LLVM vectorising.


def add_act_range(i0, i1, a, b, y, code, p0, p1):
    """y[i] = act(a[i] + b[i]) for i in [i0, i1). a, b, y: (size,) f32; y may be a or b."""
    av, bv, yv = a[i0:i1], b[i0:i1], y[i0:i1]
    for i in range(yv.size):
        yv[i] = act_scalar(av[i] + bv[i], code, p0, p1)


def add_act_grad_range(i0, i1, dy, y, dx0, dx1, both, has_act, code, p0, p1):
    """dx0[i] (and dx1[i] if both) = dy[i] * act'(y[i]) for i in [i0, i1); has_act False:
    = dy[i] (y unread). dy, y, dx0, dx1: (size,) f32."""
    d, yv, g0, g1 = dy[i0:i1], y[i0:i1], dx0[i0:i1], dx1[i0:i1]
    if has_act and both:
        for i in range(d.size):
            g = d[i] * act_grad_from_output(yv[i], code, p0, p1)
            g0[i] = g
            g1[i] = g
    elif has_act:
        for i in range(d.size):
            g0[i] = d[i] * act_grad_from_output(yv[i], code, p0, p1)
    elif both:
        for i in range(d.size):
            g0[i] = d[i]
            g1[i] = d[i]
    else:
        g0[:] = d


@functools.cache
def _cpu_kernels():
    return fused.module("add", [(add_act_range, "nogil=True"), (add_act_grad_range, "nogil=True")])


# An elementwise pass goes to several threads only above this many elements (~0.1 ms alone).
ELEMENTWISE_MIN = 1 << 18


class AddCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        from netdsl.ops.conv import Workers, num_threads, split

        size = self.y.size
        k = _cpu_kernels()
        self.bwd = fused.kernel_for(k, "add_act_grad_range", self.act_code)
        self.workers = Workers(1 if size < ELEMENTWISE_MIN else num_threads())
        self.ranges = split(size, self.workers.n)
        xf, yf = [x.reshape(-1) for x in self.x], self.y.reshape(-1)
        self.fwd_jobs = []  # (kernel, jobs) per pairwise sum; the activation on the last one
        for j in range(1, len(xf)):
            code = self.act_code if j == len(xf) - 1 else activation.LINEAR
            a = xf[0] if j == 1 else yf
            jobs = [(i0, i1, a, xf[j], yf, np.int64(code), *self.act_params)
                    for i0, i1 in self.ranges]  # fmt: skip
            self.fwd_jobs.append((fused.kernel_for(k, "add_act_range", code), jobs))
        self._bwd = None  # (jobs, extra dx to copy into), built on the first backward

    def forward(self, train):
        for fn, jobs in self.fwd_jobs:
            self.workers.run(fn, jobs)

    def backward(self):
        if self._bwd is None:  # the plan sets dx after construction
            dxs = [d.reshape(-1) for d in self.dx if d is not None]
            jobs = []
            if dxs:
                dyf, yf, second = self.dy.reshape(-1), self.y.reshape(-1), dxs[min(1, len(dxs) - 1)]
                jobs = [(i0, i1, dyf, yf, dxs[0], second, len(dxs) > 1, self.fused_act,
                         np.int64(self.act_code), *self.act_params)
                        for i0, i1 in self.ranges]  # fmt: skip
            self._bwd = (jobs, dxs[:1], dxs[2:])
        jobs, first, rest = self._bwd
        if jobs:  # d(a + b)/da = 1: every input gets dz = dy * act'(y)
            self.workers.run(self.bwd, jobs)
        for dx in rest:
            np.copyto(dx, first[0])


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class AddCUDARunner(cuda_runner.Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = AddCUDA(self.y.size, self.act_code, self.act_params)

    def forward(self, train):
        self.op.forward([x.reshape(-1) for x in self.x], self.y.reshape(-1))

    def backward(self):
        dz = self._act_backward()
        for dx in self.dx:  # d(a + b)/da = 1: every input gets dz
            if dx is not None:
                self.op.copy(dz.reshape(-1), dx.reshape(-1))
