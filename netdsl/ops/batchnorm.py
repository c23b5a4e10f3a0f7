"""Batch normalisation per channel (Ioffe & Szegedy 2015), statistics over (N, H, W).

Fully connected outputs use the same code as (N, C, 1, 1). Conventions follow PyTorch:

* training normalises with the BIASED batch variance, ``y = gamma * (x - mean) / sqrt(var + eps)
  + beta``;
* running statistics: ``running = (1 - momentum) * running + momentum * batch`` (momentum 0.1 by
  default), where the running VARIANCE takes the UNBIASED batch variance (times M / (M - 1),
  M = N * H * W);
* evaluation normalises with the running statistics.

The training kernel saves ``mean`` and ``invstd = 1 / sqrt(var + eps)`` per channel for backward.
Sums are accumulated in float64: M is up to 128 * 55 * 55 here, too many for float32 sums.
The two reducing kernels allow reassociation (and nothing else of fastmath): it lets LLVM
vectorise the float64 sums, ~3x faster, and only changes the summation order.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations, fused
from netdsl.ops.activation import LINEAR, act_grad_from_output, act_scalar
from netdsl.ops.codegen import generated

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1) for broadcasting against NCHW."""
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1, 1)


def ref_forward_train(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = DEFAULT_EPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: (N, C, H, W), gamma, beta: (C,) -> (y (N, C, H, W), mean (C,), biased var (C,))."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - _per_channel(mean)) ** 2).mean(axis=(0, 2, 3))
    xhat = (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps)
    return _per_channel(gamma) * xhat + _per_channel(beta), mean, var


def ref_update_running(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: int,
    momentum: float = DEFAULT_MOMENTUM,
) -> tuple[np.ndarray, np.ndarray]:
    """New (running_mean, running_var), all (C,); var is biased over `count` = N*H*W values."""
    unbiased = var * (count / (count - 1)) if count > 1 else var
    return (
        (1 - momentum) * np.asarray(running_mean, dtype=np.float64) + momentum * mean,
        (1 - momentum) * np.asarray(running_var, dtype=np.float64) + momentum * unbiased,
    )


def ref_forward_eval(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """x: (N, C, H, W), the rest (C,) -> y: (N, C, H, W), float64."""
    x = np.asarray(x, dtype=np.float64)
    xhat = (x - _per_channel(running_mean)) / np.sqrt(_per_channel(running_var) + eps)
    return _per_channel(gamma) * xhat + _per_channel(beta)


def ref_backward(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float = DEFAULT_EPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode gradients.

    dy, x: (N, C, H, W), gamma: (C,) -> (dx (N, C, H, W), dgamma (C,), dbeta (C,)), float64.
    """
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - _per_channel(mean)) ** 2).mean(axis=(0, 2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - _per_channel(mean)) * _per_channel(invstd)
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dx = _per_channel(gamma * invstd / count) * (
        count * dy - _per_channel(dbeta) - xhat * _per_channel(dgamma)
    )
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
# ---------------------------------------------------------------------------------------------
# Plain functions calling the activation chain, compiled with it into one generated file and
# specialised per kind (netdsl/ops/fused.py): the layer's fused activation is applied inside
# the normalising loop and its gradient inside the two backward loops (no separate pass, no
# dz buffer). Each kernel takes a channel range [c0, c1), so the runner splits the channels
# over worker threads (indexing the whole C-contiguous arrays: a slice [:, c0:c1] is not
# contiguous, and its loops did not vectorise). Statistics take ONE pass over x: float64
# sums of x - K and (x - K)^2 with K the channel's first value (the shifted-data algorithm:
# no cancellation unless the mean is very far from K compared with the spread, and float64
# absorbs that).
# fastmath={"reassoc"} only: reorders the float64 sums so they vectorise; unlike full fastmath
# it assumes nothing about NaN or inf, so a diverging net still shows NaN.
_REDUCE = 'nogil=True, fastmath={"reassoc"}'


def bn_train_range(c0, c1, x, gamma, beta, y, mean, invstd, running_mean, running_var, eps,
                   momentum, code, p0, p1):  # fmt: skip
    """Training forward of channels [c0, c1), then the activation (code, p0, p1).

    x: (N, C, H, W) f32; gamma, beta: (C,) f32; y: (N, C, H, W) f32 out (must not alias x,
    which backward needs); mean, invstd: (C,) f32 out, saved for bn_backward_range;
    running_mean, running_var: (C,) f32, updated in place.
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    x3 = x.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    count = n_batch * plane
    for c in range(c0, c1):
        shift = np.float64(x3[0, c, 0])
        total = 0.0  # float64 sums of x - shift and of its square
        sq = 0.0
        for n in range(n_batch):
            for p in range(plane):
                d = x3[n, c, p] - shift
                total += d
                sq += d * d
        md = total / count
        mu = shift + md
        var = max(sq / count - md * md, 0.0)
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        invstd[c] = inv
        unbiased = var * count / (count - 1) if count > 1 else var
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased
        # y = act((x - mean) * (gamma * invstd) + beta), in float32 for a vectorisable loop.
        m32 = np.float32(mu)
        a32 = np.float32(gamma[c] * inv)
        b32 = beta[c]
        for n in range(n_batch):
            for p in range(plane):
                y3[n, c, p] = act_scalar((x3[n, c, p] - m32) * a32 + b32, code, p0, p1)


def bn_eval_range(c0, c1, x, gamma, beta, running_mean, running_var, y, eps, code, p0, p1):
    """Evaluation forward of channels [c0, c1), then the activation. x: (N, C, H, W) f32;
    gamma, beta, running_*: (C,) f32; y: (N, C, H, W) f32 out (may be x)."""
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    x3 = x.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    for c in range(c0, c1):
        m32 = running_mean[c]
        a32 = np.float32(gamma[c] / np.sqrt(np.float64(running_var[c]) + eps))
        b32 = beta[c]
        for n in range(n_batch):
            for p in range(plane):
                y3[n, c, p] = act_scalar((x3[n, c, p] - m32) * a32 + b32, code, p0, p1)


def bn_backward_range(c0, c1, dy, y, x, gamma, mean, invstd, dx, dgamma, dbeta, has_act, code,
                      p0, p1):  # fmt: skip
    """Training backward of channels [c0, c1), through the activation when has_act.

    dy, y, x: (N, C, H, W) f32 (y: the forward output, read only when has_act); gamma, mean,
    invstd: (C,) f32 (mean, invstd from bn_train_range); dx: (N, C, H, W) f32 out (may be
    dy); dgamma, dbeta: (C,) f32 out (overwritten, not added).
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    d3 = dy.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    x3 = x.reshape(n_batch, channels, plane)
    g3 = dx.reshape(n_batch, channels, plane)
    count = n_batch * plane
    for c in range(c0, c1):
        mu = mean[c]
        inv = invstd[c]
        sum_dy = 0.0  # float64 sums of dz = dy * act'(y)
        sum_dy_xc = 0.0  # sum dz * (x - mean); times invstd gives sum dz * xhat
        for n in range(n_batch):
            if has_act:
                for p in range(plane):
                    d = d3[n, c, p] * act_grad_from_output(y3[n, c, p], code, p0, p1)
                    sum_dy += d
                    sum_dy_xc += d * (x3[n, c, p] - mu)
            else:
                for p in range(plane):
                    d = d3[n, c, p]
                    sum_dy += d
                    sum_dy_xc += d * (x3[n, c, p] - mu)
        sum_dy_xhat = sum_dy_xc * inv
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xhat
        # dx = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat))
        a32 = np.float32(gamma[c] * inv)
        mean_dy = np.float32(sum_dy / count)
        k32 = np.float32(sum_dy_xhat * inv / count)  # multiplies (x - mean)
        for n in range(n_batch):
            if has_act:
                for p in range(plane):
                    d = d3[n, c, p] * act_grad_from_output(y3[n, c, p], code, p0, p1)
                    g3[n, c, p] = a32 * (d - mean_dy - (x3[n, c, p] - mu) * k32)
            else:
                for p in range(plane):
                    g3[n, c, p] = a32 * (d3[n, c, p] - mean_dy - (x3[n, c, p] - mu) * k32)


@functools.cache
def cpu_kernels():
    """The module of the three kernels above, compiled with the activation chain."""
    return fused.module("bn", [(bn_train_range, _REDUCE), (bn_eval_range, "nogil=True"),
                               (bn_backward_range, _REDUCE)])  # fmt: skip


_LINEAR = (np.int64(LINEAR), np.float32(0.0), np.float32(0.0))  # no activation


def _linear(name: str):
    return fused.kernel_for(cpu_kernels(), name, LINEAR)


def bn_forward_train(x, gamma, beta, y, mean, invstd, running_mean, running_var, eps, momentum):
    """Training forward over every channel, no activation (bn_train_range's arguments)."""
    _linear("bn_train_range")(0, x.shape[1], x, gamma, beta, y, mean, invstd, running_mean,
                              running_var, eps, momentum, *_LINEAR)  # fmt: skip


def bn_forward_eval(x, gamma, beta, running_mean, running_var, y, eps):
    """Evaluation forward over every channel, no activation (bn_eval_range's arguments)."""
    _linear("bn_eval_range")(0, x.shape[1], x, gamma, beta, running_mean, running_var, y, eps,
                             *_LINEAR)  # fmt: skip


def bn_backward(dy, x, gamma, mean, invstd, dx, dgamma, dbeta):
    """Training backward over every channel, no activation (bn_backward_range's arguments)."""
    _linear("bn_backward_range")(0, x.shape[1], dy, dy, x, gamma, mean, invstd, dx, dgamma,
                                 dbeta, False, *_LINEAR)  # fmt: skip


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# Statistics: the per-channel sums are cut over the batch and pixels into many blocks
# (netdsl/ops/reduce_cuda.py: float64 partial sums, warp shuffles within a block), and a
# kernel with a thread per channel combines each channel's partial sums in a fixed order
# (deterministic, no atomics) into the statistics; the forward's variance comes from sums
# around a shift (the channel's first value), so it does not cancel when |mean| >> std.
# The elementwise passes apply the saved per-channel coefficients and the layer's fused
# activation. They are specialised on the layer: channels, plane, eps and the activation are
# compile-time constants (constant index divisions, the other activations' code gone); the
# batch size is the arrays' (only a grid-stride loop's bound), so the training and evaluation
# batch sizes share them. The reducing and combining kernels take sizes as arguments and
# are shared by every layer of a plan (the gradient sums: by the layers of one activation).

cuda = None  # numba.cuda, bound by _cuda_kernels() and _finish_kernels()


@generated("batchnorm")
def _cuda_kernels(channels: int, plane: int, eps: float, act_params: tuple, code: int):
    """BN kernels for one layer on flat (batch*channels*plane,) arrays; code, act_params: the fused
    activation. The batch size is the arrays' (one compilation serves every batch size) and
    the momentum is the finish kernel's argument."""
    global cuda
    from numba import cuda, float64

    from netdsl.ops.activation import cuda_element_math

    act, act_grad = cuda_element_math()
    # float32 constants: the values (and the mixed float32/float64 arithmetic) the kernels had
    # when these came as float32 arguments
    eps32 = np.float32(eps)
    ap0, ap1 = (np.float32(v) for v in act_params)  # the kind's (p0, p1)

    @cuda.jit
    def bn_eval_coef(gamma, rv, coef):  # (C,) f32 each; coef = gamma / sqrt(rv + eps)
        for c in range(cuda.grid(1), channels, cuda.gridsize(1)):
            coef[c] = gamma[c] / math.sqrt(float64(rv[c]) + eps32)

    @cuda.jit
    def bn_apply(x, y, mean, coef, beta):
        # x, y: (N*C*P,) f32 (y may be x); mean, coef, beta: (C,) f32
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            c = (e // plane) % channels
            y[e] = act((x[e] - mean[c]) * coef[c] + beta[c], code, ap0, ap1)

    @cuda.jit
    def bn_grad_apply(dy, y, x, mean, ws, dx):
        # dx = gamma invstd (dz - mean(dz) - (x - mean) k); dx may be dy
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            c = (e // plane) % channels
            d = dy[e] * act_grad(y[e], code, ap0, ap1)
            dx[e] = ws[0, c] * (d - ws[1, c] - (x[e] - mean[c]) * ws[2, c])

    return types.SimpleNamespace(
        bn_eval_coef=bn_eval_coef, bn_apply=bn_apply, bn_grad_apply=bn_grad_apply
    )


# cuda_ptx.compile_records: the first 4 arguments are the layer's geometry and hyperparameters,
# the constants folded into the code (see there)
_cuda_kernels.geometry_args = 4


@generated("batchnorm_finish")
def _finish_kernels():
    """The per-channel combine steps after reduce_cuda's partial sums: sizes and
    hyperparameters are arguments, so every layer of a plan shares these two kernels."""
    global cuda
    from numba import cuda, float64

    from netdsl.ops.reduce_cuda import device_helpers

    combine = device_helpers()[2]  # part (2, S, width) -> one channel's float64 sum

    @cuda.jit
    def bn_stats_finish(part, x, gamma, mean, invstd, coef, rm, rv, splits, per, channels, plane,
                        count, eps32, mom32):  # fmt: skip
        # a thread per channel. part: (2, S, width) f64 from reduce_cuda's bn_moments_*: sums of
        # d and d^2, d = x - x[channel's first value]; gamma, rm, rv: (C,) f32 (rm, rv
        # updated); mean, invstd, coef = gamma*invstd: (C,) f32 out; eps32, mom32: float32
        for c in range(cuda.grid(1), channels, cuda.gridsize(1)):
            m = combine(part, 0, c, splits, per) / count  # mean of d
            var = max(combine(part, 1, c, splits, per) / count - m * m, 0.0)
            mu = float64(x[c * plane]) + m
            inv = 1.0 / math.sqrt(var + eps32)
            mean[c] = mu
            invstd[c] = inv
            coef[c] = gamma[c] * inv
            unbiased = var * count / (count - 1) if count > 1 else var
            rm[c] = (1.0 - mom32) * rm[c] + mom32 * mu
            rv[c] = (1.0 - mom32) * rv[c] + mom32 * unbiased

    @cuda.jit
    def bn_grad_finish(part, invstd, gamma, dgamma, dbeta, ws, splits, per, channels, count):
        # a thread per channel. part: (2, S, width) f64 from reduce_cuda's bn_grad_*: sums of dz
        # and dz * (x - mean); dgamma, dbeta: (C,) f32 out; ws: (3, C) f32 out, the
        # coefficients of bn_grad_apply
        for c in range(cuda.grid(1), channels, cuda.gridsize(1)):
            sum_dy = combine(part, 0, c, splits, per)
            inv = float64(invstd[c])
            sum_dy_xhat = combine(part, 1, c, splits, per) * inv
            dbeta[c] = sum_dy
            dgamma[c] = sum_dy_xhat
            ws[0, c] = gamma[c] * inv
            ws[1, c] = sum_dy / count
            ws[2, c] = sum_dy_xhat * inv / count

    return types.SimpleNamespace(bn_stats_finish=bn_stats_finish, bn_grad_finish=bn_grad_finish)


class BnCUDA:
    """Batch norm with a fused activation on flat (N*C*H*W,) float32 device arrays.

    `splits` forces the number of chunks each channel's sums are cut into (tests; see
    netdsl/ops/reduce_cuda.py), `shuffles` the warp-shuffle path (else: on a GPU only),
    `threads` the reducing kernels' block size (a multiple of 32).
    """

    def __init__(self, n: int, channels: int, plane: int, eps: float, momentum: float,
                 act_code: int = 4, act_params: tuple = (0.0, 0.0), splits: int | None = None,
                 shuffles: bool | None = None, threads: int | None = None) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops import reduce_cuda
        from netdsl.ops.cudakit import Launch, grid_1d

        threads0, shuffles0, simulated = reduce_cuda.launch_config()
        threads = threads0 if threads is None else int(threads)
        shuffles = shuffles0 if shuffles is None else bool(shuffles)
        pair = activations.as_pair(act_params)
        cfg = (int(channels), int(plane), float(eps), pair, int(act_code))
        size = n * channels * plane
        self.mean = _cuda.device_array(channels, np.float32)  # (C,) batch mean, for backward
        self.invstd = _cuda.device_array(channels, np.float32)  # (C,) for backward
        self.coef = _cuda.device_array(channels, np.float32)  # (C,) gamma * invstd
        self.ws = _cuda.device_array((3, channels), np.float32)  # (3, C) backward coefficients
        self.pt = pt = reduce_cuda.Partition(n, channels, plane, threads, splits, simulated)
        self.part = _cuda.device_array((2, pt.splits, pt.width), np.float64)  # partial sums
        path = "cols" if pt.columns else "flat"
        rcfg = (threads, shuffles)
        self._moments = Launch(reduce_cuda._cuda_kernels, f"bn_moments_{path}", pt.grid,
                               threads, rcfg)  # fmt: skip
        self._gsums = Launch(reduce_cuda._grad_kernels, f"bn_grad_{path}", pt.grid, threads,
                             (*rcfg, int(act_code), float(pair[0]), float(pair[1])))  # fmt: skip
        self._stats = Launch(_finish_kernels, "bn_stats_finish", *grid_1d(channels))
        self._eval = Launch(_cuda_kernels, "bn_eval_coef", *grid_1d(channels), cfg)
        self._apply = Launch(_cuda_kernels, "bn_apply", *grid_1d(size), cfg)
        self._gstats = Launch(_finish_kernels, "bn_grad_finish", *grid_1d(channels))
        # the finish kernels' size arguments; eps and momentum as float32, as before
        self.sizes = (int(channels), int(plane), int(n * plane))
        self.hyper = (np.float32(eps), np.float32(momentum))
        self._gapply = Launch(_cuda_kernels, "bn_grad_apply", *grid_1d(size), cfg)

    def forward_train(self, x, gamma, beta, y, rm, rv) -> None:
        """y = act(BN(x)) with batch statistics; rm, rv (C,) updated; y must not alias x."""
        pt = self.pt
        self._moments(x, self.part, *pt.args)
        self._stats(self.part, x, gamma, self.mean, self.invstd, self.coef, rm, rv, pt.splits,
                    pt.per, *self.sizes, *self.hyper)  # fmt: skip
        self._apply(x, y, self.mean, self.coef, beta)

    def forward_eval(self, x, gamma, beta, rm, rv, y) -> None:
        """y = act(BN(x)) with the running statistics rm, rv (C,)."""
        self._eval(gamma, rv, self.coef)
        self._apply(x, y, rm, self.coef, beta)

    def backward(self, dy, y, x, gamma, dx, dgamma, dbeta) -> None:
        """Training gradients through the fused activation (from y) and BN; dx may be dy."""
        pt = self.pt
        self._gsums(dy, y, x, self.mean, self.part, *pt.args)
        self._gstats(self.part, self.invstd, gamma, dgamma, dbeta, self.ws, pt.splits, pt.per,
                     self.sizes[0], self.sizes[2])  # fmt: skip
        self._gapply(dy, y, x, self.mean, self.ws, dx)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class BnCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        from netdsl.ops.conv import PARALLEL_MIN_WORK, Workers, num_threads, split

        c = layer.out_shape[0]
        self.eps = np.float32(layer.attrs["eps"])
        self.momentum = np.float32(layer.attrs["momentum"])
        self.rm = plan.state[f"{layer.name}.running_mean"]  # (C,)
        self.rv = plan.state[f"{layer.name}.running_var"]  # (C,)
        self.mean = np.zeros(c, np.float32)  # (C,) batch mean, saved for backward
        self.invstd = np.zeros(c, np.float32)  # (C,) 1/sqrt(var + eps), saved for backward
        self.xhat_src = self.x[0]
        self.no_dx = np.empty_like(self.x[0])  # written only when dx is not wanted: untouched
        k = cpu_kernels()
        self.train_k, self.eval_k, self.bwd_k = (
            fused.kernel_for(k, name, self.act_code)
            for name in ("bn_train_range", "bn_eval_range", "bn_backward_range")
        )
        self.code = np.int64(self.act_code)
        # each worker normalises a range of channels (work ~ 3 passes over the map)
        small = 3 * self.y.size < PARALLEL_MIN_WORK
        self.workers = Workers(1 if small else min(c, num_threads()))
        self.ranges = split(c, self.workers.n)

    def forward(self, train):
        x, g, b, act = self.x[0], self.p["weight"], self.p["bias"], (self.code, *self.act_params)
        if train:
            jobs = [(c0, c1, x, g, b, self.y, self.mean, self.invstd, self.rm, self.rv, self.eps,
                     self.momentum, *act) for c0, c1 in self.ranges]  # fmt: skip
            self.workers.run(self.train_k, jobs)
        else:
            jobs = [(c0, c1, x, g, b, self.rm, self.rv, self.y, self.eps, *act)
                    for c0, c1 in self.ranges]  # fmt: skip
            self.workers.run(self.eval_k, jobs)

    def backward(self):
        dx = self.no_dx if self.dx[0] is None else self.dx[0]
        jobs = [(c0, c1, self.dy, self.y, self.x[0], self.p["weight"], self.mean, self.invstd,
                 dx, self.g["weight"], self.g["bias"], self.fused_act, self.code,
                 *self.act_params) for c0, c1 in self.ranges]  # fmt: skip
        self.workers.run(self.bwd_k, jobs)


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class BnCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.out_shape
        self.op = BnCUDA(plan.batch, c, h * w, layer.attrs["eps"],
                                   layer.attrs["momentum"], self.act_code,
                                   self.act_params)  # fmt: skip
        self.rm = plan.state[f"{layer.name}.running_mean"]  # (C,) device
        self.rv = plan.state[f"{layer.name}.running_var"]  # (C,) device
        self.no_dx = None  # (N*C*H*W,) allocated on first need

    def forward(self, train):
        x, y = self.x[0].reshape(-1), self.y.reshape(-1)
        if train:
            self.op.forward_train(x, self.p["weight"], self.p["bias"], y, self.rm, self.rv)
        else:
            self.op.forward_eval(x, self.p["weight"], self.p["bias"], self.rm, self.rv, y)

    def backward(self):
        dx = self.dx[0]
        if dx is None:
            if self.no_dx is None:
                self.no_dx = cuda_runner.device_zeros(self.y.size)
            dx = self.no_dx
        self.op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.x[0].reshape(-1),
                         self.p["weight"], dx.reshape(-1), self.g["weight"],
                         self.g["bias"])  # fmt: skip
