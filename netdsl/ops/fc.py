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
# The three products run on netdsl.ops.gemm_cuda's generated SGEMM core (double-buffered
# shared tiles, 8 x 8 outputs per thread in registers, 32-bit index math), reading the
# operands in place through their layouts (no transposed copies):
#   forward  y (N, O)  = x (N, F) @ w.T        A = x, k fastest;  B[k, o] = w[o, k], k fastest
#   dx       dx (N, F) = dy (N, O) @ w (O, F)   A = dy, k fastest; B = w, columns fastest
#   dw       dw (O, F) = dy.T @ x               A[o, n] = dy[n, o], rows fastest; B = x
# A product whose tiles are too few to fill the GPU (fc6/fc7 at batch 128: 32 tiles of
# 128 x 128 for 132 SMs) is split over K into S slices: each block writes its partial tile
# into a workspace (S, M, N), and `splitk_sum` adds the S partials in a fixed order (no
# atomics: the result does not depend on scheduling), then the bias and the activation.
# Sizes, layouts, tile and activation are constants of the generated text (one module per
# product and tile, cached on disk by netdsl.ops.codegen).

cuda = None  # numba.cuda, bound by _cuda_kernels()
SMS_TO_FILL = 264  # blocks that keep a 132-SM GPU busy with 2 resident blocks per SM


def _fc_text(m: int, n: int, k: int, bm: int, bn: int, bk: int, tm: int, tn: int,
             a_kfast: bool, b_nfast: bool, code: int, splits: int) -> str:  # fmt: skip
    """The generated module of one product (see _cuda_kernels)."""
    from netdsl.ops import gemm_cuda as G

    tile = (bm, bn, bk, tm, tn)
    slices = -(-k // bk)
    chunk = -(-slices // splits)  # K slices per split
    a = G.Dense("a", a_kfast, k if a_kfast else m, m, k)
    b = G.Dense("b", not b_nfast, k if not b_nfast else n, n, k)
    if splits == 1:
        epi = G.Epilogue(
            "c",
            f"ro = row * {n}\nrk = row < {m}",
            f"co = col\nck = col < {n}",
            f"act(v + bias[col] if has_bias else v, {code}, p0, p1)",
        )
    else:  # partial sums into ws (S, M, N)
        epi = G.Epilogue(
            "c", f"ro = bz * {m * n} + row * {n}\nrk = row < {m}", f"co = col\nck = col < {n}"
        )
    kern = G.Kernel(
        "gemm", "a, b, c, bias, has_bias, p0, p1", tile, a, b, epi,
        G.Kloop(nk=f"min({chunk}, {slices} - bz * {chunk})", kt0=f"bz * {chunk * bk}"),
        notes=[f"C ({m}, {n}) = A @ B over K {k} in {splits} split(s); a, b, c, bias flat f32"],
    )  # fmt: skip
    fin = f"""
@cuda.jit(cache=True)
def splitk_sum(ws, c, bias, has_bias, p0, p1):
    # c[e] = act(sum over the {splits} splits of ws[s, e], in order, + bias[column])
    for e in range(cuda.grid(1), {m * n}, cuda.gridsize(1)):
        v = ws[e]
        for s in range(1, {splits}):
            v += ws[s * {m * n} + e]
        if has_bias:
            v += bias[e % {n}]
        c[e] = act(v, {code}, p0, p1)
"""
    return G.module_text("fc", [kern]) + fin


@functools.cache
def _cuda_kernels(m: int, n: int, k: int, bm: int, bn: int, bk: int, tm: int, tn: int,
                  a_kfast: bool, b_nfast: bool, code: int, splits: int = 1):  # fmt: skip
    """gemm(a, b, c, bias, has_bias, p0, p1) for one (m, n, k) product, layout and activation:
    C[i, j] = act(sum_l A[i, l] B[l, j] + bias[j]) over flat float32 operands, where A[i, l] is
    a[i*k + l] (a_kfast) or a[l*m + i], B[l, j] is b[l*n + j] (b_nfast) or b[j*k + l], and
    C[i, j] is c[i*n + j]. With splits > 1, gemm writes partial products into c = a workspace
    (splits, m, n) and splitk_sum(ws, c, bias, has_bias, p0, p1) finishes.
    """
    from netdsl.ops.codegen import kernel_module

    mod = kernel_module("fc", _fc_text(m, n, k, bm, bn, bk, tm, tn, a_kfast, b_nfast, code, splits))
    return types.SimpleNamespace(gemm=mod.gemm, splitk_sum=mod.splitk_sum)


# netdsl.backends.cuda_ptx compiles only a few geometries of each kernel (per tile config,
# layout and activation): the first 3 arguments are sizes, which decide no branch alone
_cuda_kernels.geometry_args = 3


def split_k(blocks: int, slices: int) -> int:
    """K splits for a GEMM of `blocks` tiles and `slices` K slices: enough blocks to fill the
    GPU, each split at least 16 slices deep (its partial tile costs a store and a load)."""
    return max(1, min(-(-SMS_TO_FILL // blocks), slices // 16))


class FcCUDA:
    """float32 linear layer on the GPU with the activation fused into the forward GEMM.

    The kernels are compiled for the shapes given here; the arrays passed later must have them.
    """

    def __init__(self, n: int, f: int, o: int, bias: bool, act_code: int = 4,
                 act_params: tuple = (0.0, 0.0)) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops import gemm_cuda
        from netdsl.ops.activation import LINEAR
        from netdsl.ops.cudakit import Launch, cdiv, grid_1d, pick_tile
        from netdsl.ops.reduce_cuda import ChannelSumsCUDA

        self.shape, self.bias = (n, f, o), bias
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        n, f, o = int(n), int(f), int(o)
        work = 0

        def gemm(m, cols, k, a_kfast, b_nfast, code=LINEAR):
            nonlocal work
            t = pick_tile(m, cols)
            blocks = cdiv(cols, t[1]) * cdiv(m, t[0])
            slices = cdiv(k, t[2])
            s = split_k(blocks, slices)
            s = cdiv(slices, cdiv(slices, s))  # no empty split
            cfg = (m, cols, k, *t, a_kfast, b_nfast, int(code), s)
            run = Launch(_cuda_kernels, "gemm", (cdiv(cols, t[1]), cdiv(m, t[0]), s),
                         gemm_cuda.threads_of(t), cfg)  # fmt: skip
            fin = None
            if s > 1:
                work = max(work, s * m * cols)
                fin = Launch(_cuda_kernels, "splitk_sum", *grid_1d(m * cols), cfg)
            return run, fin

        self._fwd = gemm(n, o, f, True, False, act_code)  # (N, O) = x (N, F) @ w.T
        self._dx = gemm(n, f, o, True, True)  # (N, F) = dy (N, O) @ w (O, F)
        self._dw = gemm(o, f, n, False, True)  # (O, F) = dy.T @ x (N, F)
        self.ws = _cuda.device_array(max(work, 1), np.float32)  # split-K partial tiles
        self._db = ChannelSumsCUDA(n, o, 1)  # db (O,) = dy (N, O) summed over the batch
        self.no_b = _cuda.to_device(np.zeros(1, np.float32))  # stands in without bias

    def _run(self, gemm, a, b, c, bias, has_bias, p0, p1) -> None:
        run, fin = gemm
        if fin is None:
            run(a, b, c, bias, has_bias, p0, p1)
            return
        run(a, b, self.ws, bias, has_bias, p0, p1)
        fin(self.ws, c, bias, has_bias, p0, p1)

    def forward(self, x, w, b, y) -> None:
        """y = act(x @ w.T + b). x (N, F), w (O, F), b (O,) or None, y (N, O): device arrays."""
        has_b = self.bias and b is not None
        self._run(self._fwd, x.reshape(-1), w.reshape(-1), y.reshape(-1),
                  b if has_b else self.no_b, has_b, *self.act_params)  # fmt: skip

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None); dy (N, O) is already through
        the fused activation's derivative."""
        zero = np.float32(0.0)
        if dx is not None:
            self._run(self._dx, dy.reshape(-1), w.reshape(-1), dx.reshape(-1), self.no_b, False,
                      zero, zero)  # fmt: skip
        self._run(self._dw, dy.reshape(-1), x.reshape(-1), dw.reshape(-1), self.no_b, False,
                  zero, zero)  # fmt: skip
        if db is not None:
            self._db(dy, db)


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
