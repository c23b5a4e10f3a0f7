"""Image sources: what a data set's images are, whether in memory, on disk or in a folder.

A split's images are *an image source*: an object with ``len()``, ``.shape``
``(N, C, H, W)``, ``.dtype`` uint8 and ``source[idx]`` for an int, a slice or a 1-D
array of indices, returning uint8 ``(n, C, H, W)`` (an int gives ``n == 1``). A NumPy
array or memmap is one as it is; a packed store (:mod:`netdsl.train.store`) and an
image folder (:mod:`netdsl.train.images`) are others. A source pickles cheaply (its
paths, never its pixels), so worker processes can reopen it, and reading it from several
processes at once is safe (each opens its own files).

>>> import numpy as np
>>> x = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
>>> take(x, 1).shape, take(x, np.array([1, 0]))[0, 0, 0, 0]
((1, 1, 2, 2), np.uint8(4))
>>> sub = subset(x, 1, 2)
>>> sub.shape, take(sub, 0)[0, 0, 0, 0]
((1, 1, 2, 2), np.uint8(4))
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ImageSource", "SubsetSource", "describe_source", "normalize_index", "subset", "take"]


@runtime_checkable
class ImageSource(Protocol):
    """The images of one split, read on demand (see the module docstring)."""

    @property
    def shape(self) -> tuple[int, int, int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any) -> np.ndarray: ...


def normalize_index(idx: Any, n: int) -> np.ndarray:
    """``idx`` (an int, a slice or 1-D integer indices, negatives counted from the end)
    as an int64 array of indices into ``n`` items; IndexError when one is out of range."""
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx]
    arr = np.asarray(idx)
    if arr.dtype == bool:
        raise IndexError("boolean masks are not image-source indices; use np.flatnonzero")
    if not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"image-source indices must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1) if arr.ndim <= 1 else None
    if arr is None:
        raise IndexError("image-source indices must be an int, a slice or a 1-D array")
    if arr.size and (arr.min() < -n or arr.max() >= n):
        bad = int(arr[(arr < -n) | (arr >= n)][0])
        raise IndexError(f"image index {bad} is out of range for {n} images")
    return np.where(arr < 0, arr + n, arr)


def take(source: ImageSource | np.ndarray, idx: Any) -> np.ndarray:
    """The images ``idx`` of ``source`` as a uint8 ``(n, C, H, W)`` array in memory, in
    the order of ``idx`` (``n == 1`` for an int index).

    An array memory-mapped from a whole file is read with pread, runs of consecutive rows
    in one read, not through the map: pages touched through a map count in the reading
    process's resident size, which would grow to the size of the data set over an epoch.
    Other arrays are read in sorted order (sequential access), then put back in order.
    """
    if not isinstance(source, np.ndarray):
        return source[idx]
    if isinstance(idx, int | np.integer):
        idx = [int(idx)]
    if isinstance(idx, slice):
        idx = np.arange(source.shape[0], dtype=np.int64)[idx]
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim == 1 and _file_rows(source):
        return _pread_rows(source, idx)
    if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, *source.shape[1:]), source.dtype)
        out[order] = source[idx[order]]
        return out
    out = source[idx]
    return np.array(out) if isinstance(out, np.memmap) else out


def _file_rows(a: Any) -> bool:
    """Whether an array is a C-ordered np.memmap of a whole file region (its offset its
    own, not a view of another memmap), so its rows can be read from the file."""
    return (isinstance(a, np.memmap) and bool(a.filename) and a.ndim >= 1
            and a.flags.c_contiguous and not isinstance(a.base, np.ndarray))  # fmt: skip


def _pread_rows(a: np.memmap, idx: np.ndarray) -> np.ndarray:
    """Rows ``a[idx]`` read from ``a``'s file, runs of consecutive rows in one read."""
    n = a.shape[0]
    idx = normalize_index(idx, n)
    order = np.argsort(idx, kind="stable")
    rows = idx[order]
    out = np.empty((idx.size, *a.shape[1:]), a.dtype)
    row = int(np.prod(a.shape[1:])) * a.dtype.itemsize
    buf = out.view(np.uint8).reshape(idx.size, row)
    with open(a.filename, "rb", buffering=0) as f:
        j = 0
        while j < rows.size:
            k = j + 1
            while k < rows.size and rows[k] == rows[k - 1] + 1:
                k += 1
            want = (k - j) * row
            view = memoryview(buf[j:k].reshape(-1))
            got = os.preadv(f.fileno(), [view], a.offset + int(rows[j]) * row)
            if got != want:
                raise OSError(f"the file ends early: {got} of {want} bytes at image {rows[j]}")
            j = k
    if np.any(order[1:] < order[:-1]):
        unsorted = np.empty_like(out)
        unsorted[order] = out
        return unsorted
    return out


class SubsetSource:
    """The images ``start..stop`` of another source, without reading them (for --limit and
    a held-out validation split). Pickles as the parent source plus two numbers."""

    def __init__(self, parent: ImageSource | np.ndarray, start: int, stop: int) -> None:
        n = len(parent)
        start, stop, _ = slice(start, stop).indices(n)
        self.parent, self.start, self.stop = parent, start, max(start, stop)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.stop - self.start, *tuple(self.parent.shape[1:]))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.parent.dtype)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, idx: Any) -> np.ndarray:
        return take(self.parent, normalize_index(idx, len(self)) + self.start)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = take(self.parent, slice(self.start, self.stop))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"SubsetSource({describe_source(self.parent)}, {self.start}, {self.stop})"


def subset(source: ImageSource | np.ndarray, start: int, stop: int) -> ImageSource | np.ndarray:
    """Images ``start..stop`` of ``source`` (Python slice bounds): a view of an array in
    memory, else a :class:`SubsetSource` (nothing read; a memmap's rows are then still
    read from its file)."""
    if isinstance(source, np.ndarray) and not _file_rows(source):
        return source[start:stop]
    if isinstance(source, SubsetSource):
        a, b, _ = slice(start, stop).indices(len(source))
        return SubsetSource(source.parent, source.start + a, source.start + max(a, b))
    return SubsetSource(source, start, stop)


def describe_source(source: Any) -> str:
    """The file (or folder) a source reads, for messages; a plain description if none."""
    if isinstance(source, SubsetSource):
        return describe_source(source.parent)
    for name in ("filename", "path", "root", "name"):
        v = getattr(source, name, None)
        if isinstance(v, str | os.PathLike) and str(v):
            return str(v)
    if isinstance(source, np.ndarray):
        return f"{'x'.join(map(str, source.shape))} {source.dtype} array in memory"
    return type(source).__name__
