"""One user-facing error type that carries a source location.

Every mistake in a ``.net`` file, syntax or semantic, becomes a :class:`NetError`
that prints like a compiler diagnostic::

    nets/bad.net:4:26: error: conv3 expects 256 input channels divisible by groups=3
        conv conv3: 384 filters 3x3, groups 3
                                     ^~~~~~~~
    hint: use a groups value that divides 256

Data and checkpoint problems use :class:`DataError`, which names the file.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in a source file: 1-based line and column, and the width of the span."""

    file: str
    line: int
    col: int
    width: int = 1
    source_line: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class NetdslError(Exception):
    """Base of every error netdsl reports to a user without a traceback."""

    exit_code = 1

    def render(self) -> str:
        return f"error: {self}"


class NetError(NetdslError):
    """A mistake in a ``.net`` file, reported at ``file:line:col`` with a caret."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        loc: Location | None = None,
        hint: str | None = None,
        notes: tuple[tuple[str, Location], ...] = (),
    ):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint
        self.notes = notes

    def render(self) -> str:
        """Format as ``file:line:col: error: msg``, the source line, a caret and a hint."""
        lines = [_diagnostic("error", self.message, self.loc)]
        for text, loc in self.notes:
            lines.append(_diagnostic("note", text, loc))
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class DataError(NetdslError):
    """A data, checkpoint or output file that cannot be used; the message names the file."""

    exit_code = 1


# Names for the control characters unicodedata does not name, and a friendlier U+FEFF.
_CHAR_NAMES = {
    "\0": "NUL",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x0b": "vertical tab",
    "\x0c": "form feed",
    "\x1b": "escape",
    "\x7f": "delete",
    "\ufeff": "byte order mark",
}
_UNNAMED = {"Cc": "control character", "Co": "private use character", "Cn": "unassigned"}
_TAB = 4  # columns per tab stop when a source line is shown
_MAX_SHOWN = 100  # columns of a source line shown around the caret
_MAX_NAME = 80  # characters of a file name or literal shown in a message


def is_unprintable(ch: str) -> bool:
    """True for a character a terminal would not show as itself (controls, spaces other
    than ' ', format and combining marks, private use)."""
    return not ch.isprintable() or unicodedata.category(ch)[0] == "M"


def describe_char(ch: str) -> str:
    """A character as a message shows it: ``'{'``, or ``U+00A0 (no-break space)``."""
    if not is_unprintable(ch):
        return f"'{ch}'"
    name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "").lower()
    name = name or _UNNAMED.get(unicodedata.category(ch), "")
    code = f"U+{ord(ch):04X}"
    return f"{code} ({name})" if name else code


def shorten(text: str, limit: int = _MAX_NAME) -> str:
    """`text` for a message: unprintable characters escaped, the middle of a long one elided.

    >>> shorten("a" * 100, 20)
    'aaaaaaaa...aaaaaaaa (100 characters)'
    """
    shown = "".join(_escaped(c) if is_unprintable(c) else c for c in text)
    if len(shown) <= limit:
        return shown
    half = max(1, (limit - 4) // 2)
    return f"{shown[:half]}...{shown[-half:]} ({len(text)} characters)"


def _escaped(ch: str) -> str:
    return f"<U+{ord(ch):04X}>"


def _cells(line: str) -> list[tuple[str, int]]:
    """What each character of a source line shows as, and in how many columns: tabs run to
    the next stop, unprintable characters show as ``<U+XXXX>``, wide characters take two."""
    cells: list[tuple[str, int]] = []
    col = 0
    for ch in line:
        if ch == "\t":
            shown, width = " " * (_TAB - col % _TAB), _TAB - col % _TAB
        elif is_unprintable(ch):
            shown = _escaped(ch)
            width = len(shown)
        else:
            shown, width = ch, 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        cells.append((shown, width))
        col += width
    return cells


def _source_and_caret(loc: Location) -> tuple[str, str]:
    """The source line as shown and the caret line under it, both in display columns.

    A long line is cut to a window of about _MAX_SHOWN columns around the caret.
    """
    line = loc.source_line.rstrip("\r\n")
    start = min(loc.col - 1, len(line))
    end = max(start + 1, loc.col - 1 + loc.width)
    cut = 0
    if len(line) > 4 * _MAX_SHOWN:  # only the part near the caret is ever shown
        cut = max(0, start - 2 * _MAX_SHOWN)
        line = line[cut : start + 2 * _MAX_SHOWN]
        start, end = start - cut, end - cut
    cells = _cells(line)
    end = min(end, len(cells) + 1)  # a caret may stand one past the end (end of file)
    widths = [w for _, w in cells] + [1] * max(0, end - len(cells))
    first, last = 0, len(cells)
    if sum(widths[: len(cells)]) > _MAX_SHOWN:
        first, room = start, _MAX_SHOWN // 4  # a little context left of the caret
        while first > 0 and widths[first - 1] <= room:
            room -= widths[first - 1]
            first -= 1
        last, room = first, _MAX_SHOWN
        while last < len(cells) and widths[last] <= room:
            room -= widths[last]
            last += 1
    head = "..." if first or cut else ""
    text = head + "".join(s for s, _ in cells[first:last]) + ("..." if last < len(cells) else "")
    pad = len(head) + sum(widths[first:start])
    width = sum(widths[start:end])
    if last < len(cells):  # the span runs out of the window
        width = max(1, min(width, len(head) + sum(widths[first:last]) - pad))
    return text, " " * pad + "^" + "~" * max(0, width - 1)


def _diagnostic(kind: str, message: str, loc: Location | None) -> str:
    if loc is None:
        return f"{kind}: {message}"
    head = f"{loc}: {kind}: {message}"
    if not loc.source_line:
        return head
    src, caret = _source_and_caret(loc)
    return f"{head}\n    {src}\n    {caret}"
