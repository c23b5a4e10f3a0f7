"""Protocol-buffer text format, as Caffe's .prototxt files use it: parsed with
grammars/prototxt.lark into Msgs whose every field keeps its place in the file, so the
importer's errors point into it. Knows no Caffe field names (netdsl/interop/caffe.py does).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import Location, NetError
from ..source import Source


class Word(str):
    """An unquoted word of the text format: an enum value (MAX, TRAIN) or true/false."""


@dataclass
class Field:
    key: str
    value: Any  # str (a string), Word, int, float, or Msg
    loc: Location  # of the key
    vloc: Location  # of the value (the message's opening for a Msg)


@dataclass
class Msg:
    """A message: its fields in the order written (a repeated field appears several times)."""

    loc: Location
    fields: list[Field] = field(default_factory=list)

    def all(self, key: str) -> list[Field]:
        return [f for f in self.fields if f.key == key]

    def one(self, key: str) -> Field | None:
        """The field `key` (protobuf: the last one written wins for a singular field)."""
        found = self.all(key)
        return found[-1] if found else None

    def get(self, key: str, default: Any = None) -> Any:
        f = self.one(key)
        return default if f is None else f.value

    def values(self, key: str) -> list[Any]:
        """Every value of a repeated field, lists `[1, 2]` included."""
        return [f.value for f in self.all(key)]


@functools.lru_cache(maxsize=1)
def _parser():
    import lark

    packaged = resources.files("netdsl") / "grammars" / "prototxt.lark"
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        repo = Path(__file__).resolve().parent.parent.parent / "grammars" / "prototxt.lark"
        text = repo.read_text(encoding="utf-8")
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse_prototxt(src: Source) -> Msg:
    """The top-level message of a prototxt; a syntax error is a NetError at line:col."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

    try:
        tree = _parser().parse(src.text)
    except UnexpectedInput as e:
        line, col = getattr(e, "line", 0) or 1, getattr(e, "column", 0) or 1
        if isinstance(e, UnexpectedEOF) or line < 1:
            line = len(src.lines)
            col = len(src.lines[-1]) + 1
            raise NetError("unexpected end of file (a `}` missing?)", src.loc(line, col)) from None
        if isinstance(e, UnexpectedCharacters):
            ch = src.text[e.pos_in_stream] if e.pos_in_stream < len(src.text) else ""
            raise NetError(f"unexpected character {ch!r} in the prototxt",
                           src.loc(line, col)) from None  # fmt: skip
        tok = getattr(e, "token", None)
        if tok is None or tok.type == "$END":
            line, col = len(src.lines), len(src.lines[-1]) + 1
            raise NetError("unexpected end of file (a `}` missing?)", src.loc(line, col)) from None
        raise NetError(
            f"unexpected {str(tok)!r} in the prototxt",
            src.loc(line, col, len(str(tok))),
            hint="fields are `key: value` or `key { ... }`",
        ) from None
    top = Msg(src.loc(1, 1))
    _fill(top, tree.children, src)
    return top


def _fill(msg: Msg, children: list, src: Source) -> None:
    for node in children:
        key_tok = node.children[0]
        kloc = src.loc(key_tok.line, key_tok.column, len(key_tok))
        if node.data == "message":
            sub = Msg(kloc)
            _fill(sub, node.children[1:], src)
            msg.fields.append(Field(str(key_tok), sub, kloc, kloc))
        elif node.data == "scalar":
            v = node.children[1]
            msg.fields.append(Field(str(key_tok), _value(v), kloc, _vloc(v, src)))
        else:  # a list: the key written once per value, as protobuf reads it
            for v in node.children[1:]:
                msg.fields.append(Field(str(key_tok), _value(v), kloc, _vloc(v, src)))


def _vloc(v, src: Source) -> Location:
    m = v.meta
    width = m.end_column - m.column if m.line == m.end_line else 1
    return src.loc(m.line, m.column, width)


def _value(v) -> Any:
    import ast

    toks = v.children
    if v.data == "string":
        return "".join(ast.literal_eval(str(t)) for t in toks)
    if v.data == "number":
        text = str(toks[0]).rstrip("fF")
        if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        return float(text)
    word = str(toks[0])
    if word.lower() in ("inf", "infinity", "nan"):
        return float(("-" if v.data == "neg_word" else "") + word.lower())
    return Word(word)
