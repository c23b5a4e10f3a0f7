"""Losses on (N, K) class scores with integer labels, and top-k error counting.

* Cross-entropy with the softmax fused in: ``loss = mean_n -log softmax(z_n)[label_n]`` computed
  as ``logsumexp(z_n) - z_n[label_n]`` (never log of a rounded probability), with gradient
  ``dz = (softmax(z) - onehot) / N``.
* MSE LeNet style against one-hot targets t: ``loss = (1/N) sum_n 1/2 sum_k (t_nk - o_nk)^2``,
  gradient ``do = (o - t) / N``.

Both kernels compute loss and gradient in one pass (the loss is always the last layer, so
its backward immediately follows its forward) and return the loss as a Python float.
Labels are validated in the kernels: an out-of-range label raises ValueError instead of
reading out of bounds.
"""

from __future__ import annotations

import math
import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops.codegen import generated
from netdsl.ops.jit import kernel


def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    """labels: (N,) int -> (N, K) float64 one-hot."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got {labels.min()}..{labels.max()}")
    t = np.zeros((labels.shape[0], classes))
    t[np.arange(labels.shape[0]), labels] = 1.0
    return t


def ref_xent(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """z: (N, K) scores, labels: (N,) int -> (mean loss, dz (N, K)), float64."""
    z = np.asarray(z, dtype=np.float64)
    t = _onehot(labels, z.shape[1])
    shifted = z - z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - logsum  # (N, K) log-probabilities
    n = z.shape[0]
    return float(-(logp * t).sum() / n), (np.exp(logp) - t) / n


def ref_mse(o: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """o: (N, K) outputs, labels: (N,) int -> (loss, do (N, K)), float64, one-hot targets."""
    o = np.asarray(o, dtype=np.float64)
    t = _onehot(labels, o.shape[1])
    n = o.shape[0]
    return float(0.5 * ((t - o) ** 2).sum() / n), (o - t) / n


@kernel
def xent_forward_backward(z, labels, dz, probs):
    """Fused softmax cross-entropy. Returns the mean loss (float).

    z: (N, K) f32 scores; labels: (N,) int (int64 avoids a second compilation);
    dz: (N, K) f32 out, the gradient (may be z); probs: (N, K) f32 out, softmax(z)
    (may be z, but not dz).
    """
    n_batch, classes = z.shape
    inv_n = np.float32(1.0 / n_batch)
    total_loss = 0.0  # float64 accumulator
    for n in range(n_batch):
        label = labels[n]
        if label < 0 or label >= classes:
            raise ValueError("xent_forward_backward: label out of range")
        z_label = z[n, label]  # read before probs/dz may overwrite z
        top = z[n, 0]
        for j in range(1, classes):
            top = max(top, z[n, j])
        total = 0.0  # float64 accumulator
        for j in range(classes):
            e = np.exp(z[n, j] - top)
            probs[n, j] = e
            total += e
        total_loss += np.log(total) + top - z_label
        inv = np.float32(1.0 / total)
        for j in range(classes):
            p = probs[n, j] * inv
            probs[n, j] = p
            dz[n, j] = p * inv_n
        dz[n, label] -= inv_n
    return total_loss / n_batch


@kernel
def mse_forward_backward(o, labels, do):
    """MSE against one-hot targets. Returns the loss (float).

    o: (N, K) f32 outputs; labels: (N,) int; do: (N, K) f32 out, the gradient (may be o).
    """
    n_batch, classes = o.shape
    inv_n = np.float32(1.0 / n_batch)
    total = 0.0  # float64 accumulator
    for n in range(n_batch):
        label = labels[n]
        if label < 0 or label >= classes:
            raise ValueError("mse_forward_backward: label out of range")
        for j in range(classes):
            diff = o[n, j] - (np.float32(1.0) if j == label else np.float32(0.0))
            total += np.float64(diff) * diff
            do[n, j] = diff * inv_n
    return 0.5 * total / n_batch


def topk_errors(z: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Number of samples whose label is not among the k largest scores.

    z: (N, K) scores, labels: (N,) int. Ties are broken by class index like np.argmax
    (an equal score at a lower index ranks first), so a network with constant outputs is
    not credited with zero error, and k = 1 counts exactly ``argmax(z) != label``.
    A NaN score for the label counts as an error.
    """
    z = np.asarray(z)
    labels = np.asarray(labels)
    rows = np.arange(z.shape[0])
    z_label = z[rows, labels][:, None]  # (N, 1)
    lower_index = np.arange(z.shape[1])[None, :] < labels[:, None]  # (N, K)
    rank = (z > z_label).sum(axis=1) + ((z == z_label) & lower_index).sum(axis=1)  # (N,)
    wrong = (rank >= k) | np.isnan(z_label[:, 0])
    return int(wrong.sum())


# ---- CUDA kernels
# One warp per row: the lanes stride over the row's classes, and warp reductions (shuffles on
# a GPU, cudakit.warp_reducer) give every lane the row's maximum, its sum of exponentials
# and whether its top-1 guess is wrong (the tie rule of topk_errors); lane 0 writes the
# row's loss (float64) and flags. One warp then sums the rows in a fixed order, so the loss
# is deterministic. stats = (mean loss, top-1 errors, labels out of range) is all that comes
# back to the host per step. A bad label cannot raise in a kernel: it is counted and the
# host raises ValueError. Specialised on the number of classes, a compile-time constant
# (constant loop bounds and row offsets); the number of rows (the batch size) is the arrays'
# (scores.size / classes, row_loss.size), so every batch size shares one compilation. Every
# thread of a block runs the same number of row steps (a warp past the last row reduces
# nothing), as the simulator's fallback reductions synchronise the block.

cuda = None  # numba.cuda, bound by _cuda_kernels()
# (float64(0.0) starts a float64 sum in the simulator too: there 0.0 + float32 is a float32)


@generated("loss")
def _cuda_kernels(classes: int, threads: int, shuffles: bool):
    """Loss kernels for flat (rows*classes,) float32 scores, rows = the arrays' size / classes;
    `threads` per block of the row kernels (a warp per row), `shuffles`: warp shuffles (GPU)
    or the simulator's fallback."""
    global cuda
    from numba import cuda, float32, float64

    from netdsl.ops.cudakit import WARP, warp_reducer

    warp_sum, warp_max = warp_reducer(shuffles)
    neg_inf = np.float32(-np.inf)
    warps = threads // WARP  # rows per block and step

    @cuda.jit(device=True)
    def top1_part(z, row, label, zl, lane):
        # 1.0 when one of this lane's classes ranks before the label (or the label's score
        # is NaN): the label is then not the first argmax
        wrong = 0.0
        if zl != zl:
            wrong = 1.0
        for j in range(lane, classes, WARP):
            v = z[row + j]
            if v > zl or (v == zl and j < label):
                wrong = 1.0
        return wrong

    @cuda.jit
    def loss_xent_rows(z, labels, dz, probs, row_loss, row_flags):
        # z: (N*K,) f32; labels: (N,) int64; dz, probs: (N*K,) f32 out (dz must not alias z);
        # row_loss: (N,) f64 out; row_flags: (N*2,) int32 out (top-1 wrong, bad label)
        t = cuda.threadIdx.x
        lane = t % WARP
        buf = cuda.shared.array(threads, float64)
        rows = z.size // classes
        inv_n = np.float32(1.0 / rows)  # rounded as the float32 constant it was
        for base in range(cuda.blockIdx.x * warps, rows, cuda.gridDim.x * warps):
            n = base + t // WARP
            active = n < rows
            label = labels[n] if active else 0
            ok = active and label >= 0 and label < classes
            row = n * classes
            zl = z[row + label] if ok else float32(0.0)
            top = neg_inf
            wrong = 0.0
            if ok:
                for j in range(lane, classes, WARP):
                    top = max(top, z[row + j])
                wrong = top1_part(z, row, label, zl, lane)
            top = float32(warp_max(float64(top), buf, t))  # exact both ways
            wrong = warp_max(wrong, buf, t)
            acc = float64(0.0)
            if ok:
                for j in range(lane, classes, WARP):
                    e = math.exp(z[row + j] - top)
                    probs[row + j] = e
                    acc += e
            total = warp_sum(acc, buf, t)
            if ok:
                inv = np.float32(1.0 / total)
                for j in range(lane, classes, WARP):
                    p = probs[row + j] * inv
                    probs[row + j] = p
                    d = p * inv_n
                    if j == label:
                        d -= inv_n
                    dz[row + j] = d
                if lane == 0:
                    row_loss[n] = math.log(total) + top - zl
                    row_flags[2 * n] = 1 if wrong > 0.0 else 0
                    row_flags[2 * n + 1] = 0
            elif active:  # a label out of range: counted, no gradient
                for j in range(lane, classes, WARP):
                    dz[row + j] = 0.0
                if lane == 0:
                    row_loss[n] = 0.0
                    row_flags[2 * n] = 1
                    row_flags[2 * n + 1] = 1

    @cuda.jit
    def loss_mse_rows(o, labels, do, row_loss, row_flags):
        # o: (N*K,) f32; labels: (N,) int64; do: (N*K,) f32 out (must not alias o)
        t = cuda.threadIdx.x
        lane = t % WARP
        buf = cuda.shared.array(threads, float64)
        rows = o.size // classes
        inv_n = np.float32(1.0 / rows)
        for base in range(cuda.blockIdx.x * warps, rows, cuda.gridDim.x * warps):
            n = base + t // WARP
            active = n < rows
            label = labels[n] if active else 0
            bad = label < 0 or label >= classes
            row = n * classes
            wrong = 0.0
            acc = float64(0.0)
            if active:
                if bad:
                    wrong = 1.0
                else:
                    wrong = top1_part(o, row, label, o[row + label], lane)
                for j in range(lane, classes, WARP):
                    diff = o[row + j] - (np.float32(1.0) if j == label else np.float32(0.0))
                    acc += np.float64(diff) * diff
                    do[row + j] = diff * inv_n
            wrong = warp_max(wrong, buf, t)
            total = warp_sum(acc, buf, t)
            if active and lane == 0:
                row_flags[2 * n] = 1 if wrong > 0.0 else 0
                row_flags[2 * n + 1] = 1 if bad else 0
                row_loss[n] = 0.5 * total

    @cuda.jit
    def loss_finish(row_loss, row_flags, stats):
        # one warp: stats (3,) f64 = mean loss, top-1 errors, bad labels; lane-strided sums,
        # then the warp's reduction (a fixed order)
        t = cuda.threadIdx.x
        buf = cuda.shared.array(WARP, float64)
        rows = row_loss.size
        total = 0.0
        wrong = 0.0
        bad = 0.0
        for n in range(t, rows, WARP):
            total += row_loss[n]
            wrong += row_flags[2 * n]
            bad += row_flags[2 * n + 1]
        total = warp_sum(total, buf, t)
        wrong = warp_sum(wrong, buf, t)
        bad = warp_sum(bad, buf, t)
        if t == 0:
            stats[0] = total / rows
            stats[1] = wrong
            stats[2] = bad

    return types.SimpleNamespace(loss_xent_rows=loss_xent_rows, loss_mse_rows=loss_mse_rows,
                                 loss_finish=loss_finish)  # fmt: skip


# cuda_ptx.compile_records: the first argument is geometry (see there)
_cuda_kernels.geometry_args = 1


class LossCUDA:
    """Fused loss + gradient on (N, K) float32 device scores; `stats` (3,) float64 on the device.

    `shuffles` forces the warp-shuffle path (else: on a GPU only; tests emulate it),
    `threads` the block size (a multiple of 32; a warp per row).
    """

    def __init__(self, kind: str, n: int, classes: int, shuffles: bool | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops.cudakit import WARP, Launch, cdiv, row_threads, use_shuffles

        self.kind = kind
        self.row_loss = _cuda.device_array(n, np.float64)  # (N,)
        self.row_flags = _cuda.device_array(2 * n, np.int32)  # (N*2,) wrong, bad label
        self.stats = _cuda.device_array(3, np.float64)  # (3,) loss, top-1 errors, bad labels
        self.probs = _cuda.device_array(n * classes, np.float32)  # (N*K,) softmax
        name = "loss_xent_rows" if kind == "cross_entropy" else "loss_mse_rows"
        threads = row_threads() if threads is None else int(threads)
        shuffles = use_shuffles() if shuffles is None else bool(shuffles)
        cfg = (int(classes), threads, shuffles)
        self._rows = Launch(_cuda_kernels, name, cdiv(n, threads // WARP), threads, cfg)
        self._finish = Launch(_cuda_kernels, "loss_finish", 1, WARP, cfg)

    def forward_backward(self, z, labels, dz) -> None:
        """Loss of z (N, K) against labels (N,) int64 into `stats`; dz (N, K) = its gradient."""
        z, dz = z.reshape(-1), dz.reshape(-1)
        if self.kind == "cross_entropy":
            self._rows(z, labels, dz, self.probs, self.row_loss, self.row_flags)
        else:
            self._rows(z, labels, dz, self.row_loss, self.row_flags)
        self._finish(self.row_loss, self.row_flags, self.stats)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class LossCPURunner(Runner):
    """Loss forward and backward together; `labels` is set by the plan before a step."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n = plan.batch
        self.kind = layer.attrs["kind"]
        self.z = self.x[0].reshape(n, -1)  # (N, K) class scores
        self.probs = np.zeros_like(self.z)  # (N, K) softmax of the scores
        self.dz_own = np.zeros_like(self.z)  # (N, K) used when dx is not bound
        self.value = 0.0

    def forward(self, train):
        n = self.plan.batch
        dz = self.dz_own if self.dx[0] is None else self.dx[0].reshape(n, -1)
        labels = self.plan.labels
        if self.kind == "cross_entropy":
            self.value = xent_forward_backward(self.z, labels, dz, self.probs)
        else:
            self.value = mse_forward_backward(self.z, labels, dz)

    def backward(self):
        pass  # the gradient was written by forward


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class LossCUDARunner(cuda_runner.Runner):
    """Loss and its gradient in one pass; the plan uploads `labels` and reads `op.stats`."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n = plan.batch
        k = int(np.prod(layer.in_shapes[0]))
        self.op = LossCUDA(layer.attrs["kind"], n, k)
        self.dz_own = cuda_runner.device_zeros((n, k))  # (N, K) used when dx is not bound

    def forward(self, train):
        n = self.plan.batch
        dz = self.dz_own if self.dx[0] is None else self.dx[0].reshape(n, -1)
        self.op.forward_backward(self.x[0].reshape(n, -1), self.plan.labels_d, dz)

    def backward(self):
        pass  # the gradient was written by forward
