"""Checkpoints: named arrays plus JSON metadata in one pickle-free ``.npz`` file.

Writes are atomic (temp file in the same directory, fsync, ``os.replace``, fsync of the
directory), so killing the process at any moment leaves either the old checkpoint or
the new one, never a torn file. Reads never unpickle and report any problem as a
:class:`~netdsl.errors.DataError` naming the file.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> save_checkpoint("ckpt.npz", {"w": np.ones(3)}, {"epoch": 2, "rng": rng_state(rng)})
>>> arrays, meta = load_checkpoint("ckpt.npz")
>>> meta["epoch"], restore_rng(meta["rng"]).random() == rng.random()
(2, True)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from netdsl.errors import DataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_KEY",
    "load_checkpoint",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
]

FORMAT = "netdsl-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"

# Bit generators restore_rng may construct; a name from a file is looked up here rather
# than with getattr on numpy, so a checkpoint cannot name arbitrary attributes.
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
_ZIP_MAGIC = b"PK\x03\x04"


def save_checkpoint(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> None:
    """Atomically write ``arrays`` and JSON-able ``meta`` to ``path`` (an ``.npz``).

    ``meta`` is stored as UTF-8 JSON in a uint8 array under the reserved key
    ``"__meta__"`` along with the format name and version.

    >>> save_checkpoint("ckpt.npz", {"conv1.w": np.zeros((4, 1, 3, 3))}, {"epoch": 1})

    Raises ValueError/TypeError for unusable arguments (reserved or non-string names,
    object arrays, meta that is not JSON-serialisable) and DataError naming the file
    when it cannot be written; on any failure the previous checkpoint is untouched
    and no temporary file remains.
    """
    path = Path(path)
    payload: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"checkpoint array names must be non-empty strings; got {name!r}")
        if name == META_KEY:
            raise ValueError(f"{META_KEY!r} is reserved for checkpoint metadata")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype {a.dtype}; only plain numeric arrays")
        payload[name] = a
    record = {"format": FORMAT, "version": FORMAT_VERSION, "meta": dict(meta)}
    try:
        text = json.dumps(record, allow_nan=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {e}") from e
    payload[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    directory = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        # The temp file must be in the target's directory: os.replace is only atomic
        # within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **payload)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)  # make the rename itself durable
    except OSError as e:
        raise DataError(f"{path}: cannot write checkpoint: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, meta)``.

    >>> save_checkpoint("ckpt.npz", {"conv1.w": np.zeros((4, 1, 3, 3))}, {"epoch": 1})
    >>> arrays, meta = load_checkpoint("ckpt.npz")
    >>> sorted(arrays), meta["epoch"]
    (['conv1.w'], 1)

    Raises DataError naming the file when it is missing, not a zip archive,
    truncated or corrupt, holds pickled data, lacks or has unreadable metadata, or
    has another format version.
    """
    path = Path(path)

    def fail(problem: str) -> DataError:
        return DataError(f"{path}: {problem}")

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise fail(f"cannot read checkpoint: {e.strerror or e}") from e
    if head != _ZIP_MAGIC:
        raise fail("not a netdsl checkpoint (not an .npz/zip archive)")
    arrays: dict[str, np.ndarray] = {}
    try:
        # our own handle: np.load leaks its file when the zip directory is bad
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            for name in npz.files:
                arrays[name] = npz[name]  # read everything now; the file closes below
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise fail("holds pickled (object) data, which is refused for safety") from e
        raise fail(f"corrupt checkpoint: {e}") from e
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError) as e:
        raise fail(f"corrupt or truncated checkpoint: {e}") from e

    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise fail(f"missing {META_KEY!r} record; not a netdsl checkpoint")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise fail(f"{META_KEY!r} record has dtype {raw.dtype} and shape {raw.shape}")
    try:
        record = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"checkpoint metadata is not valid JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise fail(f"metadata does not identify a {FORMAT!r} file")
    version = record.get("version")
    if version != FORMAT_VERSION:
        raise fail(
            f"checkpoint format version {version!r} is not supported "
            f"(this netdsl reads version {FORMAT_VERSION})"
        )
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise fail("checkpoint metadata has no 'meta' object")
    return arrays, meta


def _json_default(value: Any) -> Any:
    # numpy scalars (an epoch counter, a float32 loss) are common in meta; store them
    # as plain JSON numbers.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _from_jsonable(v) for k, v in value.items()}
    return value


def rng_state(gen: np.random.Generator) -> dict[str, Any]:
    """A JSON-serialisable snapshot of ``gen``'s bit generator state.

    >>> gen = np.random.default_rng(0)
    >>> state = rng_state(gen)
    >>> restore_rng(json.loads(json.dumps(state))).random() == gen.random()
    True
    """
    # PCG64 state is plain ints (arbitrary-precision in JSON); MT19937 holds an array.
    return _jsonable(gen.bit_generator.state)


def restore_rng(
    state: Mapping[str, Any], source: str | os.PathLike | None = None
) -> np.random.Generator:
    """A new Generator in the state captured by :func:`rng_state`.

    ``source`` (e.g. the checkpoint path) is named in the DataError raised for an
    unusable state.

    >>> restore_rng(rng_state(np.random.default_rng(3))).random() == (
    ...     np.random.default_rng(3).random())
    True
    """
    where = f"{os.fspath(source)}: " if source is not None else ""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise DataError(f"{where}RNG state names unknown bit generator {name!r}")
    bit_gen = getattr(np.random, name)()
    try:
        bit_gen.state = _from_jsonable(dict(state))
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"{where}invalid {name} RNG state: {e}") from e
    return np.random.Generator(bit_gen)
