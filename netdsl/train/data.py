"""Datasets as NumPy arrays: IDX (MNIST), CIFAR-10 binary batches and ``.npz`` files.

Every reader validates what it reads and reports a bad file as a
:class:`~netdsl.errors.DataError` whose message starts with the file's path, so a user
sees *which* file is wrong and *how* without a traceback::

    >>> from netdsl.train.data import load_dataset
    >>> ds = load_dataset("mnist")
    >>> ds.x_train.shape, ds.num_classes
    ((60000, 1, 28, 28), 10)

Images are always ``N x C x H x W`` (uint8, or float32 for float sources) and labels
int64, whatever the source layout.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from netdsl.errors import DataError
from netdsl.train.paths import os_problem, show_path

if TYPE_CHECKING:
    from netdsl.train.sources import ImageSource
    from netdsl.train.store import ImageStats

__all__ = [
    "Dataset",
    "compute_mean_std",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "read_cifar10_batches",
    "read_idx",
    "read_images",
    "read_npz",
    "to_float",
]

PathLike = str | os.PathLike

# IDX type codes (third magic byte) -> big-endian NumPy dtype. A read-only mapping so
# that the module holds no mutable state.
_IDX_DTYPES = MappingProxyType(
    {
        0x08: np.dtype(">u1"),
        0x09: np.dtype(">i1"),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
)

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # bytes read at a time from a stream
MAX_LABEL = 2**31 - 1  # the largest class number a label may hold
_MAX_TAIL = 1 << 20  # trailing bytes of a compressed IDX read to count them, at most
_ZIP_MAGIC = b"PK\x03\x04"
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_ACCEPTED_SPECS = (
    "'mnist' (the shipped MNIST), 'cifar10:DIR' or a directory holding the CIFAR-10 "
    "binary batches (data_batch_1..5.bin, test_batch.bin), a directory holding "
    "MNIST-style IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), a TRAIN.npz file, or a "
    "pair 'TRAIN.npz,TEST.npz' (arrays 'x' and 'y'), an image folder (train/CLASS/*.jpg "
    "and val/CLASS/*.jpg) or a store written by `netdsl pack`"
)


def _fail(path: PathLike, problem: str) -> DataError:
    """Build the error every reader raises: ``PATH: problem`` (a very long path shortened)."""
    return DataError(f"{show_path(path)}: {problem}")


def _open(path: PathLike) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise _fail(path, f"cannot read: {os_problem(e)}") from e
    except ValueError as e:  # a NUL byte in the name
        raise _fail(repr(os.fspath(path)), f"cannot read: {e}") from e


def _read_head(path: PathLike, n: int) -> bytes:
    with _open(path) as f:
        try:
            return f.read(n)
        except OSError as e:
            raise _fail(path, f"cannot read: {os_problem(e)}") from e


def _read_bytes(path: PathLike) -> bytes:
    with _open(path) as f:
        try:
            return f.read()
        except OSError as e:
            raise _fail(path, f"cannot read: {os_problem(e)}") from e


def _read_upto(stream: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes of ``stream``, read in chunks: memory grows with what is really
    there, never with what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        piece = stream.read(min(_CHUNK, n - len(buf)))
        if not piece:
            break
        buf += piece
    return buf


# --------------------------------------------------------------------------- IDX


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian array.

    Compression is detected from the gzip magic bytes, not the file name. A gzip file
    is decompressed as a stream and only as far as its header says, so a small header
    in front of gigabytes of data is refused without reading them.

    >>> labels = read_idx("netdsl/datasets/mnist/t10k-labels-idx1-ubyte.gz")
    >>> labels.shape, labels.dtype
    ((10000,), dtype('uint8'))

    Raises DataError (naming the file) for a bad magic number, an unknown type code,
    a truncated header or body, trailing bytes, or corrupt gzip data.
    """
    with _open(path) as f:
        try:
            gz = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if not gz:
                return _read_idx_stream(path, f, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise _fail(path, f"cannot read: {os_problem(e)}") from e
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as z:
                return _read_idx_stream(path, z, None)
        except (OSError, EOFError, zlib.error) as e:
            # gzip.BadGzipFile is an OSError; a cut-off stream is an EOFError.
            raise _fail(path, f"corrupt gzip data: {e}") from e


def _read_idx_stream(path: PathLike, f: BinaryIO, size: int | None) -> np.ndarray:
    """The IDX array in ``f``; ``size`` is the file's size when known (not compressed)."""
    head = f.read(4)
    if len(head) < 4:
        raise _fail(path, f"not an IDX file: only {len(head)} bytes, too short for a header")
    if head[0] != 0 or head[1] != 0:
        raise _fail(
            path,
            f"bad magic number 0x{head.hex()}: an IDX file starts with 00 00 TYPE NDIM",
        )
    code, ndim = head[2], head[3]
    dtype = _IDX_DTYPES.get(code)
    if dtype is None:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise _fail(path, f"unsupported IDX data type code 0x{code:02X} (supported: {known})")
    if ndim == 0:
        raise _fail(path, "IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise _fail(
            path,
            f"truncated header: {ndim} dimensions need {header} header bytes, "
            f"found {4 + len(raw_dims)}",
        )
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    expected = math.prod(dims) * dtype.itemsize
    if size is not None:  # a plain file: compare before reading a byte of data
        found = size - header
    else:
        data = _read_upto(f, expected)
        found = len(data)
        if found == expected:
            found += len(_read_upto(f, _MAX_TAIL + 1))
    if found < expected:
        raise _fail(path, f"truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        if found > expected + _MAX_TAIL and size is None:  # not read to the end
            raise _fail(path, f"more than {_MAX_TAIL:,} unexpected trailing bytes: dimensions "
                              f"{dims} call for exactly {expected} bytes of data")  # fmt: skip
        raise _fail(
            path,
            f"{found - expected} unexpected trailing bytes: dimensions {dims} "
            f"call for exactly {expected} bytes of data, found {found}",
        )
    if size is not None:
        data = _read_upto(f, expected)
        if len(data) < expected:  # the file shrank while we read it
            raise _fail(path, f"truncated: expected {expected} bytes of data, found {len(data)}")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    # astype copies into native byte order (and gives a writable array)
    return arr.astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------- CIFAR-10


def read_cifar10_batches(paths: Sequence[PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 binary-version batch files into ``(x uint8 (N,3,32,32), y int64)``.

    Each record is 1 label byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
    row-major), which is already channel-first.

    >>> x, y = read_cifar10_batches(["cifar-10-batches-bin/test_batch.bin"])  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    ((10000, 3, 32, 32), (10000,))
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]  # a lone path is an easy mistake; accept it
    xs, ys = [], []
    for path in paths:
        raw = _read_bytes(path)
        if len(raw) == 0:
            raise _fail(path, "empty file: no CIFAR-10 records")
        if len(raw) % _CIFAR_RECORD:
            raise _fail(
                path,
                f"size {len(raw)} bytes is not a multiple of the {_CIFAR_RECORD}-byte "
                "CIFAR-10 record (1 label byte + 3072 pixel bytes); is this the "
                "binary version, complete?",
            )
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
        labels = records[:, 0]
        bad = np.flatnonzero(labels >= 10)
        if bad.size:
            raise _fail(
                path,
                f"label {int(labels[bad[0]])} in record {int(bad[0])} is out of range 0..9",
            )
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    if not xs:
        raise DataError("read_cifar10_batches: no batch files given")
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------- npz


def read_npz(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` (N,C,H,W or N,H,W) and ``y`` (N,) from an ``.npz``, never unpickling.

    ``x`` comes back as uint8 when stored as uint8, else float32; (N,H,W) gains a
    channel axis. ``y`` comes back as int64.

    >>> import numpy as np
    >>> np.savez("tiny.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 1]))
    >>> x, y = read_npz("tiny.npz")
    >>> x.shape, y.tolist()
    ((2, 1, 8, 8), [0, 1])
    """
    arrays = _read_npz_arrays(path, required=("x", "y"))
    return _check_xy(path, arrays["x"], arrays["y"])


_PICKLE_REFUSED = (
    "holds pickled (object) arrays, which are refused for safety; save plain numeric "
    "arrays (uint8 or float images, integer labels), e.g. np.savez(path, x=images, y=labels)"
)


def _read_npz_arrays(
    path: PathLike, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz``; each member's header is checked against the size
    the archive stores for it before anything is allocated, and nothing is unpickled."""
    if _read_head(path, 4) != _ZIP_MAGIC:
        raise _fail(path, "not an .npz archive (no zip signature); expected np.savez output")
    out: dict[str, np.ndarray] = {}
    try:
        with _open(path) as f, zipfile.ZipFile(f) as zf:
            members = {n[: -len(".npy")]: n for n in zf.namelist() if n.endswith(".npy")}
            missing = [k for k in required if k not in members]
            if missing:
                found = ", ".join(repr(k) for k in members) or "none"
                other = [n for n in zf.namelist() if not n.endswith(".npy")]
                if other:
                    found += f"; other members: {', '.join(repr(n) for n in other[:5])}"
                raise _fail(
                    path,
                    f"missing array {', '.join(repr(k) for k in missing)} (found: {found}); "
                    "expected arrays 'x' (images) and 'y' (labels)",
                )
            for name in (*required, *(k for k in optional if k in members)):
                info = zf.getinfo(members[name])
                with zf.open(info) as m:
                    _check_npy_header(path, f"array {name!r}", m, info.file_size)
                with zf.open(info) as m:
                    out[name] = np.lib.format.read_array(m, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _fail(path, _PICKLE_REFUSED) from e
        raise _fail(path, f"not a valid .npz archive: {e}") from e
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError) as e:
        raise _fail(path, f"corrupt or truncated .npz: {e}") from e
    return out


def _check_npy_header(path: PathLike, what: str, f: BinaryIO, size: int) -> None:
    """Check the ``.npy`` header at the start of ``f`` (a stream of ``size`` bytes): a plain
    numeric array whose declared shape fits in the bytes that follow."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(f)
    except (ValueError, TypeError, SyntaxError) as e:
        raise _fail(path, f"{what} is not a valid .npy array: {e}") from e
    if dtype.hasobject:
        raise _fail(path, _PICKLE_REFUSED)
    need = math.prod(shape) * dtype.itemsize
    have = size - f.tell()
    if need > have:
        raise _fail(
            path,
            f"{what} declares shape {shape} of {dtype} ({need:,} bytes) but holds only "
            f"{max(have, 0):,} bytes: truncated or corrupt",
        )


def _check_xy(
    path: PathLike, x: np.ndarray, y: np.ndarray, what: str = "x"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise an (images, labels) pair read from ``path``; ``what`` names
    the images in messages."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise _fail(path, f"{what} has shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    x = _image_dtype(path, x, what)
    _check_labels(path, y)
    if x.shape[0] != y.shape[0]:
        raise _fail(path, f"count mismatch: {what} {_has(what)} {x.shape[0]} images but y has "
                          f"{y.shape[0]}")  # fmt: skip
    if x.shape[0] == 0:
        raise _fail(path, "holds no samples")
    check_finite(path, x, what)
    return np.ascontiguousarray(x), y.astype(np.int64)


def _has(what: str) -> str:
    return "have" if what.endswith("s") else "has"


def _check_labels(path: PathLike, y: np.ndarray) -> None:
    """Labels are a vector of class numbers 0..MAX_LABEL (checked before any cast to int64,
    so a uint64 label cannot wrap around to a negative one)."""
    if y.ndim != 1:
        raise _fail(path, f"y has shape {y.shape}; expected (N,) integer labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise _fail(path, f"y has dtype {y.dtype}; expected integer class labels")
    if y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())  # Python ints: exact for every integer dtype
    if lo < 0:
        raise _fail(path, f"negative label {lo} (sample {int(np.argmin(y))}); labels must be "
                          "0..K-1")  # fmt: skip
    if hi > MAX_LABEL:
        raise _fail(path, f"label {hi} (sample {int(np.argmax(y))}) is out of range; labels are "
                          f"class numbers 0..K-1 (at most {MAX_LABEL:,})")  # fmt: skip


def _image_dtype(path: PathLike, x: np.ndarray, what: str) -> np.ndarray:
    """uint8 images as they are, floating-point ones as float32; anything else refused."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        with np.errstate(over="ignore"):  # values beyond float32 become inf: reported next
            return x.astype(np.float32)
    raise _fail(path, f"{what} {_has(what)} dtype {x.dtype}; expected uint8 or floating-point "
                      "images (float images are taken as already scaled to [0, 1])")  # fmt: skip


def check_finite(path: PathLike, x: np.ndarray, what: str, cause: str = "",
                 chunk: int = 1 << 22) -> None:  # fmt: skip
    """Refuse NaN and infinite pixels (a float64 value beyond float32's range counts), in
    chunks (no mask the size of the data set); `cause` says how they came about, if known."""
    if x.dtype == np.uint8:
        return
    flat = x.reshape(-1)
    per_image = max(1, math.prod(x.shape[1:]))
    nan = inf = 0
    first = -1
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        bad = ~np.isfinite(part)
        if bad.any():
            n_nan = int(np.isnan(part).sum())
            nan, inf = nan + n_nan, inf + int(bad.sum()) - n_nan
            if first < 0:
                first = (start + int(np.argmax(bad))) // per_image
    if nan or inf:
        counts = " and ".join(f"{n:,} {kind} value{'s' if n != 1 else ''}"
                              for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)  # fmt: skip
        hold = "hold" if what.endswith("s") else "holds"
        raise _fail(path, f"{what} {hold} {counts}{cause} (the first in image {first}); training "
                          "needs finite pixels: fix or drop those images")  # fmt: skip


# ------------------------------------------------------------------ images alone


def read_images(path: PathLike, channels: int = 1) -> np.ndarray:
    """Images to classify, as ``(N, C, H, W)`` uint8 or float32, from an ``.npz`` (array
    ``x``; ``y`` is not needed), an ``.npy`` or an IDX file.

    One image may be given alone: ``(H, W)``, or ``(C, H, W)`` when ``C`` equals
    ``channels`` (the network's input channels) and is more than 1; any other 3-D array is
    a stack ``(N, H, W)`` of one-channel images.

    >>> import numpy as np
    >>> np.save("one.npy", np.zeros((28, 28), np.uint8))
    >>> read_images("one.npy").shape
    (1, 1, 28, 28)
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        x = _read_npz_arrays(path, required=("x",))["x"]
    elif suffix == ".npy":
        x = _read_npy(path)
    else:
        if _read_head(path, 2) not in (_GZIP_MAGIC, b"\0\0"):
            raise _fail(path, "not an image file: expected an .npz (array 'x'), an .npy or "
                              "an IDX file (gzip-compressed or not)")  # fmt: skip
        x = read_idx(path)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None] if channels > 1 and x.shape[0] == channels else x[:, None]
    if x.ndim != 4:
        raise _fail(path, f"images have shape {x.shape}; expected one image (H, W) or "
                          "(C, H, W), or a stack (N, H, W) or (N, C, H, W)")  # fmt: skip
    if x.shape[0] == 0:
        raise _fail(path, "holds no images")
    x = _image_dtype(path, x, "images")
    check_finite(path, x, "images")
    return np.ascontiguousarray(x)


def _read_npy(path: PathLike) -> np.ndarray:
    """A plain ``.npy`` array; its header is checked against the file size first."""
    if _read_head(path, 6) != b"\x93NUMPY":
        raise _fail(path, "not an .npy file (no NUMPY signature); expected np.save output")
    try:
        with _open(path) as f:
            _check_npy_header(path, "the array", f, os.fstat(f.fileno()).st_size)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _fail(path, "holds a pickled (object) array, which is refused for safety") from e
        raise _fail(path, f"not a valid .npy file: {e}") from e
    except (OSError, EOFError) as e:
        raise _fail(path, f"cannot read: {os_problem(e)}") from e


# ------------------------------------------------------------------------ Dataset


@dataclass
class Dataset:
    """Train and test splits as ``N x C x H x W`` images and int64 labels.

    ``x_test``/``y_test`` have zero rows when the source has no test split (a single
    ``.npz``); check :attr:`has_test`. The images are arrays for the in-memory formats
    and image sources (:mod:`netdsl.train.sources`: read on demand) for image folders and
    packed stores; :func:`netdsl.train.sources.take` reads either. ``class_names`` (an
    image folder's or a store's) and ``stats`` (a store's training-split statistics:
    mean, std, eigval, eigvec) are None when the source has none.

    >>> ds = load_dataset("mnist")
    >>> ds.image_shape, ds.has_test, ds.class_names
    ((1, 28, 28), True, None)
    """

    x_train: np.ndarray | ImageSource
    y_train: np.ndarray
    x_test: np.ndarray | ImageSource
    y_test: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None
    stats: ImageStats | None = None
    known_fingerprint: str | None = None  # a store's (from its manifest) or a folder's
    notes: list[str] = field(default_factory=list)  # what a folder scan skipped, in words

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def has_test(self) -> bool:
        """Whether there is a test split."""
        return len(self.y_test) > 0

    def fingerprint(self) -> str:
        """The data's content fingerprint (runinfo.data_fingerprint of the four arrays):
        a store's from its manifest, without reading it; an image folder's is a hash of
        its listing (names and labels), not of its pixels."""
        if self.known_fingerprint is not None:
            return self.known_fingerprint
        from netdsl.train.runinfo import data_fingerprint

        return data_fingerprint(self.x_train, self.y_train, self.x_test, self.y_test)


def _package_dir() -> Path:
    # The data ship inside the package (see pyproject's wheel target), so a path
    # relative to this module works from a source checkout and an installed wheel.
    return Path(__file__).resolve().parent.parent


def _resolve(spec: str, base_dir: PathLike | None) -> Path:
    """Find ``spec`` relative to ``base_dir`` (the .net file's directory), then the cwd."""
    p = Path(spec).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = ([Path(base_dir) / p] if base_dir is not None else []) + [Path.cwd() / p]
    for c in candidates:
        try:
            if c.exists():
                return c
        except OSError as e:  # a name too long for the filesystem, a folder we may not enter
            raise DataError(f"{show_path(c)}: cannot read dataset: {os_problem(e)}") from None
        except ValueError:  # a NUL byte
            raise DataError(f"{spec!r}: a dataset path cannot hold a NUL character") from None
    where = " or ".join(show_path(c) for c in candidates)
    raise DataError(f"{show_path(spec)}: dataset not found (looked for {where}); accepted: "
                    f"{_ACCEPTED_SPECS}")  # fmt: skip


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim not in (3, 4):
        raise _fail(images, f"images have shape {x.shape}; expected (N, H, W) or (N, C, H, W)")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise _fail(images, f"images have IDX type {x.dtype}; expected ubyte or float")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise _fail(labels, f"labels have shape {y.shape} and type {y.dtype}; expected (N,) ints")
    if x.shape[0] != y.shape[0]:
        raise _fail(
            labels,
            f"count mismatch: {y.shape[0]} labels for {x.shape[0]} images in {show_path(images)}",
        )
    _check_labels(labels, y)
    return _check_xy(images, x, y, what="images")


def _load_idx_dir(directory: Path, name: str) -> Dataset:
    found = {stem: _find_idx(directory, stem) for stem in _IDX_FILES}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"{show_path(directory)}: missing IDX file(s) {', '.join(m + '[.gz]' for m in missing)}"
        )
    x_train, y_train = _load_idx_pair(found[_IDX_FILES[0]], found[_IDX_FILES[1]])
    x_test, y_test = _load_idx_pair(found[_IDX_FILES[2]], found[_IDX_FILES[3]])
    return _make(name, x_train, y_train, x_test, y_test, directory)


def _cifar_dir(directory: Path) -> Path | None:
    # The official tarball unpacks to cifar-10-batches-bin/; accept its parent too.
    for d in (directory, directory / "cifar-10-batches-bin"):
        if (d / _CIFAR_TRAIN[0]).is_file():
            return d
    return None


def _load_cifar_dir(directory: Path) -> Dataset:
    d = _cifar_dir(directory)
    if d is None:
        raise DataError(
            f"{show_path(directory)}: no CIFAR-10 binary batches here (expected "
            "data_batch_1.bin .. data_batch_5.bin and test_batch.bin, or a "
            "cifar-10-batches-bin/ folder)"
        )
    missing = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (d / n).is_file()]
    if missing:
        raise DataError(f"{show_path(d)}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    x_train, y_train = read_cifar10_batches([d / n for n in _CIFAR_TRAIN])
    x_test, y_test = read_cifar10_batches([d / _CIFAR_TEST])
    return Dataset(x_train, y_train, x_test, y_test, 10, "cifar10")


def _make(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    where: PathLike,
    num_classes: int | None = None,
) -> Dataset:
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{show_path(where)}: test images are {x_test.shape[1:]} but train images are "
            f"{x_train.shape[1:]}"
        )
    if x_test.dtype != x_train.dtype:
        # one split uint8, the other float (taken as [0, 1]): meet on float32 [0, 1]
        x_train, x_test = (
            a.astype(np.float32) / np.float32(255) if a.dtype == np.uint8 else a
            for a in (x_train, x_test)
        )
    if num_classes is None:
        top = int(y_train.max())
        if len(y_test):
            top = max(top, int(y_test.max()))
        num_classes = top + 1
    return Dataset(x_train, y_train, x_test, y_test, num_classes, name)


def load_dataset(spec: str, base_dir: PathLike | None = None,
                 image_size: int | None = None) -> Dataset:  # fmt: skip
    """Load a dataset named by ``spec``.

    Accepted specs:

    * ``"mnist"`` - the MNIST files shipped in the package;
    * ``"cifar10:DIR"``, or a ``DIR`` holding ``data_batch_1..5.bin`` and
      ``test_batch.bin`` (or their ``cifar-10-batches-bin/`` folder);
    * a ``DIR`` holding MNIST-style IDX files ``train-images-idx3-ubyte[.gz]``,
      ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
      ``t10k-labels-idx1-ubyte[.gz]`` (e.g. Fashion-MNIST);
    * ``"train.npz"`` (no test split) or ``"train.npz,test.npz"``;
    * an image folder ``DIR`` holding ``train/CLASS/*.jpg`` and ``val/CLASS/*.jpg`` (or
      ``test/``), decoded when read, at ``image_size`` (default: see
      :mod:`netdsl.train.images`);
    * a store folder written by ``netdsl pack`` (holding ``manifest.json``), read from
      its shards on demand.

    Relative paths resolve against ``base_dir`` (the ``.net`` file's directory),
    then the current directory.

    >>> ds = load_dataset("mnist")
    >>> ds.x_test.shape, int(ds.y_test.max())
    ((10000, 1, 28, 28), 9)
    """
    try:
        return _load_dataset(spec, base_dir, image_size)
    except OSError as e:  # a file or folder that cannot be listed or opened
        where = show_path(e.filename) if e.filename else show_path(spec)
        raise DataError(f"{where}: cannot read dataset: {os_problem(e)}") from e


def _load_dataset(spec: str, base_dir: PathLike | None, image_size: int | None) -> Dataset:
    spec = spec.strip()
    if not spec:
        raise DataError(f"empty dataset spec; accepted: {_ACCEPTED_SPECS}")
    if spec.lower() == "mnist":
        ds = _load_idx_dir(_package_dir() / "datasets" / "mnist", "mnist")
        ds.num_classes = 10
        return ds
    if spec.lower() == "cifar10":
        raise DataError(
            "cifar10: CIFAR-10 is not shipped; download the binary version and give its "
            "directory as 'cifar10:DIR'"
        )
    if spec.lower().startswith("cifar10:"):
        return _load_cifar_dir(_resolve(spec[len("cifar10:") :], base_dir))
    if "," in spec:
        parts = [s.strip() for s in spec.split(",")]
        if len(parts) != 2 or not all(p.lower().endswith(".npz") for p in parts):
            raise DataError(
                f"{show_path(spec)}: a comma-separated spec must be 'TRAIN.npz,TEST.npz'"
            )
        train, test = (_resolve(p, base_dir) for p in parts)
        x_train, y_train = read_npz(train)
        x_test, y_test = read_npz(test)
        return _make(train.stem, x_train, y_train, x_test, y_test, test)
    path = _resolve(spec, base_dir)
    if path.is_dir():
        if _cifar_dir(path) is not None:
            return _load_cifar_dir(path)
        if _find_idx(path, _IDX_FILES[0]) is not None:
            return _load_idx_dir(path, path.name)
        from netdsl.train import images, store

        if store.is_store(path):
            return store.open_store(path)
        if images.is_image_folder(path):
            return _load_image_folder(path, image_size)
        raise DataError(f"{show_path(path)}: directory holds no recognised dataset; "
                        f"accepted: {_ACCEPTED_SPECS}")  # fmt: skip
    if path.suffix.lower() == ".npz":
        x_train, y_train = read_npz(path)
        empty_x = np.zeros((0, *x_train.shape[1:]), dtype=x_train.dtype)
        return _make(path.stem, x_train, y_train, empty_x, np.zeros(0, np.int64), path)
    raise DataError(f"{show_path(path)}: unrecognised dataset file; accepted: {_ACCEPTED_SPECS}")


def _load_image_folder(path: Path, image_size: int | None) -> Dataset:
    from netdsl.train import images

    folder = images.scan_image_folder(path, size=image_size)
    images.print_notes(folder.notes)
    if "test" in folder.splits:
        x_test, y_test = folder.source("test"), folder.labels("test")
    else:
        x_test = np.zeros((0, folder.channels, folder.size, folder.size), np.uint8)
        y_test = np.zeros(0, np.int64)
    return Dataset(folder.source("train"), folder.labels("train"), x_test, y_test,
                   len(folder.class_names), path.name, class_names=folder.class_names,
                   known_fingerprint=folder.fingerprint(), notes=folder.notes)  # fmt: skip


# -------------------------------------------------------------------- normalise


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, channels)
    if v.size != channels:
        raise ValueError(f"{what} has {v.size} values for {channels} channels")
    return v


def to_float(
    x: np.ndarray, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Normalise images to float32 ``(x/255 - mean) / std`` per channel.

    uint8 images are scaled by 1/255 first; float images are taken as already in
    [0, 1]. ``mean``/``std`` are scalars or one value per channel (axis -3).

    >>> import numpy as np
    >>> to_float(np.full((1, 1, 2, 2), 255, np.uint8), 0.5, 0.5)[0, 0, 0, 0]
    np.float32(1.0)
    """
    if not isinstance(x, np.ndarray):  # an image source (a store, a folder): read it
        x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"images must be (..., C, H, W); got shape {x.shape}")
    c = x.shape[-3]
    m = _per_channel(mean, c, "mean")
    s = _per_channel(std, c, "std")
    if np.any(s == 0):
        raise ValueError("std must be non-zero")
    out = x.astype(np.float32)  # always a fresh array, so in-place ops below are safe
    if x.dtype == np.uint8:
        out *= np.float32(1 / 255)
    out -= m[:, None, None]
    out /= s[:, None, None]
    return out


def compute_mean_std(
    x: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of images, on the [0, 1] scale of to_float.

    Sums in float64 over chunks of images so a large uint8 set never becomes one large
    float64 copy.

    >>> mean, std = compute_mean_std(load_dataset("mnist").x_train)
    >>> round(mean[0], 4), round(std[0], 4)
    (0.1307, 0.3081)
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array; got shape {x.shape}")
    scale = 1 / 255 if x.dtype == np.uint8 else 1.0
    c = x.shape[1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].astype(np.float64) * scale
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


# ---------------------------------------------------------------------- batches


def num_batches(n: int, batch: int, drop_last: bool = True) -> int:
    """Number of batches :func:`iterate_batches` yields per epoch.

    >>> num_batches(10, 4), num_batches(10, 4, drop_last=False)
    (2, 3)
    """
    return n // batch if drop_last else -(-n // batch)


def iterate_batches(
    n: int,
    batch: int,
    rng: np.random.Generator,
    shuffle: bool = True,
    drop_last: bool = True,
    shard: tuple[int, int] | None = None,
    start_batch: int = 0,
) -> Iterator[np.ndarray]:
    """Yield one epoch of int64 index arrays into a dataset of ``n`` samples.

    The epoch's permutation is drawn from ``rng`` once, when this function is called
    (not lazily), so saving ``rng``'s state before the call and restoring it later
    reproduces the epoch; ``start_batch`` skips batches already done when resuming.
    With ``shard=(rank, world)`` each batch ``b`` is cut to
    ``b[rank*len(b)//world : (rank+1)*len(b)//world]``, so ranks that share a seed split
    every global batch between them.

    >>> rng = np.random.default_rng(0)
    >>> [b.tolist() for b in iterate_batches(5, 2, rng, shuffle=False)]
    [[0, 1], [2, 3]]
    >>> [b.tolist() for b in iterate_batches(4, 4, rng, shuffle=False, shard=(1, 2))]
    [[2, 3]]
    """
    if n < 0 or batch < 1:
        raise ValueError(f"need n >= 0 and batch >= 1; got n={n}, batch={batch}")
    if shard is not None:
        rank, world = shard
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad shard (rank={rank}, world={world})")
    order = rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
    order = order.astype(np.int64, copy=False)
    count = num_batches(n, batch, drop_last)
    return _batches(order, batch, count, shard, start_batch)


def _batches(
    order: np.ndarray, batch: int, count: int, shard: tuple[int, int] | None, start: int
) -> Iterator[np.ndarray]:
    for i in range(max(start, 0), count):
        idx = order[i * batch : (i + 1) * batch]
        if shard is not None:
            rank, world = shard
            b = len(idx)
            idx = idx[rank * b // world : (rank + 1) * b // world]
        yield idx
