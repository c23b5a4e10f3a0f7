"""Elementwise sum of several same-shaped inputs (residual joins, gradient fan-in).

Forward: ``y = x_1 + x_2 + ... + x_m``, computed pairwise with :func:`add_forward`:
``add_forward(a, b, y)`` then ``add_forward(y, c, y)`` and so on (y may alias a or b).

Backward: d(sum)/dx_i is the identity, so every input's gradient is ``dy`` itself. There is
no backward kernel: the compiler routes ``dy`` to each input (sharing the buffer or copying
it). The same kernel also accumulates gradients where one tensor feeds several layers:
``add_forward(dx_total, dx_branch, dx_total)``.
"""

from __future__ import annotations

import numpy as np

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


# CUDA kernels: see the CUDA backend issue
