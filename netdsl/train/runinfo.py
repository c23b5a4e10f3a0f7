"""What a run folder holds and which data a run used.

A run folder (``--out``, default ``runs/NETWORK``) belongs to one run. It holds
``checkpoint.npz``, ``metrics.jsonl``, ``run.json`` (this module: the net file and its
hash, the data set, its fingerprint and normalisation, the seed, the command line, the
netdsl version and the start time), ``result.json`` and, after ``netdsl plot``,
``metrics.png``. A new run refuses a folder that holds any of these unless it resumes
(``--resume``) or replaces them (``--overwrite``, which deletes only these files).

The data record stored in ``run.json`` and in the checkpoint's metadata::

    {"spec": "/abs/path/train.npz,/abs/path/test.npz" | "mnist" | "cifar10:/abs/dir",
     "name": "train", "fingerprint": "blake2b:...", "images": {"train": 96, "test": 48},
     "image_shape": [1, 8, 8], "classes": 3, "class_names": ["cat", "dog", "fox"] | null,
     "normalize": {"mean": [0.0], "std": [1.0]}, "limit": null, "validate": 0}

The fingerprint hashes every image and label of the data set as loaded (shapes, types
and bytes; MNIST takes about 0.07 s), before ``--limit`` and ``validate`` pick from it,
so the same files give the same fingerprint wherever they lie. A store written by
``netdsl pack`` carries the same fingerprint in its manifest (so MNIST and the store
packed from it agree); an image folder's hashes its listing (names and labels), not its
pixels. ``class_names`` are an image folder's or a store's class folder names (None for
the other formats); `netdsl predict` prints them.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .metrics import json_default
from .paths import check_output_dir

__all__ = [
    "RUN_FILE",
    "RUN_FILES",
    "check_run_dir",
    "clear_run_files",
    "command_line",
    "data_differences",
    "data_fingerprint",
    "describe_data",
    "file_sha256",
    "now_iso",
    "read_run_info",
    "resolve_spec",
    "write_json_atomic",
]

RUN_FILE = "run.json"
# the files a run writes into its folder; --overwrite deletes exactly these
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", RUN_FILE, "result.json", "metrics.png")
_TMP_GLOB = ".checkpoint.npz.*.tmp"  # a checkpoint write cut short (checkpoint.py)


# ------------------------------------------------------------------ the run folder


def _run_files_in(out: Path) -> list[Path]:
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    return found + sorted(out.glob(_TMP_GLOB))


def check_run_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Check, before any work, that ``out`` can be this run's folder.

    Raises DataError naming the path when ``out`` (or a folder above it) is a file,
    when it cannot be created or written, when ``resume`` finds no checkpoint, and
    when a new run (neither ``resume`` nor ``overwrite``) finds another run's files.
    Creates nothing: a folder made to test that it can be made is removed again.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    check_output_dir(out)  # a file, under a file, too long, not writable: named at once
    if not out.exists():
        _probe_create(out)  # os.access cannot tell (root, /proc): make it and remove it
        if resume:
            raise DataError(f"{out / 'checkpoint.npz'}: no checkpoint to resume from")
        return
    _probe_write(out)
    ours = _run_files_in(out)
    if resume:
        if not (out / "checkpoint.npz").is_file():
            why = (" (the run stopped before its first epoch ended); start it again with "
                   "--overwrite" if ours else "")  # fmt: skip
            raise DataError(f"{out / 'checkpoint.npz'}: no checkpoint to resume from{why}")
        return
    if ours and not overwrite:
        names = ", ".join(p.name for p in ours)
        raise DataError(
            f"{out}: holds another run ({names}); a run folder belongs to one run: pass "
            "--resume to continue it, --overwrite to replace it, or choose another folder "
            "with --out"
        )


def _probe_create(out: Path) -> None:
    """Make ``out`` (and missing parents) to see that it can be made, then remove them.
    A file in the way was already named by paths.check_output_dir."""
    missing = [out]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
    for p in missing:  # deepest first
        with contextlib.suppress(OSError):
            p.rmdir()


def _probe_write(out: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=out, prefix=".netdsl-probe.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"{out}: cannot write to the output folder: {e.strerror or e}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def clear_run_files(out: str | os.PathLike) -> list[str]:
    """Delete the files a run writes (RUN_FILES and stale checkpoint temporaries) from
    ``out``; other files stay. Returns the names deleted."""
    out = Path(out)
    if not out.is_dir():
        return []
    gone = []
    for p in _run_files_in(out):
        try:
            p.unlink()
        except OSError as e:
            raise DataError(f"{p}: cannot delete (--overwrite): {e.strerror or e}") from None
        gone.append(p.name)
    return gone


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` whole or not at all (netdsl.files)."""
    from ..files import write_atomic

    write_atomic(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def read_run_info(out: str | os.PathLike) -> dict[str, Any] | None:
    """The run.json of a run folder, or None when it is missing or unreadable."""
    try:
        info = json.loads((Path(out) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def file_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 of a file's bytes, None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line() -> list[str]:
    """This process's command line as run (``sys.argv``)."""
    return list(sys.argv)


# ------------------------------------------------------------------ the data


def resolve_spec(spec: str, base_dir: str | os.PathLike | None) -> str:
    """``spec`` with every path made absolute, as load_dataset finds it: relative paths
    against ``base_dir`` (the .net file's folder) first, then the current directory.

    >>> resolve_spec("mnist", None)
    'mnist'
    """
    spec = spec.strip()
    if spec.lower() == "mnist":
        return "mnist"
    if spec.lower().startswith("cifar10:"):
        return "cifar10:" + _absolute(spec[len("cifar10:") :], base_dir)
    if "," in spec:
        return ",".join(_absolute(p.strip(), base_dir) for p in spec.split(","))
    return _absolute(spec, base_dir)


def _absolute(part: str, base_dir: str | os.PathLike | None) -> str:
    p = Path(part).expanduser()
    if p.is_absolute():
        return os.path.abspath(p)
    if base_dir is not None and (Path(base_dir) / p).exists():
        return os.path.abspath(Path(base_dir) / p)
    return os.path.abspath(p)


def data_fingerprint(*arrays: np.ndarray) -> str:
    """A content hash of arrays: their dtypes, shapes and bytes (BLAKE2b, 128 bits).

    >>> data_fingerprint(np.zeros(3, np.uint8)) == data_fingerprint(np.zeros(3, np.uint8))
    True
    >>> data_fingerprint(np.zeros(3, np.uint8)) == data_fingerprint(np.zeros(4, np.uint8))
    False
    """
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # no copy; empty arrays too
    return "blake2b:" + h.hexdigest()


def describe_data(record: dict[str, Any]) -> str:
    """A short description of a data record: its spec and fingerprint."""
    fp = str(record.get("fingerprint", "?")).removeprefix("blake2b:")[:12]
    return f"{record.get('spec', '?')} (fingerprint {fp})"


def data_differences(recorded: dict[str, Any], current: dict[str, Any],
                     training: bool = True) -> list[str]:  # fmt: skip
    """What differs between the data a run recorded and the data it is given now, in
    words; empty when they are the same. A moved data set (another spec, the same
    fingerprint) is the same. ``training`` also compares --limit and validate, which
    choose the images trained on."""
    diffs = []
    if recorded.get("fingerprint") != current.get("fingerprint"):
        diffs.append(f"the images and labels differ: recorded {describe_data(recorded)}, "
                     f"now {describe_data(current)}")  # fmt: skip
    if _norm(recorded.get("normalize")) != _norm(current.get("normalize")):
        diffs.append(f"the normalisation differs: recorded {_fmt_norm(recorded.get('normalize'))}"
                     f", now {_fmt_norm(current.get('normalize'))}")  # fmt: skip
    if recorded.get("classes") != current.get("classes"):
        diffs.append(f"the class count differs: recorded {recorded.get('classes')}, "
                     f"now {current.get('classes')}")  # fmt: skip
    elif (
        recorded.get("class_names")
        and current.get("class_names")
        and (recorded["class_names"] != current["class_names"])
    ):
        diffs.append("the class names differ (the same labels name other classes)")
    if training:
        for key, what in (("limit", "--limit"), ("validate", "validate")):
            if (recorded.get(key) or 0) != (current.get(key) or 0):
                diffs.append(f"{what} differs: recorded {recorded.get(key) or 'none'}, "
                             f"now {current.get(key) or 'none'}")  # fmt: skip
    return diffs


def _norm(n: Any) -> Any:
    """A normalisation record in comparable form (rounded floats); as given if malformed."""
    if not isinstance(n, dict):
        return n
    try:
        return {k: [round(float(v), 7) for v in np.ravel(n.get(k, []))] for k in ("mean", "std")}
    except (TypeError, ValueError):
        return n


def _fmt_norm(n: Any) -> str:
    norm = _norm(n)
    try:
        m, s = norm["mean"], norm["std"]
        return f"mean={','.join(f'{v:g}' for v in m)} std={','.join(f'{v:g}' for v in s)}"
    except (TypeError, KeyError, ValueError):
        return "none" if n is None else repr(n)
