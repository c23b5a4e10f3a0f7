"""Winograd F(2x2, 5x5) convolution on the CPU, for 5x5 stride-1 dilation-1 layers (used by
netdsl.ops.conv.ConvCPU, see NETDSL_CONV_ALGO there): the forward pass, the data gradient and
the weight gradient. The 5x5 sibling of winograd_cpu (F(2x2, 3x3)): the same tile rows,
chunks, worker split and shared Scratch workspaces, with 6x6 input tiles and 36 GEMMs.

Imported only when a ConvCPU picks it (numba at module level; `netdsl check` never gets here).

Why: a 5x5 conv costs 25 multiply-adds per output pixel and input channel; F(2x2, 5x5) makes
a 2x2 output tile from a 6x6 input tile with 36 multiplications, 2.78x fewer. They are 36
independent GEMMs, one per element e of the transformed tile:

    V[e] (Ci, T) = (B^T d B)[e] of every 6x6 input tile d (T tiles as columns)
    U[e] (Co, Ci) = (G g G^T)[e] of every 5x5 filter g
    M[e] (Co, T) = U[e] @ V[e]                                  (direct sgemm, conv_cpu.gemm)
    y tile = A^T M A (2x2) + bias

The interpolation points are 0, +-3/2, +-2/3 and infinity (the matrices built by Toom-Cook
as in Lavin & Gray, 2015; the usual points for six-point transforms are 0, +-1, +-2, inf):

    A^T = [[1, 1, 1, 3/2, 3/2, 0], [0, 3/2, -3/2, 1, -1, 1]]
    B^T = [[36, 0, -97, 0, 36, 0], [0, -12, -8, 27, 18, 0], [0, 12, -8, -27, 18, 0],
           [0, 18, 27, -8, -12, 0], [0, -18, 27, 8, -12, 0], [0, 36, 0, -97, 0, 36]]
    G   = [[1/36, 0, 0, 0, 0], (a^2, a, 1, b, b^2) / 65, (a^2, -a, 1, -b, b^2) / 65,
           (b^2, b, 1, a, a^2) / 65, (b^2, -b, 1, -a, a^2) / 65, [0, 0, 0, 0, 1/36]]
    with a = 2/3, b = 3/2.

Why these points: float32 rounding. Modelled in NumPy (float32 transforms and products
against a float64 direct convolution, ReLU-like inputs, He-scaled filters, 32-128 channels,
8-27 px), the textbook points 0, +-1, +-2 give 2.4-4.9e-6 of the largest output, 0, +-1,
+-1/2 2.2-4.1e-6, and 0, +-3/2, +-2/3 0.7-1.1e-6 (a direct float32 convolution: 0.4e-6).
Among the 3,060 sets of 0 and four of +-1, +-2, +-1/2, +-3/2, +-2/3, +-3, +-1/3, +-3/4,
+-4/3, it is the best symmetric one (the best of all, 0, -3/2, 2/3, -3/4, 4/3, is 7 %
better). Through a whole cifar10 forward (tests/test_torch_nets.py's measure, limit 1.5e-6)
either set stays under 0.8e-6: pooling and the fc layer average the errors.

The set is closed under x -> 1/x (0 <-> inf), which flipping a filter does to its
evaluation points: with G's rows scaled to match (as above, the scale moved into A^T),
G J = P G for the 5x5 reversal J and the permutation P = (0 5)(1 3)(2 4). So the data
gradient (the same kind of convolution of dy with the flipped, channel-transposed filters
and top/left padding 4 - p) reads the forward's U at FLIP[e] transposed, as winograd_cpu
does; nothing is transformed again.

The weight gradient is the transpose of the forward's chain: dU[e] (Co, Ci) = sum over tiles
of (A dY A^T)[e] (Co, T) @ V[e]^T (T, Ci), then dg = G^T dU G, the exact gradient of what
the forward computes.

geo = (ph, pw, th, tw, groups, vplane, mplane) as in winograd_cpu (output (i, j) reads input
rows i - ph .. i - ph + 4).
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
    """winograd_cpu._plane inside the kernels: the stride for planes of `size` floats, an
    odd number of 64-byte lines, so that the planes of work, V and M that a loop reads and
    writes together do not sit a multiple of 4 KiB apart."""
    lines = (size + 15) // 16
    return 16 * (lines + 1 - lines % 2)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _g(g0, g1, g2, g3, g4):
    """G g: five filter taps -> six outputs."""
    a, b = np.float32(2.0 / 3.0), np.float32(1.5)
    s, k = np.float32(1.0 / 36.0), np.float32(1.0 / 65.0)
    ev1, od1 = a * a * g0 + g2 + b * b * g4, a * g1 + b * g3
    ev2, od2 = b * b * g0 + g2 + a * a * g4, b * g1 + a * g3
    return s * g0, k * (ev1 + od1), k * (ev1 - od1), k * (ev2 + od2), k * (ev2 - od2), s * g4


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _gt(u0, u1, u2, u3, u4, u5):
    """G^T u: six inputs -> five filter taps (the adjoint of _g)."""
    a, b = np.float32(2.0 / 3.0), np.float32(1.5)
    s, k = np.float32(1.0 / 36.0), np.float32(1.0 / 65.0)
    p1, m1, p2, m2 = u1 + u2, u1 - u2, u3 + u4, u3 - u4
    return (s * u0 + k * (a * a * p1 + b * b * p2), k * (a * m1 + b * m2), k * (p1 + p2),
            k * (b * m1 + a * m2), k * (b * b * p1 + a * a * p2) + s * u5)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def transform_weights(w, u, o0, o1):
    """u[:, o, :] = G w[o, c] G^T for o in [o0, o1); w (O, Cg, 5, 5), u (36, O, Cg).

    One filter row o at a time into tmp (36, Cg), then 36 contiguous rows of u (as
    winograd_cpu.transform_weights, which measured this 2x faster than scattered writes).
    """
    cg = w.shape[1]
    wf = w.reshape(-1)
    tmp = np.empty((36, cg), np.float32)
    t = np.empty((6, 5), np.float32)
    for o in range(o0, o1):
        for c in range(cg):
            s = (o * cg + c) * 25  # flat offset of w[o, c, 0, 0]
            for j in range(5):  # t = G g, column by column
                q = s + j
                t0, t1, t2, t3, t4, t5 = _g(wf[q], wf[q + 5], wf[q + 10], wf[q + 15], wf[q + 20])
                t[0, j], t[1, j], t[2, j], t[3, j], t[4, j], t[5, j] = t0, t1, t2, t3, t4, t5
            for i in range(6):  # u = t G^T, row by row
                r0, r1, r2, r3, r4, r5 = _g(t[i, 0], t[i, 1], t[i, 2], t[i, 3], t[i, 4])
                tmp[6 * i, c], tmp[6 * i + 1, c], tmp[6 * i + 2, c] = r0, r1, r2
                tmp[6 * i + 3, c], tmp[6 * i + 4, c], tmp[6 * i + 5, c] = r3, r4, r5
        for e in range(36):  # element loops: an array-to-slice copy compiles Numba's
            for c in range(cg):  # shape-mismatch message (its string code, ~1 s cold)
                u[e, o, c] = tmp[e, c]


# The transforms below run along the tiles: a chunk's tiles are columns (as in V and M), and
# every loop computes ONE output plane from at most five input planes, contiguous, so LLVM
# vectorises it (its runtime aliasing checks stay under their limit). Per tile, with all 36
# values of a tile in flight (36 load or store streams), nothing vectorised: 37-48 ns a tile
# and channel for the input transform, 17-20 ns for the output transform (128 x 32 -> 32 at
# 16 px, 1 thread), several times the GEMMs' share. Offsets are np.uint64: a signed index
# gets a wrap-around test that stops the vectoriser (conv_cpu's note). The three plane helpers are
# called, not inlined: inlined at their 8 call sites they added 6.7 s of CPU time to the cold
# compile of a layer's forward and backward (17.2 against 10.5 s; now 6.7 s, im2col 5.3 s).


@njit(cache=True, nogil=True, fastmath=True)
def _bt_planes(dst, d0, ds, src, p0, p1, p2, p3, p4, p5, n):
    """dst[d0 + a * ds + q] = (B^T (src[p_i + q] for i in 0..5))[a] for a < 6, q < n."""
    for a in range(6):
        da = d0 + np.uint64(a) * ds
        if a == 0:
            for q in range(n):
                k = np.uint64(q)
                dst[da + k] = (
                    np.float32(36.0) * (src[p0 + k] + src[p4 + k]) - np.float32(97.0) * src[p2 + k]
                )
        elif a == 5:
            for q in range(n):
                k = np.uint64(q)
                dst[da + k] = (
                    np.float32(36.0) * (src[p1 + k] + src[p5 + k]) - np.float32(97.0) * src[p3 + k]
                )
        else:  # rows 1-4: c1 d1 + c2 d2 + c3 d3 + c4 d4
            if a == 1:
                c1, c2, c3, c4 = -12.0, -8.0, 27.0, 18.0
            elif a == 2:
                c1, c2, c3, c4 = 12.0, -8.0, -27.0, 18.0
            elif a == 3:
                c1, c2, c3, c4 = 18.0, 27.0, -8.0, -12.0
            else:
                c1, c2, c3, c4 = -18.0, 27.0, 8.0, -12.0
            f1, f2, f3, f4 = np.float32(c1), np.float32(c2), np.float32(c3), np.float32(c4)
            for q in range(n):
                k = np.uint64(q)
                dst[da + k] = (
                    f1 * src[p1 + k] + f2 * src[p2 + k] + f3 * src[p3 + k] + f4 * src[p4 + k]
                )


@njit(cache=True, nogil=True, fastmath=True)
def _at_planes(dst, d0, ds, src, s0, ss, n, bias):
    """(dst[d0 + q], dst[d0 + ds + q]) = A^T (src[s0 + i * ss + q] for i in 0..5) + bias."""
    h = np.float32(1.5)
    p0, p1, p2 = s0, s0 + ss, s0 + np.uint64(2) * ss
    p3, p4, p5 = s0 + np.uint64(3) * ss, s0 + np.uint64(4) * ss, s0 + np.uint64(5) * ss
    d1 = d0 + ds
    for q in range(n):
        k = np.uint64(q)
        dst[d0 + k] = (
            src[p0 + k] + src[p1 + k] + src[p2 + k] + h * (src[p3 + k] + src[p4 + k]) + bias
        )
    for q in range(n):
        k = np.uint64(q)
        dst[d1 + k] = (
            h * (src[p1 + k] - src[p2 + k]) + (src[p3 + k] - src[p4 + k]) + src[p5 + k] + bias
        )


@njit(cache=True, nogil=True, fastmath=True)
def _a_planes(dst, d0, ds, src, s0, s1, n):
    """dst[d0 + i * ds + q] = (A (src[s0 + q], src[s1 + q]))[i] for i in 0..5."""
    h = np.float32(1.5)
    for i in range(6):
        di = d0 + np.uint64(i) * ds
        if i == 0:
            f0, f1 = np.float32(1.0), np.float32(0.0)
        elif i == 1:
            f0, f1 = np.float32(1.0), h
        elif i == 2:
            f0, f1 = np.float32(1.0), -h
        elif i == 3:
            f0, f1 = h, np.float32(1.0)
        elif i == 4:
            f0, f1 = h, np.float32(-1.0)
        else:
            f0, f1 = np.float32(0.0), np.float32(1.0)
        for q in range(n):
            k = np.uint64(q)
            dst[di + k] = f0 * src[s0 + k] + f1 * src[s1 + k]


@njit(cache=True, nogil=True, fastmath=True)
def _input_transform(x, ra, rb, v, cap, work, geo):
    """v[e, c, (r - ra) * tw + tj] = (B^T d B)[e] of tile (r, tj) of channel c, r in [ra, rb).

    Tap (i, k) of tile (ti, tj) is input pixel (2 ti + i - ph, 2 tj + k - pw): in the
    polyphase plane of rows of parity i % 2 and columns of parity k % 2, shifted by i // 2
    rows and k // 2 columns. Per channel and image: 12 planes Q[(ry, rx, s)][Y, tj] = x[2Y +
    ry - ph, 2 (tj + s) + rx - pw] (zero outside; tw columns a row, the only strided and
    short loops), then B^T down the tiles' columns into 36 planes C[(a, rx, s)] and B along
    their rows into v, as loops along the tiles: one image's for C (its rows overlap), the
    whole chunk's for v. Copying each tile's 36 taps a tile row at a time instead took 27
    against 22-24 ns a tile and channel at 16 px, 39 against 30 at 8 px (1 thread).
    work: (12 * _plane(cap + 2 * tw) + 36 * _plane(cap),) floats, Q then C.
    """
    ph, pw, th, tw = geo[0], geo[1], geo[2], geo[3]
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    xf, vf = x.reshape(-1), v.reshape(-1)
    twu, capu = np.uint64(tw), np.uint64(_odd_lines(cap))  # capu: C's plane stride
    qp = _odd_lines(cap + 2 * tw)  # Q's plane stride: up to cap // tw + 2 rows of tw
    qpu = np.uint64(qp)
    c0 = np.uint64(12 * qp)  # offset of C
    p = np.uint64(geo[5])  # stride of e in v
    for c in range(c_all):
        r = ra
        while r < rb:  # the chunk's tile rows of one image at a time
            n, tia = r // th, r % th
            nr = min(th - tia, rb - r)
            base = (n * c_all + c) * h * w_in
            for ry in range(2):
                for yy in range(nr + 2):
                    iy = 2 * (tia + yy) + ry - ph
                    inside = 0 <= iy < h
                    for rx in range(2):
                        for sh in range(3):
                            dst = np.uint64(((ry * 2 + rx) * 3 + sh) * qp + yy * tw)
                            off = 2 * sh + rx - pw  # input column of tj = 0
                            lo = min(tw, max(0, (1 - off) // 2)) if inside else tw
                            hi = max(lo, min(tw, (w_in - 1 - off) // 2 + 1)) if inside else tw
                            for tj in range(lo):
                                work[dst + np.uint64(tj)] = 0.0
                            src = base + iy * w_in + off
                            for tj in range(lo, hi):
                                work[dst + np.uint64(tj)] = xf[np.uint64(src + 2 * tj)]
                            for tj in range(hi, tw):
                                work[dst + np.uint64(tj)] = 0.0
            cols, cq = nr * tw, np.uint64((r - ra) * tw)  # C's columns of these tiles
            for rx in range(2):  # C[(a, rx, s)] = B^T down the columns: tap row i from
                for sh in range(3):  # Q[(i % 2, rx, s)] shifted by i // 2 rows
                    q0 = np.uint64(rx * 3 + sh) * qpu  # Q[(0, rx, s)]
                    q1 = np.uint64((2 + rx) * 3 + sh) * qpu  # Q[(1, rx, s)]
                    _bt_planes(work, c0 + np.uint64(rx * 3 + sh) * capu + cq, np.uint64(6) * capu,
                               work, q0, q1, q0 + twu, q1 + twu, q0 + np.uint64(2) * twu,
                               q1 + np.uint64(2) * twu, cols)  # fmt: skip
            r += nr
        # v[6a + b] = B along the rows, all the chunk's tiles at once: tap column k from
        # C[(a, k % 2, k // 2)] (the shift by k // 2 is in Q already)
        qc, cols = np.uint64(c * cap), (rb - ra) * tw  # v offset of (e = 0, c, column 0)
        for a in range(6):
            ca = c0 + np.uint64(6 * a) * capu
            _bt_planes(vf, qc + np.uint64(6 * a) * p, p, work, ca, ca + np.uint64(3) * capu,
                       ca + capu, ca + np.uint64(4) * capu, ca + np.uint64(2) * capu,
                       ca + np.uint64(5) * capu, cols)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def _output_transform(m, ra, rb, cap, y, b, work, geo):
    """y[n, o, 2ti + a, 2tj + b] = (A^T M A)[a, b] + b[o] for the tiles of rows [ra, rb)
    (entries past the output's edge dropped). Per output channel: A^T M into work's first 12
    planes, A^T M A + b into the next 4, then each tile's 2x2 outputs to y."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    mf, yf = m.reshape(-1), y.reshape(-1)
    p = np.uint64(geo[6])  # stride of e in m
    full = wo // 2  # tiles whose two columns are both inside (no test in their loop)
    cols = (rb - ra) * tw
    capu = np.uint64(_odd_lines(cap))  # the stride of work's planes
    c12, c13 = np.uint64(12) * capu, np.uint64(13) * capu
    c14, c15 = np.uint64(14) * capu, np.uint64(15) * capu
    zero = np.float32(0.0)
    for o in range(o_all):
        qo = np.uint64(o * cap)
        for j in range(6):  # rows (A^T M)[0, j] and [1, j]: planes j and 6 + j of work
            _at_planes(work, np.uint64(j) * capu, np.uint64(6) * capu, mf, qo + np.uint64(j) * p,
                       np.uint64(6) * p, cols, zero)  # fmt: skip
        bo = b[o]
        _at_planes(work, c12, capu, work, np.uint64(0), capu, cols, bo)  # y00, y01
        _at_planes(work, c14, capu, work, np.uint64(6) * capu, capu, cols, bo)  # y10, y11
        for r in range(ra, rb):
            n, ti = r // th, r % th
            y0 = ((n * o_all + o) * ho + 2 * ti) * wo  # flat y offset of (n, o, 2ti, 0)
            two = 2 * ti + 1 < ho
            q0 = np.uint64((r - ra) * tw)
            for tj in range(full):
                k, d = q0 + np.uint64(tj), np.uint64(y0 + 2 * tj)
                yf[d], yf[d + 1] = work[k + c12], work[k + c13]
            if full < tw:  # the last tile overhangs: its first column only
                yf[np.uint64(y0 + 2 * full)] = work[q0 + np.uint64(full) + c12]
            if two:
                for tj in range(full):
                    k, d = q0 + np.uint64(tj), np.uint64(y0 + wo + 2 * tj)
                    yf[d], yf[d + 1] = work[k + c14], work[k + c15]
                if full < tw:
                    yf[np.uint64(y0 + wo + 2 * full)] = work[q0 + np.uint64(full) + c14]


def conv_rows(r0, r1, rows, tr, x, u, b, y, v, m, work, geo) -> None:
    """Worker: y = conv5x5(x) + b over the tile rows [r0, r1), `rows` tile rows per chunk.

    x (N, Ci, H, W); y (N, Co, Ho, Wo) overwritten; b (Co,) (zeros: no bias); u (36, Co, Cig)
    the transformed filters or, when tr, (36, Ci, Cog) those of the flipped conv whose data
    gradient this is (read transposed at FLIP[e]); v (36, Ci, rows * tw), m (36, Co, rows *
    tw), work (12 * _plane(cap + 2 * tw) + 36 * _plane(cap),) workspaces, cap = rows * tw.

    A Python loop over the chunks calling the kernels (which release the GIL), as
    winograd_cpu.conv_rows; the GEMMs are winograd_cpu.conv_planes' (shared by the three
    families). As one Numba kernel it cost 0.91 s of a cold compile (wgrad_rows 1.15 s).
    """
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
    """m[e, o, (r - ra) * tw + tj] = (A dY A^T)[e] of the 2x2 tile (r, tj) of dy[:, o] (zero
    past the output's edge), the adjoint of _output_transform; db[o] += the tiles' sums.
    Per output channel: the tiles' 2x2 values into work's first 4 planes, A down
    the tiles' columns into the next 12, then A along the 6 rows into m."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    mf, df = m.reshape(-1), dy.reshape(-1)
    p = np.uint64(geo[6])  # stride of e in m
    full = wo // 2
    cols = (rb - ra) * tw
    capu = np.uint64(_odd_lines(cap))  # the stride of work's planes
    c1, c2, c3 = capu, np.uint64(2) * capu, np.uint64(3) * capu
    lo, hi = np.uint64(4) * capu, np.uint64(10) * capu  # A (a, c) and A (b, e): 6 planes each
    for o in range(o_all):
        for r in range(ra, rb):
            n, ti = r // th, r % th
            y0 = ((n * o_all + o) * ho + 2 * ti) * wo  # flat dy offset of (n, o, 2ti, 0)
            two = 2 * ti + 1 < ho
            q0 = np.uint64((r - ra) * tw)
            for tj in range(full):
                k, d = q0 + np.uint64(tj), np.uint64(y0 + 2 * tj)
                work[k], work[k + c1] = df[d], df[d + 1]
            if full < tw:
                k = q0 + np.uint64(full)
                work[k], work[k + c1] = df[np.uint64(y0 + 2 * full)], 0.0
            if two:
                for tj in range(full):
                    k, d = q0 + np.uint64(tj), np.uint64(y0 + wo + 2 * tj)
                    work[k + c2], work[k + c3] = df[d], df[d + 1]
                if full < tw:
                    k = q0 + np.uint64(full)
                    work[k + c2], work[k + c3] = df[np.uint64(y0 + wo + 2 * full)], 0.0
            else:
                for tj in range(tw):
                    k = q0 + np.uint64(tj)
                    work[k + c2], work[k + c3] = 0.0, 0.0
        acc = np.float32(0.0)
        for j in range(4):
            pj = np.uint64(j) * capu
            for q in range(cols):
                acc += work[pj + np.uint64(q)]
        db[o] += acc
        _a_planes(work, lo, capu, work, np.uint64(0), c2, cols)  # A (a, c): column 0
        _a_planes(work, hi, capu, work, c1, c3, cols)  # A (b, e): column 1
        qo = np.uint64(o * cap)
        for i in range(6):  # m[6i + j] = (A (l_i, r_i))[j]
            _a_planes(mf, qo + np.uint64(6 * i) * p, p, work, lo + np.uint64(i) * capu,
                      hi + np.uint64(i) * capu, cols)  # fmt: skip


def wgrad_rows(r0, r1, rows, x, dy, v, m, work, du, db, geo) -> None:
    """Worker: du (36, O, Cig) = the weight gradient in the transformed domain summed over the
    tile rows [r0, r1) (overwritten; filter_gradient maps it back), db (O,) = dy's sums.
    Workspaces as conv_rows'. A Python loop over the chunks, as conv_rows; the GEMMs are
    winograd_cpu.wgrad_planes' (du zeroed first, every chunk added with beta = 1)."""
    cap = rows * geo[3]
    du[:] = 0.0
    db[:] = 0.0
    for ra in range(r0, r1, rows):
        rb = min(r1, ra + rows)
        _input_transform(x, ra, rb, v, cap, work, geo)
        _dy_transform(dy, ra, rb, m, cap, db, work, geo)
        wgrad_planes(0, 36, (rb - ra) * geo[3], cap, v, m, du, 1.0, geo)


@njit(cache=True, nogil=True, fastmath=True)
def filter_gradient(du, dw, o0, o1):
    """dw[o, c] = G^T (sum over workers t of du[t, :, o, c]) G (5x5) for o in [o0, o1);
    du (T, 36, O, Cg) the workers' sums (added here, in order), dw (O, Cg, 5, 5)."""
    nt, cg = du.shape[0], dw.shape[1]
    acc = np.empty((36, cg), np.float32)
    s = np.empty((5, 6), np.float32)
    for o in range(o0, o1):
        for e in range(36):  # element loops, not slices: see transform_weights
            for c in range(cg):
                acc[e, c] = du[0, e, o, c]
        for t in range(1, nt):
            for e in range(36):
                for c in range(cg):
                    acc[e, c] += du[t, e, o, c]
        for c in range(cg):
            for j in range(6):  # s = G^T acc, column by column
                g0, g1, g2, g3, g4 = _gt(
                    acc[j, c],
                    acc[6 + j, c],
                    acc[12 + j, c],
                    acc[18 + j, c],
                    acc[24 + j, c],
                    acc[30 + j, c],
                )
                s[0, j], s[1, j], s[2, j], s[3, j], s[4, j] = g0, g1, g2, g3, g4
            for i in range(5):  # dw = s G, row by row
                g0, g1, g2, g3, g4 = _gt(s[i, 0], s[i, 1], s[i, 2], s[i, 3], s[i, 4], s[i, 5])
                dw[o, c, i, 0], dw[o, c, i, 1], dw[o, c, i, 2] = g0, g1, g2
                dw[o, c, i, 3], dw[o, c, i, 4] = g3, g4


class Winograd5(Winograd):
    """The F(2x2, 5x5) passes of one ConvCPU layer (5x5, stride 1, dilation 1), fixed shapes.

    Works as winograd_cpu.Winograd: workspaces are views of the layer's shared Scratch under
    conv_cpu's keys (col, yw, xpad, dbt; every pass rewrites what it reads), sized by
    `tile_columns` (the target GEMM width, in tiles) under `block_bytes` for V and M. The
    transformed filters u (36, O, Cg) are this layer's own array up to `keep_bytes` (the
    forward fills it, the data gradient of the same step reuses it), larger ones live in the
    shared Scratch (key wu5) and are transformed again for the data gradient. The passes
    (forward, backward, backward_data) are Winograd's, with this module's kernels.
    """

    _transform_weights = staticmethod(transform_weights)
    _conv_rows = staticmethod(conv_rows)
    _wgrad_rows = staticmethod(wgrad_rows)
    _filter_gradient = staticmethod(filter_gradient)
    _plane_helpers = (_bt_planes, _at_planes, _a_planes)  # Winograd._bind
    _u_key = "wu5"

    def __init__(self, n: int, c: int, h: int, w: int, o: int, pad: tuple[int, int],
                 groups: int, out_hw: tuple[int, int], scratch, workers,
                 tile_columns: int, block_bytes: int, keep_bytes: int) -> None:  # fmt: skip
        from netdsl.ops.conv import split

        self.workers, self.scratch = workers, scratch
        self.u_shape = (36, o, c // groups)
        self.keep = 4 * 36 * o * (c // groups) <= keep_bytes
        self.u = (
            np.empty(self.u_shape, np.float32) if self.keep else scratch.get("wu5", self.u_shape)
        )
        self._u_of: object = None  # the w array u was computed from, while it is valid
        nt = workers.n
        self.passes = {}
        # forward: x (c channels, h x w) -> y (o, ho x wo); data gradient: dy -> dx, the
        # flipped filter reads rows i - (4 - ph) .. of dy
        back = (4 - pad[0], 4 - pad[1])
        for name, ci, co, geo_pad, hw_out in (
            ("fwd", c, o, pad, out_hw),
            ("bwd", o, c, back, (h, w)),
        ):
            th, tw = -(-hw_out[0] // 2), -(-hw_out[1] // 2)
            fit = max(1, block_bytes // (4 * 36 * (ci + co) * tw))  # tile rows under the cap
            rows = max(1, min(-(-n * th // nt), -(-tile_columns // tw), fit))
            cap = rows * tw
            vplane, mplane = _plane(ci * cap), _plane(co * cap)
            # the input transform's Q and C (the output and dy transforms use 16 planes)
            work = 12 * _plane(cap + 2 * tw) + 36 * _plane(cap)
            shapes = {"col": (36 * vplane,), "yw": (36 * mplane,), "xpad": (work,)}
            if name == "fwd":  # the weight gradient's pass: its sums per worker
                shapes.update(dbt=(o,))
            for t in range(nt):  # size the shared buffers now
                for k, shape in shapes.items():
                    scratch.get(f"{k}{t}", shape)
            geo = (*geo_pad, th, tw, groups, vplane, mplane)
            self.passes[name] = (split(n * th, nt), rows, shapes, geo)
        self.o_jobs = split(o, nt)
        self.du_shape = (nt, 36, o, c // groups)  # each worker's transformed dw sums
        scratch.get("wdu", self.du_shape)
        self._views: dict[str, tuple[int, list]] = {}
        self.by_planes, self.cplanes = False, {}  # Winograd's split by planes: 3x3 only
