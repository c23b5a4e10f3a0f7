"""The `[section]` + `key=value` files of Darknet and cuda-convnet, read line by line with
the place of every section header, key and value kept for located errors.

Both formats are line based (Darknet reads them with its own `read_cfg`, cuda-convnet with
Python's ConfigParser), so a small hand reader is exact here: a line is blank, a comment
(`#` or `;` first), a `[header]`, or `key=value`. A value runs to the end of the line;
Darknet ignores every blank inside a line (`hue = .1`), and ConfigParser strips the blanks
around the key and the value, which comes to the same for these files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Location, NetError
from ..source import Source


@dataclass
class Section:
    """One `[header]` and its options, in file order."""

    header: str  # the text between the brackets
    loc: Location  # the header, brackets included
    values: dict[str, str] = field(default_factory=dict)  # key (as folded) -> raw value
    key_locs: dict[str, Location] = field(default_factory=dict)  # where each key is written
    value_locs: dict[str, Location] = field(default_factory=dict)  # where each value is
    repeats: list[tuple[str, str, Location]] = field(default_factory=list)  # ignored repeats

    def at(self, key: str) -> Location:
        """Where option `key`'s value is written (the header when it is not written)."""
        return self.value_locs.get(key, self.loc)


def read_sections(src: Source, fold_case: bool = False, what: str = "file",
                  repeats: str = "error") -> list[Section]:  # fmt: skip
    """The sections of a cfg file. `fold_case` lower-cases keys (ConfigParser does). A key
    written twice in one section is, by `repeats`, an error, or the first value counts
    (Darknet's option_find) or the last (ConfigParser); the ignored ones are kept in
    Section.repeats. A line that is neither, or an option before the first header, is a
    NetError at that line."""
    sections: list[Section] = []
    for i, raw in enumerate(src.lines, start=1):
        line = raw.rstrip("\r")
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        col = len(line) - len(line.lstrip()) + 1
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 :].strip():
                raise NetError("a section header is `[name]` alone on its line",
                               src.loc(i, col, len(text)))  # fmt: skip
            sections.append(Section(text[1:end].strip(), src.loc(i, col, end + 1)))
            continue
        if "=" not in text:
            raise NetError(f"expected `key=value` or a `[section]` in this {what}",
                           src.loc(i, col, len(text)))  # fmt: skip
        if not sections:
            raise NetError("an option before the first `[section]`", src.loc(i, col, len(text)))
        key, value = text.split("=", 1)
        key = key.strip()
        if not key:
            raise NetError("an option without a name before its `=`", src.loc(i, col, len(text)))
        value_col = line.index("=", col - 1) + 2
        value_col += len(line[value_col - 1 :]) - len(line[value_col - 1 :].lstrip())
        folded = key.lower() if fold_case else key
        sec = sections[-1]
        if folded in sec.values:
            if repeats == "error":
                raise NetError(f"option '{key}' is given twice in [{sec.header}]",
                               src.loc(i, col, len(key)),
                               notes=(("first given here", sec.key_locs[folded]),))  # fmt: skip
            if repeats == "first":
                sec.repeats.append((key, value.strip(), src.loc(i, col, len(key))))
                continue
            sec.repeats.append((key, sec.values[folded], sec.key_locs[folded]))
        sec.values[folded] = value.strip()
        sec.key_locs[folded] = src.loc(i, col, len(key))
        sec.value_locs[folded] = src.loc(i, value_col, max(1, len(value.strip())))
    return sections


def _values(src) -> dict[str, str]:
    return src.values if isinstance(src, Section) else src.params


def _needs(src, key: str, what: str = "") -> NetError:
    who = f"[{src.header}]" if isinstance(src, Section) else f"layer '{src.name}' (type={src.kind})"
    return NetError(f"{who} needs `{key}=`{what}", src.loc)


def int_value(src, key: str, default: int | None = None, lo: int | None = None) -> int:
    """Option `key` of a Section or a ForeignLayer as a whole number (at least `lo`), or
    `default` when not written (required when there is none): errors at the value."""
    values = _values(src)
    if key not in values:
        if default is None:
            raise _needs(src, key)
        return default
    text = values[key].strip()
    try:
        v = int(text)
    except ValueError:
        raise NetError(f"{key} must be a whole number, got '{text}'", src.at(key)) from None
    if lo is not None and v < lo:
        raise NetError(f"{key} must be at least {lo}, got {v}", src.at(key))
    return v


def float_value(src, key: str, default: float | None = None) -> float:
    """Option `key` of a Section or a ForeignLayer as a finite number, or `default` when
    not written (required when there is none): errors at the value."""
    values = _values(src)
    if key not in values:
        if default is None:
            raise _needs(src, key)
        return default
    text = values[key].strip()
    try:
        v = float(text)
    except ValueError:
        raise NetError(f"{key} must be a number, got '{text}'", src.at(key)) from None
    if v != v or abs(v) == float("inf"):
        raise NetError(f"{key} must be a finite number, got '{text}'", src.at(key))
    return v


def check_in_source(net, origin: dict[str, Location]) -> None:
    """Check an imported net with netdsl's own checker, and report what it rejects at the
    source section the offending .net line came from (`origin`: .net name -> section):
    a kernel larger than its input, groups that do not divide the channels ... are the
    source file's mistakes, and are shown there, with the .net line as a note."""
    from .. import loads
    from . import write_net

    try:
        loads(write_net(net), name="<imported>")
    except NetError as e:
        raise relocated(e, origin) from None


def relocated(e: NetError, origin: dict[str, Location]) -> NetError:
    """A NetError netdsl's checker raised on an imported .net line, moved to the source
    section the line came from (unchanged when its line came from no section)."""
    text = e.loc.source_line if e.loc else ""
    words = text.replace("(", " ").replace(":", " ").split()
    name = words[1] if len(words) > 1 else ""
    if name not in origin or not e.loc or not e.loc.file.startswith("<"):
        return e
    return NetError(f"{e.message} (in the .net line `{text.strip()}`)", origin[name],
                    hint=e.hint)  # fmt: skip
