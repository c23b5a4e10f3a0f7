"""Source text of the tiled SGEMM kernels of conv and fc: one core, pluggable loaders and epilogues.

The kernels are *generated* as Python (numba-cuda) text, loaded by
:func:`netdsl.ops.codegen.kernel_module` and compiled with ``cache=True``; this module
imports no numba. One block of ``threads`` threads computes a BM x BN tile of C = A @ B:

- the K dimension comes in BK-deep slices through two shared buffers per operand,
  ``As[buf][k][m]`` and ``Bs[buf][k][n]`` (row length padded by 4 words, so that the stores
  of a warp whose threads differ in k hit distinct banks); while slice s is multiplied out of
  buffer s % 2, each thread loads its elements of slice s + 1 from global memory into
  registers and stores them into the other buffer afterwards: ONE barrier per slice;
- each thread owns TM x TN accumulators held in scalar locals ``acc_i_j`` and the step of a
  slice is written out in the text (BK x (TM + TN) shared loads, BK x TM x TN FFMAs): no
  local arrays, no inner loops. A thread's rows are groups of up to 4 contiguous rows
  (``ty*4 + i``, then ``+ (BM/2)``), which lets NVVM fetch each group with one 128-bit LDS;
- index arithmetic is 32-bit (``uint32(...)`` around every index: Numba types integer
  arithmetic as 64-bit, LLVM narrows it back when the result is truncated) and there is no
  division or modulo in the K loop: a thread's fixed coordinates (its row or column of the
  tile) are decomposed once before the loop, and what depends on k comes from a per-k table
  computed on the host (the im2col offsets) or from counters advanced per slice.

An operand is described by :class:`Dense` (a row-major matrix, read along k or along m/n)
or :class:`Gather` (element = ``arr[thread base + table offset(k)]``, zero unless the tap
it names lies inside the image: the implicit im2col of conv). An :class:`Epilogue` writes
the accumulators (bias, fused activation, the output's layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# (BM, BN, BK, TM, TN): 256 threads (16 x 16), BK 8. The 128-wide tiles are the ones built for
# the FP32 roof (8 x 8 outputs per thread: 64 FFMAs per 4 128-bit LDS); the narrower ones
# serve thin layers (LeNet's 6 filters, a batch of 8), where a 128-row tile is mostly padding.
TILES = {
    (32, 32): (32, 32, 8, 2, 2),
    (32, 64): (32, 64, 8, 2, 4),
    (32, 128): (32, 128, 8, 2, 8),
    (64, 32): (64, 32, 8, 8, 4),
    (64, 64): (64, 64, 8, 4, 4),
    (64, 128): (64, 128, 8, 8, 8),
    (128, 32): (128, 32, 8, 8, 2),
    (128, 64): (128, 64, 8, 8, 8),
    (128, 128): (128, 128, 8, 8, 8),
}
# The simulator runs every thread as a Python thread: 4 x 4 threads, tiles of 4 or 8. The
# kernels are the same generated code (tests also run a 256-thread config there once).
SIM_TILES = {
    (4, 4): (4, 4, 8, 1, 1),
    (4, 8): (4, 8, 8, 1, 2),
    (8, 4): (8, 4, 8, 2, 1),
    (8, 8): (8, 8, 8, 2, 2),
}
PAD = 4  # words added to each shared row (see the module doc)
BIAS = 32768  # tap offsets are stored biased by this in 16-bit halves of a table word
NO_TAP = 0xFFFFFFFF  # a table word whose tap lies outside every image (padding of the table)
PRESENT = (BIAS << 16) | BIAS  # the word of a tap at (0, 0): a plain table entry


def pick(rows: int, cols: int, simulator: bool) -> tuple[int, int, int, int, int]:
    """The tile for an M x N output: the smallest sides (up to 128) covering it."""
    table = SIM_TILES if simulator else TILES
    sides = sorted({s for s, _ in table})

    def side(n: int) -> int:
        return next((s for s in sides if n <= s), sides[-1])

    return table[(side(rows), side(cols))]


def threads_of(tile: tuple) -> int:
    bm, bn, _, tm, tn = tile
    return (bm // tm) * (bn // tn)


def group_of(t: int) -> int:
    """Contiguous rows (or columns) per group of a thread's TM (TN) outputs."""
    return min(4, t)


def offsets(t: int, lanes: int) -> list[int]:
    """Offsets (from lane*G) of the t rows a thread owns, `lanes` threads along that side."""
    g = group_of(t)
    return [(i // g) * (lanes * g) + i % g for i in range(t)]


# ---------------------------------------------------------------------------------------------
# Operands
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    """A[mn, k] = arr[base + mn*ld + k] (kfast) or arr[base + k*ld + mn]; zero outside
    rows x kdim. `base` is an expression (of g, bz ...), the rest are constants."""

    arr: str
    kfast: bool
    ld: int
    rows: int
    kdim: int
    base: str = "0"
    padded: bool = False  # every row and k the tile reads exists (zeros stored past the
    # matrix, as the data gradient's permuted weights): loads without a bounds test
    istride: int = 0  # with counters over images (Kloop.wrap): + img * istride, k per image


@dataclass(frozen=True)
class Gather:
    """A[mn, k] = arr[tbase + img*istride + tab_off(k)] where the tap is inside:
    (y0 + tab_dy(k)) and (x0 + tab_dx(k)) within [0, ly) x [0, lx). `setup` is code computing
    tbase, y0, x0 (unbiased) from `mn`, the thread's row or column; `ok` is an expression
    (of mn) false for a padding row. The table `tab` holds 2 words per k: the offset and
    (dy + BIAS) << 16 | (dx + BIAS); entries past the end are NO_TAP."""

    arr: str
    tab: str
    kfast: bool
    ly: int
    lx: int
    setup: str
    ok: str
    istride: int = 0  # with counters over images (Kloop.wrap)

    @property
    def bounded(self) -> bool:
        """False for a plain table lookup (ly = lx = 1 and every tap at (0, 0)): then the
        test is only whether the table has the entry (fewer registers: no y0, x0)."""
        return (self.ly, self.lx) != (1, 1)


@dataclass(frozen=True)
class Epilogue:
    """Writes acc into `out`. `row`: code from `row` (the output row) setting `ro` (its
    offset) and `rk` (valid); `col`: the same from `col`, setting `co` and `ck`; `value`: the
    stored expression of `v` (the accumulator), `row` and `col`."""

    out: str
    row: str
    col: str
    value: str = "v"


@dataclass(frozen=True)
class Kloop:
    """The K range of a block: `nk` slices (an expression), the table index starting at
    `kt0` (an expression, a multiple of BK), and, with `wrap`, a counter of images `img`
    starting at `img0`: the table index returns to 0 after `wrap` entries, img += 1."""

    nk: str
    kt0: str = "0"
    wrap: int = 0
    img0: str = "0"


@dataclass
class Kernel:
    name: str
    params: str
    tile: tuple
    a: Dense | Gather
    b: Dense | Gather
    epi: Epilogue
    k: Kloop
    prologue: str = ""  # code before everything (block coordinates -> g, split, phase ...)
    min_blocks: int = 0  # resident blocks ptxas budgets for; 0: 512 threads per SM (below)
    notes: list[str] = field(default_factory=list)


def _indent(code: str, n: int) -> list[str]:
    return [" " * n + line if line.strip() else "" for line in code.strip("\n").splitlines()]


def _assign(tile: tuple, side: str, kfast: bool) -> tuple[int, list[str], list[int]]:
    """How the threads load an operand's BMN x BK slice: (elements per thread L, setup code
    giving `{p}mn` (the thread's row of the operand tile) and the k offsets `{p}kq` (list of
    kq per element, as offsets from `{p}kq0`)."""
    bm, bn, bk, _, _ = tile
    nt = threads_of(tile)
    bmn = bm if side == "a" else bn
    total = bmn * bk
    if total % nt:
        raise ValueError(f"tile {tile}: {side} slice of {total} does not split over {nt}")
    per = total // nt
    p = side
    if kfast:  # a thread: one row, `per` consecutive k (neighbours: the next k, then row)
        if bk % per:
            raise ValueError(f"tile {tile}: {per} k per thread does not divide BK {bk}")
        span = bk // per
        code = [f"{p}mn = int32(tid // {span})", f"{p}kq0 = int32((tid % {span}) * {per})"]
        return per, code, list(range(per))
    if nt % bmn:  # a thread: one row every nt/bmn k (neighbours: the next row)
        raise ValueError(f"tile {tile}: {nt} threads do not cover {bmn} rows")
    step = nt // bmn
    code = [f"{p}mn = int32(tid % {bmn})", f"{p}kq0 = int32(tid // {bmn})"]
    return per, code, [j * step for j in range(per)]


def source(kernel: Kernel) -> str:
    """The text of one @cuda.jit kernel (a module's imports come from :func:`module`)."""
    tile = kernel.tile
    bm, bn, bk, tm, tn = tile
    nt = threads_of(tile)
    txn, tyn = bn // tn, bm // tm
    lda, ldb = bm + PAD, bn + PAD
    ga, gb = group_of(tm), group_of(tn)
    ops = {"a": kernel.a, "b": kernel.b}
    L: list[str] = []
    add = L.append
    # 512 resident threads per SM (16 warps) whatever the block size: a 128-register budget,
    # the 64 accumulators of an 8 x 8 thread plus the prefetch and addresses
    add(f"@cuda.jit(**_options({nt}, {kernel.min_blocks or max(1, 512 // nt)}))")
    add(f"def {kernel.name}({kernel.params}):")
    for note in kernel.notes:
        add(f"    # {note}")
    add("    tid = int32(cuda.threadIdx.x)")
    add(f"    tx = int32(tid % {txn})")
    add(f"    ty = int32(tid // {txn})")
    add(f"    m0 = int32(int32(cuda.blockIdx.y) * {bm})")
    add(f"    n0 = int32(int32(cuda.blockIdx.x) * {bn})")
    add("    bz = int32(cuda.blockIdx.z)")
    L.extend(_indent(kernel.prologue, 4))
    add(f"    As = cuda.shared.array({2 * bk * lda}, float32)")
    add(f"    Bs = cuda.shared.array({2 * bk * ldb}, float32)")
    per: dict[str, int] = {}
    kqs: dict[str, list[int]] = {}
    for p, op in ops.items():
        n_el, code, kq = _assign(tile, p, op.kfast)
        per[p], kqs[p] = n_el, kq
        ld = lda if p == "a" else ldb
        L.extend("    " + c for c in code)
        origin = "m0" if p == "a" else "n0"
        add(f"    mn = int32({origin} + {p}mn)")
        if isinstance(op, Dense):
            # k bound of this thread: 0 for a padding row, so one compare per element
            if not op.padded:
                add(f"    {p}klim = int32({op.kdim} - {p}kq0 if mn < {op.rows} else 0)")
            if op.kfast:
                add(f"    {p}base = int32({op.base} + mn * {op.ld} + {p}kq0)")
            else:
                add(f"    {p}base = int32({op.base} + {p}kq0 * {op.ld} + mn)")
        else:
            L.extend(_indent(op.setup, 4))
            add(f"    {p}base = int32(tbase)")
            if op.bounded:
                add(f"    if not ({op.ok}):")
                add("        y0 = 1 << 20  # a padding row or column: no tap is inside")
                add(f"    {p}y0 = int32(y0 - {BIAS})")
                add(f"    {p}x0 = int32(x0 - {BIAS})")
            else:  # only the table says which k exist; a padding row's mask hides them all
                add(f"    {p}y0 = uint32(0 if {op.ok} else {NO_TAP})")
        # where this thread's elements go in shared memory (buffer 0)
        add(f"    {p}st = int32({p}kq0 * {ld} + {p}mn)")  # element j: + kq[j] * ld
        for j in range(per[p]):
            add(f"    {p}v{j} = float32(0.0)")
    add(f"    ra = int32(ty * {ga})")  # this thread's first row in As, first column in Bs
    add(f"    rb = int32(tx * {gb})")
    for i in range(tm):
        add("    " + " = ".join(f"acc_{i}_{j}" for j in range(tn)) + " = float32(0.0)")
    add(f"    nk = int32({kernel.k.nk})")
    add(f"    kt = int32({kernel.k.kt0})")
    if kernel.k.wrap:
        add(f"    img = int32({kernel.k.img0})")

    def loads(ind: int) -> list[str]:
        # One 32-bit base per operand and slice; the elements' constant offsets are added
        # outside uint32() (64-bit, no wrap-around to honour), so that they fold into the
        # loads' immediate offsets: one address computation per slice, not per element.
        out = []
        for p, op in ops.items():
            img = f" + img * {op.istride}" if kernel.k.wrap and op.istride else ""
            if isinstance(op, Dense):
                step = 1 if op.kfast else op.ld
                out.append(f"{p}a = uint32({p}base + kt * {step}{img})" if step != 1
                           else f"{p}a = uint32({p}base + kt{img})")  # fmt: skip
                if not op.padded:  # k left to this thread (<= 0 for a padding row)
                    out.append(f"{p}kr = int32({p}klim - kt)")
                for j, q in enumerate(kqs[p]):
                    addr = f"{p}a + {q * step}" if q else f"{p}a"
                    if op.padded:
                        out.append(f"{p}v{j} = {op.arr}[{addr}]")
                    else:
                        out.append(f"{p}v{j} = {op.arr}[{addr}] if {q} < {p}kr "
                                   f"else float32(0.0)")  # fmt: skip
                continue
            out.append(f"{p}e = uint32(2 * ({p}kq0 + kt))")
            out.append(f"{p}b = uint32({p}base{img})")
            for j, q in enumerate(kqs[p]):
                e = f"{p}e + {2 * q}" if q else f"{p}e"
                out.append(f"{p}o = int32({op.tab}[{e}])")
                if op.bounded:
                    out += [f"{p}d = int32({op.tab}[{p}e + {2 * q + 1}])",
                            f"{p}ok = (uint32({p}y0 + (({p}d >> 16) & 0xFFFF)) < {op.ly}) & "
                            f"(uint32({p}x0 + ({p}d & 0xFFFF)) < {op.lx})"]  # fmt: skip
                else:  # an absent entry's offset is NO_TAP (its offsets are never -1)
                    out += [f"{p}ok = uint32({p}o | {p}y0) != {NO_TAP}"]
                out.append(f"{p}v{j} = {op.arr}[uint32({p}b + {p}o)] if {p}ok else float32(0.0)")
        return [" " * ind + s for s in out]

    def stores(ind: int, buf: str) -> list[str]:
        # one shared address per operand (this thread's element 0 in buffer `buf`), the others
        # at constant distances folded into the stores' immediates
        out = []
        for p in ops:
            ld = lda if p == "a" else ldb
            size = bk * ld
            out.append(f"{p}sto = uint32({p}st + {buf} * {size})" if buf != "0"
                       else f"{p}sto = uint32({p}st)")  # fmt: skip
            for j, q in enumerate(kqs[p]):
                dst = f"{p}sto + {q * ld}" if q else f"{p}sto"
                out.append(f"{'As' if p == 'a' else 'Bs'}[{dst}] = {p}v{j}")
        return [" " * ind + s for s in out]

    def advance(ind: int) -> list[str]:
        out = [f"kt = int32(kt + {bk})"]
        if kernel.k.wrap:
            out += [f"if kt >= {kernel.k.wrap}:", "    kt = int32(0)", "    img = int32(img + 1)"]
        return [" " * ind + s for s in out]

    add("    if nk > 0:  # slice 0 into buffer 0")
    L.extend(loads(8))
    L.extend(stores(8, "0"))
    L.extend(advance(8))
    add("    cuda.syncthreads()")
    add("    cur = int32(0)")
    add("    for ks in range(nk):")
    add("        more = ks + 1 < nk")
    add("        if more:  # slice ks + 1 into registers, while slice ks is multiplied")
    L.extend(loads(12))
    add(f"        pa = uint32(ra + cur * {bk * lda})")
    add(f"        pb = uint32(rb + cur * {bk * ldb})")
    aoff, boff = offsets(tm, tyn), offsets(tn, txn)
    for kk in range(bk):
        for i, off in enumerate(aoff):
            add(f"        a{i} = As[pa + {kk * lda + off}]")
        for j, off in enumerate(boff):
            add(f"        b{j} = Bs[pb + {kk * ldb + off}]")
        for i in range(tm):
            for j in range(tn):
                add(f"        acc_{i}_{j} += a{i} * b{j}")
    add("        if more:")
    L.extend(stores(12, "(cur ^ 1)"))
    L.extend(advance(12))
    add("        cuda.syncthreads()")
    add("        cur = int32(cur ^ 1)")
    # epilogue: rows ra + m0 + offsets, columns rb + n0 + offsets; one group of up to 4
    # columns at a time (their offsets, then every row's stores), so that only that group's
    # column offsets are live beside the accumulators, and each group frees its 8 x 4
    epi = kernel.epi
    for j0 in range(0, tn, gb):
        group = range(j0, min(tn, j0 + gb))
        for j in group:
            add(f"    col = int32(n0 + rb + {boff[j]})")
            L.extend(_indent(epi.col, 4))
            add(f"    co{j} = int32(co)")
            add(f"    ck{j} = ck")
        for i, off in enumerate(aoff):
            add(f"    row = int32(m0 + ra + {off})")
            L.extend(_indent(epi.row, 4))
            add("    if rk:")
            for j in group:
                add(f"        if ck{j}:")
                add(f"            v = acc_{i}_{j}")
                add(f"            col = int32(n0 + rb + {boff[j]})")
                add(f"            {epi.out}[uint32(ro + co{j})] = {epi.value}")
    return "\n".join(L) + "\n"


HEADER = '''\
"""Generated by netdsl/ops/gemm_cuda.py ({what}); do not edit."""
from numba import config, cuda, float32, int32, uint32

from netdsl.ops.activation import cuda_element_math

act, _act_grad = cuda_element_math()


if config.ENABLE_CUDASIM:
    # The simulator runs this as Python: plain ints with 32-bit wrap-around (a NumPy scalar per
    # cast would be slow, and NumPy refuses a negative Python int as uint32)
    def int32(v):
        return ((int(v) + 0x80000000) & 0xFFFFFFFF) - 0x80000000

    def uint32(v):
        return int(v) & 0xFFFFFFFF


def _options(threads, min_blocks):
    # launch bounds let ptxas budget registers for min_blocks resident blocks of `threads`;
    # the simulator's jit does not take them
    if config.ENABLE_CUDASIM:
        return {"cache": True}
    return {"cache": True, "launch_bounds": (threads, min_blocks)}
'''


def module_text(what: str, kernels: list[Kernel]) -> str:
    """A whole generated module: the header and each kernel."""
    return HEADER.replace("{what}", what) + "".join("\n\n" + source(k) for k in kernels)


# ---------------------------------------------------------------------------------------------
# Host-side tables (NumPy), also what the tests check the index math against
# ---------------------------------------------------------------------------------------------


def pack(off, dy, dx, length: int):
    """The (length, 2) uint32 table of (offset, biased dy << 16 | biased dx), NO_TAP past the
    given entries (length: a multiple of BK at least len(off))."""
    import numpy as np

    off, dy, dx = (np.asarray(v, np.int64).reshape(-1) for v in (off, dy, dx))
    if len(off) and (np.abs(dy).max() >= BIAS or np.abs(dx).max() >= BIAS):
        raise ValueError("tap offsets beyond 16 bits")
    tab = np.full((max(length, len(off)), 2), NO_TAP, np.uint32)
    tab[: len(off), 0] = (off & 0xFFFFFFFF).astype(np.uint32)
    tab[: len(off), 1] = (((dy + BIAS) << 16) | (dx + BIAS)).astype(np.uint32)
    return tab


def unpack(tab):
    """(offset as int32, dy, dx, present) of a table: the inverse of pack, for the tests."""
    import numpy as np

    tab = np.asarray(tab, np.uint32)
    present = tab[:, 1] != NO_TAP
    off = tab[:, 0].astype(np.int64)
    off = np.where(off >= 1 << 31, off - (1 << 32), off)
    dy = (tab[:, 1] >> 16).astype(np.int64) - BIAS
    dx = (tab[:, 1] & 0xFFFF).astype(np.int64) - BIAS
    return off, dy, dx, present


def padded(n: int, bk: int) -> int:
    return -(-n // bk) * bk
