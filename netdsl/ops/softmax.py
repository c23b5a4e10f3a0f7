"""Softmax over the channels of a (N, K) batch (the caller views (N, K, 1, 1) as (N, K)).

Forward subtracts the row maximum before exponentiating so large scores cannot overflow.
Backward from the output: ``dx = y * (dy - sum_k dy_k y_k)`` per row.

For training with cross-entropy use the fused :mod:`netdsl.ops.loss` kernel instead:
its gradient ``softmax - onehot`` is exact where chaining these two would cancel.
"""

from __future__ import annotations

import numpy as np

from netdsl.ops.jit import kernel


def ref_forward(x: np.ndarray) -> np.ndarray:
    """x: (N, K) -> y: (N, K), float64, rows summing to 1."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy, y: (N, K) -> dx: (N, K), float64."""
    dy = np.asarray(dy, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


@kernel
def softmax_forward(x, y):
    """x: (N, K) f32; y: (N, K) f32 out (may be x)."""
    n_batch, classes = x.shape
    for n in range(n_batch):
        top = x[n, 0]
        for j in range(1, classes):
            top = max(top, x[n, j])
        total = 0.0  # float64 accumulator
        for j in range(classes):
            e = np.exp(x[n, j] - top)
            y[n, j] = e
            total += e
        inv = np.float32(1.0 / total)
        for j in range(classes):
            y[n, j] *= inv


@kernel
def softmax_backward(dy, y, dx):
    """dy, y: (N, K) f32; dx: (N, K) f32 out (may be dy: the row sum is taken first)."""
    n_batch, classes = y.shape
    for n in range(n_batch):
        dot = 0.0  # float64 accumulator
        for j in range(classes):
            dot += dy[n, j] * y[n, j]
        d32 = np.float32(dot)
        for j in range(classes):
            dx[n, j] = y[n, j] * (dy[n, j] - d32)


# CUDA kernels: see the CUDA backend issue
