"""The packed store: a data set as uint8 shards on disk, read without loading it whole.

``netdsl pack`` (:mod:`netdsl.train.pack`) writes a store folder::

    STORE/manifest.json          format and version, splits, shards, class names,
                                 statistics, fingerprint, skipped files (written last)
    STORE/train-00000.npy ...    uint8 (n, C, H, W) shards: plain .npy files, so
                                 np.load(path, mmap_mode="r") maps one as it is
    STORE/train-labels.npy       int64 (N,) labels
    STORE/test-00000.npy ...     the test split, when there is one

Opening a store (:func:`open_store`) reads the manifest and the labels and checks every
shard's size and header against the manifest (cheap, always); the pixels are not read.
The fingerprint (a hash of every pixel and label, the same as
``runinfo.data_fingerprint`` of the arrays, so a packed MNIST and the shipped MNIST have
the same) is recomputed only by ``netdsl pack --verify STORE`` (:func:`verify_store`).

The statistics are those of the training split, on the [0, 1] scale of ``to_float``:
per-channel mean and standard deviation (of all pixels) and the eigenvalues and
eigenvectors of the channels' covariance (for AlexNet's PCA lighting), summed exactly in
integers while packing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .paths import show_path
from .sources import normalize_index

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "ImageStats",
    "PixelSums",
    "StoreSource",
    "StoreWriter",
    "is_store",
    "open_store",
    "store_fingerprint",
    "verify_store",
]

MANIFEST = "manifest.json"
FORMAT = "netdsl-store"
VERSION = 1
SPLITS = ("train", "test")
_READ_CHUNK = 1 << 26  # bytes hashed at a time by store_fingerprint


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class ImageStats:
    """Per-channel mean/std and the channel covariance's eigen-decomposition of a
    training split, on the [0, 1] pixel scale; ``eigvec[:, i]`` goes with ``eigval[i]``
    (decreasing), as ``augment.pca_of_pixels`` gives them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    eigval: np.ndarray
    eigvec: np.ndarray
    pixels: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "eigval": [float(v) for v in self.eigval],
            "eigvec": [[float(v) for v in row] for row in self.eigvec],
            "pixels": int(self.pixels),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageStats:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                   np.asarray(d["eigval"], np.float64), np.asarray(d["eigvec"], np.float64),
                   int(d["pixels"]))  # fmt: skip


class PixelSums:
    """Exact integer sums of pixel values and of their channel products, added image
    batch by image batch (in a worker or not) and merged; :meth:`stats` at the end."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.total = np.zeros(channels, np.int64)
        self.outer = np.zeros((channels, channels), np.int64)

    def add(self, x: np.ndarray, chunk_pixels: int = 1 << 20) -> None:
        """Add uint8 images ``(n, C, H, W)``. Each chunk's float64 sums are exact (below
        2**53), and are added as integers."""
        c = x.shape[1]
        per = max(1, chunk_pixels // max(1, x.shape[2] * x.shape[3]))
        for s in range(0, len(x), per):
            p = x[s : s + per].transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
            self.count += p.shape[0]
            self.total += np.rint(p.sum(axis=0)).astype(np.int64)
            self.outer += np.rint(p.T @ p).astype(np.int64)

    def merge(self, other: PixelSums) -> None:
        self.count += other.count
        self.total += other.total
        self.outer += other.outer

    def stats(self) -> ImageStats | None:
        """The statistics (None with fewer than two pixels)."""
        n = self.count
        if n < 2:
            return None
        total = self.total.astype(np.float64) / 255.0
        outer = self.outer.astype(np.float64) / (255.0 * 255.0)
        mean = total / n
        var = np.maximum(np.diag(outer) / n - mean**2, 0.0)
        cov = (outer - n * np.outer(mean, mean)) / (n - 1)  # as augment.pca_of_pixels
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        return ImageStats(tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var)),
                          np.maximum(eigval[order], 0.0), eigvec[:, order], n)  # fmt: skip


# ------------------------------------------------------------------ reading


class StoreSource:
    """One split of a store as an image source (:mod:`netdsl.train.sources`).

    Images are read with ``os.pread`` from each shard's file (opened once per process),
    so reading from several processes is safe and pages read are not kept mapped: memory
    does not grow with the store. Pickles as its paths and counts.
    """

    def __init__(self, root: str | os.PathLike, files: list[str], counts: list[int],
                 image_shape: tuple[int, int, int], offsets: list[int]) -> None:  # fmt: skip
        self.root = str(root)
        self.files = list(files)
        self.counts = [int(c) for c in counts]
        self.image_shape = tuple(int(v) for v in image_shape)
        self.data_offsets = [int(o) for o in offsets]  # where each shard's pixels start
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}  # file descriptors do not travel; the new process opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.starts[-1]), *self.image_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are shared; reopen
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            path = os.path.join(self.root, self.files[shard])
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{show_path(path)}: cannot read store shard: "
                                f"{e.strerror or e}") from None  # fmt: skip
            self._fds[shard] = fd
        return fd

    def _read(self, shard: int, first: int, n: int) -> bytes:
        per = math.prod(self.image_shape)
        want = n * per
        fd = self._fd(shard)
        buf = os.pread(fd, want, self.data_offsets[shard] + first * per)
        if len(buf) != want:
            path = os.path.join(self.root, self.files[shard])
            raise DataError(f"{show_path(path)}: store shard is shorter than its manifest "
                            f"says (read {len(buf):,} of {want:,} bytes): cut short since "
                            "packing?")  # fmt: skip
        return buf

    def __getitem__(self, idx: Any) -> np.ndarray:
        ids = normalize_index(idx, len(self))
        out = np.empty((len(ids), *self.image_shape), np.uint8)
        flat = out.reshape(len(ids), -1)
        shards = np.searchsorted(self.starts, ids, side="right") - 1
        k = 0
        while k < len(ids):  # one read per run of consecutive images in one shard
            s, first = int(shards[k]), int(ids[k])
            end = k + 1
            while end < len(ids) and shards[end] == s and ids[end] == ids[end - 1] + 1:
                end += 1
            data = self._read(s, first - int(self.starts[s]), end - k)
            flat[k:end] = np.frombuffer(data, np.uint8).reshape(end - k, -1)
            k = end
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Close the shard files this process opened."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}

    def __del__(self) -> None:
        self.close()


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a store manifest."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The store's manifest, checked for its format and version; DataError naming it."""
    path = Path(root) / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{show_path(path)}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{show_path(path)}: not a valid store manifest: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{show_path(path)}: not a netdsl store manifest (no \"format\": "
                        f"\"{FORMAT}\")")  # fmt: skip
    if m.get("version") != VERSION:
        raise DataError(f"{show_path(path)}: store format version {m.get('version')!r}; this "
                        f"netdsl reads version {VERSION}: pack the data again")  # fmt: skip
    return m


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file from its header."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            if fortran:
                raise ValueError("Fortran-ordered")
            return tuple(shape), dtype, f.tell()
    except OSError as e:
        raise DataError(f"{show_path(path)}: cannot read store file: {e.strerror or e}") from None
    except (ValueError, TypeError, SyntaxError) as e:
        raise DataError(f"{show_path(path)}: not a valid .npy store file: {e}") from None


def _split_source(root: Path, m: dict[str, Any], split: str) -> tuple[StoreSource, np.ndarray]:
    shape = tuple(m["image_shape"])
    entry = m["splits"][split]
    files, counts, offsets = [], [], []
    per = math.prod(shape)
    for sh in entry["shards"]:
        path = root / sh["file"]
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"{show_path(path)}: missing store shard: {e.strerror or e}") from None
        if size != sh["bytes"]:
            raise DataError(f"{show_path(path)}: {size:,} bytes, the manifest says "
                            f"{sh['bytes']:,}: the store was changed or cut short; pack it "
                            "again")  # fmt: skip
        got, dtype, off = _npy_header(path)
        if got != (sh["count"], *shape) or dtype != np.uint8 or off + sh["count"] * per != size:
            raise DataError(f"{show_path(path)}: holds {dtype} {got}, the manifest says uint8 "
                            f"{(sh['count'], *shape)}")  # fmt: skip
        files.append(sh["file"])
        counts.append(sh["count"])
        offsets.append(off)
    labels_path = root / entry["labels"]
    got, dtype, _ = _npy_header(labels_path)
    if got != (sum(counts),) or dtype != np.int64:
        raise DataError(f"{show_path(labels_path)}: holds {dtype} {got}, expected int64 "
                        f"({sum(counts)},) labels")  # fmt: skip
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{show_path(labels_path)}: cannot read labels: {e}") from None
    return StoreSource(root, files, counts, shape, offsets), labels


def open_store(root: str | os.PathLike):
    """The store in ``root`` as a :class:`~netdsl.train.data.Dataset` whose images are
    :class:`StoreSource` objects (nothing but the labels is read)."""
    from .data import Dataset

    root = Path(root)
    m = read_manifest(root)
    try:
        x_train, y_train = _split_source(root, m, "train")
        shape = tuple(m["image_shape"])
        if "test" in m["splits"]:
            x_test, y_test = _split_source(root, m, "test")
        else:
            x_test, y_test = np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64)
        names = m.get("class_names")
        stats = ImageStats.from_json(m["stats"]) if m.get("stats") else None
        classes = int(m["classes"])
        fingerprint = str(m["fingerprint"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{show_path(root / MANIFEST)}: malformed store manifest ({e!r})") from None
    return Dataset(x_train, y_train, x_test, y_test, classes, m.get("name") or root.name,
                   class_names=tuple(names) if names else None, stats=stats,
                   known_fingerprint=fingerprint)  # fmt: skip


# ------------------------------------------------------------------ fingerprint


def _hash_header(h, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    # exactly what runinfo.data_fingerprint feeds for an array
    h.update(f"{np.dtype(dtype).str}{tuple(int(v) for v in shape)};".encode())


def store_fingerprint(root: str | os.PathLike, m: dict[str, Any] | None = None) -> str:
    """The content fingerprint of a store, read from its files: equal to
    ``runinfo.data_fingerprint(x_train, y_train, x_test, y_test)`` of its arrays."""
    root = Path(root)
    m = m or read_manifest(root)
    shape = tuple(m["image_shape"])
    h = hashlib.blake2b(digest_size=16)
    for split in SPLITS:
        entry = m["splits"].get(split)
        if entry is None:
            _hash_header(h, np.uint8, (0, *shape))
            _hash_header(h, np.int64, (0,))
            continue
        n = sum(sh["count"] for sh in entry["shards"])
        _hash_header(h, np.uint8, (n, *shape))
        for sh in entry["shards"]:
            path = root / sh["file"]
            _, _, off = _npy_header(path)
            _hash_file(h, path, off)
        labels = np.load(root / entry["labels"], allow_pickle=False)
        _hash_header(h, np.int64, labels.shape)
        h.update(np.ascontiguousarray(labels, np.int64).view(np.uint8).data)
    return "blake2b:" + h.hexdigest()


def _hash_file(h, path: Path, offset: int) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{show_path(path)}: cannot read: {e.strerror or e}") from None


def verify_store(root: str | os.PathLike) -> str:
    """Open the store (manifest, sizes, headers), then recompute its fingerprint from every
    byte; DataError when it differs. Returns a one-line report."""
    root = Path(root)
    ds = open_store(root)
    m = read_manifest(root)
    got = store_fingerprint(root, m)
    if got != m["fingerprint"]:
        raise DataError(f"{show_path(root)}: the store's contents changed since packing: "
                        f"fingerprint {got}, the manifest says {m['fingerprint']}")  # fmt: skip
    return (f"{show_path(root)}: ok: {len(ds.y_train):,} training and {len(ds.y_test):,} test "
            f"images of {'x'.join(map(str, ds.image_shape))}, fingerprint {got}")  # fmt: skip


# ------------------------------------------------------------------ writing


class StoreWriter:
    """Writes shards into a (temporary) folder as images arrive, split by split, and the
    training split's :class:`PixelSums`; :meth:`manifest` describes what was written."""

    def __init__(self, folder: str | os.PathLike, image_shape: tuple[int, int, int],
                 shard_images: int) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.shard_images = max(1, int(shard_images))
        self.splits: dict[str, dict[str, Any]] = {}
        self._buf = np.empty((self.shard_images, *self.image_shape), np.uint8)
        self._fill = 0
        self._split: str | None = None
        self._labels: list[np.ndarray] = []
        self.sums = PixelSums(self.image_shape[0])

    def begin(self, split: str) -> None:
        self._split = split
        self.splits[split] = {"shards": [], "labels": f"{split}-labels.npy"}
        self._labels = []

    def add(self, images: np.ndarray, labels: np.ndarray, sums: PixelSums | None = None) -> None:
        """Append uint8 images of this split (their sums, when a worker made them)."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"images {images.dtype} {images.shape[1:]} do not fit the store's "
                             f"uint8 {self.image_shape}")  # fmt: skip
        if self._split == "train":
            if sums is None:
                self.sums.add(images)
            else:
                self.sums.merge(sums)
        self._labels.append(np.asarray(labels, np.int64))
        k = 0
        while k < len(images):
            n = min(len(images) - k, self.shard_images - self._fill)
            self._buf[self._fill : self._fill + n] = images[k : k + n]
            self._fill += n
            k += n
            if self._fill == self.shard_images:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        entry = self.splits[self._split]
        name = f"{self._split}-{len(entry['shards']):05d}.npy"
        path = self.folder / name
        with open(path, "wb") as f:
            np.lib.format.write_array(f, self._buf[: self._fill], allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        entry["shards"].append({"file": name, "count": self._fill,
                                "bytes": path.stat().st_size})  # fmt: skip
        self._fill = 0

    def end(self) -> int:
        """Finish the split: the last shard and the labels; returns its image count."""
        self._flush()
        entry = self.splits[self._split]
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        with open(self.folder / entry["labels"], "wb") as f:
            np.lib.format.write_array(f, labels, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        entry["count"] = int(len(labels))
        self._split = None
        return int(len(labels))

    def drop_empty(self, splits: Iterable[str]) -> None:
        """Forget splits that received no image (their labels file is removed)."""
        for s in list(splits):
            if s in self.splits and self.splits[s].get("count") == 0:
                (self.folder / self.splits[s]["labels"]).unlink(missing_ok=True)
                del self.splits[s]
