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


def _diagnostic(kind: str, message: str, loc: Location | None) -> str:
    if loc is None:
        return f"{kind}: {message}"
    head = f"{loc}: {kind}: {message}"
    if not loc.source_line:
        return head
    src = loc.source_line.rstrip("\n").expandtabs(4)
    caret = " " * (loc.col - 1) + "^" + "~" * max(0, loc.width - 1)
    return f"{head}\n    {src}\n    {caret}"
