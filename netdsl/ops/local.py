"""Locally connected layer: a convolution whose filters are not shared between locations
(cuda-convnet's and Darknet's ``[local]``).

Shapes: x (N, C, H, W), w (O, Ho, Wo, C // groups, kh, kw), b (O, Ho, Wo), y (N, O, Ho, Wo).
Output (o, i, j) has a filter of its own, w[o, i, j] (Cg, kh, kw), and a bias of its own,
b[o, i, j]: ``y[n, o, i, j] = b[o, i, j] + sum_{c, ky, kx} w[o, i, j, c, ky, kx] *
x[n, g*Cg + c, i*sh - ph + ky, j*sw - pw + kx]`` (g = o's group), taps outside the input
zero. ``pad`` is the top/left padding and (Ho, Wo) is given, as in conv.

The weight layout is conv's (O, Cg, kh, kw) with the output location inserted after the
filter index: a GPU split by output channels (netdsl/backends/cuda_groups.py) takes rows
[lo, hi) of the weight and of the bias, as for conv. Darknet stores (Ho*Wo, O, C*kh*kw)
(location first); cuda-convnet2 stores a (Ho*Wo*Cg*kh*kw, O) matrix (filters fastest); both
are permutations of this one (no weight file is read yet).

CPU: per output location l and group, the patch matrix P (N, K) of the batch (K = Cg*kh*kw),
the location's weights copied into a contiguous (Og, K) block, and one float32 BLAS GEMM
(Numba's np.dot): y_l (N, Og) = P @ W_l.T. Locations are split over worker threads (conv's
``Workers``), each with its own workspaces; the weight and bias gradients of a location
belong to one worker, and each worker adds its input gradients into a private dx summed in a
fixed order afterwards, so results are deterministic for a fixed thread count.

CUDA: one thread per output value (forward, with the fused activation), per input value
(data gradient, gathering the taps that read it), per weight and per bias (sums over the
batch): no atomics, deterministic. Local layers are small (cuda-convnet's CIFAR nets put two
on 8x8 maps), so these direct kernels are not tiled.
"""

from __future__ import annotations

import types

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations
from netdsl.ops.codegen import generated
from netdsl.ops.conv import PARALLEL_MIN_WORK, Workers, num_threads, split
from netdsl.ops.jit import kernel

Pair = tuple[int, int]

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _padded(x: np.ndarray, kh: int, kw: int, stride: Pair, pad: Pair, out_hw: Pair):
    """Zero-padded copy of x (N, C, Hp, Wp) big enough for every tap of every output."""
    n, c, h, w = x.shape
    need_h = (out_hw[0] - 1) * stride[0] + kh  # rows the taps span
    need_w = (out_hw[1] - 1) * stride[1] + kw  # columns the taps span
    xp = np.zeros((n, c, max(need_h, pad[0] + h), max(need_w, pad[1] + w)))  # (N, C, Hp, Wp)
    xp[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = x
    return xp


def _tap(ky: int, kx: int, stride: Pair, out_hw: Pair) -> tuple[slice, slice]:
    """Slices of the padded input read by tap (ky, kx) for all outputs (Ho rows, Wo columns)."""
    rows = slice(ky, ky + (out_hw[0] - 1) * stride[0] + 1, stride[0])
    cols = slice(kx, kx + (out_hw[1] - 1) * stride[1] + 1, stride[1])
    return rows, cols


def ref_forward(
    x: np.ndarray,  # (N, C, H, W)
    w: np.ndarray,  # (O, Ho, Wo, C // groups, kh, kw)
    b: np.ndarray | None,  # (O, Ho, Wo) or None
    stride: Pair,
    pad: Pair,
    groups: int,
) -> np.ndarray:
    """Reference locally connected layer in float64 -> y (N, O, Ho, Wo)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    o, ho, wo, cg, kh, kw = w.shape
    og, out_hw = o // groups, (ho, wo)
    xp = _padded(x, kh, kw, stride, pad, out_hw)  # (N, C, Hp, Wp)
    y = np.zeros((x.shape[0], o, ho, wo))  # (N, O, Ho, Wo)
    for g in range(groups):
        ci, oi = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)  # group's channels
        for ky in range(kh):
            for kx in range(kw):
                rows, cols = _tap(ky, kx, stride, out_hw)
                patch = xp[:, ci, rows, cols]  # (N, Cg, Ho, Wo)
                y[:, oi] += np.einsum("nchw,ohwc->nohw", patch, w[oi, :, :, :, ky, kx])
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None]
    return y


def ref_backward(
    dy: np.ndarray,  # (N, O, Ho, Wo)
    x: np.ndarray,  # (N, C, H, W)
    w: np.ndarray,  # (O, Ho, Wo, C // groups, kh, kw)
    stride: Pair,
    pad: Pair,
    groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference gradients in float64 -> (dx (N, C, H, W), dw like w, db (O, Ho, Wo))."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    h, wd = x.shape[2:]
    o, ho, wo, cg, kh, kw = w.shape
    og, out_hw = o // groups, (ho, wo)
    xp = _padded(x, kh, kw, stride, pad, out_hw)  # (N, C, Hp, Wp)
    dxp = np.zeros_like(xp)  # (N, C, Hp, Wp)
    dw = np.zeros_like(w)  # (O, Ho, Wo, Cg, kh, kw)
    for g in range(groups):
        ci, oi = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for ky in range(kh):
            for kx in range(kw):
                rows, cols = _tap(ky, kx, stride, out_hw)
                patch = xp[:, ci, rows, cols]  # (N, Cg, Ho, Wo)
                dw[oi, :, :, :, ky, kx] = np.einsum("nohw,nchw->ohwc", dy[:, oi], patch)
                dxp[:, ci, rows, cols] += np.einsum("nohw,ohwc->nchw", dy[:, oi],
                                                    w[oi, :, :, :, ky, kx])  # fmt: skip
    dx = dxp[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + wd].copy()  # drop the padding
    return dx, dw, dy.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels
#
# geo = (sh, sw, ph, pw, kh, kw, ho, wo, groups): one int tuple, one signature for every kernel.
# Views the runner passes: w3 (O, L, K) and dw3 likewise, b2 / db2 (O, L), y3 / dy3 (N, O, L),
# L = Ho*Wo locations, K = Cg*kh*kw taps with k = (c*kh + ky)*kw + kx (w's own order).
# ---------------------------------------------------------------------------------------------


@kernel
def _window(l, h, w_in, geo):  # -> (y0, x0, ky0, ky1, kx0, kx1)
    """Location l's window: its top-left input pixel (y0, x0) and the taps [ky0, ky1) x
    [kx0, kx1) that fall inside the input (the others read the zero padding)."""
    sh, sw, ph, pw, kh, kw, ho, wo, ng = geo
    y0, x0 = (l // wo) * sh - ph, (l % wo) * sw - pw
    ky0, kx0 = min(kh, max(0, -y0)), min(kw, max(0, -x0))
    return y0, x0, ky0, max(ky0, min(kh, h - y0)), kx0, max(kx0, min(kw, w_in - x0))


# Inner loops index flat views with np.uint64, as conv's: a signed index costs a wrap-around
# test that keeps LLVM from vectorising the short copy loops.


@kernel(fastmath=True)
def _gather(x, l, c0, pm, geo):
    """pm (N, K) <- the taps of location l over input channels c0.. of every image (0 outside)."""
    kh, kw = geo[4], geo[5]
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    y0, x0, ky0, ky1, kx0, kx1 = _window(l, h, w_in, geo)
    kk = pm.shape[1]
    xf, pf = x.reshape(-1), pm.reshape(-1)  # flat views
    for n in range(x.shape[0]):
        for c in range(kk // (kh * kw)):
            xc = (n * c_all + c0 + c) * h * w_in  # flat x index of x[n, c0 + c, 0, 0]
            for ky in range(kh):
                p = n * kk + (c * kh + ky) * kw  # flat pm index of tap (c, ky, 0)
                if ky < ky0 or ky >= ky1:
                    for kx in range(kw):
                        pf[np.uint64(p + kx)] = 0.0
                    continue
                r = xc + (y0 + ky) * w_in + x0  # flat x index of tap (c, ky, 0)
                for kx in range(kx0):
                    pf[np.uint64(p + kx)] = 0.0
                for kx in range(kx0, kx1):
                    pf[np.uint64(p + kx)] = xf[np.uint64(r + kx)]
                for kx in range(kx1, kw):
                    pf[np.uint64(p + kx)] = 0.0


@kernel(fastmath=True)
def _scatter_add(dp, l, c0, dx, geo):
    """dx[:, c0..] += the adjoint of _gather applied to dp (N, K)."""
    kh, kw = geo[4], geo[5]
    c_all, h, w_in = dx.shape[1], dx.shape[2], dx.shape[3]
    y0, x0, ky0, ky1, kx0, kx1 = _window(l, h, w_in, geo)
    kk = dp.shape[1]
    df, pf = dx.reshape(-1), dp.reshape(-1)  # flat views
    for n in range(dx.shape[0]):
        for c in range(kk // (kh * kw)):
            xc = (n * c_all + c0 + c) * h * w_in  # flat dx index of dx[n, c0 + c, 0, 0]
            for ky in range(ky0, ky1):
                p = n * kk + (c * kh + ky) * kw  # flat dp index of tap (c, ky, 0)
                r = xc + (y0 + ky) * w_in + x0  # flat dx index of tap (c, ky, 0)
                for kx in range(kx0, kx1):
                    df[np.uint64(r + kx)] += pf[np.uint64(p + kx)]


@kernel(nogil=True, fastmath=True)
def _forward_locations(l0, l1, x, w3, b2, y3, pm, wl, yl, geo):
    """Worker: y3[:, :, l0:l1] = local(x) + b2 at locations l0..l1, with its own workspaces.

    x (N, C, H, W); w3 (O, L, K); b2 (O, L) (zeros: no bias); y3 (N, O, L);
    pm (N, K) patches, wl (Og, K) one location's weights, yl (N, Og) the GEMM output.
    """
    ng = geo[8]
    og, cg = wl.shape[0], x.shape[1] // ng
    for l in range(l0, l1):
        for g in range(ng):
            _gather(x, l, g * cg, pm, geo)
            for o in range(og):
                wl[o, :] = w3[g * og + o, l, :]
            np.dot(pm, wl.T, yl)  # (N, K) @ (K, Og)
            for n in range(y3.shape[0]):
                for o in range(og):
                    y3[n, g * og + o, l] = yl[n, o] + b2[g * og + o, l]


@kernel(nogil=True, fastmath=True)
def _backward_locations(l0, l1, dy3, x, w3, dxt, want_dx, dw3, db2, pm, wl, dyl, dwl, dp, geo):
    """Worker: dw3[:, l0:l1], db2[:, l0:l1] (overwritten) and, with want_dx, this worker's
    input gradient dxt (N, C, H, W) (overwritten) of locations l0..l1.

    dy3 (N, O, L); pm (N, K); wl (Og, K); dyl (N, Og) one location's dy; dwl (Og, K); dp (N, K).
    """
    ng = geo[8]
    og, cg = wl.shape[0], x.shape[1] // ng
    nb = x.shape[0]
    if want_dx:
        dxt[:] = 0.0
    for l in range(l0, l1):
        for g in range(ng):
            _gather(x, l, g * cg, pm, geo)
            for o in range(og):
                acc = np.float32(0.0)
                for n in range(nb):
                    v = dy3[n, g * og + o, l]
                    dyl[n, o] = v
                    acc += v
                db2[g * og + o, l] = acc
            np.dot(dyl.T, pm, dwl)  # (Og, N) @ (N, K)
            for o in range(og):
                dw3[g * og + o, l, :] = dwl[o, :]
            if want_dx:
                for o in range(og):
                    wl[o, :] = w3[g * og + o, l, :]
                np.dot(dyl, wl, dp)  # (N, Og) @ (Og, K)
                _scatter_add(dp, l, g * cg, dxt, geo)


class LocalCPU:
    """float32 locally connected layer on the CPU for fixed shapes (see the module doc)."""

    def __init__(self, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, stride: Pair,
                 pad: Pair, groups: int, out_hw: Pair, bias: bool) -> None:  # fmt: skip
        if c % groups or o % groups:
            raise ValueError(f"channels {c} -> {o} do not divide into {groups} groups")
        ho, wo = out_hw
        cg, og = c // groups, o // groups
        k, locs = cg * kh * kw, ho * wo
        self.shape = (n, c, h, w, o, locs, k)
        self.bias = bias
        self.geo = tuple(int(v) for v in (*stride, *pad, kh, kw, ho, wo, groups))
        work = n * o * locs * k
        t = min(num_threads(), locs) if work >= PARALLEL_MIN_WORK else 1
        self.workers = Workers(t)
        self.ranges = split(locs, self.workers.n)

        def space():  # one worker's workspaces
            return types.SimpleNamespace(
                pm=np.zeros((n, k), np.float32), wl=np.zeros((og, k), np.float32),
                yl=np.zeros((n, og), np.float32), dwl=np.zeros((og, k), np.float32),
                dp=np.zeros((n, k), np.float32))  # fmt: skip

        self.spaces = [space() for _ in range(self.workers.n)]
        self.dxt = np.zeros((self.workers.n, n, c, h, w), np.float32)  # per-worker dx
        self.zero_b = np.zeros((o, locs), np.float32)  # stands in without bias
        self.scratch_db = np.zeros((o, locs), np.float32)

    def forward(self, x, w, b, y) -> None:
        """y = local(x, w) + b. x (N, C, H, W), w (O, Ho, Wo, Cg, kh, kw), b (O, Ho, Wo) or
        None, y (N, O, Ho, Wo): float32, C-contiguous."""
        n, c, h, wd, o, locs, k = self.shape
        b2 = b.reshape(o, locs) if self.bias and b is not None else self.zero_b
        w3, y3 = w.reshape(o, locs, k), y.reshape(n, o, locs)
        jobs = [(lo, hi, x, w3, b2, y3, s.pm, s.wl, s.yl, self.geo)
                for (lo, hi), s in zip(self.ranges, self.spaces, strict=True)]  # fmt: skip
        self.workers.run(_forward_locations, jobs)

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None); dy (N, O, Ho, Wo) is already
        through the fused activation's derivative."""
        n, c, h, wd, o, locs, k = self.shape
        db2 = db.reshape(o, locs) if db is not None else self.scratch_db
        dy3, w3, dw3 = dy.reshape(n, o, locs), w.reshape(o, locs, k), dw.reshape(o, locs, k)
        want = dx is not None
        jobs = [(lo, hi, dy3, x, w3, self.dxt[t], want, dw3, db2, s.pm, s.wl, s.yl, s.dwl, s.dp,
                 self.geo) for t, ((lo, hi), s) in enumerate(zip(self.ranges, self.spaces,
                                                                   strict=True))]  # fmt: skip
        self.workers.run(_backward_locations, jobs)
        if want:
            np.sum(self.dxt, axis=0, out=dx)  # the workers' shares, in a fixed order


# ---- CUDA kernels
# Built on first use (importing this module must not import numba); see netdsl/ops/cudakit.py.
# The layer's sizes are compile-time constants of the factory (constant index divisions);
# the activation code selects the forward's epilogue. The batch size is the arrays' (a loop
# bound only), so the training and evaluation batch sizes share the kernels.

cuda = None  # numba.cuda, bound by _cuda_kernels()


@generated("local")
def _cuda_kernels(c: int, h: int, w: int, o: int, groups: int, kh: int, kw: int, sh: int,
                  sw: int, ph: int, pw: int, ho: int, wo: int, code: int):  # fmt: skip
    """local_forward, local_backward_data, local_backward_weights, local_bias_grad over flat
    float32 arrays x (N*C*H*W), w (O*Ho*Wo*Cg*kh*kw), b and db (O*Ho*Wo), y (N*O*Ho*Wo); N is
    the arrays' (x.size / (C*H*W)), so every batch size shares the kernels."""
    global cuda
    from numba import cuda, float32

    from netdsl.ops.activation import cuda_element_math

    act, _ = cuda_element_math()
    cg, og = c // groups, o // groups
    k = cg * kh * kw  # taps per filter
    locs = ho * wo
    chw, olocs = c * h * w, o * locs  # one image's input and output sizes

    @cuda.jit
    def local_forward(x, wt, b, y, has_bias, p0, p1):
        # one thread per output (n, o, i, j), the fused activation in the epilogue
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            q, l = e // locs, e % locs  # q = n*O + oc
            im, oc = q // o, q % o
            i, j = l // wo, l % wo
            c0 = (oc // og) * cg
            base = (oc * locs + l) * k  # w[oc, i, j, 0, 0, 0]
            acc = float32(0.0)
            for ci in range(cg):
                for ky in range(kh):
                    iy = i * sh - ph + ky
                    if iy >= 0 and iy < h:
                        for kx in range(kw):
                            ix = j * sw - pw + kx
                            if ix >= 0 and ix < w:
                                acc += (wt[base + (ci * kh + ky) * kw + kx]
                                        * x[((im * c + c0 + ci) * h + iy) * w + ix])  # fmt: skip
            if has_bias:
                acc += b[oc * locs + l]
            y[e] = act(acc, code, p0, p1)

    @cuda.jit
    def local_backward_data(dy, wt, dx):
        # one thread per input (n, c, iy, ix): the sum over the outputs whose taps read it
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            q, ix = e // w, e % w
            q, iy = q // h, q % h
            im, ci = q // c, q % c
            g, cl = ci // cg, ci % cg  # its group, its channel within the group
            acc = float32(0.0)
            for ky in range(kh):
                oy = iy + ph - ky  # = i * sh for the output row i
                if oy >= 0 and oy % sh == 0 and oy // sh < ho:
                    i = oy // sh
                    for kx in range(kw):
                        ox = ix + pw - kx
                        if ox >= 0 and ox % sw == 0 and ox // sw < wo:
                            l = i * wo + ox // sw
                            tap = (cl * kh + ky) * kw + kx
                            for oq in range(og):
                                oc = g * og + oq
                                acc += (wt[(oc * locs + l) * k + tap]
                                        * dy[(im * o + oc) * locs + l])  # fmt: skip
            dx[e] = acc

    @cuda.jit
    def local_backward_weights(dy, x, dw):
        # one thread per weight (oc, l, tap): the sum over the batch
        n = x.size // chw
        for e in range(cuda.grid(1), o * locs * k, cuda.gridsize(1)):
            q, tap = e // k, e % k
            oc, l = q // locs, q % locs
            i, j = l // wo, l % wo
            q2, kx = tap // kw, tap % kw
            cl, ky = q2 // kh, q2 % kh
            iy, ix = i * sh - ph + ky, j * sw - pw + kx
            acc = float32(0.0)
            if iy >= 0 and iy < h and ix >= 0 and ix < w:
                ci = (oc // og) * cg + cl
                for im in range(n):
                    acc += dy[(im * o + oc) * locs + l] * x[((im * c + ci) * h + iy) * w + ix]
            dw[e] = acc

    @cuda.jit
    def local_bias_grad(dy, db):
        # one thread per bias (oc, l): the sum over the batch
        n = dy.size // olocs
        for e in range(cuda.grid(1), olocs, cuda.gridsize(1)):
            acc = float32(0.0)
            for im in range(n):
                acc += dy[im * olocs + e]
            db[e] = acc

    return types.SimpleNamespace(local_forward=local_forward,
                                 local_backward_data=local_backward_data,
                                 local_backward_weights=local_backward_weights,
                                 local_bias_grad=local_bias_grad)  # fmt: skip


# netdsl.backends.cuda_ptx compiles only a few geometries of each kernel: the first 13
# arguments are sizes, which decide no branch alone (the activation code does)
_cuda_kernels.geometry_args = 13


class LocalCUDA:
    """float32 locally connected layer on the GPU for fixed shapes, activation fused in
    forward; same arguments as LocalCPU plus the activation."""

    def __init__(self, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, stride: Pair,
                 pad: Pair, groups: int, out_hw: Pair, bias: bool, act_code: int = 4,
                 act_params: tuple = (0.0, 0.0)) -> None:  # fmt: skip
        from numba import cuda as _cuda

        from netdsl.ops.activation import LINEAR
        from netdsl.ops.cudakit import Launch, grid_1d

        if c % groups or o % groups:
            raise ValueError(f"channels {c} -> {o} do not divide into {groups} groups")
        ho, wo = out_hw
        self.bias = bias
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        geo = tuple(int(v) for v in (c, h, w, o, groups, kh, kw, *stride, *pad, ho, wo))
        locs, k = ho * wo, (c // groups) * kh * kw

        def launch(name, size, code=LINEAR):
            # only the forward has the activation; the others share the linear build
            return Launch(_cuda_kernels, name, *grid_1d(size), (*geo, int(code)))

        self._fwd = launch("local_forward", n * o * locs, act_code)
        self._bwd_data = launch("local_backward_data", n * c * h * w)
        self._bwd_w = launch("local_backward_weights", o * locs * k)
        self._db = launch("local_bias_grad", o * locs)
        self.no_b = _cuda.to_device(np.zeros(1, np.float32))  # stands in without bias

    def forward(self, x, w, b, y) -> None:
        """y = act(local(x, w) + b) on device arrays of the shapes given to __init__."""
        has_b = self.bias and b is not None
        self._fwd(x.reshape(-1), w.reshape(-1), b.reshape(-1) if has_b else self.no_b,
                  y.reshape(-1), has_b, *self.act_params)  # fmt: skip

    def backward(self, dy, x, w, dx, dw, db) -> None:
        """Overwrite dx (unless None), dw and db (unless None); dy is already through the
        fused activation's derivative."""
        if dx is not None:
            self._bwd_data(dy.reshape(-1), w.reshape(-1), dx.reshape(-1))
        self._bwd_w(dy.reshape(-1), x.reshape(-1), dw.reshape(-1))
        if db is not None:
            self._db(dy.reshape(-1), db.reshape(-1))


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


def _op_args(layer, plan) -> tuple:
    a = layer.attrs
    n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
    return (n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"], a["groups"], a["out_hw"],
            a["bias"])  # fmt: skip


class LocalCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = LocalCPU(*_op_args(layer, plan))
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class LocalCUDARunner(cuda_runner.LinearMapRunner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = LocalCUDA(*_op_args(layer, plan), self.act_code, self.act_params)
