"""Fully connected (linear) layer: y = x @ w.T + b.

Shapes: x (N, F) (the caller flattens C*H*W), w (O, F) (PyTorch layout), b (O,), y (N, O).

The float32 CPU path is three BLAS GEMMs through NumPy (``np.dot(..., out=...)`` on
contiguous float32 arrays and their transposes, which BLAS reads with a transpose flag
instead of copying), so it needs no Numba kernel and nothing is allocated per call; a big
layer splits each GEMM over netdsl's worker threads (FcCPU).
"""

from __future__ import annotations

import functools
import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(
    x: np.ndarray,  # (N, F)
    w: np.ndarray,  # (O, F)
    b: np.ndarray | None,  # (O,) or None
) -> np.ndarray:
    """Reference linear layer in float64 -> y (N, O)."""
    y = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T  # (N, O)
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :]
    return y


def ref_backward(
    dy: np.ndarray,  # (N, O)
    x: np.ndarray,  # (N, F)
    w: np.ndarray,  # (O, F)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference gradients in float64 -> (dx (N, F), dw (O, F), db (O,))."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# float32 CPU
# ---------------------------------------------------------------------------------------------


# Above this many multiply-adds per product an fc layer splits its GEMMs over worker threads
# (conv.Workers, one BLAS thread each: BLAS is pinned to one thread because its own spinning
# threads slowed the conv layers' workers); below it the hand-off (~50 us) costs more. LeNet's
# fc layers (<= 6 M at batch 128) stay on one thread, AlexNet's and VGG's (>= 400 M) do not.
FC_PARALLEL_MIN = 1 << 23


def _forward_part(x, w, b, ws, y, o0, o1):
    """y[:, o0:o1] = x @ w[o0:o1].T (+ b[o0:o1]) through the (N, o1 - o0) workspace ws."""
    np.dot(x, w[o0:o1].T, out=ws)  # BLAS writes only C-contiguous outputs: ws, then copy
    if b is not None:
        np.add(ws, b[o0:o1], out=ws)
    y[:, o0:o1] = ws


def _dx_part(dy, w, out, o0, o1):
    """out = dy[:, o0:o1] @ w[o0:o1]: a partial sum of dx over the rows of w (contiguous; a
    column slice of w would make NumPy copy it before calling BLAS)."""
    np.dot(dy[:, o0:o1], w[o0:o1], out=out)


def _dw_part(dy, x, dw, o0, o1):
    """dw[o0:o1] = dy[:, o0:o1].T @ x (rows of dw: contiguous, written in place)."""
    np.dot(dy[:, o0:o1].T, x, out=dw[o0:o1])


class FcCPU:
    """float32 linear layer on the CPU (BLAS via NumPy) for fixed shapes.

    Big layers split each product over T worker threads by rows of the weight, so each
    thread streams its own part of it, which dominates at small batches: forward and dw by
    output columns, dx as T partial sums over the outputs (added in a fixed order).
    `threads`: T (default: 1 below FC_PARALLEL_MIN multiply-adds, else every thread netdsl
    may use).
    """

    def __init__(self, n: int, f: int, o: int, bias: bool, threads: int | None = None) -> None:
        from netdsl.ops.conv import Workers, num_threads, split

        self.shape = (n, f, o)
        self.bias = bias
        if threads is None:
            threads = 1 if n * f * o < FC_PARALLEL_MIN else num_threads()
        self.workers = Workers(max(1, min(threads, o, f)))
        t = self.workers.n
        self.o_parts = split(o, t)
        # workspaces: (N, part) outputs of the forward GEMMs (BLAS writes C-contiguous arrays
        # only), copied into y; (N, F) partial sums of dx of workers 1.. (worker 0 writes dx)
        parts = t > 1
        self.y_ws = [np.zeros((n, b - a), np.float32) for a, b in self.o_parts if parts]
        self.dx_ws = [np.zeros((n, f), np.float32) for _ in range(t - 1)]

    def forward(
        self,
        x: np.ndarray,  # (N, F) float32 C-contiguous
        w: np.ndarray,  # (O, F) float32 C-contiguous
        b: np.ndarray | None,  # (O,) float32 or None
        y: np.ndarray,  # (N, O) float32 C-contiguous, written
    ) -> None:
        """y = x @ w.T + b."""
        b = b if self.bias else None
        if self.workers.n == 1:
            np.dot(x, w.T, out=y)  # (N, F) @ (F, O)
            if b is not None:
                np.add(y, b, out=y)  # broadcast over the batch
            return
        jobs = [(x, w, b, ws, y, o0, o1) for ws, (o0, o1) in zip(self.y_ws, self.o_parts)]
        self.workers.run(_forward_part, jobs)

    def backward(
        self,
        dy: np.ndarray,  # (N, O) float32
        x: np.ndarray,  # (N, F) float32, the forward input
        w: np.ndarray,  # (O, F) float32
        dx: np.ndarray | None,  # (N, F) float32 overwritten, or None to skip
        dw: np.ndarray,  # (O, F) float32, overwritten
        db: np.ndarray | None,  # (O,) float32 overwritten, or None without bias
    ) -> None:
        """Overwrite dx (unless None), dw and db (unless None) with the gradients."""
        if self.workers.n == 1:
            if dx is not None:
                np.dot(dy, w, out=dx)  # (N, O) @ (O, F)
            np.dot(dy.T, x, out=dw)  # (O, N) @ (N, F)
        else:
            if dx is not None:
                outs = [dx, *self.dx_ws]
                self.workers.run(_dx_part, [(dy, w, d, *r) for d, r in zip(outs, self.o_parts)])
                for part in self.dx_ws:  # fixed order: deterministic for a thread count
                    np.add(dx, part, out=dx)
            self.workers.run(_dw_part, [(dy, x, dw, o0, o1) for o0, o1 in self.o_parts])
        if db is not None:
            np.sum(dy, axis=0, out=db)


# ---- CUDA kernels
# One tiled SGEMM (shared-memory tiles and the register step of netdsl.ops.cudakit) serves all
# three products, reading the operands in place through their layouts (no transposed copies):
#   forward  y (N, O)  = x (N, F) @ w.T       A = x, k fastest;  B[k, o] = w[o, k], k fastest
#   dx       dx (N, F) = dy (N, O) @ w (O, F)  A = dy, k fastest; B = w, columns fastest
#   dw       dw (O, F) = dy.T @ x              A[o, n] = dy[n, o], rows fastest; B = x
# The sizes, the layout flags and the fused activation are compile-time constants of the kernel
# (arguments of the cached factory, frozen into the code by Numba): the tile loaders' branches
# fold away, the bounds and row strides are constants and the epilogue unrolls (see conv's
# _cuda_kernels). Each layer compiles its own three GEMMs on first use.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@functools.cache
def _cuda_kernels(m: int, n: int, k: int, bm: int, bn: int, bk: int, tm: int, tn: int,
                  a_kfast: bool, b_nfast: bool, code: int):  # fmt: skip
    """gemm(a, b, c, bias, has_bias, p0, p1) for one (m, n, k) product, layout and activation:
    C[i, j] = act(sum_l A[i, l] B[l, j] + bias[j]) over flat float32 operands, where A[i, l] is
    a[i*k + l] (a_kfast) or a[l*m + i], B[l, j] is b[l*n + j] (b_nfast) or b[j*k + l], and
    C[i, j] is c[i*n + j]. Also column_sums(c, out): out[j] = sum_i C[i, j] (a bias gradient).
    """
    global cuda
    from numba import cuda, float32

    from netdsl.ops.activation import cuda_element_math
    from netdsl.ops.cudakit import gemm_tile

    act, _ = cuda_element_math()
    fma_tile = gemm_tile(bm, bn, bk, tm, tn)
    tx_n, ty_n = bn // tn, bm // tm
    nt = tx_n * ty_n
    lda = k if a_kfast else m  # row strides of the flat operands
    ldb = n if b_nfast else k

    @cuda.jit
    def gemm(a, b, c, bias, has_bias, p0, p1):
        # a, b, c, bias: flat f32; grid (cdiv(n, BN), cdiv(m, BM)), block (BN/TN, BM/TM)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * tx_n + tx
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        As = cuda.shared.array((bk, bm), float32)
        Bs = cuda.shared.array((bk, bn), float32)
        acc = cuda.local.array((tm, tn), float32)  # registers (see gemm_tile)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0.0
        for k0 in range(0, k, bk):
            for e in range(tid, bm * bk, nt):  # neighbouring threads read neighbouring words
                if a_kfast:
                    r, kq = e // bk, e % bk
                else:
                    kq, r = e // bm, e % bm
                v = float32(0.0)
                if m0 + r < m and k0 + kq < k:
                    if a_kfast:
                        v = a[(m0 + r) * lda + k0 + kq]
                    else:
                        v = a[(k0 + kq) * lda + m0 + r]
                As[kq, r] = v
            for e in range(tid, bk * bn, nt):
                if b_nfast:
                    kq, q = e // bn, e % bn
                else:
                    q, kq = e // bk, e % bk
                v = float32(0.0)
                if n0 + q < n and k0 + kq < k:
                    if b_nfast:
                        v = b[(k0 + kq) * ldb + n0 + q]
                    else:
                        v = b[(n0 + q) * ldb + k0 + kq]
                Bs[kq, q] = v
            cuda.syncthreads()
            fma_tile(As, Bs, acc, tx, ty)
            cuda.syncthreads()
        for i in range(tm):
            row = m0 + ty + i * ty_n
            if row < m:
                for j in range(tn):
                    col = n0 + tx + j * tx_n
                    if col < n:
                        v = acc[i, j]
                        if has_bias:
                            v += bias[col]
                        c[row * n + col] = act(v, code, p0, p1)

    @cuda.jit
    def column_sums(c, out):  # c (m*n,) f32, out (n,) f32: sums over the m rows (float64)
        for j in range(cuda.grid(1), n, cuda.gridsize(1)):
            total = 0.0
            for i in range(m):
                total += c[i * n + j]
            out[j] = total

    return types.SimpleNamespace(gemm=gemm, column_sums=column_sums)


# netdsl.backends.cuda_ptx compiles only a few geometries of each kernel (per tile config,
# layout and activation): the first 3 arguments are sizes, which decide no branch alone
_cuda_kernels.geometry_args = 3


class FcCUDA:
    """float32 linear layer on the GPU with the activation fused into the forward GEMM.

    The kernels are compiled for the shapes given here; the arrays passed later must have them.
    """

    def __init__(self, n: int, f: int, o: int, bias: bool, act_code: int = 4,
                 act_params: tuple = (0.0, 0.0)) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops.activation import LINEAR
        from netdsl.ops.cudakit import Launch, cdiv, grid_1d, pick_tile

        self.shape, self.bias = (n, f, o), bias
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        n, f, o = int(n), int(f), int(o)

        def gemm(m, cols, k, a_kfast, b_nfast, code=LINEAR):
            t = pick_tile(m)
            grid, block = (cdiv(cols, t[1]), cdiv(m, t[0])), (t[1] // t[4], t[0] // t[3])
            return Launch(_cuda_kernels, "gemm", grid, block, (m, cols, k, *t, a_kfast, b_nfast,
                          int(code)))  # fmt: skip

        self._fwd = gemm(n, o, f, True, False, act_code)  # (N, O) = x (N, F) @ w.T
        self._dx = gemm(n, f, o, True, True)  # (N, F) = dy (N, O) @ w (O, F)
        self._dw = gemm(o, f, n, False, True)  # (O, F) = dy.T @ x (N, F)
        # db sums dy (N, O) over the batch: the column sums of an (N, O) product, as in forward
        self._db = Launch(_cuda_kernels, "column_sums", *grid_1d(o), (n, o, f, *pick_tile(n), True,
                          False, LINEAR))  # fmt: skip
        self.no_b = _cuda.to_device(np.zeros(1, np.float32))  # stands in without bias

    def forward(self, x, w, b, y) -> None:
        """y = act(x @ w.T + b). x (N, F), w (O, F), b (O,) or None, y (N, O): device arrays."""
        has_b = self.bias and b is not None
        self._fwd(x.reshape(-1), w.reshape(-1), y.reshape(-1), b if has_b else self.no_b, has_b,
                  *self.act_params)  # fmt: skip

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None); dy (N, O) is already through
        the fused activation's derivative."""
        zero = np.float32(0.0)
        if dx is not None:
            self._dx(dy.reshape(-1), w.reshape(-1), dx.reshape(-1), self.no_b, False, zero, zero)
        self._dw(dy.reshape(-1), x.reshape(-1), dw.reshape(-1), self.no_b, False, zero, zero)
        if db is not None:
            self._db(dy.reshape(-1), db)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class FcCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n, o = plan.batch, layer.out_shape[0]
        c, h, w = layer.in_shapes[0]
        self.op = FcCPU(n, c * h * w, o, layer.attrs["bias"])
        self.x2 = self.x[0].reshape(n, -1)  # (N, F) view: the implicit flatten
        self.y2 = self.y.reshape(n, o)  # (N, O) view
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        self.op.forward(self.x2, self.p["weight"], self.p.get("bias"), self.y2)
        self._act_forward()

    def backward(self):
        n = self.plan.batch
        dz = self._act_backward(self.dz).reshape(n, -1)
        dx = None if self.dx[0] is None else self.dx[0].reshape(n, -1)
        self.op.backward(dz, self.x2, self.p["weight"], dx, self.g["weight"], self.g.get("bias"))


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class FcCUDARunner(cuda_runner.LinearMapRunner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.in_shapes[0]
        self.op = FcCUDA(plan.batch, c * h * w, layer.out_shape[0], layer.attrs["bias"],
                         self.act_code, self.act_params)  # fmt: skip
