"""Paths in messages and output folders checked before any work starts.

A path the user typed is named in every error about it; a 5,000-character path is
shortened so the message stays readable. An output folder that cannot be made or written
is reported before training spends minutes on the first epoch.

>>> show_path("runs/lenet5")
'runs/lenet5'
>>> len(show_path("a" * 5000)) < 200
True
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from netdsl.errors import DataError

__all__ = ["MAX_SHOWN", "check_output_dir", "os_problem", "show_path"]

MAX_SHOWN = 160  # characters of a path printed in a message


def show_path(path: str | os.PathLike) -> str:
    """``path`` as text for a message: whole when short, else its two ends and its length.

    >>> show_path("/data/" + "x" * 300 + ".npz")[-24:]
    'xxx.npz (310 characters)'
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if len(text) <= MAX_SHOWN:
        return text
    head, tail = MAX_SHOWN * 2 // 3, MAX_SHOWN // 4
    return f"{text[:head]}...{text[-tail:]} ({len(text):,} characters)"


def os_problem(e: OSError) -> str:
    """The reason an OSError gives, without the repeated (and possibly huge) file name."""
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return e.strerror or str(e)


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (lstat, so a broken link counts)."""
    p = path
    while True:
        try:
            os.lstat(p)
            return p
        except (FileNotFoundError, NotADirectoryError):  # not there, or under a file
            if p.parent == p:
                return p
            p = p.parent


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder; create nothing.

    Call it before loading data or compiling, so a bad ``--out`` is reported at once:

    >>> check_output_dir("runs/lenet5")
    PosixPath('runs/lenet5')

    Raises DataError naming the path when it is a file, lies under a file, is too long
    for the filesystem, or is in a folder this process cannot write.
    """
    p = Path(path)
    shown = show_path(p)
    if not os.fspath(p).strip():
        raise DataError("the output folder is an empty path")
    try:
        existing = _nearest_existing(p)
        if existing.exists() and not existing.is_dir():  # follows links: a link to a folder is fine
            what = "is a file" if existing.is_file() else "is not a folder"
            if existing == p:
                raise DataError(f"{shown}: cannot use as output folder: it {what}")
            raise DataError(f"{shown}: cannot create output folder: {show_path(existing)} {what}")
        if not existing.exists():  # a dangling symbolic link
            raise DataError(f"{shown}: cannot create output folder: {show_path(existing)} is a "
                            "broken symbolic link")  # fmt: skip
    except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES on a parent
        raise DataError(f"{shown}: cannot use as output folder: {os_problem(e)}") from None
    except ValueError:  # a NUL byte
        raise DataError(
            f"{shown!r}: cannot use as output folder: the name holds a NUL character"
        ) from None
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == p else f" ({show_path(existing)} is not writable)"
        raise DataError(f"{shown}: cannot write to output folder: permission denied{where}")
    return p
