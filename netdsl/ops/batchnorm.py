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

import numpy as np

from netdsl.ops.jit import kernel

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


# fastmath={"reassoc"} only: reorders the float64 sums so they vectorise; unlike full fastmath
# it assumes nothing about NaN or inf, so a diverging net still shows NaN.
@kernel(fastmath={"reassoc"})
def bn_forward_train(x, gamma, beta, y, mean, invstd, running_mean, running_var, eps, momentum):
    """Training forward.

    x: (N, C, H, W) f32; gamma, beta: (C,) f32; y: (N, C, H, W) f32 out (must not alias x,
    which backward needs); mean, invstd: (C,) f32 out, saved for bn_backward;
    running_mean, running_var: (C,) f32, updated in place.
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    x3 = x.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    count = n_batch * plane
    for c in range(channels):
        total = 0.0  # float64 accumulators
        for n in range(n_batch):
            for p in range(plane):
                total += x3[n, c, p]
        mu = total / count
        # Second pass around the mean: no cancellation, unlike E[x^2] - E[x]^2.
        sq = 0.0
        for n in range(n_batch):
            for p in range(plane):
                d = x3[n, c, p] - mu
                sq += d * d
        var = sq / count
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        invstd[c] = inv
        unbiased = var * count / (count - 1) if count > 1 else var
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased
        # y = (x - mean) * (gamma * invstd) + beta, in float32 for a vectorisable loop.
        m32 = np.float32(mu)
        a32 = np.float32(gamma[c] * inv)
        b32 = beta[c]
        for n in range(n_batch):
            for p in range(plane):
                y3[n, c, p] = (x3[n, c, p] - m32) * a32 + b32


@kernel
def bn_forward_eval(x, gamma, beta, running_mean, running_var, y, eps):
    """Evaluation forward. x: (N, C, H, W) f32; gamma, beta, running_*: (C,) f32;
    y: (N, C, H, W) f32 out (may be x)."""
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    x3 = x.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    y3 = y.reshape(n_batch, channels, plane)
    for c in range(channels):
        m32 = running_mean[c]
        a32 = np.float32(gamma[c] / np.sqrt(np.float64(running_var[c]) + eps))
        b32 = beta[c]
        for n in range(n_batch):
            for p in range(plane):
                y3[n, c, p] = (x3[n, c, p] - m32) * a32 + b32


@kernel(fastmath={"reassoc"})
def bn_backward(dy, x, gamma, mean, invstd, dx, dgamma, dbeta):
    """Training backward.

    dy, x: (N, C, H, W) f32; gamma, mean, invstd: (C,) f32 (mean, invstd from bn_forward_train);
    dx: (N, C, H, W) f32 out (may be dy); dgamma, dbeta: (C,) f32 out (overwritten, not added).
    """
    n_batch, channels = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    d3 = dy.reshape(n_batch, channels, plane)  # (N, C, H*W) views
    x3 = x.reshape(n_batch, channels, plane)
    g3 = dx.reshape(n_batch, channels, plane)
    count = n_batch * plane
    for c in range(channels):
        mu = mean[c]
        inv = invstd[c]
        sum_dy = 0.0  # float64 accumulators
        sum_dy_xc = 0.0  # sum dy * (x - mean); times invstd gives sum dy * xhat
        for n in range(n_batch):
            for p in range(plane):
                d = d3[n, c, p]
                sum_dy += d
                sum_dy_xc += d * (x3[n, c, p] - mu)
        sum_dy_xhat = sum_dy_xc * inv
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xhat
        # dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        a32 = np.float32(gamma[c] * inv)
        mean_dy = np.float32(sum_dy / count)
        k32 = np.float32(sum_dy_xhat * inv / count)  # multiplies (x - mean)
        for n in range(n_batch):
            for p in range(plane):
                g3[n, c, p] = a32 * (d3[n, c, p] - mean_dy - (x3[n, c, p] - mu) * k32)


# CUDA kernels: see the CUDA backend issue
