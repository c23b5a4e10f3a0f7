"""2-D pooling: max, average and sum over kh x kw windows, with stride and padding.

Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo). The output size is given (the shape checker
computes it, floor or ceil mode) and ``pad`` is the top/left padding: output (i, j) pools
input rows [i*sh - ph, i*sh - ph + kh) and columns [j*sw - pw, j*sw - pw + kw), clipped to
the input. Taps outside the input are ignored, never treated as zeros: "avg" divides by the
number of taps inside the input (PyTorch's count_include_pad=False, which also excludes the
ceil-mode overhang) and "max" takes the maximum of the taps inside. A window with no tap
inside gives 0. Global pooling is kernel = (H, W).

Max pooling routes the gradient to the first maximum of each window (row-major order), as
PyTorch does; the CPU kernel saves that argmax in the forward for the backward.
"""

from __future__ import annotations

import functools
import types
from types import MappingProxyType

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import activations
from netdsl.ops.activation import LINEAR
from netdsl.ops.codegen import generated
from netdsl.ops.conv import PARALLEL_MIN_WORK, Workers, num_threads, split
from netdsl.ops.jit import kernel

Pair = tuple[int, int]

MODES: tuple[str, ...] = ("max", "avg", "sum")

# Read-only: the codes are baked into compiled kernels.
MODE_CODE = MappingProxyType({name: code for code, name in enumerate(MODES)})

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def windows(size: int, k: int, s: int, p: int, out: int) -> list[slice]:
    """Input index range of each output position along one axis, clipped to [0, size)."""
    return [slice(max(0, i * s - p), min(size, i * s - p + k)) for i in range(out)]


def ref_forward(
    x: np.ndarray,  # (N, C, H, W)
    mode: str,
    kernel: Pair,
    stride: Pair,
    pad: Pair,
    out_hw: Pair,
) -> np.ndarray:
    """Reference pooling in float64 -> y (N, C, Ho, Wo)."""
    if mode not in MODE_CODE:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {MODES}")
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    y = np.zeros((n, c) + tuple(out_hw))  # (N, C, Ho, Wo)
    for i, rows in enumerate(windows(h, kernel[0], stride[0], pad[0], out_hw[0])):
        for j, cols in enumerate(windows(w, kernel[1], stride[1], pad[1], out_hw[1])):
            win = x[:, :, rows, cols]  # (N, C, wr, wc) taps inside the input
            if win.size == 0:
                continue
            if mode == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            elif mode == "avg":
                y[:, :, i, j] = win.mean(axis=(2, 3))
            else:
                y[:, :, i, j] = win.sum(axis=(2, 3))
    return y


def ref_backward(
    dy: np.ndarray,  # (N, C, Ho, Wo)
    x: np.ndarray,  # (N, C, H, W)
    mode: str,
    kernel: Pair,
    stride: Pair,
    pad: Pair,
    out_hw: Pair,
) -> np.ndarray:
    """Reference input gradient in float64 -> dx (N, C, H, W)."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    dx = np.zeros_like(x)  # (N, C, H, W)
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")  # (N, C) index grids
    for i, rows in enumerate(windows(h, kernel[0], stride[0], pad[0], out_hw[0])):
        for j, cols in enumerate(windows(w, kernel[1], stride[1], pad[1], out_hw[1])):
            win = x[:, :, rows, cols]  # (N, C, wr, wc)
            if win.size == 0:
                continue
            g = dy[:, :, i, j]  # (N, C)
            if mode == "max":
                first = win.reshape(n, c, -1).argmax(axis=2)  # (N, C) flat index in window
                wi, wj = np.divmod(first, win.shape[3])  # window row and column of the max
                dx[nn, cc, rows.start + wi, cols.start + wj] += g
            elif mode == "avg":
                dx[:, :, rows, cols] += g[:, :, None, None] / (win.shape[2] * win.shape[3])
            else:
                dx[:, :, rows, cols] += g[:, :, None, None]
    return dx


# ---------------------------------------------------------------------------------------------
# float32 CPU kernels: plane-range workers (x viewed as (N*C, H, W)) run by conv.Workers.
# geo = (kh, kw, sh, sw, ph, pw). 2x2 windows at stride 2 without padding (LeNet, VGG) take a
# fast path with fixed-size window code for every output whose window is whole; LLVM cannot
# unroll the generic loops over runtime window sizes, which made them ~6x slower.
# ---------------------------------------------------------------------------------------------


@kernel(inline="always")  # compiled inside its callers: a cold start compiles less
def window_range(i, k, s, p, size):  # ints -> (lo, hi)
    """Input index range [lo, hi) of output position i along one axis, clipped to [0, size)."""
    lo = i * s - p  # first tap, possibly in the padding
    return max(lo, 0), max(min(lo + k, size), 0)


@kernel(inline="always")
def fast_extent(geo, h, w, ho, wo):  # -> (hf, wf)
    """Output rows i < hf and columns j < wf have whole 2x2/stride-2 windows (else (0, 0))."""
    if geo[0] == 2 and geo[1] == 2 and geo[2] == 2 and geo[3] == 2 and geo[4] == 0 and geo[5] == 0:
        return min(ho, h // 2), min(wo, w // 2)
    return 0, 0


@kernel(no_cpython_wrapper=True)  # njit callers only: no CPython entry point (kernels.md)
def whole_range(k, s, p, size, out):  # ints -> (lo, hi)
    """Outputs [lo, hi) along one axis whose window lies wholly inside the input."""
    lo = min((p + s - 1) // s, out)  # first i with i*s - p >= 0
    hi = max(min((size + p - k) // s + 1, out), lo)  # past the last with i*s - p + k <= size
    return lo, hi


@kernel(no_cpython_wrapper=True)  # njit callers only: no CPython entry point (kernels.md)
def _avg_whole_rows(xp, yp, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw, scale):
    """yp[i, j] = scale * (sum of the window) for outputs [i0, i1) x [j0, j1), all of whose
    windows lie inside the input: no per-output window bounds, no division, 3x3 windows with
    their taps unrolled (CIFAR-10's pool2: 10 -> 4 ns an output; summed in row-major tap
    order from 0, as tap by tap over rows of outputs did, so the same float32 sums)."""
    w = xp.shape[1]
    xf = xp.reshape(-1)  # (H*W,) view of the plane
    for i in range(i0, i1):
        for j in range(j0, j1):
            q = (i * sh - ph) * w + j * sw - pw  # flat index of the window's first tap
            s = np.float32(0.0)
            if kh == 3 and kw == 3:
                for ky in range(3):
                    for kx in range(3):
                        s += xf[np.uint64(q + ky * w + kx)]
            else:
                for ky in range(kh):
                    for kx in range(kw):
                        s += xf[np.uint64(q + ky * w + kx)]
            yp[i, j] = s * scale


@kernel(no_cpython_wrapper=True)  # njit callers only: no CPython entry point (kernels.md)
def _max_whole_rows(xp, yp, ap, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw):
    """yp[i, j] = max of the window and ap[i, j] the flat in-plane index of its first maximum
    (row-major tap order, as the generic loop) for outputs [i0, i1) x [j0, j1), all of whose
    windows lie inside the input: selects instead of a branch per value, no window bounds per
    output, and 3x3 windows (AlexNet, ResNet, CIFAR-10) with their taps unrolled (CIFAR-10's
    3x3 stride-2 pool1: 14 -> 3.8 ns an output; tap by tap over a row of outputs, the
    strided loads kept LLVM from vectorising: 28 ns). A NaN first tap stays, as in the
    generic loop (v > NaN is false)."""
    w = xp.shape[1]
    xf = xp.reshape(-1)  # (H*W,) view of the plane
    for i in range(i0, i1):
        for j in range(j0, j1):
            q = (i * sh - ph) * w + j * sw - pw  # flat index of the window's first tap
            best, at = xf[np.uint64(q)], q
            if kh == 3 and kw == 3:
                for ky in range(3):
                    for kx in range(3):
                        t = q + ky * w + kx
                        v = xf[np.uint64(t)]
                        take = v > best
                        best, at = (v if take else best), (t if take else at)
            else:
                for ky in range(kh):
                    for kx in range(kw):
                        t = q + ky * w + kx
                        v = xf[np.uint64(t)]
                        take = v > best
                        best, at = (v if take else best), (t if take else at)
            yp[i, j] = best
            ap[i, j] = at


@kernel(no_cpython_wrapper=True)  # njit callers only: no CPython entry point (kernels.md)
def _avg_whole_rows_backward(gp, dp, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw, scale):
    """dp[window of (i, j)] += scale * gp[i, j] for outputs [i0, i1) x [j0, j1) whose windows
    lie inside the input (the backward of _avg_whole_rows), tap by tap."""
    for i in range(i0, i1):
        gs = gp[i, j0:j1]
        for ky in range(kh):
            dr = dp[i * sh - ph + ky]
            for kx in range(kw):
                ds = dr[j0 * sw + kx - pw :]  # tap kx of output j0 first
                for j in range(j1 - j0):  # unsigned indices: no wraparound test in the loop
                    ds[np.uint64(j * sw)] += scale * gs[np.uint64(j)]


@kernel(no_cpython_wrapper=True)  # njit callers only: no CPython entry point (kernels.md)
def _whole_part(geo, h, w, ho, wo, hf, mode):
    """(i0, i1, j0, j1, use, scale): the outputs with whole windows that the forward
    computes tap by tap (use False for global pooling, whose one window the generic loop
    sums fastest, and where the 2x2 fast path runs), and the scale of avg / sum's sums."""
    kh, kw, sh, sw, ph, pw = geo
    i0, i1 = whole_range(kh, sh, ph, h, ho)
    j0, j1 = whole_range(kw, sw, pw, w, wo)
    use = hf == 0 and ho * wo > 1 and i1 > i0 and j1 > j0
    if not use:
        i0, i1, j0, j1 = 0, 0, 0, 0
    scale = np.float32(1.0) / np.float32(kh * kw) if mode == 1 else np.float32(1.0)
    return i0, i1, j0, j1, use, scale


# One kernel per mode (max; avg and sum), each with only its own code: Numba types and
# LLVM optimises every branch of a kernel whatever the arguments, so a kernel for all modes
# made a max-pooling net compile the average-pool code too (0.6 s of LeNet-5's cold start;
# the max backward alone is a scatter of a few lines).


@kernel(inline="always")  # typed inside its one caller: only the caller in use compiles
def _max_rest(xp, yp, ap, geo, h, w, hf, wf, i0, i1, j0, j1):
    """The outputs of one plane that neither the 2x2 fast path (i < hf, j < wf) nor the
    whole-window rows ([i0, i1) x [j0, j1)) covered, window by window."""
    kh, kw, sh, sw, ph, pw = geo
    ho, wo = yp.shape[0], yp.shape[1]
    for i in range(ho):
        r0, r1 = window_range(i, kh, sh, ph, h)
        inner = i0 <= i < i1
        for j in range(wf if i < hf else 0, wo):
            if inner and j0 <= j < j1:
                continue
            c0, c1 = window_range(j, kw, sw, pw, w)
            best, at = np.float32(0.0), -1  # stays (0, -1) for an empty window
            if r0 < r1 and c0 < c1:
                # start from the first tap so the inner loop has one compare
                best, at = xp[r0, c0], r0 * w + c0
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        v = xp[r, c]
                        if v > best:
                            best, at = v, r * w + c
            yp[i, j] = best
            ap[i, j] = at


@kernel(inline="always")  # typed inside each caller (one separate module fewer to optimise)
def _max2_tiles(xp, yp, ap, w, hf, wf):
    """Outputs i < hf, j < wf of one plane of a 2x2 stride-2 unpadded max pool, whose
    windows are whole: the max and the flat in-plane index of its first occurrence."""
    for i in range(hf):
        for j in range(wf):
            a, b = xp[2 * i, 2 * j], xp[2 * i, 2 * j + 1]  # top row of the window
            c, d = xp[2 * i + 1, 2 * j], xp[2 * i + 1, 2 * j + 1]  # bottom row
            top, bot = max(a, b), max(c, d)
            yp[i, j] = max(top, bot)
            at_top = 2 * i * w + 2 * j + (1 if b > a else 0)  # first max of top row
            at_bot = (2 * i + 1) * w + 2 * j + (1 if d > c else 0)
            ap[i, j] = at_bot if bot > top else at_top


@kernel(nogil=True, fastmath=True)
def _max2_tiled_planes(p0, p1, x, y, arg):
    """_max2_forward_planes where every output's window is whole (Ho <= H // 2 and
    Wo <= W // 2: LeNet's and VGG's even maps): no edge code to compile."""
    w = x.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    for pl in range(p0, p1):
        _max2_tiles(x[pl], y[pl], arg[pl], w, ho, wo)


@kernel(nogil=True, fastmath=True)
def _max2_forward_planes(p0, p1, x, y, arg):
    """y[p0:p1] = 2x2 stride-2 unpadded max pool of x[p0:p1] (odd sizes, ceil mode), arg =
    flat in-plane index of each first maximum; x (P, H, W), y (P, Ho, Wo), arg (P, Ho, Wo)
    int32. No output of this window has a whole window the 3x3 code would take."""
    h, w = x.shape[1], x.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    hf, wf = min(ho, h // 2), min(wo, w // 2)  # fast_extent of this window
    for pl in range(p0, p1):
        xp, yp, ap = x[pl], y[pl], arg[pl]  # (H, W), (Ho, Wo), (Ho, Wo)
        _max2_tiles(xp, yp, ap, w, hf, wf)
        _max_rest(xp, yp, ap, (2, 2, 2, 2, 0, 0), h, w, hf, wf, 0, 0, 0, 0)


@kernel(nogil=True, fastmath=True)
def _max_whole_planes(p0, p1, x, y, arg, geo):
    """_max_forward_planes where every output's window lies inside the input (unpadded, in
    floor mode: AlexNet's 3x3 stride-2 pools): whole-window rows only, no edge code."""
    kh, kw, sh, sw, ph, pw = geo
    ho, wo = y.shape[1], y.shape[2]
    for pl in range(p0, p1):
        _max_whole_rows(x[pl], y[pl], arg[pl], 0, ho, 0, wo, kh, kw, sh, sw, ph, pw)


@kernel(nogil=True, fastmath=True)
def _max_forward_planes(p0, p1, x, y, arg, geo):
    """y[p0:p1] = max pool of x[p0:p1] for any window but 2x2 stride-2 unpadded
    (_max2_forward_planes), arg = flat in-plane index of each first maximum.

    x (P, H, W), y (P, Ho, Wo), arg (P, Ho, Wo) int32.
    """
    kh, kw, sh, sw, ph, pw = geo
    h, w = x.shape[1], x.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    i0, i1, j0, j1, whole, _ = _whole_part(geo, h, w, ho, wo, 0, 0)
    for pl in range(p0, p1):
        xp, yp, ap = x[pl], y[pl], arg[pl]  # (H, W), (Ho, Wo), (Ho, Wo)
        if whole:  # the outputs with whole windows, tap by tap
            _max_whole_rows(xp, yp, ap, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw)
        _max_rest(xp, yp, ap, geo, h, w, 0, 0, i0, i1, j0, j1)


@kernel(nogil=True, fastmath=True)
def _avg_forward_planes(p0, p1, x, y, mode, geo):
    """y[p0:p1] = average (mode 1) or sum (mode 2) pool of x[p0:p1]; x (P, H, W), y (P, Ho, Wo)."""
    kh, kw, sh, sw, ph, pw = geo
    h, w = x.shape[1], x.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    hf, wf = fast_extent(geo, h, w, ho, wo)
    i0, i1, j0, j1, whole, scale = _whole_part(geo, h, w, ho, wo, hf, mode)
    for pl in range(p0, p1):
        xp, yp = x[pl], y[pl]  # (H, W), (Ho, Wo)
        for i in range(hf):
            for j in range(wf):
                a, b = xp[2 * i, 2 * j], xp[2 * i, 2 * j + 1]  # top row of the window
                c, d = xp[2 * i + 1, 2 * j], xp[2 * i + 1, 2 * j + 1]  # bottom row
                s = (a + b) + (c + d)
                yp[i, j] = s * np.float32(0.25) if mode == 1 else s
        if whole:
            _avg_whole_rows(xp, yp, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw, scale)
        for i in range(ho):
            r0, r1 = window_range(i, kh, sh, ph, h)
            inner = i0 <= i < i1
            for j in range(wf if i < hf else 0, wo):  # outputs the fast paths did not cover
                if inner and j0 <= j < j1:
                    continue
                c0, c1 = window_range(j, kw, sw, pw, w)
                s = np.float32(0.0)
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        s += xp[r, c]
                cnt = (r1 - r0) * (c1 - c0)  # taps inside the input
                yp[i, j] = s / np.float32(cnt) if mode == 1 and cnt > 0 else s


@kernel(nogil=True, fastmath=True)
def _max_backward_planes(p0, p1, dy, arg, dx):
    """dx[p0:p1] = gradient of _max_forward_planes (overwritten): each dy to its argmax.

    dy (P, Ho, Wo), arg (P, Ho, Wo) int32 from the forward, dx (P, H, W).
    """
    ho, wo = dy.shape[1], dy.shape[2]
    for pl in range(p0, p1):
        gp, dp = dy[pl], dx[pl]  # (Ho, Wo), (H, W)
        dp[:] = 0.0
        ap, df = arg[pl], dp.reshape(-1)  # (Ho, Wo), (H*W,) flat view of the plane
        for i in range(ho):
            for j in range(wo):
                if ap[i, j] >= 0:
                    df[ap[i, j]] += gp[i, j]


@kernel(nogil=True, fastmath=True)
def _avg_backward_planes(p0, p1, dy, dx, mode, geo):
    """dx[p0:p1] = gradient of _avg_forward_planes (overwritten); dy (P, Ho, Wo), dx (P, H, W)."""
    kh, kw, sh, sw, ph, pw = geo
    h, w = dx.shape[1], dx.shape[2]
    ho, wo = dy.shape[1], dy.shape[2]
    hf, wf = fast_extent(geo, h, w, ho, wo)
    i0, i1, j0, j1, whole, scale = _whole_part(geo, h, w, ho, wo, hf, mode)
    for pl in range(p0, p1):
        gp, dp = dy[pl], dx[pl]  # (Ho, Wo), (H, W)
        dp[:] = 0.0
        for i in range(hf):
            for j in range(wf):
                g = gp[i, j] * np.float32(0.25) if mode == 1 else gp[i, j]
                dp[2 * i, 2 * j] += g
                dp[2 * i, 2 * j + 1] += g
                dp[2 * i + 1, 2 * j] += g
                dp[2 * i + 1, 2 * j + 1] += g
        if whole:
            _avg_whole_rows_backward(gp, dp, i0, i1, j0, j1, kh, kw, sh, sw, ph, pw, scale)
        for i in range(ho):
            r0, r1 = window_range(i, kh, sh, ph, h)
            inner = i0 <= i < i1
            for j in range(wf if i < hf else 0, wo):
                if inner and j0 <= j < j1:
                    continue
                c0, c1 = window_range(j, kw, sw, pw, w)
                g = gp[i, j]
                if mode == 1 and r1 > r0 and c1 > c0:
                    g = g / np.float32((r1 - r0) * (c1 - c0))  # spread over taps inside
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        dp[r, c] += g


def _all_whole(geo: tuple, h: int, w: int, ho: int, wo: int) -> bool:
    """Whether every output window lies inside the input, for more than one output (global
    pooling takes the generic loop, as _whole_part decides)."""
    kh, kw, sh, sw, ph, pw = geo
    return (ph == 0 and pw == 0 and ho * wo > 1 and (ho - 1) * sh + kh <= h
            and (wo - 1) * sw + kw <= w)  # fmt: skip


class PoolCPU:
    """float32 pooling on the CPU for fixed shapes. Max keeps the argmax of the last forward."""

    def __init__(
        self,
        n: int,
        c: int,
        h: int,
        w: int,
        mode: str,
        kernel: Pair,
        stride: Pair,
        pad: Pair,
        out_hw: Pair,
    ) -> None:
        if mode not in MODE_CODE:
            raise ValueError(f"unknown pooling mode {mode!r}; expected one of {MODES}")
        self.mode = MODE_CODE[mode]
        self.geo = (*kernel, *stride, *pad)
        self.planes = n * c
        work = n * c * max(h * w, out_hw[0] * out_hw[1] * kernel[0] * kernel[1])
        nt = 1 if work < PARALLEL_MIN_WORK else min(num_threads(), self.planes)
        self.workers = Workers(nt)
        self.jobs = split(self.planes, self.workers.n)  # each worker's [first, last) plane
        shape = (self.planes, *out_hw) if mode == "max" else (1, 1, 1)  # unused unless max
        self.arg = np.full(shape, -1, np.int32)  # (N*C, Ho, Wo) argmax, flat in-plane index

    def forward(
        self,
        x: np.ndarray,  # (N, C, H, W) float32
        y: np.ndarray,  # (N, C, Ho, Wo) float32, written
    ) -> None:
        """y = pool(x); max pooling also records its argmax for the next backward."""
        x3 = x.reshape(self.planes, x.shape[2], x.shape[3])  # (N*C, H, W) view
        y3 = y.reshape(self.planes, y.shape[2], y.shape[3])  # (N*C, Ho, Wo) view
        if self.mode == 0 and self.geo == (2, 2, 2, 2, 0, 0):
            jobs = [(p0, p1, x3, y3, self.arg) for p0, p1 in self.jobs]
            tiled = 2 * y.shape[2] <= x.shape[2] and 2 * y.shape[3] <= x.shape[3]
            self.workers.run(_max2_tiled_planes if tiled else _max2_forward_planes, jobs)
        elif self.mode == 0:
            jobs = [(p0, p1, x3, y3, self.arg, self.geo) for p0, p1 in self.jobs]
            whole = _all_whole(self.geo, x.shape[2], x.shape[3], y.shape[2], y.shape[3])
            self.workers.run(_max_whole_planes if whole else _max_forward_planes, jobs)
        else:
            jobs = [(p0, p1, x3, y3, self.mode, self.geo) for p0, p1 in self.jobs]
            self.workers.run(_avg_forward_planes, jobs)

    def backward(
        self,
        dy: np.ndarray,  # (N, C, Ho, Wo) float32
        dx: np.ndarray | None,  # (N, C, H, W) float32 overwritten; None: nothing to do
    ) -> None:
        """Overwrite dx with the gradient for dy (max uses the argmax of the last forward)."""
        if dx is None:
            return
        dy3 = dy.reshape(self.planes, dy.shape[2], dy.shape[3])  # (N*C, Ho, Wo) view
        dx3 = dx.reshape(self.planes, dx.shape[2], dx.shape[3])  # (N*C, H, W) view
        if self.mode == 0:
            jobs = [(p0, p1, dy3, self.arg, dx3) for p0, p1 in self.jobs]
            self.workers.run(_max_backward_planes, jobs)
        else:
            jobs = [(p0, p1, dy3, dx3, self.mode, self.geo) for p0, p1 in self.jobs]
            self.workers.run(_avg_backward_planes, jobs)


# ---- CUDA kernels
# Forward: one thread per output (max also records the flat in-plane index of the first
# maximum, as the CPU kernel does). Backward gathers: one thread per INPUT element sums the
# outputs whose windows hold it (at most ceil(k/s)^2 of them), so overlapping windows need no
# atomics and the result is deterministic. Arrays are flat; plane pl of x starts at pl*H*W.
#
# The kernels are specialised on the layer: mode, sizes and window geometry are constants of
# the generated module (compile-time constants to Numba), so the index divisions are by
# constants and the other modes' code is gone. The price is one compilation per distinct
# layer geometry (cached on disk); the number of planes (N*C) is the arrays', so layers of one
# geometry and different channel counts or batch sizes share the kernels.

cuda = None  # numba.cuda, bound by _cuda_window_math() and _cuda_kernels()


@functools.cache
def _cuda_window_math():
    """Device functions span and outputs_over (pooling and subsampling); inlined, so constant
    arguments fold."""
    global cuda
    from numba import cuda

    # input range [lo, hi) of output i along one axis, clipped: the CPU kernels' function
    span = cuda.jit(device=True, inline="always")(window_range.py_func)

    @cuda.jit(device=True, inline="always")
    def outputs_over(r, k, s, p, out):  # outputs [lo, hi) whose window holds input r
        lo = -((-(r + p - k + 1)) // s)  # ceil((r + p - k + 1) / s)
        return max(lo, 0), min((r + p) // s + 1, out)

    return span, outputs_over


@generated("pool")
def _cuda_kernels(h: int, w: int, ho: int, wo: int, kh: int, kw: int, sh: int, sw: int,
                  ph: int, pw: int, mode: str, act_code: int = LINEAR):  # fmt: skip
    """Pooling kernels for one layer: x (planes, h, w) -> y (planes, ho, wo), flat; the number
    of planes (N*C) is the arrays' (y.size / (ho*wo)), so layers of one geometry share them.

    act_code: the activation fused into the layer that produced x, when this pool is that
    layer's only reader. The backward then returns the gradient before that activation,
    dx * act'(x) (x is the producer's activated output), so the producer skips its own
    elementwise activation backward: one pass over the map (read dy and y, write dz) fewer.
    """
    global cuda
    from numba import cuda, float32

    from netdsl.ops.activation import cuda_element_math

    _, act_grad = cuda_element_math()
    span, outputs_over = _cuda_window_math()
    code = MODE_CODE[mode]
    hw, howo = h * w, ho * wo

    @cuda.jit
    def pool_forward(x, y, arg):
        # x (P*H*W,), y (P*Ho*Wo,) f32; arg (P*Ho*Wo,) int32 out (max only; else unused)
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            pl, q = e // howo, e % howo
            i, j = q // wo, q % wo
            r0, r1 = span(i, kh, sh, ph, h)
            c0, c1 = span(j, kw, sw, pw, w)
            xp = pl * hw  # plane pl of x
            if code == 0:
                best, at = float32(0.0), -1  # stays (0, -1) for an empty window
                if r0 < r1 and c0 < c1:
                    # start from the first tap so the inner loop has one compare (as on the CPU)
                    best, at = x[xp + r0 * w + c0], r0 * w + c0
                    for r in range(r0, r1):
                        for c in range(c0, c1):
                            v = x[xp + r * w + c]
                            if v > best:
                                best, at = v, r * w + c
                y[e] = best
                arg[e] = at
            else:
                s = float32(0.0)
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        s += x[xp + r * w + c]
                cnt = (r1 - r0) * (c1 - c0)
                y[e] = s / float32(cnt) if code == 1 and cnt > 0 else s

    @cuda.jit
    def pool_backward(dy, arg, dx, x, p0, p1):
        # dy (P*Ho*Wo,), arg (P*Ho*Wo,) int32 (max), dx (P*H*W,) f32 out (overwritten);
        # x (P*H*W,) the forward input, read only with a fused activation (act_code)
        for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            pl, q = e // hw, e % hw
            r, c = q // w, q % w
            i0, i1 = outputs_over(r, kh, sh, ph, ho)
            j0, j1 = outputs_over(c, kw, sw, pw, wo)
            yp = pl * howo  # plane pl of dy and arg
            g = float32(0.0)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    o = yp + i * wo + j
                    if code == 0:
                        if arg[o] == q:
                            g += dy[o]
                    elif code == 1:
                        a0, a1 = span(i, kh, sh, ph, h)
                        b0, b1 = span(j, kw, sw, pw, w)
                        g += dy[o] / float32((a1 - a0) * (b1 - b0))
                    else:
                        g += dy[o]
            if act_code != LINEAR:
                g *= act_grad(x[e], act_code, p0, p1)
            dx[e] = g

    return types.SimpleNamespace(pool_forward=pool_forward, pool_backward=pool_backward)


# cuda_ptx.compile_records: the first 10 arguments are the layer's geometry (see there)
_cuda_kernels.geometry_args = 10


class PoolCUDA:
    """float32 pooling on the GPU for fixed shapes; max keeps the argmax of the last forward."""

    def __init__(self, n: int, c: int, h: int, w: int, mode: str, kernel: Pair, stride: Pair,
                 pad: Pair, out_hw: Pair, act: str = "linear",
                 act_params: tuple = (0.0, 0.0)) -> None:  # fmt: skip
        """act, act_params (p0, p1): the producer's fused activation whose backward this
        pool's backward takes over (see _cuda_kernels); "linear" for none."""
        from numba import cuda as _cuda

        from netdsl.ops.activation import ACT_CODE
        from netdsl.ops.cudakit import Launch, grid_1d

        if mode not in MODE_CODE:
            raise ValueError(f"unknown pooling mode {mode!r}; expected one of {MODES}")
        planes, (ho, wo) = n * c, out_hw
        self.act_code = ACT_CODE[act]
        self.act_params = tuple(np.float32(v) for v in activations.as_pair(act_params))
        geo = (int(v) for v in (h, w, ho, wo, *kernel, *stride, *pad))
        cfg = (*geo, mode, self.act_code)
        size = planes * ho * wo if mode == "max" else 1  # unused unless max
        self.arg = _cuda.device_array(size, np.int32)  # (N*C*Ho*Wo,) argmax, in-plane index
        self._fwd = Launch(_cuda_kernels, "pool_forward", *grid_1d(planes * ho * wo), cfg)
        self._bwd = Launch(_cuda_kernels, "pool_backward", *grid_1d(planes * h * w), cfg)

    def forward(self, x, y) -> None:
        """y = pool(x); x (N, C, H, W), y (N, C, Ho, Wo) float32 device arrays."""
        self._fwd(x.reshape(-1), y.reshape(-1), self.arg)

    def backward(self, dy, dx, x) -> None:
        """Overwrite dx (N, C, H, W) with the gradient for dy (N, C, Ho, Wo) (times act'(x)
        with a fused activation); x (N, C, H, W) is the forward input; dx None: skip."""
        if dx is None:
            return
        self._bwd(dy.reshape(-1), self.arg, dx.reshape(-1), x.reshape(-1), *self.act_params)


# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class PoolCPURunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = PoolCPU(plan.batch, c, h, w, a["mode"], a["kernel"], a["stride"], a["pad_tl"],
                          a["out_hw"])  # fmt: skip

    # the plan folds a standalone activation that alone reads this pool's output into it
    # (CompiledNet._activation_folds; the language gives pool no activation of its own)
    takes_act = True

    def forward(self, train):
        self.op.forward(self.x[0], self.y)
        self._act_forward()

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self._act_backward(), self.dx[0])


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class PoolCUDARunner(cuda_runner.Runner):
    takes_producer_act = True  # its backward can apply its producer's act' (below)

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.build()

    def build(self, act: str = "linear", act_params: tuple = (0.0, 0.0)) -> None:
        """The pool's launcher; act: its producer's activation, whose backward it takes over
        (CudaNet._fuse_pool_backward)."""
        a = self.layer.attrs
        c, h, w = self.layer.in_shapes[0]
        self.op = PoolCUDA(self.plan.batch, c, h, w, a["mode"], a["kernel"], a["stride"],
                           a["pad_tl"], a["out_hw"], act, act_params)  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.y)

    def backward(self):
        self.op.backward(self.dy, self.dx[0], self.x[0])
