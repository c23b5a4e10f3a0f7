"""Parameter updates on one flat float32 parameter buffer and one flat gradient buffer.

All parameters of a net live in one buffer ``w`` (P,) with gradients ``g`` (P,) and optimizer
state of the same shape, so one kernel call updates the whole net. Per-layer multipliers come
as segments: elements ``seg_start[s] <= i < seg_end[s]`` use learning rate ``lr * seg_lr_mult[s]``
and weight decay ``weight_decay * seg_decay_mult[s]`` (e.g. Caffe's biases: lr x2, decay x0).
Elements outside every segment are left untouched; segments must not overlap.

SGD with momentum is the form of AlexNet's paper and Caffe (lr inside the velocity, so a
learning-rate drop takes effect gradually)::

    v = momentum * v - lr * lr_mult * (g + weight_decay * decay_mult * w);   w = w + v

Nesterov, Caffe's form: with v_old the velocity before the step and v_new after it,
``w += -momentum * v_old + (1 + momentum) * v_new``. PyTorch's SGD keeps lr outside its
buffer (``buf = momentum * buf + g``, ``w -= lr * buf``): at a constant learning rate
``v = -lr * buf`` and both give the same iterates.

Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient (torch.optim.Adam's
``weight_decay``, not AdamW), bias-corrected at step ``t`` = 1, 2, ...::

    g' = g + wd * w;  m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2
    w -= lr * lr_mult * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence

import numpy as np

from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel

Segments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def make_segments(
    sizes: Sequence[int], lr_mults: Sequence[float], decay_mults: Sequence[float]
) -> Segments:
    """Back-to-back segments of the given sizes.

    Returns (seg_start, seg_end, seg_lr_mult, seg_decay_mult): seg_start, seg_end (S,) int64,
    seg_lr_mult, seg_decay_mult (S,) float32, ready for sgd_update / adam_update.
    """
    if not len(sizes) == len(lr_mults) == len(decay_mults):
        raise ValueError("sizes, lr_mults and decay_mults must have one entry per segment")
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    starts = ends - np.asarray(sizes, dtype=np.int64)
    return (
        starts,
        ends,
        np.asarray(lr_mults, dtype=np.float32),
        np.asarray(decay_mults, dtype=np.float32),
    )


# An update over at least this many parameters is split over the plan's threads (Optimizer):
# it is memory-bound (SGD reads w, g, v and writes w, v: 20 bytes a parameter, 235 MB a step
# for ResNet-18's 11.7 M), and below ~0.25 M parameters the ~50 us thread hand-off costs more
# than the second core saves (LeNet-5: 62 k).
PARALLEL_MIN_PARAMS = 1 << 18


def split_segments(segments: Segments, size: int, parts: int, align: int = 16) -> list[Segments]:
    """The segments cut into `parts` contiguous slices of range(size), one per thread.

    Slice t covers [t*size//parts, (t+1)*size//parts) with its bounds rounded down to a
    multiple of `align` elements (64-byte cache lines for float32: no two threads write one
    line); each slice holds the pieces of the segments inside it, with their multipliers.
    The update is elementwise, so the slices together give the same bits as one call.
    """
    start, end, lr_mult, decay_mult = segments
    cuts = [0] + [t * size // parts // align * align for t in range(1, parts)] + [size]
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        s = np.clip(start, lo, hi)
        e = np.clip(end, lo, hi)
        keep = e > s
        out.append((s[keep], e[keep], lr_mult[keep], decay_mult[keep]))
    return out


# ---------------------------------------------------------------------------------------------
# float64 NumPy references (return new arrays; the inputs are not modified)
# ---------------------------------------------------------------------------------------------


def ref_sgd_update(
    w: np.ndarray,
    g: np.ndarray,
    v: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    seg_lr_mult: np.ndarray,
    seg_decay_mult: np.ndarray,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """w, g, v: (P,) -> (new w, new v), float64."""
    w = np.array(w, dtype=np.float64)
    v = np.array(v, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    for s, e, lm, dm in zip(seg_start, seg_end, seg_lr_mult, seg_decay_mult, strict=True):
        v_old = v[s:e].copy()
        v[s:e] = momentum * v_old - lr * float(lm) * (g[s:e] + weight_decay * float(dm) * w[s:e])
        if nesterov:
            w[s:e] += -momentum * v_old + (1.0 + momentum) * v[s:e]
        else:
            w[s:e] += v[s:e]
    return w, v


def ref_adam_update(
    w: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    seg_lr_mult: np.ndarray,
    seg_decay_mult: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    t: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w, g, m, v: (P,); t >= 1 is the step number -> (new w, new m, new v), float64."""
    w = np.array(w, dtype=np.float64)
    m = np.array(m, dtype=np.float64)
    v = np.array(v, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    for s, e, lm, dm in zip(seg_start, seg_end, seg_lr_mult, seg_decay_mult, strict=True):
        gg = g[s:e] + weight_decay * float(dm) * w[s:e]
        m[s:e] = beta1 * m[s:e] + (1.0 - beta1) * gg
        v[s:e] = beta2 * v[s:e] + (1.0 - beta2) * gg * gg
        w[s:e] -= lr * float(lm) * (m[s:e] / bc1) / (np.sqrt(v[s:e] / bc2) + eps)
    return w, m, v


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels (update w and the state in place)
# ---------------------------------------------------------------------------------------------


@kernel(nogil=True)  # nogil: Optimizer runs slices of one update on several threads
def sgd_update(
    w, g, v, seg_start, seg_end, seg_lr_mult, seg_decay_mult, lr, momentum, weight_decay, nesterov
):
    """SGD with (Caffe-form) momentum, optionally Nesterov.

    w: (P,) f32 parameters, updated; g: (P,) f32 gradients; v: (P,) f32 velocity, updated;
    seg_start, seg_end: (S,) int64; seg_lr_mult, seg_decay_mult: (S,) f32;
    lr, momentum, weight_decay: float; nesterov: bool.
    """
    mom = np.float32(momentum)
    for s in range(seg_start.size):
        lo, hi = seg_start[s], seg_end[s]
        if lo < 0 or hi > w.size or lo > hi:
            raise ValueError("sgd_update: segment outside the parameter buffer")
        # Per-segment float32 coefficients keep the element loop in float32 (vectorisable).
        rate = np.float32(lr * seg_lr_mult[s])
        decay = np.float32(weight_decay * seg_decay_mult[s])
        if nesterov:
            mom1 = np.float32(1.0 + momentum)
            for i in range(lo, hi):
                v_old = v[i]
                v_new = mom * v_old - rate * (g[i] + decay * w[i])
                v[i] = v_new
                w[i] += mom1 * v_new - mom * v_old
        else:
            for i in range(lo, hi):
                v_new = mom * v[i] - rate * (g[i] + decay * w[i])
                v[i] = v_new
                w[i] += v_new


@kernel(nogil=True)
def adam_update(
    w,
    g,
    m,
    v,
    seg_start,
    seg_end,
    seg_lr_mult,
    seg_decay_mult,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    t,
):
    """Adam with L2 weight decay, bias-corrected at step t (1 on the first call).

    w: (P,) f32 parameters, updated; g: (P,) f32 gradients; m, v: (P,) f32 moments, updated;
    seg_start, seg_end: (S,) int64; seg_lr_mult, seg_decay_mult: (S,) f32;
    lr, beta1, beta2, eps, weight_decay: float; t: int.
    """
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    c1 = np.float32(1.0 - beta1)
    c2 = np.float32(1.0 - beta2)
    # Bias corrections folded into scalars, as torch.optim.Adam does:
    # step = lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    bc1 = 1.0 - beta1**t
    inv_sqrt_bc2 = np.float32(1.0 / np.sqrt(1.0 - beta2**t))
    eps32 = np.float32(eps)
    for s in range(seg_start.size):
        lo, hi = seg_start[s], seg_end[s]
        if lo < 0 or hi > w.size or lo > hi:
            raise ValueError("adam_update: segment outside the parameter buffer")
        step = np.float32(lr * seg_lr_mult[s] / bc1)
        decay = np.float32(weight_decay * seg_decay_mult[s])
        for i in range(lo, hi):
            gg = g[i] + decay * w[i]
            mi = b1 * m[i] + c1 * gg
            vi = b2 * v[i] + c2 * gg * gg
            m[i] = mi
            v[i] = vi
            w[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps32)


# ---- CUDA kernels
# ONE launch updates every parameter: a thread finds its element's segment by binary search in
# the (few) segment starts, so no per-element multiplier arrays are needed. The per-segment
# float32 coefficients are computed exactly as in the CPU kernels above.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("optim")
def _cuda_kernels():
    global cuda
    from numba import cuda

    @cuda.jit(device=True)
    def segment(i, seg_start, seg_end):  # the segment holding element i, or -1
        lo, hi = 0, seg_start.size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if seg_start[mid] <= i:
                lo = mid
            else:
                hi = mid
        if seg_start.size == 0 or i < seg_start[lo] or i >= seg_end[lo]:
            return -1
        return lo

    @cuda.jit
    def sgd_update(w, g, v, seg_start, seg_end, seg_lr_mult, seg_decay_mult, lr, momentum,
                   weight_decay, nesterov):  # fmt: skip
        # w, g, v: (P,) f32 (w, v updated); seg_*: (S,); lr, momentum, weight_decay: f64
        mom = np.float32(momentum)
        mom1 = np.float32(1.0 + momentum)
        for i in range(cuda.grid(1), w.size, cuda.gridsize(1)):
            s = segment(i, seg_start, seg_end)
            if s < 0:
                continue
            rate = np.float32(lr * seg_lr_mult[s])
            decay = np.float32(weight_decay * seg_decay_mult[s])
            v_old = v[i]
            v_new = mom * v_old - rate * (g[i] + decay * w[i])
            v[i] = v_new
            if nesterov:
                w[i] += mom1 * v_new - mom * v_old
            else:
                w[i] += v_new

    @cuda.jit
    def adam_update(w, g, m, v, seg_start, seg_end, seg_lr_mult, seg_decay_mult, lr, beta1,
                    beta2, eps, weight_decay, bc1, inv_sqrt_bc2):  # fmt: skip
        # w, g, m, v: (P,) f32 (w, m, v updated); bc1 = 1 - beta1^t, inv_sqrt_bc2: f64
        b1, b2 = np.float32(beta1), np.float32(beta2)
        c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
        isb2, eps32 = np.float32(inv_sqrt_bc2), np.float32(eps)
        for i in range(cuda.grid(1), w.size, cuda.gridsize(1)):
            s = segment(i, seg_start, seg_end)
            if s < 0:
                continue
            step = np.float32(lr * seg_lr_mult[s] / bc1)
            decay = np.float32(weight_decay * seg_decay_mult[s])
            gg = g[i] + decay * w[i]
            mi = b1 * m[i] + c1 * gg
            vi = b2 * v[i] + c2 * gg * gg
            m[i] = mi
            v[i] = vi
            w[i] -= step * mi / (math.sqrt(vi) * isb2 + eps32)

    return types.SimpleNamespace(sgd_update=sgd_update, adam_update=adam_update)


class OptimCUDA:
    """SGD / Adam over one flat device parameter buffer of `size` floats, one launch per step."""

    def __init__(self, size: int, segments: Segments) -> None:
        from numba import cuda as _cuda

        from netdsl.ops.cudakit import Launch, grid_1d

        start, end = segments[0], segments[1]
        if np.any(start < 0) or np.any(end > size) or np.any(start > end):
            raise ValueError("segment outside the parameter buffer")
        self.segments = tuple(_cuda.to_device(np.ascontiguousarray(s)) for s in segments)
        grid, block = grid_1d(size)
        self._sgd = Launch(_cuda_kernels, "sgd_update", grid, block)
        self._adam = Launch(_cuda_kernels, "adam_update", grid, block)

    def sgd(self, w, g, v, lr: float, momentum: float, weight_decay: float, nesterov: bool):
        """Caffe-form momentum SGD (see sgd_update); w, g, v: (P,) float32 device arrays."""
        self._sgd(w, g, v, *self.segments, float(lr), float(momentum), float(weight_decay),
                  bool(nesterov))  # fmt: skip

    def adam(self, w, g, m, v, lr: float, beta1: float, beta2: float, eps: float,
             weight_decay: float, t: int) -> None:  # fmt: skip
        """Adam at step t >= 1 (see adam_update); w, g, m, v: (P,) float32 device arrays."""
        bc1 = 1.0 - beta1**t
        inv_sqrt_bc2 = 1.0 / np.sqrt(1.0 - beta2**t)
        self._adam(w, g, m, v, *self.segments, float(lr), float(beta1), float(beta2), float(eps),
                   float(weight_decay), float(bc1), float(inv_sqrt_bc2))  # fmt: skip
