"""Source files: text plus the means to turn offsets into `Location`s."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location, NetError, shorten
from .limits import MAX_FILE_BYTES

_BOM = "\ufeff"


@dataclass(frozen=True)
class Source:
    """The text of one `.net` file and the name it is reported under.

    A byte-order mark that starts the text is dropped (editors on Windows write one), so
    columns count from the first real character.
    """

    name: str
    text: str
    lines: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.text.startswith(_BOM):
            object.__setattr__(self, "text", self.text[len(_BOM) :])
        object.__setattr__(self, "lines", tuple(self.text.split("\n")))

    @classmethod
    def from_file(cls, path: str | Path) -> Source:
        """Read a UTF-8 file of at most MAX_FILE_BYTES.

        A file that cannot be read (missing, a directory, too large, a bad name) is a
        NetError without a location, so a caller (an include) can add its own; a bad byte
        inside the text (a NUL, invalid UTF-8) is a NetError located at that byte.
        """
        name = str(path)
        return cls(name, _decode(name, _read_bytes(path)))

    def loc(self, line: int, col: int, width: int = 1) -> Location:
        """A Location at 1-based line and column, with the source line attached."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Location(self.name, line, col, max(1, width), text)


def _read_bytes(path: str | Path) -> bytes:
    """At most MAX_FILE_BYTES bytes of `path`; every failure is a NetError naming the path."""
    shown = shorten(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except ValueError:  # a NUL byte in the name
        raise NetError(f"{shown}: not a valid file name (it contains a NUL byte)") from None
    except FileNotFoundError:
        raise NetError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise NetError(f"{shown}: is a directory, not a .net file") from None
    except OSError as e:
        raise NetError(f"{shown}: cannot read: {_os_reason(e)}") from None
    if len(data) > MAX_FILE_BYTES:
        limit = f"{MAX_FILE_BYTES // 2**20} MiB"
        raise NetError(f"{shown}: file is larger than {limit}; is it a .net file?")
    return data


def _os_reason(e: OSError) -> str:
    """The reason without Python's repetition of the (possibly very long) file name."""
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return e.strerror or os.strerror(e.errno or 0) or type(e).__name__


def _decode(name: str, data: bytes) -> str:
    """UTF-8 text of `data`; a NUL byte or invalid UTF-8 is a NetError at its line:col."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise NetError(
            "the file contains a NUL byte; is it a binary file, not a .net file?",
            _byte_loc(name, data, nul),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NetError(
            f"byte 0x{data[e.start : e.start + 1].hex()} is not valid UTF-8",
            _byte_loc(name, data, e.start),
            "save the file as UTF-8",
        ) from None


def _byte_loc(name: str, data: bytes, at: int) -> Location:
    """The Location of byte offset `at`; the column counts characters, a bad byte as one."""
    start = data.rfind(b"\n", 0, at) + 1
    end = data.find(b"\n", at)
    line_bytes = data[start : end if end >= 0 else len(data)]
    line = data.count(b"\n", 0, at) + 1
    col = len(data[start:at].decode("utf-8", errors="replace")) + 1
    if line == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):  # the BOM is dropped from the text
        line_bytes, col = line_bytes[3:], col - 1
    return Location(name, line, col, 1, line_bytes.decode("utf-8", errors="replace"))
