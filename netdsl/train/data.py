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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from netdsl.errors import DataError

__all__ = [
    "Dataset",
    "compute_mean_std",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "read_cifar10_batches",
    "read_idx",
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
    "pair 'TRAIN.npz,TEST.npz' (arrays 'x' and 'y')"
)


def _fail(path: PathLike, problem: str) -> DataError:
    """Build the error every reader raises: ``PATH: problem``."""
    return DataError(f"{os.fspath(path)}: {problem}")


def _read_head(path: PathLike, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror or e}") from e


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror or e}") from e


# --------------------------------------------------------------------------- IDX


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian array.

    Compression is detected from the gzip magic bytes, not the file name.

    >>> labels = read_idx("netdsl/datasets/mnist/t10k-labels-idx1-ubyte.gz")
    >>> labels.shape, labels.dtype
    ((10000,), dtype('uint8'))

    Raises DataError (naming the file) for a bad magic number, an unknown type code,
    a truncated header or body, trailing bytes, or corrupt gzip data.
    """
    raw = _read_bytes(path)
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            # gzip.BadGzipFile is an OSError; a cut-off stream is an EOFError.
            raise _fail(path, f"corrupt gzip data: {e}") from e
    if len(raw) < 4:
        raise _fail(path, f"not an IDX file: only {len(raw)} bytes, too short for a header")
    if raw[0] != 0 or raw[1] != 0:
        raise _fail(
            path,
            f"bad magic number 0x{raw[:4].hex()}: an IDX file starts with 00 00 TYPE NDIM",
        )
    code, ndim = raw[2], raw[3]
    dtype = _IDX_DTYPES.get(code)
    if dtype is None:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise _fail(path, f"unsupported IDX data type code 0x{code:02X} (supported: {known})")
    if ndim == 0:
        raise _fail(path, "IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _fail(
            path,
            f"truncated header: {ndim} dimensions need {header} header bytes, found {len(raw)}",
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise _fail(path, f"truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise _fail(
            path,
            f"{found - expected} unexpected trailing bytes: dimensions {dims} "
            f"call for exactly {expected} bytes of data, found {found}",
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # astype copies into native byte order and gives a writable array (frombuffer on
    # bytes is read-only).
    return data.astype(dtype.newbyteorder("="))


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
    head = _read_head(path, 4)
    if head != _ZIP_MAGIC:
        raise _fail(path, "not an .npz archive (no zip signature); expected np.savez output")
    try:
        # allow_pickle=False: a data file must never be able to run code on load.
        # our own handle: np.load leaks its file when the zip directory is bad
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise _fail(
                    path,
                    f"missing array {', '.join(repr(k) for k in missing)} "
                    f"(found: {', '.join(repr(k) for k in npz.files) or 'none'}); "
                    "expected arrays 'x' (images) and 'y' (labels)",
                )
            x, y = npz["x"], npz["y"]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _fail(
                path,
                "holds pickled (object) arrays, which are refused for safety; save plain "
                "numeric arrays with np.savez(path, x=images, y=labels)",
            ) from e
        raise _fail(path, f"not a valid .npz archive: {e}") from e
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError) as e:
        raise _fail(path, f"corrupt or truncated .npz: {e}") from e
    return _check_xy(path, x, y)


def _check_xy(path: PathLike, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise an (images, labels) pair read from ``path``."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise _fail(path, f"x has shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise _fail(path, f"x has dtype {x.dtype}; expected uint8 or floating-point images")
    if y.ndim != 1:
        raise _fail(path, f"y has shape {y.shape}; expected (N,) integer labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise _fail(path, f"y has dtype {y.dtype}; expected integer class labels")
    if x.shape[0] != y.shape[0]:
        raise _fail(path, f"count mismatch: x has {x.shape[0]} images but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise _fail(path, "holds no samples")
    if y.min() < 0:
        raise _fail(path, f"negative label {int(y.min())}; labels must be 0..K-1")
    return np.ascontiguousarray(x), y.astype(np.int64)


# ------------------------------------------------------------------------ Dataset


@dataclass
class Dataset:
    """Train and test splits as ``N x C x H x W`` images and int64 labels.

    ``x_test``/``y_test`` have zero rows when the source has no test split (a single
    ``.npz``); check :attr:`has_test`.

    >>> ds = load_dataset("mnist")
    >>> ds.image_shape, ds.has_test
    ((1, 28, 28), True)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def has_test(self) -> bool:
        """Whether there is a test split."""
        return len(self.y_test) > 0


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
        if c.exists():
            return c
    where = " or ".join(str(c) for c in candidates)
    raise DataError(f"{spec}: dataset not found (looked for {where}); accepted: {_ACCEPTED_SPECS}")


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
            labels, f"count mismatch: {y.shape[0]} labels for {x.shape[0]} images in {images}"
        )
    return _check_xy(images, x, y)


def _load_idx_dir(directory: Path, name: str) -> Dataset:
    found = {stem: _find_idx(directory, stem) for stem in _IDX_FILES}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"{directory}: missing IDX file(s) {', '.join(m + '[.gz]' for m in missing)}"
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
            f"{directory}: no CIFAR-10 binary batches here (expected data_batch_1.bin .. "
            "data_batch_5.bin and test_batch.bin, or a cifar-10-batches-bin/ folder)"
        )
    missing = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (d / n).is_file()]
    if missing:
        raise DataError(f"{d}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
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
            f"{os.fspath(where)}: test images are {x_test.shape[1:]} but train images are "
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


def load_dataset(spec: str, base_dir: PathLike | None = None) -> Dataset:
    """Load a dataset named by ``spec``.

    Accepted specs:

    * ``"mnist"`` - the MNIST files shipped in the package;
    * ``"cifar10:DIR"``, or a ``DIR`` holding ``data_batch_1..5.bin`` and
      ``test_batch.bin`` (or their ``cifar-10-batches-bin/`` folder);
    * a ``DIR`` holding MNIST-style IDX files ``train-images-idx3-ubyte[.gz]``,
      ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
      ``t10k-labels-idx1-ubyte[.gz]`` (e.g. Fashion-MNIST);
    * ``"train.npz"`` (no test split) or ``"train.npz,test.npz"``.

    Relative paths resolve against ``base_dir`` (the ``.net`` file's directory),
    then the current directory.

    >>> ds = load_dataset("mnist")
    >>> ds.x_test.shape, int(ds.y_test.max())
    ((10000, 1, 28, 28), 9)
    """
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
            raise DataError(f"{spec}: a comma-separated spec must be 'TRAIN.npz,TEST.npz'")
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
        raise DataError(
            f"{path}: directory holds no recognised dataset; accepted: {_ACCEPTED_SPECS}"
        )
    if path.suffix.lower() == ".npz":
        x_train, y_train = read_npz(path)
        empty_x = np.zeros((0, *x_train.shape[1:]), dtype=x_train.dtype)
        return _make(path.stem, x_train, y_train, empty_x, np.zeros(0, np.int64), path)
    raise DataError(f"{path}: unrecognised dataset file; accepted: {_ACCEPTED_SPECS}")


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
