"""CPU convolution kernels (used by netdsl.ops.conv.ConvCPU): im2col of a block of images
side by side, then one float32 BLAS GEMM per (block, group), called directly.

Imported only when a ConvCPU is built (it imports numba at module level; `netdsl check`
never gets here).

Why blocks: at small maps one image's column matrix has few columns (Ho*Wo = 49 at 7x7),
where BLAS runs far below its peak, and the weight gradient of one image is a GEMM whose
inner dimension is those 49 pixels that rewrites the whole (O, K) weight gradient: at
512 -> 512 channels 9.4 MB written per image. With B images side by side the GEMMs have
B*Ho*Wo columns and the weight gradient is written once per block. B is chosen by the
caller (ConvCPU) for a target column count under a workspace cap.

Why direct sgemm calls (Numba's ``numba_xxgemm``, the wrapper of SciPy's BLAS that Numba's
own np.dot uses; a named symbol, so the kernels stay in Numba's on-disk cache): leading
dimensions, transposes and beta = 1 let the weight gradient accumulate in place (no
per-image temporary and no transposed copies of dy or w), and let a 1x1 stride-1 unpadded
convolution use the input and output arrays themselves as its matrices (no im2col at all).

geo = (sh, sw, ph, pw, dh, dw, kh, kw, ho, wo, wide, hp, wp): stride, top/left padding,
dilation, kernel size, output size, and the layout of the column matrix.

The column matrix col (K, pitch) holds image b of a block in columns [b*P, (b+1)*P),
P = Ho*Wv; row r = (c*kh + ky)*kw + kx (the flat index of w[o], so y = w @ col), column
b*P + i*Wv + j for output pixel (i, j):
- "wide" (stride 1): the image is copied into a zero-bordered buffer xpad (Cg, Hp, Wp) and
  Wv = Wp, so row r of an image's columns is ONE contiguous run of xpad starting at tap
  (c, ky*dh, kx*dw); columns j >= Wo are garbage that is computed and dropped (the GEMM is
  Wp/Wo wider, so ConvCPU picks it only where that costs less than a gather).
- otherwise Wv = Wo and the columns are gathered element by element, zero outside the input.
  A block of one image then has its columns in y's order: the forward GEMM writes y itself
  and, for the plain weight gradient, the backward reads dy itself (no copies through yt /
  dyt: 3.2 MB each per image of ResNet-18's stem); the forward in bands of output rows
  (BAND_BYTES).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.np.linalg import ensure_blas

from netdsl.ops.jit import tune_llvm


def _load_cython_blas() -> None:
    """Import scipy.linalg.cython_blas (the module numba_xxgemm takes sgemm from on its first
    call) as its extension module alone: ``import scipy.linalg.cython_blas`` runs the whole
    scipy.linalg package first (array API compat layer, numpy.f2py, numpy.testing, ...),
    about 0.09 s of every start, cold or warm, for one function pointer. The module is
    the same file either way, so is sgemm. Anything unexpected: the plain import does it."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return
    try:
        import scipy  # light: numba has imported it

        folder = Path(scipy.__file__).parent / "linalg"
        found = sorted(p for p in folder.glob("cython_blas.*") if p.suffix in (".so", ".pyd"))
        spec = importlib.util.spec_from_file_location(name, found[0]) if found else None
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if "sgemm" in getattr(module, "__pyx_capi__", {}):
            sys.modules.setdefault(name, module)
    except Exception:
        return


_load_cython_blas()
ensure_blas()  # SciPy's BLAS (and Numba's check of its integer width)
tune_llvm()  # before any kernel of this module, or of the Winograd modules importing it, compiles

_F32P = types.CPointer(types.float32)
# numba_xxgemm(kind, transa, transb, m, n, k, alpha*, a*, lda, b*, ldb, beta*, c*, ldc): a
# column-major ?gemm (numba/_lapack.c); kind 's' = float32
_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
               _F32P, _F32P, types.intp, _F32P, types.intp, _F32P, _F32P, types.intp),
)  # fmt: skip

_S, _N, _T = 115, 110, 116  # ord('s'), ord('n'), ord('t')


# BLAS takes alpha and beta by pointer: alpha = 1 and beta = 0 or 1 point into this constant
# (frozen into the kernels' code). A 2-element np.empty per call compiled Numba's np.empty
# implementation into every net's cold start (0.12 s CPU).
_ONE_ZERO_ONE = np.array([1.0, 0.0, 1.0], np.float32)


# no_cpython_wrapper (gemm and the fill_col / add_col kernels): only other kernels call them,
# so Numba need not build the CPython entry point each standalone compile adds (gemm's 12
# arguments: 35 of its 105 ms; LeNet-5 cold, the five: 0.94 -> 0.78 s CPU). The callers'
# machine code is the same instruction for instruction. Called from Python, one would crash
# the interpreter: tests/test_no_wrapper.py checks that only compiled kernels call them.
@njit(cache=True, nogil=True, no_cpython_wrapper=True)  # njit callers only
def gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major C = op(A) @ op(B) + beta * C, C (m, n) with row pitch ldc; beta is 0.0 (C
    overwritten) or 1.0 (added into C): any other value is taken as 1.0.

    a, b, c: 1-D float32 views starting at each matrix's first element. A is (m, k) with row
    pitch lda, or stored as (k, m) when ta; B is (k, n) with pitch ldb, or stored (n, k) when
    tb. BLAS is column-major: the row-major product is C.T = op(B).T @ op(A).T.
    """
    k1 = _ONE_ZERO_ONE
    pb = k1[1:] if beta == 0.0 else k1[2:]
    _xxgemm(_S, _T if tb else _N, _T if ta else _N, n, m, k, k1.ctypes, b.ctypes, ldb,
            a.ctypes, lda, pb.ctypes, c.ctypes, ldc)  # fmt: skip


# A one-image block in the gathered layout is filled and multiplied in bands of output rows
# whose columns take at most this many bytes, so that they stay in L2 between fill_col and
# the GEMM: ResNet-18's stem (K 147, 7.4 MB of columns an image) ran its forward in 29
# against 35 ms CPU (1 thread, 8 images, bands of 4-16 rows alike; in the module, loaded
# machine: 34.2 against 37.6-39.5 ms).
BAND_BYTES = 512 << 10
# ... unless a band would have fewer columns than this: then the image is one band (at 576
# rows, 28 px, bands of 8 rows, 224 columns, ran 1.1x slower than whole images of 784).
BAND_MIN_COLUMNS = 512


@njit(cache=True, nogil=True, inline="always")
def _band(geo, i0, i1):
    """geo for the output rows [i0, i1) alone (gathered layout): the top padding less the
    rows before (output row i of the band reads input row (i0 + i)*sh + ky*dh - ph)."""
    return (geo[0], geo[1], geo[2] - i0 * geo[0], geo[3], geo[4], geo[5], geo[6], geo[7],
            i1 - i0, geo[9], geo[10], geo[11], geo[12])  # fmt: skip


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _col_range(ox, sw, w_in, wo):  # ints -> (j0, j1)
    """Output columns j in [j0, j1) whose input column ox + j*sw lies in [0, w_in)."""
    j0 = 0 if ox >= 0 else min(wo, (sw - 1 - ox) // sw)  # first j with ox + j*sw >= 0
    j1 = min(wo, (w_in - ox + sw - 1) // sw) if w_in > ox else 0  # first j with ox+j*sw >= w_in
    return j0, max(j0, j1)


# Inner loops index flat views with np.uint64: Numba tests every signed index for a negative
# value to wrap around, and that test stops LLVM from vectorising short copy loops.


# Compile time (cold start): every path below is its own small kernel, and a layer's kernels
# are picked in Python (forward_images / backward_images), so a net compiles only the paths
# its layers run: LeNet-5 only the wide ones, AlexNet only the gathered forward/backward. One
# kernel holding every path cost each net the compile of all of them, twice over (the callees
# fill_col / add_col / gemm are linked into their callers and optimised again there). Call
# sites pass non-literal arguments (np.bool_, np.int64) so that each callee has ONE signature:
# a literal True / False / 0 is typed Literal[...] and compiles the callee once per value.


@njit(cache=True, nogil=True, fastmath=True, no_cpython_wrapper=True)  # njit callers only
def fill_col_wide(x, n, c0, xpad, col, q0, geo):
    """col[:, q0 : q0 + P] <- taps of x[n, c0 : c0+Cg], wide layout (x (N, C, H, W); col
    (K, pitch); xpad (Cg*Hp*Wp + slack,) with zero borders: its interior is rewritten)."""
    sh, sw, ph, pw, dh, dw, kh, kw, ho, wo, wide, hp, wp = geo
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    cg = col.shape[0] // (kh * kw)
    pitch = col.shape[1]
    npix = ho * wp  # P: this image's columns
    xf, cf = x.reshape(-1), col.reshape(-1)  # flat views
    for c in range(cg):
        xc = ((n * c_all + c0 + c) * h) * w_in  # flat offset of x[n, c0 + c, 0, 0]
        for iy in range(h):
            d = (c * hp + ph + iy) * wp + pw  # xpad offset of x[n, c0 + c, iy, 0]
            for ix in range(w_in):
                xpad[np.uint64(d + ix)] = xf[np.uint64(xc + iy * w_in + ix)]
        for ky in range(kh):
            for kx in range(kw):
                p0 = ((c * kh + ky) * kw + kx) * pitch + q0  # row r's first column here
                s = (c * hp + ky * dh) * wp + kx * dw  # xpad offset of output (0,0)'s tap
                for q in range(npix):
                    cf[np.uint64(p0 + q)] = xpad[np.uint64(s + q)]


@njit(cache=True, nogil=True, fastmath=True, no_cpython_wrapper=True)  # njit callers only
def fill_col_gather(x, n, c0, col, q0, geo):
    """col[:, q0 : q0 + P] <- taps of x[n, c0 : c0+Cg], gathered (zero outside the input)."""
    sh, sw, ph, pw, dh, dw, kh, kw, ho, wo, wide, hp, wp = geo
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    cg = col.shape[0] // (kh * kw)
    pitch = col.shape[1]
    xf, cf = x.reshape(-1), col.reshape(-1)  # flat views
    for c in range(cg):
        xc = ((n * c_all + c0 + c) * h) * w_in  # flat offset of x[n, c0 + c, 0, 0]
        for ky in range(kh):
            for kx in range(kw):
                p0 = ((c * kh + ky) * kw + kx) * pitch + q0  # row r's first column here
                ox = kx * dw - pw  # input column read by output column 0
                j0, j1 = _col_range(ox, sw, w_in, wo)
                for i in range(ho):
                    iy = i * sh + ky * dh - ph  # input row read by output row i
                    p = p0 + i * wo  # flat col index of output (i, 0)
                    if iy < 0 or iy >= h:
                        for j in range(wo):
                            cf[np.uint64(p + j)] = 0.0
                        continue
                    for j in range(j0):
                        cf[np.uint64(p + j)] = 0.0
                    s = xc + iy * w_in + ox  # flat x index of (iy, ox): j*sw added below
                    for j in range(j0, j1):
                        cf[np.uint64(p + j)] = xf[np.uint64(s + j * sw)]
                    for j in range(j1, wo):
                        cf[np.uint64(p + j)] = 0.0


@njit(cache=True, nogil=True, fastmath=True, no_cpython_wrapper=True)  # njit callers only
def add_col_wide(col, q0, dx, n, c0, dxpad, geo):
    """dx[n, c0 : c0+Cg] = the adjoint of fill_col_wide applied to col[:, q0 : q0 + P]
    (overwrites); dxpad (Hp*Wp + slack,) one channel's padded gradient."""
    sh, sw, ph, pw, dh, dw, kh, kw, ho, wo, wide, hp, wp = geo
    c_all, h, w_in = dx.shape[1], dx.shape[2], dx.shape[3]
    cg = col.shape[0] // (kh * kw)
    pitch = col.shape[1]
    npix = ho * wp
    df, cf = dx.reshape(-1), col.reshape(-1)  # flat views
    for c in range(cg):
        xc = ((n * c_all + c0 + c) * h) * w_in  # flat offset of dx[n, c0 + c, 0, 0]
        for q in range(dxpad.shape[0]):
            dxpad[np.uint64(q)] = 0.0
        for ky in range(kh):
            for kx in range(kw):
                p0 = ((c * kh + ky) * kw + kx) * pitch + q0
                s = ky * dh * wp + kx * dw  # dxpad offset of output (0,0)'s tap
                for q in range(npix):
                    dxpad[np.uint64(s + q)] += cf[np.uint64(p0 + q)]
        for iy in range(h):
            d = (ph + iy) * wp + pw  # dxpad offset of dx[n, c0 + c, iy, 0]
            for ix in range(w_in):
                df[np.uint64(xc + iy * w_in + ix)] = dxpad[np.uint64(d + ix)]


@njit(cache=True, nogil=True, fastmath=True, no_cpython_wrapper=True)  # njit callers only
def add_col_gather(col, q0, dx, n, c0, geo):
    """dx[n, c0 : c0+Cg] = the adjoint of fill_col_gather applied to col[:, q0 : q0 + P]
    (overwrites)."""
    sh, sw, ph, pw, dh, dw, kh, kw, ho, wo, wide, hp, wp = geo
    c_all, h, w_in = dx.shape[1], dx.shape[2], dx.shape[3]
    cg = col.shape[0] // (kh * kw)
    pitch = col.shape[1]
    df, cf = dx.reshape(-1), col.reshape(-1)  # flat views
    for c in range(cg):
        xc = ((n * c_all + c0 + c) * h) * w_in  # flat offset of dx[n, c0 + c, 0, 0]
        for q in range(h * w_in):
            df[np.uint64(xc + q)] = 0.0
        for ky in range(kh):
            for kx in range(kw):
                p0 = ((c * kh + ky) * kw + kx) * pitch + q0
                ox = kx * dw - pw  # input column of output column 0
                j0, j1 = _col_range(ox, sw, w_in, wo)
                for i in range(ho):
                    iy = i * sh + ky * dh - ph  # input row of output row i
                    if iy >= 0 and iy < h:
                        p = p0 + i * wo  # flat col index of output (i, 0)
                        s = xc + iy * w_in + ox  # flat dx index of (iy, ox)
                        for j in range(j0, j1):
                            df[np.uint64(s + j * sw)] += cf[np.uint64(p + j)]


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _zero(a):
    """a[...] = 0 for a 1-D view (a loop: `a[:] = 0.0` pulls in Numba's generic setitem)."""
    for q in range(a.shape[0]):
        a[np.uint64(q)] = 0.0


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _add_bias(yf, yo, hw, b, o0, og):
    """y += b over one image's group: yf[yo + o*hw + q] += b[o0 + o], o < og, q < hw."""
    for o in range(og):
        bo = b[o0 + o]
        for q in range(hw):
            yf[np.uint64(yo + o * hw + q)] += bo


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _store_block(ytf, pitch, npix, wv, yf, nb, m, g, og, o_all, ho, wo, b):
    """y[nb : nb+m, group g] <- yt (the block's GEMM output, row pitch `pitch`) + b."""
    hw = ho * wo
    for i in range(m):
        for o in range(og):
            bo = b[g * og + o]
            d0 = ((nb + i) * o_all + g * og + o) * hw  # flat y offset of y[n, o]
            s0 = o * pitch + i * npix  # flat yt offset of that image's (0, 0)
            for r in range(ho):
                for j in range(wo):
                    yf[np.uint64(d0 + r * wo + j)] = ytf[np.uint64(s0 + r * wv + j)] + bo


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _bias_grad(dyf, dbt, nb, m, g, og, o_all, hw):
    """dbt[group g] += the sums of dy[nb : nb+m, group g] over pixels (image by image)."""
    for i in range(m):
        for o in range(og):
            s0 = ((nb + i) * o_all + g * og + o) * hw  # flat dy offset of dy[n, o]
            acc = np.float32(0.0)
            for q in range(hw):
                acc += dyf[np.uint64(s0 + q)]
            dbt[g * og + o] += acc


@njit(cache=True, nogil=True, inline="always")  # compiled inside its callers
def _copy_dy(dyf, dytf, dyttf, tr, nb, i, g, og, o_all, ho, wo, wv, pitch, npix):
    """Image nb+i's dy of group g into the block's dyt (zero in the garbage columns j >= Wo)
    and, when tr, into dytt transposed."""
    hw = ho * wo
    for o in range(og):
        s0 = ((nb + i) * o_all + g * og + o) * hw
        d0 = o * pitch + i * npix  # flat dyt offset of that image's (0, 0)
        for r in range(ho):
            for j in range(wv):
                v = dyf[np.uint64(s0 + r * wo + j)] if j < wo else np.float32(0.0)
                dytf[np.uint64(d0 + r * wv + j)] = v
                if tr:
                    dyttf[np.uint64((i * npix + r * wv + j) * og + o)] = v


def forward_images(n0: int, n1: int, bs: int, direct: bool, x: np.ndarray, w3: np.ndarray,
                   b: np.ndarray, y: np.ndarray, col: np.ndarray, yt: np.ndarray,
                   xpad: np.ndarray, geo: tuple[int, ...]) -> None:  # fmt: skip
    """Worker: y[n0:n1] = conv(x[n0:n1]) + b, `bs` images per GEMM: calls the kernel of the
    layer's path (forward_direct, forward_wide or forward_gather).

    x (N, C, H, W); w3 (G, Og, K); b (O,) (zeros: no bias); y (N, O, Ho, Wo); col (K, bs*P)
    column matrix, yt (Og, bs*P) GEMM output, xpad (Cg*Hp*Wp + slack,) whose borders are
    zeroed here (the interior is rewritten per image). direct: a 1x1
    stride-1 unpadded conv, whose column matrix of image n is x[n, group] itself (col, yt
    and xpad unused: one GEMM per image straight from x into y).
    """
    if direct:
        return forward_direct(n0, n1, bs, x, w3, b, y)
    if geo[10]:
        return forward_wide(n0, n1, bs, x, w3, b, y, col, yt, xpad, geo)
    return forward_gather(n0, n1, bs, x, w3, b, y, col, yt, geo)


@njit(cache=True, nogil=True, fastmath=True)
def forward_direct(n0, n1, bs, x, w3, b, y):
    """forward_images of a 1x1 stride-1 unpadded conv: one GEMM per image, x into y."""
    ng, og, kk = w3.shape
    c_all, hw_in = x.shape[1], x.shape[2] * x.shape[3]
    o_all, hw = y.shape[1], y.shape[2] * y.shape[3]
    cg = c_all // ng
    no = np.bool_(False)  # not a literal: gemm keeps one signature
    xf, yf, wf = x.reshape(-1), y.reshape(-1), w3.reshape(-1)
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)
        for g in range(ng):
            wg = wf[g * og * kk :]
            for n in range(nb, nb + m):
                yo = (n * o_all + g * og) * hw  # flat y offset of y[n, g*og]
                gemm(no, no, og, hw, kk, wg, kk, xf[(n * c_all + g * cg) * hw_in :], hw_in,
                     0.0, yf[yo:], hw)  # fmt: skip
                _add_bias(yf, yo, hw, b, g * og, og)


@njit(cache=True, nogil=True, fastmath=True)
def forward_wide(n0, n1, bs, x, w3, b, y, col, yt, xpad, geo):
    """forward_images in the wide layout: blocks of images through col and yt."""
    ng, og, kk = w3.shape
    o_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    cg = x.shape[1] // ng
    wv = geo[12]  # column pitch of an output row in col / yt
    npix = ho * wv  # P
    pitch = col.shape[1]
    no = np.bool_(False)
    yf, wf, colf, ytf = y.reshape(-1), w3.reshape(-1), col.reshape(-1), yt.reshape(-1)
    _zero(xpad)  # its borders: the buffer is shared with other layers
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)  # images in this block
        for g in range(ng):
            for i in range(m):
                fill_col_wide(x, nb + i, g * cg, xpad, col, i * npix, geo)
            gemm(no, no, og, m * npix, kk, wf[g * og * kk :], kk, colf, pitch, 0.0, ytf, pitch)
            _store_block(ytf, pitch, npix, wv, yf, nb, m, g, og, o_all, ho, wo, b)


@njit(cache=True, nogil=True, fastmath=True)
def forward_gather(n0, n1, bs, x, w3, b, y, col, yt, geo):
    """forward_images in the gathered layout: a one-image block straight into y in bands of
    output rows; larger blocks through col and yt."""
    ng, og, kk = w3.shape
    o_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    cg = x.shape[1] // ng
    hw = ho * wo
    npix = hw  # P
    pitch = col.shape[1]
    first = np.int64(0)  # column 0 as int64: a literal 0 compiled fill_col a second time
    no = np.bool_(False)
    yf, wf, colf, ytf = y.reshape(-1), w3.reshape(-1), col.reshape(-1), yt.reshape(-1)
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)  # images in this block
        for g in range(ng):
            wg = wf[g * og * kk :]
            if m == 1:  # one image, columns in y's order: the GEMM writes y
                yo = (nb * o_all + g * og) * hw  # flat y offset of y[nb, g*og]
                band = max(1, BAND_BYTES // (4 * kk * wo))  # output rows a band
                if band * wo < BAND_MIN_COLUMNS:  # too narrow a GEMM: the whole image
                    band = ho
                for i0 in range(0, ho, band):
                    i1 = min(ho, i0 + band)
                    fill_col_gather(x, nb, g * cg, col, first, _band(geo, i0, i1))
                    gemm(no, no, og, (i1 - i0) * wo, kk, wg, kk, colf, pitch, 0.0,
                         yf[yo + i0 * wo :], hw)  # fmt: skip
                _add_bias(yf, yo, hw, b, g * og, og)
                continue
            for i in range(m):
                fill_col_gather(x, nb + i, g * cg, col, i * npix, geo)
            gemm(no, no, og, m * npix, kk, wg, kk, colf, pitch, 0.0, ytf, pitch)
            _store_block(ytf, pitch, npix, wo, yf, nb, m, g, og, o_all, ho, wo, b)


def backward_images(n0: int, n1: int, bs: int, direct: bool, tr: bool, dy: np.ndarray,
                    x: np.ndarray, w3: np.ndarray, dx: np.ndarray, want_dx: bool,
                    col: np.ndarray, dyt: np.ndarray, dytt: np.ndarray, xpad: np.ndarray,
                    dxpad: np.ndarray, dwt: np.ndarray, dbt: np.ndarray,
                    geo: tuple[int, ...]) -> None:  # fmt: skip
    """Worker: the weight gradient summed over images n0..n1 into dwt, overwritten: (G, Og, K)
    or, when tr, its transpose (G, K, Og); dbt (O,) likewise; dx[n0:n1] when want_dx. Calls
    the kernel of the layer's path (backward_direct, backward_wide or backward_gather).

    Workspaces as forward_images' plus dyt (Og, bs*P), one block's dy, and when tr dytt
    (bs*P, Og), its transpose; both zero in the garbage columns so that those of col add
    nothing. dxpad (Hp*Wp + slack,). tr: dw.T += col @ dytt, which OpenBLAS runs up to 2x
    faster than dw += dyt @ col.T while Og is small (measured at Og 16-64; level at 512).
    """
    if direct:  # never tr
        return backward_direct(n0, n1, bs, dy, x, w3, dx, want_dx, dwt, dbt)
    if geo[10]:
        return backward_wide(n0, n1, bs, tr, dy, x, w3, dx, want_dx, col, dyt, dytt, xpad,
                             dxpad, dwt, dbt, geo)  # fmt: skip
    return backward_gather(n0, n1, bs, tr, dy, x, w3, dx, want_dx, col, dyt, dytt, dwt, dbt,
                           geo)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def backward_direct(n0, n1, bs, dy, x, w3, dx, want_dx, dwt, dbt):
    """backward_images of a 1x1 stride-1 unpadded conv: GEMMs straight from dy and x."""
    ng, og, kk = w3.shape
    c_all, hw_in = x.shape[1], x.shape[2] * x.shape[3]
    o_all, hw = dy.shape[1], dy.shape[2] * dy.shape[3]
    cg = c_all // ng
    no, yes = np.bool_(False), np.bool_(True)
    xf, dyf, wf, dxf, dwf = (
        x.reshape(-1),
        dy.reshape(-1),
        w3.reshape(-1),
        dx.reshape(-1),
        dwt.reshape(-1),
    )
    _zero(dwf)
    _zero(dbt)
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)
        for g in range(ng):
            wg, dwg = wf[g * og * kk :], dwf[g * og * kk :]
            _bias_grad(dyf, dbt, nb, m, g, og, o_all, hw)
            for n in range(nb, nb + m):
                do = (n * o_all + g * og) * hw  # flat dy offset of dy[n, g*og]
                xo = (n * c_all + g * cg) * hw_in  # flat x offset of x[n, g*cg]
                gemm(no, yes, og, kk, hw, dyf[do:], hw, xf[xo:], hw, 1.0, dwg, kk)
                if want_dx:
                    gemm(yes, no, kk, hw, og, wg, kk, dyf[do:], hw, 0.0, dxf[xo:], hw)


@njit(cache=True, nogil=True, fastmath=True)
def backward_wide(n0, n1, bs, tr, dy, x, w3, dx, want_dx, col, dyt, dytt, xpad, dxpad, dwt,
                  dbt, geo):  # fmt: skip
    """backward_images in the wide layout: blocks of images through col, dyt (and dytt)."""
    ng, og, kk = w3.shape
    o_all, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    cg = x.shape[1] // ng
    hw = ho * wo
    wv = geo[12]
    npix = ho * wv
    pitch = col.shape[1]
    no, yes = np.bool_(False), np.bool_(True)
    dyf, wf, dytf = dy.reshape(-1), w3.reshape(-1), dyt.reshape(-1)
    dwf, colf, dyttf = dwt.reshape(-1), col.reshape(-1), dytt.reshape(-1)
    _zero(dwf)
    _zero(dbt)
    _zero(xpad)  # its borders: the buffer is shared with other layers
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)
        for g in range(ng):
            wg, dwg = wf[g * og * kk :], dwf[g * og * kk :]
            _bias_grad(dyf, dbt, nb, m, g, og, o_all, hw)
            for i in range(m):
                _copy_dy(dyf, dytf, dyttf, tr, nb, i, g, og, o_all, ho, wo, wv, pitch, npix)
                fill_col_wide(x, nb + i, g * cg, xpad, col, i * npix, geo)
            if tr:
                gemm(no, no, kk, og, m * npix, colf, pitch, dyttf, og, 1.0, dwg, og)
            else:
                gemm(no, yes, og, kk, m * npix, dytf, pitch, colf, pitch, 1.0, dwg, kk)
            if want_dx:
                gemm(yes, no, kk, m * npix, og, wg, kk, dytf, pitch, 0.0, colf, pitch)
                for i in range(m):
                    add_col_wide(col, i * npix, dx, nb + i, g * cg, dxpad, geo)


@njit(cache=True, nogil=True, fastmath=True)
def backward_gather(n0, n1, bs, tr, dy, x, w3, dx, want_dx, col, dyt, dytt, dwt, dbt, geo):
    """backward_images in the gathered layout: a one-image block reads dy in place (unless
    tr); larger blocks through col, dyt (and dytt)."""
    ng, og, kk = w3.shape
    o_all, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    cg = x.shape[1] // ng
    hw = ho * wo
    npix = hw
    pitch = col.shape[1]
    first = np.int64(0)  # as in forward_gather (fill_col's and add_col's q0 stays int64)
    no, yes = np.bool_(False), np.bool_(True)
    dyf, wf, dytf = dy.reshape(-1), w3.reshape(-1), dyt.reshape(-1)
    dwf, colf, dyttf = dwt.reshape(-1), col.reshape(-1), dytt.reshape(-1)
    _zero(dwf)
    _zero(dbt)
    for nb in range(n0, n1, bs):
        m = min(bs, n1 - nb)
        for g in range(ng):
            wg, dwg = wf[g * og * kk :], dwf[g * og * kk :]
            _bias_grad(dyf, dbt, nb, m, g, og, o_all, hw)
            if m == 1 and not tr:  # dy[nb, group] is the block's dyt itself
                do = (nb * o_all + g * og) * hw  # flat dy offset of dy[nb, g*og]
                # (no bands as in forward_gather: measured level here, stem 34.4 against 34.3
                # ms CPU, and add_col overwrites dx[nb] whole)
                fill_col_gather(x, nb, g * cg, col, first, geo)
                gemm(no, yes, og, kk, hw, dyf[do:], hw, colf, pitch, 1.0, dwg, kk)
                if want_dx:
                    gemm(yes, no, kk, hw, og, wg, kk, dyf[do:], hw, 0.0, colf, pitch)
                    add_col_gather(col, first, dx, nb, g * cg, geo)
                continue
            for i in range(m):
                _copy_dy(dyf, dytf, dyttf, tr, nb, i, g, og, o_all, ho, wo, wo, pitch, npix)
                fill_col_gather(x, nb + i, g * cg, col, i * npix, geo)
            if tr:
                gemm(no, no, kk, og, m * npix, colf, pitch, dyttf, og, 1.0, dwg, og)
            else:
                gemm(no, yes, og, kk, m * npix, dytf, pitch, colf, pitch, 1.0, dwg, kk)
            if want_dx:
                gemm(yes, no, kk, m * npix, og, wg, kk, dytf, pitch, 0.0, colf, pitch)
                for i in range(m):
                    add_col_gather(col, i * npix, dx, nb + i, g * cg, geo)
