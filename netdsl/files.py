"""Writing output files whole or not at all: the one routine every writer uses.

A file netdsl writes (a .net from `import`, DOT, ONNX, safetensors, a checkpoint, a plot,
run.json, metrics.jsonl) goes to a temporary file beside the target and is renamed over it
once complete, so an interrupted or failed write leaves the old file (or none), never a
partial one that looks complete. A target that exists and is not a regular file — /dev/null,
a FIFO, a terminal — is written in place: renaming over it would replace the device itself.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DataError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, what: str = "", fsync: bool = False,
                  prefix: str | None = None) -> Iterator[BinaryIO]:  # fmt: skip
    """A binary file to write `path`'s new content into; it replaces `path` when the block
    ends without an error, and is removed when it raises.

    `what` names the content in the error (`cannot write checkpoint: ...`); `fsync` makes the
    data and the rename durable (checkpoints); `prefix` names the temporary file (default
    `.NAME.`). An OSError becomes a DataError naming the file.
    """
    from .train.paths import os_problem, show_path

    target = Path(path)
    problem = f"{show_path(target)}: cannot write{' ' + what if what else ''}"
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise DataError(f"{problem}: it is a directory")
    if mode is not None and not stat.S_ISREG(mode):  # a device or FIFO: write in place
        try:
            with open(target, "wb") as f:
                yield f
        except OSError as e:
            raise DataError(f"{problem}: {os_problem(e)}") from None
        return
    directory = target.parent if str(target.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix or f".{target.name}.",
                                   suffix=".tmp")  # fmt: skip
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())  # the data is on disk before the rename shows it
        # mkstemp makes the file 0600; the written file gets the mode an open() would give
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
        tmp = None
        if fsync:
            _fsync_dir(directory)
    except OSError as e:
        raise DataError(f"{problem}: {os_problem(e)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, what: str = "",
                 fsync: bool = False) -> None:  # fmt: skip
    """Write `data` (text is UTF-8) to `path` whole or not at all (see atomic_output)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_output(path, what=what, fsync=fsync) as f:
        f.write(data)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
