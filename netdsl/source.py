"""Source files: text plus the means to turn offsets into `Location`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location, NetError


@dataclass(frozen=True)
class Source:
    """The text of one `.net` file and the name it is reported under."""

    name: str
    text: str
    lines: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.text.split("\n")))

    @classmethod
    def from_file(cls, path: str | Path) -> Source:
        """Read a file; a missing or unreadable file is a NetError without a location."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NetError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise NetError(f"{path}: cannot read: {e}") from None
        return cls(str(path), text)

    def loc(self, line: int, col: int, width: int = 1) -> Location:
        """A Location at 1-based line and column, with the source line attached."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Location(self.name, line, col, max(1, width), text)
