"""Large host buffers on transparent huge pages (issue 15).

A net's big float32 arrays (activations, gradients, conv workspaces, the flat parameter,
gradient and optimizer buffers) are made here. An array of at least ``HUGE`` bytes gets its
own anonymous mapping, its start aligned to 2 MiB, and the whole 2 MiB pages inside it are
marked ``madvise(MADV_HUGEPAGE)``: on a machine whose transparent huge pages are in
``madvise`` mode (the usual default) they are then backed by 2 MiB pages instead of 4 KiB
ones: fewer TLB misses in the kernels' strided walks, and the placement of each 2 MiB stretch
(which L2 sets its lines map to) fixed rather than drawn per process. NumPy already advises
arrays from 4 MiB (unaligned); this adds the 2-4 MiB ones and the alignment. Measured on
issue 15's nets: AlexNet's and VGG-16's steps 3-7 % shorter, ResNet-18's and cifar10's
level (docs/kernels.md). The partial
page at the end keeps 4 KiB pages, so a buffer costs no more resident memory than
``np.zeros`` would.

``NETDSL_HUGEPAGES=0`` turns this off (plain ``np.zeros``); so does a platform without
``mmap.MADV_HUGEPAGE`` (not Linux) or a mapping the system refuses. Arrays come back
zeroed (an anonymous mapping is) and writable; they pickle and save like any other array.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

HUGE = 2 << 20  # bytes: the x86-64 / arm64 transparent huge page, and the size threshold


def enabled() -> bool:
    """Whether large buffers ask for huge pages (Linux, unless NETDSL_HUGEPAGES=0)."""
    if os.environ.get("NETDSL_HUGEPAGES", "1").strip() in ("0", "off", "no", "false"):
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap.mmap, "madvise")


def _huge(nbytes: int) -> tuple[mmap.mmap, int] | None:
    """An anonymous mapping holding `nbytes` from a 2 MiB-aligned offset, its whole huge
    pages advised; None when the system will not map or advise it."""
    try:
        m = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    addr = np.frombuffer(m, np.uint8, 1).ctypes.data  # where the mapping starts
    offset = -addr % HUGE
    whole = nbytes // HUGE * HUGE  # the partial last page stays on 4 KiB pages
    try:
        m.madvise(mmap.MADV_HUGEPAGE, offset, whole)
    except OSError:  # THP compiled out or disabled: the mapping still serves, on 4 KiB pages
        pass
    return m, offset


def zeros(shape, dtype=np.float32) -> np.ndarray:
    """A zeroed, writable C-ordered array of `shape`; from ``HUGE`` bytes on its own
    2 MiB-aligned mapping advised for huge pages (see the module docstring)."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes < HUGE or not enabled():
        return np.zeros(shape, dtype)
    got = _huge(nbytes)
    if got is None:
        return np.zeros(shape, dtype)
    m, offset = got
    # the array's base keeps the mapping alive; it is unmapped when the last view goes
    return np.frombuffer(m, dtype, count, offset).reshape(shape)


def empty(shape, dtype=np.float32) -> np.ndarray:
    """As :func:`zeros` (a fresh mapping is zero anyway; small arrays are zeroed too, so
    that no caller depends on leftover contents by accident)."""
    return zeros(shape, dtype)


def full(shape, value, dtype=np.float32) -> np.ndarray:
    """A writable array of `shape` filled with `value` (on huge pages when large)."""
    a = zeros(shape, dtype)
    a.fill(value)
    return a


def huge_kib(a: np.ndarray) -> int | None:
    """KiB of `a`'s mapping backed by huge pages, from /proc/self/smaps (None: unknown,
    e.g. not Linux or `a` not on a mapping of its own)."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's base: a view of the mapping
        base = base.obj
    if not isinstance(base, mmap.mmap):
        return None
    start = a.ctypes.data  # madvise split the mapping: the array's own part
    try:
        with open("/proc/self/smaps") as f:
            lines = f.readlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(None, 1)[0]
        if "-" in head and ":" not in head:  # a mapping's first line: "lo-hi perms ..."
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= start < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return None
