"""Winograd F(2x2, 3x3) convolution on the CPU, for 3x3 stride-1 dilation-1 layers (used by
netdsl.ops.conv.ConvCPU, see NETDSL_CONV_ALGO there): the forward pass, the data gradient and
the weight gradient.

Imported only when a ConvCPU picks it (numba at module level; `netdsl check` never gets here).

Why: a 3x3 conv costs 9 multiply-adds per output pixel and input channel; F(2x2, 3x3) makes
a 2x2 output tile from a 4x4 input tile with 16 multiplications, 2.25x fewer (1.7x at 7x7
maps, whose 4x4 tiles overhang to 8x8). The multiplications are 16 independent GEMMs, one
per element e of the 4x4 transformed tile:

    V[e] (Ci, T) = (B^T d B)[e] of every input tile d (T tiles as columns)
    U[e] (Co, Ci) = (G g G^T)[e] of every 3x3 filter g        (once per step)
    M[e] (Co, T) = U[e] @ V[e]                                  (direct sgemm, conv_cpu.gemm)
    y tile = A^T M A (2x2) + bias

with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],
[0,0,1]], A^T = [[1,1,1,0],[0,1,-1,-1]] (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2015).

The data gradient of such a layer is the same kind of convolution of dy with the flipped,
channel-transposed filters and top/left padding 2 - p. Flipping a filter permutes its
transform: G J g J G^T = P (G g G^T) P^T with J the 3x3 reversal and P the swap of rows 0
and 3 (G J = P G), so the data gradient's U[e] is the forward's U[perm(e)] transposed: the
same U array serves both passes (a transposed sgemm), nothing is transformed again.

The weight gradient is the transpose of the forward's chain (A^T (U . V) A is linear in U, U
linear in g): dU[e] (Co, Ci) = sum over tiles of (A dY A^T)[e] (Co, T) @ V[e]^T (T, Ci), one
GEMM per e accumulated chunk by chunk (beta = 1), then dg = G^T dU G. It is the exact
gradient of what the forward computes (the same 2.25x fewer multiplications), not an
approximation: tiles that overhang the output get dy = 0 there, as the forward drops them.

Tiles are taken a whole tile row at a time: a worker owns the tile rows [r0, r1) of the
batch (row r = image r // th, tile row r % th; th x tw tiles per image) and processes them
in chunks of `rows` tile rows (tw columns each, across image boundaries at small maps, so
the GEMMs have enough columns). Per chunk: the input transform into V, 16 (x groups) GEMMs
into M, the output transform into y. Per worker, the workspaces V (16, Ci, cap), M (16, Co,
cap), cap = rows * tw, and one padded 4-row strip of one input channel.

The weight gradient on several workers is split by tiles as above (each worker its own
(16, O, Cg) sums, added by filter_gradient) or, where those sums outweigh the batch's tiles
in V and M (512 channels at 7 px, batch 8: 16.7 MiB a worker), by planes: the team
transforms a chunk of tile rows into one shared V and M (_input_transform, _dy_transform on
offset views), then each worker multiplies its share of the 16 planes into one set of sums
(wgrad_planes). Such layers run their forward and data gradient split by planes as well
(conv_planes: GEMMs over all the chunk's tiles, each worker reading its planes of U only),
between the same transforms by tile rows.

geo = (ph, pw, th, tw, groups, vplane, mplane): top/left padding (any integer: output (i, j)
reads input rows i - ph .. i - ph + 2), tiles per image, groups, and the strides between the
16 planes of V and of M (see _plane).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netdsl.ops.conv_cpu import gemm

# index e = 4 * a + b of the transformed tile -> that of the flipped filter's (0 <-> 3 in a, b)
FLIP = np.array([(3 - a if a in (0, 3) else a) * 4 + (3 - b if b in (0, 3) else b)
                 for a in range(4) for b in range(4)], np.int64)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def transform_weights(w, u, o0, o1):
    """u[:, o, :] = G w[o, c] G^T for o in [o0, o1); w (O, Cg, 3, 3), u (16, O, Cg).

    One filter row o at a time into tmp (16, Cg), then 16 contiguous rows of u: writing
    each filter's 16 values straight to u's 16 planes ran 2x slower (10 against 4.6 ms at
    512 x 512 on a loaded machine; memory-bound: 9 MiB read, 17 MiB written).
    """
    cg = w.shape[1]
    wf = w.reshape(-1)
    tmp = np.empty((16, cg), np.float32)
    h = np.float32(0.5)
    for o in range(o0, o1):
        for c in range(cg):
            s = (o * cg + c) * 9  # flat offset of w[o, c, 0, 0]
            g0, g1, g2 = wf[s], wf[s + 1], wf[s + 2]
            g3, g4, g5 = wf[s + 3], wf[s + 4], wf[s + 5]
            g6, g7, g8 = wf[s + 6], wf[s + 7], wf[s + 8]
            # t = G g (4 rows of 3)
            t10, t11, t12 = h * (g0 + g3 + g6), h * (g1 + g4 + g7), h * (g2 + g5 + g8)
            t20, t21, t22 = h * (g0 - g3 + g6), h * (g1 - g4 + g7), h * (g2 - g5 + g8)
            # u = t G^T, row by row: (t0, (t0 + t1 + t2) / 2, (t0 - t1 + t2) / 2, t2)
            tmp[0, c], tmp[3, c] = g0, g2
            tmp[1, c], tmp[2, c] = h * (g0 + g1 + g2), h * (g0 - g1 + g2)
            tmp[4, c], tmp[7, c] = t10, t12
            tmp[5, c], tmp[6, c] = h * (t10 + t11 + t12), h * (t10 - t11 + t12)
            tmp[8, c], tmp[11, c] = t20, t22
            tmp[9, c], tmp[10, c] = h * (t20 + t21 + t22), h * (t20 - t21 + t22)
            tmp[12, c], tmp[15, c] = g6, g8
            tmp[13, c], tmp[14, c] = h * (g6 + g7 + g8), h * (g6 - g7 + g8)
        for e in range(16):  # element loops: an array-to-slice copy compiles Numba's
            for c in range(cg):  # shape-mismatch message (its string code, ~1 s cold)
                u[e, o, c] = tmp[e, c]


@njit(cache=True, nogil=True, fastmath=True)
def _input_transform(x, ra, rb, v, cap, strip, geo):
    """v[e, c, (r - ra) * tw + tj] = (B^T d B)[e] of tile (r, tj) of channel c, r in [ra, rb)."""
    ph, pw, th, tw = geo[0], geo[1], geo[2], geo[3]
    c_all, h, w_in = x.shape[1], x.shape[2], x.shape[3]
    xf, vf = x.reshape(-1), v.reshape(-1)
    sw = 2 * tw + 2  # strip row length: input columns -pw .. 2 * tw + 1 - pw
    plane = geo[5]  # stride of e in v
    j0 = max(0, pw)  # strip columns holding input columns 0 .. w_in - 1: [j0, j1)
    j1 = min(sw, w_in + pw)
    for c in range(c_all):
        for r in range(ra, rb):
            n, ti = r // th, r % th
            base = (n * c_all + c) * h * w_in
            for i in range(4):  # the strip: zero outside the input
                iy = 2 * ti - ph + i
                s = i * sw
                if iy < 0 or iy >= h:
                    for j in range(sw):
                        strip[np.uint64(s + j)] = 0.0
                    continue
                for j in range(j0):
                    strip[np.uint64(s + j)] = 0.0
                src = base + iy * w_in - pw
                for j in range(j0, j1):
                    strip[np.uint64(s + j)] = xf[np.uint64(src + j)]
                for j in range(j1, sw):
                    strip[np.uint64(s + j)] = 0.0
            # t = B^T d for the whole strip, in place, row by row (contiguous: vectorised)
            for j in range(sw):
                s0, s1 = strip[np.uint64(j)], strip[np.uint64(sw + j)]
                s2, s3 = strip[np.uint64(2 * sw + j)], strip[np.uint64(3 * sw + j)]
                strip[np.uint64(j)] = s0 - s2
                strip[np.uint64(sw + j)] = s1 + s2
                strip[np.uint64(2 * sw + j)] = s2 - s1
                strip[np.uint64(3 * sw + j)] = s1 - s3
            q0 = c * cap + (r - ra) * tw  # v offset of (e = 0, c, tile (r, 0))
            p = np.uint64(plane)
            for i in range(4):  # (t B) of row i: (t0 - t2, t1 + t2, t2 - t1, t1 - t3)
                qi = np.uint64(q0) + np.uint64(4 * i) * p
                si = i * sw
                for tj in range(tw):
                    k = np.uint64(si + 2 * tj)
                    t0, t1, t2, t3 = strip[k], strip[k + 1], strip[k + 2], strip[k + 3]
                    q = qi + np.uint64(tj)
                    vf[q] = t0 - t2
                    vf[q + p] = t1 + t2
                    vf[q + 2 * p] = t2 - t1
                    vf[q + 3 * p] = t1 - t3


@njit(cache=True, nogil=True, fastmath=True)
def _output_transform(m, ra, rb, cap, y, b, geo):
    """y[n, o, 2ti + a, 2tj + b] = (A^T M A)[a, b] + b[o] for the tiles of rows [ra, rb)
    (entries past the output's edge dropped)."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    mf, yf = m.reshape(-1), y.reshape(-1)
    plane = np.uint64(geo[6])  # stride of e in m
    full = wo // 2  # tiles whose two columns are both inside (no test in their loop)
    for o in range(o_all):
        bo = b[o]
        for r in range(ra, rb):
            n, ti = r // th, r % th
            y0 = ((n * o_all + o) * ho + 2 * ti) * wo  # flat y offset of (n, o, 2ti, 0)
            rows = min(2, ho - 2 * ti)
            q0 = o * cap + (r - ra) * tw
            if rows == 2:  # two loops: no test inside either
                for tj in range(full):
                    s0, s1, s2, s3, t0, t1, t2, t3 = _a_t_m(mf, np.uint64(q0 + tj), plane)
                    d = np.uint64(y0 + 2 * tj)
                    yf[d] = s0 + s1 + s2 + bo
                    yf[d + 1] = s1 - s2 - s3 + bo
                    yf[d + wo] = t0 + t1 + t2 + bo
                    yf[d + wo + 1] = t1 - t2 - t3 + bo
            else:
                for tj in range(full):
                    s0, s1, s2, s3, t0, t1, t2, t3 = _a_t_m(mf, np.uint64(q0 + tj), plane)
                    d = np.uint64(y0 + 2 * tj)
                    yf[d] = s0 + s1 + s2 + bo
                    yf[d + 1] = s1 - s2 - s3 + bo
            if full < tw:  # the last tile overhangs: its first column only
                q = np.uint64(q0 + full)
                s0, s1, s2, s3, t0, t1, t2, t3 = _a_t_m(mf, q, plane)
                d = np.uint64(y0 + 2 * full)
                yf[d] = s0 + s1 + s2 + bo
                if rows == 2:
                    yf[d + wo] = t0 + t1 + t2 + bo


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _a_t_m(mf, q, p):
    """A^T M of the tile at q (planes p apart): its two rows of four."""
    m0, m1, m2, m3 = mf[q], mf[q + p], mf[q + 2 * p], mf[q + 3 * p]
    m4, m5, m6, m7 = mf[q + 4 * p], mf[q + 5 * p], mf[q + 6 * p], mf[q + 7 * p]
    m8, m9, m10, m11 = mf[q + 8 * p], mf[q + 9 * p], mf[q + 10 * p], mf[q + 11 * p]
    m12, m13, m14, m15 = mf[q + 12 * p], mf[q + 13 * p], mf[q + 14 * p], mf[q + 15 * p]
    return (m0 + m4 + m8, m1 + m5 + m9, m2 + m6 + m10, m3 + m7 + m11,
            m4 - m8 - m12, m5 - m9 - m13, m6 - m10 - m14, m7 - m11 - m15)  # fmt: skip


def conv_rows(r0, r1, rows, tr, x, u, b, y, v, m, strip, geo) -> None:
    """Worker: y = conv3x3(x) + b over the tile rows [r0, r1), `rows` tile rows per chunk.

    x (N, Ci, H, W); y (N, Co, Ho, Wo) overwritten; b (Co,) (zeros: no bias); u (16, Co, Cig)
    the transformed filters or, when tr, (16, Ci, Cog) those of the flipped conv whose data
    gradient this is (read transposed at FLIP[e]); v (16, Ci, rows * tw), m (16, Co, rows *
    tw), strip (4 * (2 * tw + 2),) workspaces.

    A Python loop over the chunks calling the kernels (which release the GIL), as
    winograd43_cpu's: a Numba one links and optimises again the code of every kernel it
    calls (0.77 s of a cold compile, and 0.69 s for wgrad_rows), for a few calls a pass.
    """
    tw, ng = geo[3], geo[4]
    cig, cog = x.shape[1] // ng, y.shape[1] // ng
    cap = rows * tw
    for ra in range(r0, r1, rows):
        rb = min(r1, ra + rows)
        _input_transform(x, ra, rb, v, cap, strip, geo)
        conv_planes(0, 16, (rb - ra) * tw, cap, tr, u, v, m, cig, cog, geo, FLIP)
        _output_transform(m, ra, rb, cap, y, b, geo)


@njit(cache=True, nogil=True, fastmath=True)
def _dy_transform(dy, ra, rb, m, cap, db, geo):
    """m[e, o, (r - ra) * tw + tj] = (A dY A^T)[e] of the 2x2 tile (r, tj) of dy[:, o] (zero
    past the output's edge), the adjoint of _output_transform; db[o] += the tiles' sums."""
    th, tw = geo[2], geo[3]
    o_all, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    mf, df = m.reshape(-1), dy.reshape(-1)
    p = np.uint64(geo[6])  # stride of e in m
    full = wo // 2
    zero = np.float32(0.0)
    for o in range(o_all):
        acc = zero
        for r in range(ra, rb):
            n, ti = r // th, r % th
            y0 = ((n * o_all + o) * ho + 2 * ti) * wo  # flat dy offset of (n, o, 2ti, 0)
            two = 2 * ti + 1 < ho
            q0 = o * cap + (r - ra) * tw
            for tj in range(tw):
                d = np.uint64(y0 + 2 * tj)
                a = df[d]
                b = df[d + 1] if tj < full else zero
                c = df[d + wo] if two else zero
                e = df[d + wo + 1] if two and tj < full else zero
                acc += a + b + c + e
                # rows of A dY: (row0, row0 + row1, row0 - row1, -row1); then each row's
                # (p, q) -> (p, p + q, p - q, -q)
                q = np.uint64(q0 + tj)
                for i in range(4):
                    if i == 0:
                        u, w = a, b
                    elif i == 1:
                        u, w = a + c, b + e
                    elif i == 2:
                        u, w = a - c, b - e
                    else:
                        u, w = -c, -e
                    qi = q + np.uint64(4 * i) * p
                    mf[qi] = u
                    mf[qi + p] = u + w
                    mf[qi + 2 * p] = u - w
                    mf[qi + 3 * p] = -w
        db[o] += acc


def wgrad_rows(r0, r1, rows, x, dy, v, m, strip, du, db, geo) -> None:
    """Worker: du (16, O, Cig) = the weight gradient in the transformed domain summed over the
    tile rows [r0, r1) (overwritten; filter_gradient maps it back), db (O,) = dy's sums.

    dU[e] = sum over tiles of (A dY A^T)[e] (O, T) @ V[e]^T (T, Ci): the transpose of the
    forward's chain, so G^T dU G is the exact gradient of the 3x3 filters. Workspaces as
    conv_rows'. A Python loop over the chunks, as conv_rows (du zeroed first and every
    chunk added with beta = 1, as the Numba loop did: the same bits).
    """
    cap = rows * geo[3]
    du[:] = 0.0
    db[:] = 0.0
    for ra in range(r0, r1, rows):
        rb = min(r1, ra + rows)
        _input_transform(x, ra, rb, v, cap, strip, geo)
        _dy_transform(dy, ra, rb, m, cap, db, geo)
        wgrad_planes(0, 16, (rb - ra) * geo[3], cap, v, m, du, 1.0, geo)


@njit(cache=True, nogil=True, fastmath=True)
def wgrad_planes(e0, e1, cols, cap, v, m, du, beta, geo):
    """Worker, weight gradient split by planes: du[e] (O, Cig) = M[e] @ V[e]^T + beta * du[e]
    for e in [e0, e1), over the `cols` tiles of the chunk in the shared V and M."""
    ng, vplane, mplane = geo[4], geo[5], geo[6]
    o_all, cig = du.shape[1], du.shape[2]
    cog = o_all // ng
    no, yes = np.bool_(False), np.bool_(True)  # not literals: ONE gemm signature
    vf, mf, duf = v.reshape(-1), m.reshape(-1), du.reshape(-1)
    for e in range(e0, e1):
        for g in range(ng):
            vo = e * vplane + g * cig * cap
            mo = e * mplane + g * cog * cap
            uo = (e * o_all + g * cog) * cig
            gemm(no, yes, cog, cig, cols, mf[mo:], cap, vf[vo:], cap, beta, duf[uo:], cig)


@njit(cache=True, nogil=True, fastmath=True)
def conv_planes(e0, e1, cols, cap, tr, u, v, m, cig, cog, geo, flip):
    """Worker, forward or data gradient split by planes: M[e] = U[e] @ V[e] (when tr, the
    flipped conv's U[flip[e]]^T @ V[e], as conv_rows) for e in [e0, e1), per group, over the
    `cols` tiles of the chunk in the shared V (E, Ci, cap) and M (E, Co, cap); cig, cog:
    this pass's input and output channels a group. flip: the family's FLIP (an argument,
    not a global, so that all three Winograd families share this one compiled kernel)."""
    ng, vplane, mplane = geo[4], geo[5], geo[6]
    uf, vf, mf = u.reshape(-1), v.reshape(-1), m.reshape(-1)
    uplane = u.shape[1] * u.shape[2]
    no, yes = np.bool_(False), np.bool_(True)  # not literals: ONE gemm signature
    for e in range(e0, e1):
        for g in range(ng):
            vo = e * vplane + g * cig * cap
            mo = e * mplane + g * cog * cap
            if tr:
                uo = flip[e] * uplane + g * cig * cog
                gemm(yes, no, cog, cols, cig, uf[uo:], cog, vf[vo:], cap, 0.0, mf[mo:], cap)
            else:
                uo = e * uplane + g * cog * cig
                gemm(no, no, cog, cols, cig, uf[uo:], cig, vf[vo:], cap, 0.0, mf[mo:], cap)


@njit(cache=True, nogil=True, fastmath=True)
def filter_gradient(du, dw, o0, o1):
    """dw[o, c] = G^T (sum over workers t of du[t, :, o, c]) G (3x3) for o in [o0, o1);
    du (T, 16, O, Cg) the workers' sums (added here, in order), dw (O, Cg, 3, 3)."""
    nt, cg = du.shape[0], dw.shape[1]
    h = np.float32(0.5)
    acc = np.empty((16, cg), np.float32)
    for o in range(o0, o1):
        for e in range(16):  # element loops, not slices: see transform_weights
            for c in range(cg):
                acc[e, c] = du[0, e, o, c]
        for t in range(1, nt):
            for e in range(16):
                for c in range(cg):
                    acc[e, c] += du[t, e, o, c]
        for c in range(cg):
            for b in range(4):  # s = G^T du: rows (u0 + (u1 + u2) / 2, (u1 - u2) / 2, ...)
                u0, u1, u2, u3 = acc[b, c], acc[4 + b, c], acc[8 + b, c], acc[12 + b, c]
                s0 = u0 + h * (u1 + u2)
                s1 = h * (u1 - u2)
                s2 = h * (u1 + u2) + u3
                if b == 0:
                    a0, a1, a2 = s0, s1, s2
                elif b == 1:
                    b0, b1, b2 = s0, s1, s2
                elif b == 2:
                    c0, c1, c2 = s0, s1, s2
                else:
                    d0, d1, d2 = s0, s1, s2
            # dw = s G, row by row: (s0 + (s1 + s2) / 2, (s1 - s2) / 2, (s1 + s2) / 2 + s3)
            dw[o, c, 0, 0] = a0 + h * (b0 + c0)
            dw[o, c, 0, 1] = h * (b0 - c0)
            dw[o, c, 0, 2] = h * (b0 + c0) + d0
            dw[o, c, 1, 0] = a1 + h * (b1 + c1)
            dw[o, c, 1, 1] = h * (b1 - c1)
            dw[o, c, 1, 2] = h * (b1 + c1) + d1
            dw[o, c, 2, 0] = a2 + h * (b2 + c2)
            dw[o, c, 2, 1] = h * (b2 - c2)
            dw[o, c, 2, 2] = h * (b2 + c2) + d2


def _plane(size: int) -> int:
    """The stride between the 16 planes of V or M for `size` floats each: a multiple of 16
    floats (64 bytes) whose count of 64-byte lines is odd, so that the 16 streams of a
    transform fall into different L1 sets (planes a multiple of 4 KiB apart ran the input
    transform 4x slower: 46 against 12 ns a tile at 56 px)."""
    lines = -(-size // 16)
    return 16 * (lines + 1 - lines % 2)


def bind_plane_helpers(bt_planes, at_planes, a_planes) -> None:
    """Load (or compile) a Winograd module's plane helpers before any kernel that calls them
    (Winograd._bind runs this before a layer's first pass).

    Why: a kernel compiled in this process calls a helper through a symbol that binds to
    the first definition the process loaded, and a cold compile loads the helper's own
    first (Numba compiles callees first). A kernel loaded from Numba's cache carries a copy
    of the helper as a weak symbol and, with no definition loaded before it, binds to that
    copy instead, which rounded differently: one seed's cold and warm starts of cifar10
    differed in the last bits from conv2 on (winograd5_cpu's _output_transform calling
    _at_planes). Loading the helpers first makes every process bind as a cold one does.
    n = 0: nothing is read or written; the argument types are the callers' (float32 1-D C
    arrays, uint64 offsets, an int count, a float32 bias)."""
    a, u = np.zeros(1, np.float32), np.uint64(0)
    bt_planes(a, u, u, a, u, u, u, u, u, u, 0)
    at_planes(a, u, u, a, u, u, 0, np.float32(0.0))
    a_planes(a, u, u, a, u, u, 0)


class Winograd:
    """The Winograd passes of one ConvCPU layer (3x3, stride 1, dilation 1), fixed shapes.

    Workspaces are views of the layer's shared Scratch under conv_cpu's own keys (col, yw,
    xpad: every pass rewrites what it reads, so the net's conv layers share one set), sized
    by `tile_columns` (the target GEMM width, in tiles) under `block_bytes` for V and M.
    The transformed filters u (16, O, Cg) are this layer's own array up to `keep_bytes`:
    the forward fills it, the data gradient of the same step reuses it (backward_data's
    `reuse`). Larger ones live in the shared Scratch (key wu) and are transformed again for
    the data gradient: keeping all would add 16/9 of the 3x3 weights to the peak RSS (ResNet-18
    67 MiB, 50 of it its 512-channel layers; VGG-16 105 MiB), to save a transform of 2-5 ms
    a 512 x 512 layer.

    winograd5_cpu.Winograd5 is this class with F(2x2, 5x5)'s kernels and its own sizes (no
    split by planes): the passes below call the kernels through these class attributes
    (staticmethod: a Numba dispatcher would otherwise bind as a method).
    """

    _transform_weights = staticmethod(transform_weights)
    _conv_rows = staticmethod(conv_rows)
    _wgrad_rows = staticmethod(wgrad_rows)
    _filter_gradient = staticmethod(filter_gradient)
    _u_key = "wu"  # the shared Scratch's key of filters not kept
    # Winograd5 / Winograd43: their plane helpers (_bt_planes, _at_planes, _a_planes),
    # loaded before the first kernel that calls them (bind_plane_helpers); F(2x2, 3x3) has none
    _plane_helpers: tuple = ()
    _helpers_bound = False

    def _bind(self) -> None:
        """Once per layer object, before its first pass: the plane helpers (see above)."""
        if not self._helpers_bound:
            if self._plane_helpers:
                bind_plane_helpers(*self._plane_helpers)
            self._helpers_bound = True

    def __init__(self, n: int, c: int, h: int, w: int, o: int, pad: tuple[int, int],
                 groups: int, out_hw: tuple[int, int], scratch, workers,
                 tile_columns: int, block_bytes: int, keep_bytes: int) -> None:  # fmt: skip
        from netdsl.ops.conv import split

        ho, wo = out_hw
        self.workers, self.scratch = workers, scratch
        self.u_shape = (16, o, c // groups)
        self.keep = 4 * 16 * o * (c // groups) <= keep_bytes
        self.u = (
            np.empty(self.u_shape, np.float32) if self.keep else scratch.get("wu", self.u_shape)
        )
        self._u_of: object = None  # the w array u was computed from, while it is valid
        nt = workers.n
        self.passes = {}
        # forward: x (c channels, h x w) -> y (o, ho x wo); data gradient: dy -> dx, the
        # flipped filter reads rows i - (2 - ph) .. of dy
        back = (2 - pad[0], 2 - pad[1])
        for name, ci, co, geo_pad, hw_out in (
            ("fwd", c, o, pad, out_hw),
            ("bwd", o, c, back, (h, w)),
        ):
            th, tw = -(-hw_out[0] // 2), -(-hw_out[1] // 2)
            fit = max(1, block_bytes // (4 * 16 * (ci + co) * tw))  # tile rows under the cap
            rows = max(1, min(-(-n * th // nt), -(-tile_columns // tw), fit))
            cap = rows * tw
            vplane, mplane = _plane(ci * cap), _plane(co * cap)
            shapes = {"col": (16 * vplane,), "yw": (16 * mplane,), "xpad": (4 * (2 * tw + 2),)}
            if name == "fwd":  # the weight gradient's pass: its sums per worker
                shapes.update(dbt=(o,))
            for t in range(nt):  # size the shared buffers now
                for k, shape in shapes.items():
                    scratch.get(f"{k}{t}", shape)
            geo = (*geo_pad, th, tw, groups, vplane, mplane)
            self.passes[name] = (split(n * th, nt), rows, shapes, geo)
        self.o_jobs = split(o, nt)
        # The weight gradient on several workers, split by planes: the team transforms a chunk
        # of tile rows into ONE V and M (worker 0's buffers, the chunk under block_bytes),
        # then each worker multiplies its share of the 16 planes over all the chunk's tiles
        # into one du. Split by tiles, each worker kept its own (16, O, Cg) sums to zero,
        # accumulate and add (16.7 MiB each at 512 x 512, 7 px, batch 8: 22 against 18.5 ms
        # CPU, 2 threads). Only where those sums outweigh the batch's tiles in V and M: at 64
        # and 128 channels (56, 28 px) the plane split ran 5-8% slower, at 256 level.
        th, tw = self.passes["fwd"][3][2:4]
        self.by_planes = nt > 1 and o * (c // groups) > (c + o) * n * th * tw
        if self.by_planes:
            fit = max(1, block_bytes // (4 * 16 * (c + o) * tw))
            crow = max(1, min(n * th, fit))
            vplane, mplane = _plane(c * crow * tw), _plane(o * crow * tw)
            chunks = [(ra, min(n * th, ra + crow)) for ra in range(0, n * th, crow)]
            rows_of = [[(ra + a, ra + b) for a, b in split(rb - ra, nt)] for ra, rb in chunks]
            self.wplanes = (crow, (16 * vplane,), (16 * mplane,), split(16, nt), chunks, rows_of)
            self.wgeo = (*pad, th, tw, groups, vplane, mplane)
            scratch.get("col0", self.wplanes[1])
            scratch.get("yw0", self.wplanes[2])
        # The forward and the data gradient split by planes too, where the weight gradient is
        # (U outweighs V and M) and all the batch's tiles fit one chunk: the team transforms
        # them into one shared V, each worker multiplies its share of the 16 planes over all
        # the tiles (conv_planes), then the team transforms the shared M back, by tile rows.
        # Split by tiles, each worker read all of U (16 MiB at 512 x 512) for GEMMs half as
        # wide (16 planes of 512 x 512 x 64 ran 7.1 ms against 12.1 ms for 16 of x 128, 1
        # thread; ResNet-18's layer4 at 2 threads 21 / 39 -> 19.3 / 35.7 ms CPU forward /
        # backward). In several chunks each reads U again: VGG-16's conv5 (4 x 7 tile rows
        # at 14 px, chunks of 18) ran 8% slower than split by tiles, so not there.
        self.cplanes = {}
        for name, ci, co, geo_pad, hw_out in (
            ("fwd", c, o, pad, out_hw),
            ("bwd", o, c, back, (h, w)),
        ):
            th, tw = -(-hw_out[0] // 2), -(-hw_out[1] // 2)
            fit = max(1, block_bytes // (4 * 16 * (ci + co) * tw))  # tile rows under the cap
            if not self.by_planes or n * th > fit:
                continue
            vplane, mplane = _plane(ci * n * th * tw), _plane(co * n * th * tw)
            geo = (*geo_pad, th, tw, groups, vplane, mplane)
            self.cplanes[name] = (n * th * tw, (16 * vplane,), (16 * mplane,), split(16, nt),
                                  split(n * th, nt), geo, ci // groups, co // groups)  # fmt: skip
            scratch.get("col0", (16 * vplane,))
            scratch.get("yw0", (16 * mplane,))
        # the transformed dw sums: one, or each worker's (split by tiles)
        self.du_shape = (1 if self.by_planes else nt, 16, o, c // groups)
        scratch.get("wdu", self.du_shape)
        self._views: dict[str, tuple[int, list]] = {}

    def _ws(self, name: str) -> list[dict[str, np.ndarray]]:
        """Each worker's workspaces of pass `name`, kept while the scratch buffers stay."""
        got = self._views.get(name)
        if got is None or got[0] != self.scratch.version:
            shapes = self.passes[name][2]
            views = [{k: self.scratch.get(f"{k}{t}", s) for k, s in shapes.items()}
                     for t in range(self.workers.n)]  # fmt: skip
            got = self._views[name] = (self.scratch.version, views)
        return got[1]

    def _transform(self, w: np.ndarray) -> None:
        if not self.keep:  # a view of the shared buffer (it may have grown since)
            self.u = self.scratch.get(self._u_key, self.u_shape)
        jobs = [(w, self.u, o0, o1) for o0, o1 in self.o_jobs if o1 > o0]
        self.workers.run(self._transform_weights, jobs)
        self._u_of = w if self.keep else None  # shared: other layers overwrite it

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
        """y = conv(x, w) + b (b: zeros without bias); w (O, Cg, 3, 3), or 5x5 (Winograd5)."""
        self._bind()
        self._transform(w)
        if "fwd" in self.cplanes:
            return self._conv_by_planes("fwd", x, self.u, b, y, False)
        jobs_r, rows, _, geo = self.passes["fwd"]
        jobs = [(r0, r1, rows, False, x, self.u, b, y, ws["col"], ws["yw"], ws["xpad"], geo)
                for (r0, r1), ws in zip(jobs_r, self._ws("fwd"), strict=True)]  # fmt: skip
        self.workers.run(self._conv_rows, jobs)

    def backward(
        self,
        dy: np.ndarray,
        x: np.ndarray,
        w: np.ndarray,
        dx: np.ndarray | None,
        dw: np.ndarray,
        db: np.ndarray | None,
        reuse: bool,
        zeros: np.ndarray,
    ) -> None:
        """Overwrite dw, db (unless None) and dx (unless None) with the gradients; reuse and
        zeros as backward_data's."""
        self._bind()
        jobs_r, rows, _, geo = self.passes["fwd"]
        views = self._ws("fwd")
        du = self.scratch.get("wdu", self.du_shape)
        if self.by_planes:
            self._wgrad_by_planes(x, dy, du[0], views)
        else:
            jobs = [(r0, r1, rows, x, dy, s["col"], s["yw"], s["xpad"], du[t], s["dbt"], geo)
                    for t, ((r0, r1), s) in enumerate(zip(jobs_r, views, strict=True))]  # fmt: skip
            self.workers.run(self._wgrad_rows, jobs)
        dbt = views[0]["dbt"]
        for ws in views[1:]:  # fixed order over workers
            dbt += ws["dbt"]
        jobs = [(du, dw, o0, o1) for o0, o1 in self.o_jobs if o1 > o0]
        self.workers.run(self._filter_gradient, jobs)
        if db is not None:
            np.copyto(db, dbt)
        if dx is not None:
            self.backward_data(dy, w, dx, reuse, zeros)

    def _wgrad_by_planes(self, x: np.ndarray, dy: np.ndarray, du: np.ndarray,
                         views: list[dict[str, np.ndarray]]) -> None:  # fmt: skip
        """du (16, O, Cg) and each worker's dbt: the weight gradient split by planes (see
        __init__), chunk by chunk of tile rows."""
        crow, vshape, mshape, e_jobs, chunks, rows_of = self.wplanes
        geo = self.wgeo
        v, m = self.scratch.get("col0", vshape), self.scratch.get("yw0", mshape)
        cap = crow * geo[3]
        for ws in views:
            ws["dbt"][:] = 0.0
        tw = geo[3]
        for (ra, rb), rows in zip(chunks, rows_of, strict=True):
            # worker t's tile rows [a, b) into columns (a - ra) * tw.. of the shared V and M:
            # the kernels of the split by tiles, called on offset views (no new kernel to
            # compile)
            parts = [(a, b, ws) for (a, b), ws in zip(rows, views, strict=True) if b > a]
            self.workers.run(_input_transform, [(x, a, b, v[(a - ra) * tw :], cap, ws["xpad"], geo)
                                                for a, b, ws in parts])  # fmt: skip
            self.workers.run(_dy_transform, [(dy, a, b, m[(a - ra) * tw :], cap, ws["dbt"], geo)
                                             for a, b, ws in parts])  # fmt: skip
            beta = 0.0 if ra == 0 else 1.0
            cols = (rb - ra) * geo[3]
            self.workers.run(wgrad_planes, [(e0, e1, cols, cap, v, m, du, beta, geo)
                                            for e0, e1 in e_jobs])  # fmt: skip

    def backward_data(self, dy: np.ndarray, w: np.ndarray, dx: np.ndarray, reuse: bool,
                      zeros: np.ndarray) -> None:  # fmt: skip
        """dx = the data gradient of the conv for dy (overwritten). reuse: w is unchanged
        since the last forward (the filters transformed there are used when it was this
        same w array); zeros (C,) stands in for a bias."""
        self._bind()
        if not (reuse and self._u_of is w):
            self._transform(w)
        if "bwd" in self.cplanes:
            return self._conv_by_planes("bwd", dy, self.u, zeros, dx, True)
        jobs_r, rows, _, geo = self.passes["bwd"]
        jobs = [(r0, r1, rows, True, dy, self.u, zeros, dx, ws["col"], ws["yw"], ws["xpad"], geo)
                for (r0, r1), ws in zip(jobs_r, self._ws("bwd"), strict=True)]  # fmt: skip
        self.workers.run(self._conv_rows, jobs)

    def _conv_by_planes(self, name: str, x: np.ndarray, u: np.ndarray, b: np.ndarray,
                        y: np.ndarray, tr: bool) -> None:  # fmt: skip
        """y = pass `name` (fwd, or bwd: the data gradient, tr) of x split by planes (see
        __init__): all the batch's tiles in one chunk; b (Co,) the bias (zeros: none)."""
        cap, vshape, mshape, e_jobs, rows, geo, cig, cog = self.cplanes[name]
        v, m = self.scratch.get("col0", vshape), self.scratch.get("yw0", mshape)
        tw = geo[3]
        # the kernels of the split by tiles, on offset views (as _wgrad_by_planes)
        parts = [(a, e, ws) for (a, e), ws in zip(rows, self._ws(name), strict=True) if e > a]
        self.workers.run(_input_transform, [(x, a, e, v[a * tw :], cap, ws["xpad"], geo)
                                            for a, e, ws in parts])  # fmt: skip
        self.workers.run(conv_planes, [(e0, e1, cap, cap, tr, u, v, m, cig, cog, geo, FLIP)
                                       for e0, e1 in e_jobs])  # fmt: skip
        self.workers.run(_output_transform, [(m[a * tw :], a, e, cap, y, b, geo)
                                             for a, e, _ in parts])  # fmt: skip
