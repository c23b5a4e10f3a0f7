"""Checkpoints: named arrays plus JSON metadata in one pickle-free ``.npz`` file.

Writes are atomic (temp file in the same directory, fsync, ``os.replace``, fsync of the
directory), so killing the process at any moment leaves either the old checkpoint or
the new one, never a torn file. A temp file left by a killed writer
(``.NAME.PID.RANDOM.tmp``, PID no longer running) is removed by the next save or load of
that checkpoint. Reads never unpickle and report any problem as a
:class:`~netdsl.errors.DataError` naming the file; :func:`check_training_checkpoint`
checks every field a resumed run reads, naming the field.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> save_checkpoint("ckpt.npz", {"w": np.ones(3)}, {"epoch": 2, "rng": rng_state(rng)})
>>> arrays, meta = load_checkpoint("ckpt.npz")
>>> meta["epoch"], restore_rng(meta["rng"]).random() == rng.random()
(2, True)
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from netdsl.errors import DataError
from netdsl.files import atomic_output
from netdsl.train.paths import os_problem, show_path

__all__ = [
    "FORMAT",
    "check_training_checkpoint",
    "FORMAT_VERSION",
    "META_KEY",
    "load_checkpoint",
    "remove_stale_temp_files",
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
_TMP_SUFFIX = ".tmp"
_RANDOM = "[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix
_OLD_TMP_AGE = 3600.0  # seconds after which a temp file without a PID (older netdsl) is stale
_IMPORTED = time.time()  # a temp file of our PID older than this is a previous process's


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

    remove_stale_temp_files(path)
    # The temp file's name carries our PID, so that a later save or load can tell a file
    # left by a killed writer from one being written now.
    with atomic_output(path, what="checkpoint", fsync=True,
                       prefix=f".{path.name}.{os.getpid()}.") as f:  # fmt: skip
        np.savez(f, allow_pickle=False, **payload)


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed :func:`save_checkpoint` of ``path`` left behind.

    Only names of our own pattern ``.NAME.PID.XXXXXXXX.tmp`` are touched, and only when
    process PID is no longer running on this machine (or is this process's PID but the file
    is older than this process: a container restarted with the same PID); a temp file of a
    live writer, e.g. a training run that ``eval`` reads the checkpoint of, is left alone.
    Names without a PID (written by an older netdsl) go once they are an hour old. Returns
    the files removed; never raises.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    name = re.escape(path.name)
    with_pid = re.compile(rf"\.{name}\.(\d+)\.{_RANDOM}{re.escape(_TMP_SUFFIX)}")
    without_pid = re.compile(rf"\.{name}\.{_RANDOM}{re.escape(_TMP_SUFFIX)}")
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (OSError, ValueError):
        return removed
    for entry in entries:
        m = with_pid.fullmatch(entry.name)
        try:
            if m and int(m.group(1)) == os.getpid():  # ours: stale if from before we started
                stale = entry.stat(follow_symlinks=False).st_mtime < _IMPORTED
            elif m:
                stale = not _running(int(m.group(1)))
            elif without_pid.fullmatch(entry.name):
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > _OLD_TMP_AGE
            else:
                continue
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone meanwhile, or a read-only folder: nothing to clean there
    return removed


def _running(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    if os.name == "nt":  # os.kill(pid, 0) would stop the process there; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


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
        return DataError(f"{show_path(path)}: {problem}")

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise fail(f"cannot read checkpoint: {os_problem(e)}") from e
    except ValueError as e:  # a NUL byte in the name
        raise DataError(f"{os.fspath(path)!r}: cannot read checkpoint: {e}") from e
    remove_stale_temp_files(path)
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


def check_training_checkpoint(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    n_params: int,
    optimizer: str,
) -> None:
    """Check every field a resumed run reads from a training checkpoint, before any is used.

    ``arrays`` and ``meta`` are what :func:`load_checkpoint` returned for ``path``;
    ``n_params`` is the size of the net's flat parameter vector and ``optimizer`` its kind
    (``"sgd"`` or ``"adam"``), which fix the shapes of ``optim.v`` and ``optim.m``.
    Fields a newer netdsl adds are left to their own checks.

    >>> gen = np.random.default_rng(0)
    >>> meta = {"network": "tiny", "epoch": 1, "optim_t": 6, "batch": 16, "rng": rng_state(gen),
    ...         "dropout_rng": rng_state(gen), "history": [{"epoch": 1}],
    ...         "schedule": {"scale": 1.0, "best": 0.25, "bad_epochs": 0}}
    >>> arrays = {"optim.v": np.zeros(10, np.float32), "optim.m": np.zeros(0, np.float32)}
    >>> check_training_checkpoint("c.npz", arrays, meta, n_params=10, optimizer="sgd")
    >>> try:
    ...     check_training_checkpoint("c.npz", arrays, {**meta, "optim_t": "6"}, n_params=10,
    ...                               optimizer="sgd")
    ... except DataError as e:
    ...     print(e)
    c.npz: checkpoint field 'optim_t' is '6' (a str); expected a whole number >= 0

    Raises DataError naming the file and the field (``meta.KEY`` or an array name) that is
    missing or has the wrong type, range or shape.
    """
    where = show_path(path)

    def bad(field: str, problem: str) -> DataError:
        return DataError(f"{where}: checkpoint field {field!r} {problem}")

    def need(key: str) -> Any:
        if key not in meta:
            raise bad(key, "is missing; the file was not written by `netdsl train`, or is "
                           "damaged")  # fmt: skip
        return meta[key]

    if not isinstance(need("network"), str):
        raise bad("network", f"is {_describe(meta['network'])}; expected the network's name")
    for key, lo in (("epoch", 0), ("optim_t", 0), ("batch", 1)):
        _whole(need(key), lo, lambda problem, k=key: bad(k, problem))
    for key in ("rng", "dropout_rng"):
        _rng(need(key), lambda problem, k=key: bad(k, problem))
    states = meta.get("dropout_rngs")
    if states is not None:
        if not isinstance(states, list):
            raise bad("dropout_rngs", f"is {_describe(states)}; expected a list of RNG states")
        for i, state in enumerate(states):
            _rng(state, lambda problem, i=i: bad(f"dropout_rngs[{i}]", problem))
    _schedule_state(need("schedule"), bad)
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history", f"is {_describe(history)}; expected a list of per-epoch records")
    sizes = {"optim.v": n_params, "optim.m": n_params if optimizer == "adam" else 0}
    for name, size in sizes.items():
        if name not in arrays:
            raise bad(name, "is missing (the optimizer state); the file was not written by "
                            "`netdsl train`, or is damaged")  # fmt: skip
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.floating) or a.shape != (size,):
            raise bad(name, f"has shape {a.shape} and dtype {a.dtype}; this network's "
                            f"{optimizer} state is ({size},) floats")  # fmt: skip


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} (a {type(value).__name__})" if value is not None else "null"


def _whole(value: Any, lo: int, bad) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"is {_describe(value)}; expected a whole number >= {lo}")
    if value < lo:
        raise bad(f"is {value}; expected a whole number >= {lo}")


def _rng(state: Any, bad) -> None:
    if not isinstance(state, dict):
        raise bad(f"is {_describe(state)}; expected an RNG state")
    try:
        restore_rng(state)
    except DataError as e:
        raise bad(f"is not a usable RNG state: {e}") from None
    except Exception as e:  # noqa: BLE001 - numpy's own checks of a state raise many kinds
        raise bad(f"is not a usable RNG state: {e}") from None


def _schedule_state(state: Any, bad) -> None:
    if not isinstance(state, dict):
        raise bad("schedule", f"is {_describe(state)}; expected the schedule's state")
    for key in ("scale", "best", "bad_epochs"):
        if key not in state:
            raise bad(f"schedule.{key}", "is missing")
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise bad(f"schedule.{key}", f"is {_describe(v)}; expected a number")
    if not (math.isfinite(state["scale"]) and state["scale"] > 0):
        raise bad("schedule.scale", f"is {state['scale']}; expected a positive number")
    _whole(state["bad_epochs"], 0, lambda problem: bad("schedule.bad_epochs", problem))


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
