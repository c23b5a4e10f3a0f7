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

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ImageSource", "SubsetSource", "normalize_index", "subset", "take"]


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
    """The images ``idx`` of ``source`` as a uint8 ``(n, C, H, W)`` array in memory
    (a fresh array for a memmap or a store; ``n == 1`` for an int index)."""
    if isinstance(source, np.ndarray):
        if isinstance(idx, int | np.integer):
            idx = [int(idx)]
        out = source[idx]
        # a memmap's slice is still a view of the file: read it into memory
        return np.array(out) if isinstance(out, np.memmap) else out
    return source[idx]


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
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, idx: Any) -> np.ndarray:
        return take(self.parent, normalize_index(idx, len(self)) + self.start)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = take(self.parent, slice(self.start, self.stop))
        return out if dtype is None else out.astype(dtype)


def subset(source: ImageSource | np.ndarray, start: int, stop: int) -> ImageSource | np.ndarray:
    """Images ``start..stop`` of ``source`` (Python slice bounds): a view for an array,
    a :class:`SubsetSource` (nothing read) for any other source."""
    if isinstance(source, np.ndarray):
        return source[start:stop]
    return SubsetSource(source, start, stop)
