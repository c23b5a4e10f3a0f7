"""Winograd F(4x4, 3x3) convolution on the CPU, for 3x3 stride-1 dilation-1 layers (used by
netdsl.ops.conv.ConvCPU where use_winograd43 picks it, see NETDSL_CONV_ALGO and
NETDSL_WINO_TILE there): the forward pass, the data gradient and the weight gradient. The
4x4-tile sibling of winograd_cpu (F(2x2, 3x3)) built like winograd5_cpu (6x6 input tiles, 36
GEMMs, the passes of winograd_cpu.Winograd), with tiles 4 pixels apart instead of 2.

Imported only when a ConvCPU picks it (numba at module level; `netdsl check` never gets here).

Why: F(2x2, 3x3) makes 4 outputs from 16 products (4 multiplications and 4 transformed values
an output); F(4x4, 3x3) makes 16 outputs from 36 (2.25 of each). At 7 px the 4x4 tiles
overhang to 8x8: 4 tiles an image against 16, 144 GEMM columns x planes against 256.

    V[e] (Ci, T) = (B^T d B)[e] of every 6x6 input tile d (T tiles as columns)
    U[e] (Co, Ci) = (G g G^T)[e] of every 3x3 filter g
    M[e] (Co, T) = U[e] @ V[e]                                  (direct sgemm, conv_cpu.gemm)
    y tile = A^T M A (4x4) + bias

The interpolation points are 0, +-4/3, +-3/4 and infinity (Toom-Cook as in Lavin & Gray,
2015; the textbook set is 0, +-1, +-2, +-1/2 ... with inf), a = 4/3, b = 3/4, k = 9/1400:

    A^T = [[1, 1, 1, 64/27, 64/27, 0], [0, 4/3, -4/3, 16/9, -16/9, 0],
           [0, 16/9, 16/9, 4/3, 4/3, 0], [0, 64/27, -64/27, 1, -1, 1]]
    B^T = [[144, 0, -337, 0, 144, 0], [0, -36, -27, 64, 48, 0], [0, 36, -27, -64, 48, 0],
           [0, 48, 64, -27, -36, 0], [0, -48, 64, 27, -36, 0], [0, 144, 0, -337, 0, 144]]
    G   = [[1/144, 0, 0], k (b, 1, a), k (b, -1, a), k (a, 1, b), k (a, -1, b), [0, 0, 1/144]]

Why these points: float32 rounding, modelled in NumPy (float32 transforms and products
against a float64 direct convolution; ReLU-like inputs, He-scaled filters, batch 2; the
measure max |y - ref| / max |ref|; scripts in the session notes, /work/s7/w43_data):

    layer (C -> O, px)  direct f32  F(2,3)      0,+-1,+-2   0,+-2,+-1/2  0,+-3/2,+-2/3  chosen
    64 -> 64, 56        3.6e-7      2.7-3.2e-7  5.1-6.3e-6  2.7-3.1e-6   1.1-2.3e-6     1.3-1.6e-6
    128 -> 128, 28      3.4-5.4e-7  3.8-4.3e-7  6.9-8.6e-6  3.6-4.5e-6   2.0e-6         1.6-1.9e-6
    256 -> 256, 14      3.5-3.8e-7  5.1-6.9e-7  1.1-1.2e-5  4.9-5.4e-6   2.2-2.3e-6     2.4e-6
    512 -> 512, 7       3.0e-7      4.9-5.2e-7  8.3-9.4e-6  3.8-4.5e-6   2.0e-6         1.7-2.0e-6

(chosen: 0, +-4/3, +-3/4 with the G rows scaled as above, as the kernels compute; 0, +-1,
+-1/2 and 0, +-1, 2, 1/2 were at 4-13e-6). So F(4x4, 3x3) in float32 is 3-5x less accurate
than F(2x2, 3x3) a layer, 5x a direct float32 convolution. Through whole nets
(tests/test_torch_nets.py's measure, limit 1.5e-6) with it on every 3x3 Winograd layer:
ResNet-18 7.8e-7 (F(2x2, 3x3): 5.6e-7), VGG-16 1.23e-6 (8.6e-7), AlexNet 5.4e-7 (4.8e-7);
by use_winograd43's rule ResNet-18 7.0e-7, VGG-16 1.0e-6.
use_winograd43 picks it only where it measured faster; NETDSL_WINO_TILE=2 turns it off.

The set is closed under x -> 1/x (0 <-> inf, 4/3 <-> 3/4), which flipping a filter does to its
evaluation points: with G's rows scaled to (1/p, 1, p) (the scale moved into A^T, which is
why A^T is symmetric), G J = P G for the 3x3 reversal J and P = (0 5)(1 3)(2 4). So the data
gradient (the same kind of convolution of dy with the flipped, channel-transposed filters and
top/left padding 2 - p) reads the forward's U at FLIP[e] transposed; nothing is transformed
again.

The weight gradient is the transpose of the forward's chain: dU[e] (Co, Ci) = sum over tiles
of (A dY A^T)[e] (Co, T) @ V[e]^T (T, Ci), then dg = G^T dU G, the exact gradient of what
the forward computes.

geo = (ph, pw, th, tw, groups, vplane, mplane) as in winograd_cpu (output (i, j) reads input
rows i - ph .. i - ph + 2; th x tw tiles of 4x4 an image).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netdsl.ops.winograd_cpu import Winograd, _plane, conv_planes, wgrad_planes

# flipping a filter permutes its transformed rows and columns by P = (0 5)(1 3)(2 4)
_P = (5, 3, 4, 1, 2, 0)
FLIP = np.array([_P[a] * 6 + _P[b] for a in range(6) for b in range(6)], np.int64)


@njit(cache=True, nogil=True, inline="always")
def _odd_lines(size):
    """_plane inside the kernels (planes an odd number of 64-byte lines apart)."""
    lines = (size + 15) // 16
    return 16 * (lines + 1 - lines % 2)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _g(g0, g1, g2):
    """G g: three filter taps -> six values."""
    a, b = np.float32(4.0 / 3.0), np.float32(0.75)
    s, k = np.float32(1.0 / 144.0), np.float32(9.0 / 1400.0)
    e1, e2 = b * g0 + a * g2, a * g0 + b * g2
    return s * g0, k * (e1 + g1), k * (e1 - g1), k * (e2 + g1), k * (e2 - g1), s * g2


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _gt(u0, u1, u2, u3, u4, u5):
    """G^T u: six values -> three filter taps (the adjoint of _g)."""
    a, b = np.float32(4.0 / 3.0), np.float32(0.75)
    s, k = np.float32(1.0 / 144.0), np.float32(9.0 / 1400.0)
    p1, p2 = u1 + u2, u3 + u4
    return s * u0 + k * (b * p1 + a * p2), k * (u1 - u2 + u3 - u4), k * (a * p1 + b * p2) + s * u5


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _put(tmp, e, c, t0, t1, t2):
    """tmp[e + j, c] = (G (t0, t1, t2))[j] for j < 6: one row of a transformed filter."""
    r0, r1, r2, r3, r4, r5 = _g(t0, t1, t2)
    tmp[e, c], tmp[e + 1, c], tmp[e + 2, c] = r0, r1, r2
    tmp[e + 3, c], tmp[e + 4, c], tmp[e + 5, c] = r3, r4, r5


@njit(cache=True, nogil=True, fastmath=True)
def transform_weights(w, u, o0, o1):
    """u[:, o, :] = G w[o, c] G^T for o in [o0, o1); w (O, Cg, 3, 3), u (36, O, Cg); one
    filter row o at a time into tmp (36, Cg), then 36 contiguous rows of u (as winograd_cpu).
    tmp's rows are an odd number of 64-byte lines apart: 256 or 512 floats apart, its 36
    store streams fell into 2-4 L1 sets (3.3 ms at 256 x 256, F(2x2, 3x3)'s 16: 0.4 ms)."""
    cg = w.shape[1]
    wf = w.reshape(-1)
    tmp = np.empty((36, _odd_lines(cg)), np.float32)
    for o in range(o0, o1):
        for c in range(cg):
            s = (o * cg + c) * 9  # flat offset of w[o, c, 0, 0]
            # G g, column by column (a: column 0, b: 1, d: 2), then each row times G^T
            a0, a1, a2, a3, a4, a5 = _g(wf[s], wf[s + 3], wf[s + 6])
            b0, b1, b2, b3, b4, b5 = _g(wf[s + 1], wf[s + 4], wf[s + 7])
            d0, d1, d2, d3, d4, d5 = _g(wf[s + 2], wf[s + 5], wf[s + 8])
            _put(tmp, 0, c, a0, b0, d0)
            _put(tmp, 6, c, a1, b1, d1)
            _put(tmp, 12, c, a2, b2, d2)
            _put(tmp, 18, c, a3, b3, d3)
            _put(tmp, 24, c, a4, b4, d4)
            _put(tmp, 30, c, a5, b5, d5)
        for e in range(36):  # element loops, not a slice copy (winograd_cpu's note)
            for c in range(cg):
                u[e, o, c] = tmp[e, c]


# The transforms run along the tiles, one output plane from at most six contiguous input
# planes a loop, so LLVM vectorises them (winograd5_cpu's note; offsets np.uint64).


@njit(cache=True, nogil=True, fastmath=True)
def _bt_planes(dst, d0, ds, src, p0, p1, p2, p3, p4, p5, n):
    """dst[d0 + a * ds + q] = (B^T (src[p_i + q] for i in 0..5))[a] for a < 6, q < n."""
    for a in range(6):
        da = d0 + np.uint64(a) * ds
        if a == 0 or a == 5:  # 144 (d0 + d4) - 337 d2, or the same of d1, d3, d5
            f, h = np.float32(144.0), np.float32(-337.0)
            x0, x1, x2 = (p0, p2, p4) if a == 0 else (p1, p3, p5)
            for q in range(n):
                k = np.uint64(q)
                dst[da + k] = f * (src[x0 + k] + src[x2 + k]) + h * src[x1 + k]
        else:  # rows 1-4: c1 d1 + c2 d2 + c3 d3 + c4 d4
            if a == 1:
                c1, c2, c3, c4 = -36.0, -27.0, 64.0, 48.0
            elif a == 2:
                c1, c2, c3, c4 = 36.0, -27.0, -64.0, 48.0
            elif a == 3:
                c1, c2, c3, c4 = 48.0, 64.0, -27.0, -36.0
            else:
                c1, c2, c3, c4 = -48.0, 64.0, 27.0, -36.0
            f1, f2, f3, f4 = np.float32(c1), np.float32(c2), np.float32(c3), np.float32(c4)
            for q in range(n):
                k = np.uint64(q)
                dst[da + k] = (
                    f1 * src[p1 + k] + f2 * src[p2 + k] + f3 * src[p3 + k] + f4 * src[p4 + k]
                )


@njit(cache=True, nogil=True, fastmath=True)
def _at_planes(dst, d0, ds, src, s0, ss, n, bias):
    """dst[d0 + i * ds + q] = (A^T (src[s0 + j * ss + q] for j in 0..5))[i] + bias, i < 4."""
    for i in range(4):
        di = d0 + np.uint64(i) * ds
        if i == 0:  # (1, 1, 1, c, c, 0): the even rows on the sums, the odd on differences
            f1, f3, f5, sg = np.float32(1.0), np.float32(64.0 / 27.0), np.float32(0.0), 1.0
        elif i == 1:
            f1, f3, f5, sg = np.float32(4.0 / 3.0), np.float32(16.0 / 9.0), np.float32(0.0), -1.0
        elif i == 2:
            f1, f3, f5, sg = np.float32(16.0 / 9.0), np.float32(4.0 / 3.0), np.float32(0.0), 1.0
        else:
            f1, f3, f5, sg = np.float32(64.0 / 27.0), np.float32(1.0), np.float32(1.0), -1.0
        f0 = np.float32(1.0) if i == 0 else np.float32(0.0)
        m = np.float32(sg)
        for q in range(n):
            k = np.uint64(q)
            s = np.uint64(s0) + k
            dst[di + k] = (
                f0 * src[s]
                + f1 * (src[s + ss] + m * src[s + np.uint64(2) * ss])
                + f3 * (src[s + np.uint64(3) * ss] + m * src[s + np.uint64(4) * ss])
                + f5 * src[s + np.uint64(5) * ss]
                + bias
            )


@njit(cache=True, nogil=True, fastmath=True)
def _a_planes(dst, d0, ds, src, s0, ss, n):
    """dst[d0 + i * ds + q] = (A (src[s0 + j * ss + q] for j in 0..3))[i] for i < 6."""
    a, d, c = np.float32(4.0 / 3.0), np.float32(16.0 / 9.0), np.float32(64.0 / 27.0)
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in range(6):
        di = d0 + np.uint64(i) * ds
        if i == 0:
            f0, f1, f2, f3 = one, zero, zero, zero
        elif i == 1:
            f0, f1, f2, f3 = one, a, d, c
        elif i == 2:
            f0, f1, f2, f3 = one, -a, d, -c
        elif i == 3:
            f0, f1, f2, f3 = c, d, a, one
        elif i == 4:
            f0, f1, f2, f3 = c, -d, a, -one
        else:
            f0, f1, f2, f3 = zero, zero, zero, one
        for q in range(n):
            s = np.uint64(s0) + np.uint64(q)
            dst[di + np.uint64(q)] = (
                f0 * src[s]
                + f1 * src[s + ss]
                + f2 * src[s + np.uint64(2) * ss]
                + f3 * src[s + np.uint64(3) * ss]
            )


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _bt6(d0, d1, d2, d3, d4, d5):
    """B^T d: six taps -> six values (rows 1-4 as even and odd parts)."""
    e1 = np.float32(-27.0) * d2 + np.float32(48.0) * d4
    f1 = np.float32(-36.0) * d1 + np.float32(64.0) * d3
    e3 = np.float32(64.0) * d2 + np.float32(-36.0) * d4
    f3 = np.float32(48.0) * d1 + np.float32(-27.0) * d3
    t, h = np.float32(144.0), np.float32(-337.0)
    return t * (d0 + d4) + h * d2, e1 + f1, e1 - f1, e3 + f3, e3 - f3, t * (d1 + d5) + h * d3


@njit(cache=True, nogil=True, fastmath=True)
def _input_transform(x, ra, rb, v, cap, work, geo):
    """v[e, c, (r - ra) * tw + tj] = (B^T d B)[e] of tile (r, tj) of channel c, r in [ra, rb).

    Tap (i, k) of tile (ti, tj) is input pixel (4 ti + i - ph, 4 tj + k - pw). Per channel and
    image: B along each input row that a tile reads (the row copied with its zero padding
    into a line first, then each tile's six taps in registers) into 24 planes R[(b, ry)][Y,
    tj] for the rows 4 Y + ry - ph (zero outside the input); then B^T down the tiles'
    columns into v, the tap row i from R[(b, i % 4)] shifted by i // 4 rows: contiguous
    planes, vectorised. At 64 channels, 56 px, batch 8 (1 thread) this took 1.8 ms; the
    same with each tile's taps read from x (tests at the edges) 3.6 ms, and gathering the
    36 taps into planes first, then two passes of B along the planes, 5.5 ms.
    work: at least 24 * _plane(cap + tw) + 4 * tw + 2 floats (R, then the line).
    """
    ph, pw, th, tw = geo[0], geo[1], geo[2], geo[3]
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    xf, vf = x.reshape(-1), v.reshape(-1)
    twu = np.uint64(tw)
    qp = _odd_lines(cap + tw)  # R's plane stride: up to cap // tw + 1 rows of tw
    qpu = np.uint64(qp)
    p = np.uint64(geo[5])  # stride of e in v
    line = np.uint64(24 * qp)  # one input row, padded: sw floats after R
    sw = 4 * tw + 2
    j0 = min(sw, max(0, pw))  # the line's columns inside the input: [j0, j1)
    j1 = max(j0, min(sw, w_in + pw))
    for c in range(c_all):
        r = ra
        while r < rb:  # the chunk's tile rows of one image at a time
            n, tia = r // th, r % th
            nr = min(th - tia, rb - r)
            base = (n * c_all + c) * h * w_in
            for ry in range(4):
                for yy in range(nr + 1):
                    iy = 4 * (tia + yy) + ry - ph
                    d = np.uint64(ry * qp + yy * tw)  # R[(0, ry)] row yy; b: 4 planes apart
                    q4 = np.uint64(4) * qpu
                    if not 0 <= iy < h:
                        for b in range(6):
                            for tj in range(tw):
                                work[d + np.uint64(b) * q4 + np.uint64(tj)] = 0.0
                        continue
                    # the row's columns -pw .. 4 tw + 1 - pw into the line (zero outside),
                    # then each tile's six taps from there: no tests in the tiles' loop
                    src = base + iy * w_in - pw
                    for j in range(j0):
                        work[line + np.uint64(j)] = 0.0
                    for j in range(j0, j1):
                        work[line + np.uint64(j)] = xf[np.uint64(src + j)]
                    for j in range(j1, sw):
                        work[line + np.uint64(j)] = 0.0
                    for tj in range(tw):
                        k = line + np.uint64(4 * tj)
                        o0, o1, o2, o3, o4, o5 = _bt6(work[k], work[k + np.uint64(1)],
                            work[k + np.uint64(2)], work[k + np.uint64(3)],
                            work[k + np.uint64(4)], work[k + np.uint64(5)])  # fmt: skip
                        q = d + np.uint64(tj)
                        work[q], work[q + q4] = o0, o1
                        work[q + np.uint64(2) * q4], work[q + np.uint64(3) * q4] = o2, o3
                        work[q + np.uint64(4) * q4], work[q + np.uint64(5) * q4] = o4, o5
            cols = nr * tw
            qv = np.uint64(c * cap + (r - ra) * tw)  # v offset of (e = 0, c, tile (r, 0))
            for b in range(6):  # v[6a + b] = B^T down the columns of R[(b, .)]
                r0 = np.uint64(4 * b) * qpu
                r1, r2, r3 = r0 + qpu, r0 + np.uint64(2) * qpu, r0 + np.uint64(3) * qpu
                _bt_planes(vf, qv + np.uint64(b) * p, np.uint64(6) * p, work, r0, r1, r2, r3,
                           r0 + twu, r1 + twu, cols)  # fmt: skip
            r += nr


@njit(cache=True, nogil=True, fastmath=True)
def _output_transform(m, ra, rb, cap, y, b, work, geo):
    """y[n, o, 4ti + i, 4tj + j] = (A^T M A)[i, j] + b[o] for the tiles of rows [ra, rb)
    (entries past the output's edge dropped). Per output channel: A^T M into work's planes
    6i + j (24), A^T M A + b into planes 24 + 4i + j, then each tile's outputs to y."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    mf, yf = m.reshape(-1), y.reshape(-1)
    p = np.uint64(geo[6])  # stride of e in m
    full = wo // 4  # tiles whose four columns are all inside
    rem = wo - 4 * full  # columns of the overhanging last tile inside
    cols = (rb - ra) * tw
    capu = np.uint64(_odd_lines(cap))  # the stride of work's planes
    zero = np.float32(0.0)
    for o in range(o_all):
        qo = np.uint64(o * cap)
        for j in range(6):  # (A^T M)[i, j]: plane 6i + j
            _at_planes(work, np.uint64(j) * capu, np.uint64(6) * capu, mf, qo + np.uint64(j) * p,
                       np.uint64(6) * p, cols, zero)  # fmt: skip
        bo = b[o]
        for i in range(4):  # (A^T M A)[i, j] + b: plane 24 + 4i + j
            _at_planes(work, np.uint64(24 + 4 * i) * capu, capu, work, np.uint64(6 * i) * capu,
                       capu, cols, bo)  # fmt: skip
        for r in range(ra, rb):
            n, ti = r // th, r % th
            q0 = np.uint64((r - ra) * tw)
            for i in range(min(4, ho - 4 * ti)):
                y0 = ((n * o_all + o) * ho + 4 * ti + i) * wo  # flat y offset of the row
                w0, w1 = np.uint64(24 + 4 * i) * capu, np.uint64(25 + 4 * i) * capu
                w2, w3 = np.uint64(26 + 4 * i) * capu, np.uint64(27 + 4 * i) * capu
                for tj in range(full):
                    k, d = q0 + np.uint64(tj), np.uint64(y0 + 4 * tj)
                    yf[d], yf[d + 1] = work[k + w0], work[k + w1]
                    yf[d + 2], yf[d + 3] = work[k + w2], work[k + w3]
                k = q0 + np.uint64(full)
                for j in range(rem):  # the last tile overhangs
                    yf[np.uint64(y0 + 4 * full + j)] = work[k + np.uint64(24 + 4 * i + j) * capu]


def conv_rows(r0, r1, rows, tr, x, u, b, y, v, m, work, geo) -> None:
    """Worker: y = conv3x3(x) + b over the tile rows [r0, r1), `rows` tile rows per chunk;
    as winograd5_cpu.conv_rows (u (36, Co, Cig), or when tr the flipped conv's (36, Ci, Cog)
    read transposed at FLIP[e]). A Python loop over the chunks calling the kernels (which
    release the GIL): a Numba one links and optimises again the code of every kernel it
    calls, 1.3 s of a cold compile (and 1.8 s for wgrad_rows), for a few calls a pass."""
    tw, ng = geo[3], geo[4]
    cig, cog = x.shape[1] // ng, y.shape[1] // ng
    cap = rows * tw
    for ra in range(r0, r1, rows):
        rb = min(r1, ra + rows)
        _input_transform(x, ra, rb, v, cap, work, geo)
        conv_planes(0, 36, (rb - ra) * tw, cap, tr, u, v, m, cig, cog, geo, FLIP)
        _output_transform(m, ra, rb, cap, y, b, work, geo)


@njit(cache=True, nogil=True, fastmath=True)
def _dy_transform(dy, ra, rb, m, cap, db, work, geo):
    """m[e, o, (r - ra) * tw + tj] = (A dY A^T)[e] of the 4x4 tile (r, tj) of dy[:, o] (zero
    past the output's edge), the adjoint of _output_transform; db[o] += the tiles' sums.
    Per output channel: the tiles' 16 values into work's planes 4i + j, A down the columns
    into planes 16 + 4i + j (i < 6), then A along the 6 rows into m."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    mf, df = m.reshape(-1), dy.reshape(-1)
    p = np.uint64(geo[6])  # stride of e in m
    full = wo // 4
    rem = wo - 4 * full
    cols = (rb - ra) * tw
    capu = np.uint64(_odd_lines(cap))  # the stride of work's planes
    for o in range(o_all):
        for r in range(ra, rb):
            n, ti = r // th, r % th
            q0 = np.uint64((r - ra) * tw)
            inside = min(4, ho - 4 * ti)
            for i in range(4):
                w0, w1 = np.uint64(4 * i) * capu, np.uint64(4 * i + 1) * capu
                w2, w3 = np.uint64(4 * i + 2) * capu, np.uint64(4 * i + 3) * capu
                if i >= inside:
                    for tj in range(tw):
                        k = q0 + np.uint64(tj)
                        work[k + w0], work[k + w1], work[k + w2], work[k + w3] = 0.0, 0.0, 0.0, 0.0
                    continue
                y0 = ((n * o_all + o) * ho + 4 * ti + i) * wo  # flat dy offset of the row
                for tj in range(full):
                    k, d = q0 + np.uint64(tj), np.uint64(y0 + 4 * tj)
                    work[k + w0], work[k + w1] = df[d], df[d + 1]
                    work[k + w2], work[k + w3] = df[d + 2], df[d + 3]
                if full < tw:  # the overhanging last tile: zeros past the edge
                    k = q0 + np.uint64(full)
                    for j in range(4):
                        val = df[np.uint64(y0 + 4 * full + j)] if j < rem else np.float32(0.0)
                        work[k + np.uint64(4 * i + j) * capu] = val
        acc = np.float32(0.0)
        for j in range(16):
            pj = np.uint64(j) * capu
            for q in range(cols):
                acc += work[pj + np.uint64(q)]
        db[o] += acc
        for j in range(4):  # (A dY)[i, j]: plane 16 + 4i + j
            _a_planes(work, np.uint64(16 + j) * capu, np.uint64(4) * capu, work,
                      np.uint64(j) * capu, np.uint64(4) * capu, cols)  # fmt: skip
        qo = np.uint64(o * cap)
        for i in range(6):  # m[6i + j] = (A (A dY)[i, :])[j]
            _a_planes(mf, qo + np.uint64(6 * i) * p, p, work, np.uint64(16 + 4 * i) * capu,
                      capu, cols)  # fmt: skip


def wgrad_rows(r0, r1, rows, x, dy, v, m, work, du, db, geo) -> None:
    """Worker: du (36, O, Cig) = the weight gradient in the transformed domain summed over the
    tile rows [r0, r1) (overwritten; filter_gradient maps it back), db (O,) = dy's sums. A
    Python loop over the chunks, as conv_rows; the GEMMs are winograd_cpu.wgrad_planes'."""
    tw = geo[3]
    cap = rows * tw
    db[:] = 0.0
    if r1 <= r0:  # no tiles: the sums are still read
        du[:] = 0.0
    for ra in range(r0, r1, rows):
        rb = min(r1, ra + rows)
        _input_transform(x, ra, rb, v, cap, work, geo)
        _dy_transform(dy, ra, rb, m, cap, db, work, geo)
        wgrad_planes(0, 36, (rb - ra) * tw, cap, v, m, du, 0.0 if ra == r0 else 1.0, geo)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _col(acc, j, c):
    """G^T of column j of the transformed filter acc[:, c] (rows 6i + j)."""
    return _gt(acc[j, c], acc[6 + j, c], acc[12 + j, c], acc[18 + j, c], acc[24 + j, c],
               acc[30 + j, c])  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def filter_gradient(du, dw, o0, o1):
    """dw[o, c] = G^T (sum over workers t of du[t, :, o, c]) G (3x3) for o in [o0, o1);
    du (T, 36, O, Cg) the workers' sums (added here, in order), dw (O, Cg, 3, 3)."""
    nt, cg = du.shape[0], dw.shape[1]
    acc = np.empty((36, _odd_lines(cg)), np.float32)  # rows apart as transform_weights' tmp
    for o in range(o0, o1):
        for e in range(36):  # element loops, not slices: see transform_weights
            for c in range(cg):
                acc[e, c] = du[0, e, o, c]
        for t in range(1, nt):
            for e in range(36):
                for c in range(cg):
                    acc[e, c] += du[t, e, o, c]
        for c in range(cg):  # in scalars, as transform_weights
            # G^T acc, column j -> (a_j, b_j, d_j), then each of the 3 rows times G
            a0, b0, d0 = _col(acc, 0, c)
            a1, b1, d1 = _col(acc, 1, c)
            a2, b2, d2 = _col(acc, 2, c)
            a3, b3, d3 = _col(acc, 3, c)
            a4, b4, d4 = _col(acc, 4, c)
            a5, b5, d5 = _col(acc, 5, c)
            dw[o, c, 0, 0], dw[o, c, 0, 1], dw[o, c, 0, 2] = _gt(a0, a1, a2, a3, a4, a5)
            dw[o, c, 1, 0], dw[o, c, 1, 1], dw[o, c, 1, 2] = _gt(b0, b1, b2, b3, b4, b5)
            dw[o, c, 2, 0], dw[o, c, 2, 1], dw[o, c, 2, 2] = _gt(d0, d1, d2, d3, d4, d5)


def _work_size(cap: int, tw: int) -> int:
    """Floats of the transforms' workspace for chunks of `cap` tile columns: the input
    transform's 24 planes R, the output and dy transforms' 40 planes."""
    return max(24 * _plane(cap + tw) + 4 * tw + 2, 40 * _plane(cap))


class Winograd43(Winograd):
    """The F(4x4, 3x3) passes of one ConvCPU layer (3x3, stride 1, dilation 1), fixed shapes.

    Works as winograd_cpu.Winograd (shared Scratch workspaces under conv_cpu's keys, the
    transformed filters u (36, O, Cg) kept up to `keep_bytes`, else in the shared Scratch
    under key wu43), including its split by planes where the filters outweigh the batch's
    tiles (ResNet-18's 512-channel layers at 7 px): _conv_by_planes and _wgrad_by_planes
    below are Winograd's with this module's kernels.
    """

    _transform_weights = staticmethod(transform_weights)
    _conv_rows = staticmethod(conv_rows)
    _wgrad_rows = staticmethod(wgrad_rows)
    _filter_gradient = staticmethod(filter_gradient)
    _plane_helpers = (_bt_planes, _at_planes, _a_planes)  # Winograd._bind
    _u_key = "wu43"

    def __init__(self, n: int, c: int, h: int, w: int, o: int, pad: tuple[int, int],
                 groups: int, out_hw: tuple[int, int], scratch, workers,
                 tile_columns: int, block_bytes: int, keep_bytes: int) -> None:  # fmt: skip
        from netdsl.ops.conv import split

        self.workers, self.scratch = workers, scratch
        cg = c // groups
        self.u_shape = (36, o, cg)
        self.keep = 4 * 36 * o * cg <= keep_bytes
        self.u = (
            np.empty(self.u_shape, np.float32) if self.keep else scratch.get("wu43", self.u_shape)
        )
        self._u_of: object = None  # the w array u was computed from, while it is valid
        nt = workers.n
        back = (2 - pad[0], 2 - pad[1])  # the data gradient reads rows i - (2 - ph) .. of dy
        tiles = {}  # pass -> (th, tw, ci, co, geo_pad)
        for name, ci, co, geo_pad, hw_out in (
            ("fwd", c, o, pad, out_hw),
            ("bwd", o, c, back, (h, w)),
        ):
            tiles[name] = (-(-hw_out[0] // 4), -(-hw_out[1] // 4), ci, co, geo_pad)
        # split by planes (winograd_cpu.Winograd.__init__'s rule and reasons): where the
        # filters outweigh the batch's tiles in V and M, and for the forward and the data
        # gradient only where all the batch's tiles fit one chunk
        th, tw = tiles["fwd"][:2]
        self.by_planes = nt > 1 and o * cg > (c + o) * n * th * tw
        big = 0  # the widest chunk a worker's transforms see (sizes its workspace)
        self.cplanes = {}
        if self.by_planes:
            fit = max(1, block_bytes // (4 * 36 * (c + o) * tw))
            crow = max(1, min(n * th, fit))
            vplane, mplane = _plane(c * crow * tw), _plane(o * crow * tw)
            chunks = [(ra, min(n * th, ra + crow)) for ra in range(0, n * th, crow)]
            rows_of = [[(ra + a, ra + b) for a, b in split(rb - ra, nt)] for ra, rb in chunks]
            self.wplanes = (crow, (36 * vplane,), (36 * mplane,), split(36, nt), chunks, rows_of)
            self.wgeo = (*pad, th, tw, groups, vplane, mplane)
            scratch.get("col0", self.wplanes[1])
            scratch.get("yw0", self.wplanes[2])
            big = max(big, _work_size(crow * tw, tw))
            for name, (th_, tw_, ci, co, geo_pad) in tiles.items():
                if n * th_ > max(1, block_bytes // (4 * 36 * (ci + co) * tw_)):
                    continue
                cap = n * th_ * tw_
                vplane, mplane = _plane(ci * cap), _plane(co * cap)
                geo = (*geo_pad, th_, tw_, groups, vplane, mplane)
                jobs = (split(36, nt), split(n * th_, nt))
                self.cplanes[name] = (cap, (36 * vplane,), (36 * mplane,), *jobs, geo,
                                      ci // groups, co // groups)  # fmt: skip
                scratch.get("col0", (36 * vplane,))
                scratch.get("yw0", (36 * mplane,))
                big = max(big, _work_size(cap, tw_))
        self.passes = {}
        for name, (th_, tw_, ci, co, geo_pad) in tiles.items():
            fit = max(1, block_bytes // (4 * 36 * (ci + co) * tw_))  # tile rows under the cap
            # at most one image's tile rows a chunk: ResNet-18's 128-channel layers at 28 px
            # (batch 8, 2 threads, CPU time, forward + backward) ran 26-28 ms in chunks of
            # one image (49 tiles) against 30-32 in chunks of 4 (196, tile_columns' choice)
            # and 31-36 in chunks of 2; VGG-16's conv4_2 (7 rows an image, batch 4) level
            # or 1-5% faster in 7 rows than 8; the 56 px layers' 192 columns are one image
            rows = max(1, min(-(-n * th_ // nt), -(-tile_columns // tw_), fit, th_))
            cap = rows * tw_
            vplane, mplane = _plane(ci * cap), _plane(co * cap)
            work = max(big, _work_size(cap, tw_))
            shapes = {"col": (36 * vplane,), "yw": (36 * mplane,), "xpad": (work,)}
            if name == "fwd":  # the weight gradient's pass: its sums per worker
                shapes.update(dbt=(o,))
            for t in range(nt):  # size the shared buffers now
                for k, shape in shapes.items():
                    scratch.get(f"{k}{t}", shape)
            geo = (*geo_pad, th_, tw_, groups, vplane, mplane)
            self.passes[name] = (split(n * th_, nt), rows, shapes, geo)
        self.o_jobs = split(o, nt)
        self.du_shape = (1 if self.by_planes else nt, 36, o, cg)  # transformed dw sums
        scratch.get("wdu", self.du_shape)
        self._views: dict[str, tuple[int, list]] = {}

    def _wgrad_by_planes(self, x: np.ndarray, dy: np.ndarray, du: np.ndarray,
                         views: list[dict[str, np.ndarray]]) -> None:  # fmt: skip
        """Winograd._wgrad_by_planes with this module's kernels."""
        crow, vshape, mshape, e_jobs, chunks, rows_of = self.wplanes
        geo = self.wgeo
        v, m = self.scratch.get("col0", vshape), self.scratch.get("yw0", mshape)
        tw = geo[3]
        cap = crow * tw
        for ws in views:
            ws["dbt"][:] = 0.0
        for (ra, rb), rows in zip(chunks, rows_of, strict=True):
            parts = [(a, b, ws) for (a, b), ws in zip(rows, views, strict=True) if b > a]
            self.workers.run(_input_transform, [(x, a, b, v[(a - ra) * tw :], cap, ws["xpad"], geo)
                                                for a, b, ws in parts])  # fmt: skip
            self.workers.run(_dy_transform, [(dy, a, b, m[(a - ra) * tw :], cap, ws["dbt"],
                                              ws["xpad"], geo) for a, b, ws in parts])  # fmt: skip
            beta = 0.0 if ra == 0 else 1.0
            cols = (rb - ra) * tw
            self.workers.run(wgrad_planes, [(e0, e1, cols, cap, v, m, du, beta, geo)
                                            for e0, e1 in e_jobs])  # fmt: skip

    def _conv_by_planes(self, name: str, x: np.ndarray, u: np.ndarray, b: np.ndarray,
                        y: np.ndarray, tr: bool) -> None:  # fmt: skip
        """Winograd._conv_by_planes with this module's kernels."""
        cap, vshape, mshape, e_jobs, rows, geo, cig, cog = self.cplanes[name]
        v, m = self.scratch.get("col0", vshape), self.scratch.get("yw0", mshape)
        tw = geo[3]
        parts = [(a, e, ws) for (a, e), ws in zip(rows, self._ws(name), strict=True) if e > a]
        self.workers.run(_input_transform, [(x, a, e, v[a * tw :], cap, ws["xpad"], geo)
                                            for a, e, ws in parts])  # fmt: skip
        self.workers.run(conv_planes, [(e0, e1, cap, cap, tr, u, v, m, cig, cog, geo, FLIP)
                                       for e0, e1 in e_jobs])  # fmt: skip
        self.workers.run(_output_transform, [(m[a * tw :], a, e, cap, y, b, ws["xpad"], geo)
                                             for a, e, ws in parts])  # fmt: skip
