"""Parse `.net` text with Lark (LALR, positions kept) into the frozen nodes of `netdsl.ast`.

Lark's exceptions never reach a user: they are rewritten into NetErrors that say, in
words, what was found and what was expected there.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .errors import NetError
from .source import Source

# What a user reads instead of Lark's terminal names.
_TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "DIMS": "a size like 5x5",
    "STRING": 'a "string"',
    "_NL": "end of line",
    "$END": "end of file",
    "COLON": "':'",
    "COMMA": "','",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "EQUAL": "'='",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
}


def grammar_text() -> str:
    """The grammar, from the installed package or, in a source checkout, from grammars/."""
    packaged = resources.files("netdsl") / "grammars" / "netdsl.lark"
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    repo = Path(__file__).resolve().parent.parent / "grammars" / "netdsl.lark"
    return repo.read_text(encoding="utf-8")


class _Continuations:
    """Post-lexer: a newline inside brackets, or after a comma, does not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        prev = None
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            if tok.type == "_NL" and (depth > 0 or (prev is not None and prev.type == "COMMA")):
                continue
            prev = tok
            yield tok


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        postlex=_Continuations(),
    )


def parse_source(src: Source) -> ast.Program:
    """Parse one source into a Program; syntax errors raise NetError at file:line:col.

    >>> parse_source(Source("x.net", "network tiny\\ninput image: 1x8x8\\n")).stmts[0].name
    'tiny'
    """
    text = src.text if src.text.endswith("\n") else src.text + "\n"
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(src, e) from None
    return ast.Program(src.name, tuple(_Builder(src).stmts(tree.children)))


def parse_file(path: str | Path) -> ast.Program:
    """Read and parse a `.net` file."""
    return parse_source(Source.from_file(path))


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok}'"


def _expected_words(expected: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(t, f"'{t.lower()}'") for t in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _syntax_error(src: Source, e: UnexpectedInput) -> NetError:
    line, col = max(1, e.line or 1), max(1, e.column or 1)
    if isinstance(e, UnexpectedCharacters):
        ch = src.lines[line - 1][col - 1] if line <= len(src.lines) else "?"
        hint = None
        if ch == "{":
            hint = "'{' opens a block or the train section; is a keyword misspelled before it?"
        elif ch in "'`":
            hint = 'strings use double quotes: "like this"'
        return NetError(f"unexpected character '{ch}'", src.loc(line, col), hint)
    if isinstance(e, UnexpectedEOF):
        n = len(src.lines)
        return NetError(
            "unexpected end of file; a '{' is not closed", src.loc(n, len(src.lines[-1]) + 1)
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    # `accepts` is what the parser state takes; `expected` adds the post-lexer's _NL everywhere
    expected = set(getattr(e, "accepts", None) or e.expected)
    if tok.type == "$END":
        last = max(1, len(src.lines) - (1 if src.lines[-1] == "" else 0))
        at = src.loc(last, len(src.lines[last - 1]) + 1)
        for closer, opener in (("RPAR", "("), ("RSQB", "[")):
            if closer in expected:
                return NetError(f"unexpected end of file; a '{opener}' is not closed", at)
        if "RBRACE" not in expected:  # a trailing ',' joined the end of the file to its line
            return NetError(
                f"unexpected end of file; expected {_expected_words(expected)}",
                at,
                "a line that ends with ',' continues on the next line",
            )
        return NetError(
            "unexpected end of file; a '{' is not closed",
            at,
            "every block, repeat and train section ends with '}' on its own line",
        )
    width = len(str(tok)) if tok.type != "_NL" else 1
    if tok.type == "_NL":
        line, col = tok.line, tok.column
    msg = f"unexpected {_describe(tok)}; expected {_expected_words(expected)}"
    hint = None
    before = src.lines[line - 1][: col - 1].rstrip() if line <= len(src.lines) else ""
    if tok.type == "COLON":
        hint = "a layer reads `TYPE NAME: args`; only one name before ':'"
    elif tok.type == "RBRACE" and "_NL" in expected:
        hint = "'}' goes on its own line"
    elif tok.type == "RBRACE":
        hint = "no block, repeat or train section is open here"
    elif tok.type == "LBRACE" or before.endswith("{"):
        hint = "'{' must end the line it is on"
    elif before.endswith("}"):
        hint = "'}' goes on its own line"
    elif tok.type in ("NUMBER", "DIMS") and "COLON" in expected:
        hint = "a layer reads `TYPE NAME: args`, or `TYPE: args` without a name"
    return NetError(msg, src.loc(line, col, width), hint)


class _Builder:
    """Turns Lark's tree into ast nodes; an unknown rule is a bug, so it raises."""

    def __init__(self, src: Source):
        self.src = src

    def loc(self, node: Tree | Token):
        if isinstance(node, Token):
            return self.src.loc(node.line, node.column, len(str(node)))
        m = node.meta
        width = m.end_column - m.column if m.line == m.end_line else 1
        return self.src.loc(m.line, m.column, width)

    def brace_alone(self, t: Tree) -> None:
        """The grammar lets `}` follow the last statement on its line; the language does not."""
        last = t.children[-1] if t.children else None
        if isinstance(last, Tree) and last.meta.end_line == t.meta.end_line:
            at = self.src.loc(t.meta.end_line, t.meta.end_column - 1)
            raise NetError("'}' goes on its own line", at, "end the line before the '}'")

    def stmts(self, children) -> list[ast.Stmt]:
        return [self.stmt(c) for c in children]

    def stmt(self, t: Tree) -> ast.Stmt:
        rule = t.data
        ch = t.children
        if rule == "network":
            return ast.NetworkStmt(str(ch[0]), self.loc(ch[0]))
        if rule == "gpus":
            return ast.GpusStmt(self.value(ch[0]), self.loc(t))
        if rule == "const":
            return ast.ConstStmt(str(ch[0]), self.value(ch[1]), self.loc(ch[0]))
        if rule == "include":
            return ast.IncludeStmt(str(ch[0])[1:-1], self.loc(ch[0]))
        if rule == "block":
            name, *rest = ch
            body = rest[-1]
            self.brace_alone(body)
            params = tuple(
                ast.Param(
                    str(p.children[0]),
                    self.value(p.children[1]) if len(p.children) > 1 else None,
                    self.loc(p.children[0]),
                )
                for p in rest[:-1]
            )
            return ast.BlockDef(str(name), params, tuple(self.stmts(body.children)), self.loc(name))
        if rule == "repeat":
            self.brace_alone(ch[1])
            return ast.RepeatStmt(self.value(ch[0]), tuple(self.stmts(ch[1].children)), self.loc(t))
        if rule == "train":
            self.brace_alone(t)
            settings = tuple(
                ast.Setting(
                    str(s.children[0]),
                    self.args(s.children[1]) if len(s.children) > 1 else (),
                    self.loc(s.children[0]),
                )
                for s in ch
            )
            return ast.TrainStmt(settings, self.loc(t))
        if rule == "layer":
            return self.layer(ch)
        raise AssertionError(f"parser produced an unknown rule {rule!r}")

    def layer(self, ch) -> ast.LayerStmt:
        type_tok = ch[0]
        name_tok = ch[1] if len(ch) > 1 and isinstance(ch[1], Token) else None
        inputs: tuple[ast.Name, ...] = ()
        args: tuple[ast.Arg, ...] = ()
        for c in ch[1:]:
            if isinstance(c, Tree) and c.data == "inputs":
                inputs = tuple(ast.Name(str(n), self.loc(n)) for n in c.children)
            elif isinstance(c, Tree) and c.data == "args":
                args = self.args(c)
        return ast.LayerStmt(
            str(type_tok),
            str(name_tok) if name_tok is not None else None,
            inputs,
            args,
            self.loc(type_tok),
            self.loc(name_tok) if name_tok is not None else None,
        )

    def args(self, t: Tree) -> tuple[ast.Arg, ...]:
        return tuple(
            ast.Arg(tuple(self.value(i) for i in a.children), self.loc(a)) for a in t.children
        )

    def value(self, t: Tree | Token) -> ast.Value:
        if isinstance(t, Token):
            if t.type == "DIMS":
                return ast.Dims(tuple(int(v) for v in str(t).split("x")), self.loc(t))
            if t.type == "STRING":
                return ast.Str(str(t)[1:-1], self.loc(t))
            raise AssertionError(f"unexpected token {t.type}")
        rule, ch = t.data, t.children
        if rule == "number":
            s = str(ch[0])
            v: float | int = int(s) if s.isdigit() else float(s)
            return ast.Num(v, self.loc(ch[0]))
        if rule == "name":
            return ast.Name(str(ch[0]), self.loc(ch[0]))
        if rule in ("add", "sub", "mul", "div"):
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[rule]
            return ast.BinOp(op, self.value(ch[0]), self.value(ch[1]), self.loc(t))
        if rule == "neg":
            return ast.Neg(self.value(ch[0]), self.loc(t))
        if rule == "keyval":
            return ast.KeyVal(str(ch[0]), self.value(ch[1]), self.loc(ch[0]))
        if rule == "call":
            return ast.Call(str(ch[0]), tuple(self.value(c) for c in ch[1:]), self.loc(ch[0]))
        if rule == "list":
            return ast.ListV(tuple(self.value(c) for c in ch), self.loc(t))
        raise AssertionError(f"parser produced an unknown value rule {rule!r}")
