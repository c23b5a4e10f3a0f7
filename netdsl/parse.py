"""Parse `.net` text with Lark (LALR, positions kept) into the frozen nodes of `netdsl.ast`.

Lark's exceptions never reach a user: they are rewritten into NetErrors that say, in
words, what was found and what was expected there.
"""

from __future__ import annotations

import contextlib
import functools
import math
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .errors import Location, NetError, describe_char, is_unprintable, shorten
from .limits import MAX_DEPTH, MAX_LAYERS, MAX_NUMBER, MAX_NUMBER_CHARS, MAX_TOKENS
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


class _Limit(Exception):
    """Raised by the post-lexer at the token that crosses one of the language's limits."""

    def __init__(self, message: str, token: Token, hint: str | None = None):
        super().__init__(message)
        self.message, self.token, self.hint = message, token, hint


_OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_OPERATORS = ("PLUS", "MINUS", "STAR", "SLASH")
_EXPRESSION_ENDS = ("COMMA", "COLON", "EQUAL")


class _Continuations:
    """Post-lexer: a newline inside brackets, or after a comma, does not end a statement.

    It also enforces, before the parser builds a tree, the limits that keep parsing fast
    and the tree shallow: brackets nested at most MAX_DEPTH deep, at most MAX_DEPTH
    operators in a row at one bracket level, at most MAX_TOKENS tokens in a file.
    """

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0  # ( and [: newlines inside do not end a statement
        operators = [0]  # per open ( [ {: operators since the last ',', ':', '=' or newline
        prev = None
        for count, tok in enumerate(stream):
            if count >= MAX_TOKENS:
                raise _Limit(
                    f"the file is too long (more than {MAX_TOKENS:,} names, numbers and symbols)",
                    tok,
                    f"a net has at most {MAX_LAYERS:,} layers; repeat and blocks "
                    "write many layers in a few lines",
                )
            if tok.type in _OPENERS:
                operators.append(0)
                if len(operators) > MAX_DEPTH + 1:
                    raise _Limit(f"brackets nested too deeply (more than {MAX_DEPTH} levels)", tok)
            elif tok.type in _OPENERS.values() and len(operators) > 1:
                operators.pop()
            elif tok.type in _OPERATORS:
                operators[-1] += 1
                if operators[-1] > MAX_DEPTH:
                    raise _Limit(
                        f"expression too long (more than {MAX_DEPTH} operators in a row)",
                        tok,
                        "split it into parts with const",
                    )
            elif tok.type in _EXPRESSION_ENDS:
                operators[-1] = 0
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            if tok.type == "_NL" and (depth > 0 or (prev is not None and prev.type == "COMMA")):
                continue
            if tok.type == "_NL":
                operators[-1] = 0
            prev = tok
            yield tok


_OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": False}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    """The LALR parser. Its tables are kept in netdsl's cache folder: a start then loads them
    in 4 ms instead of building them in 50 ms, on every command.

    Lark's own `cache=` option writes its file in place (a second start could read half of
    it), so netdsl saves the tables with Lark's `save` through files.write_atomic and loads
    them the way `cache=` does (`_load`, which also takes the post-lexer; `Lark.load` does
    not). Anything that goes wrong there, a newer Lark included, only means building them."""
    text = grammar_text()
    path = _parser_file(text)
    if path is not None:
        with contextlib.suppress(Exception):  # missing, damaged, or a Lark without _load
            with open(path, "rb") as f:
                return lark.Lark.__new__(lark.Lark)._load(f, postlex=_Continuations())
    parser = lark.Lark(text, **_OPTIONS, postlex=_Continuations())
    if path is not None:
        _save_parser(parser, path)
    return parser


def _save_parser(parser: lark.Lark, path: Path) -> None:
    """Keep the parser's tables for the next start, whole or not at all; a folder that cannot
    be written only means building them again next time."""
    import io

    from .files import write_atomic

    buf = io.BytesIO()
    with contextlib.suppress(Exception):  # never fails a parse (OSError, DataError, Lark's)
        parser.save(buf, exclude_options=("postlex",))  # code: given again when loading
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buf.getvalue())


def _parser_file(grammar: str) -> Path | None:
    """Where the parser's tables are kept: a name from the grammar, the options and the Lark
    and Python versions (a file of another version or grammar is never looked at)."""
    import hashlib
    import sys

    from .ops.codegen import cache_folder  # no numba: plain paths

    key = "\n".join([lark.__version__, sys.version, repr(sorted(_OPTIONS.items())), grammar])
    try:
        folder = cache_folder() / "parser"
    except Exception:  # no home folder: build the tables every time
        return None
    return folder / f"lark_{hashlib.sha256(key.encode()).hexdigest()[:20]}.pickle"


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
    except _Limit as e:
        raise NetError(e.message, src.loc(e.token.line, e.token.column), e.hint) from None
    return ast.Program(src.name, tuple(_Builder(src).stmts(tree.children, 0)))


def parse_file(path: str | Path) -> ast.Program:
    """Read and parse a `.net` file."""
    return parse_source(Source.from_file(path))


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{shorten(str(tok), 40)}'"


def _expected_words(expected: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(t, f"'{t.lower()}'") for t in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_CLOSER_TOKENS = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}


def _open_brackets(src: Source, line: int, col: int) -> list[tuple[str, int, int]]:
    """The brackets still open before `line`:`col`, outermost first, as (char, line, col);
    brackets inside strings and comments do not count."""
    stack: list[tuple[str, int, int]] = []
    for n, text in enumerate(src.lines[:line], start=1):
        end = col - 1 if n == line else len(text)
        i = 0
        while i < end:
            ch = text[i]
            if ch == "#":
                break
            if ch == '"':
                close = text.find('"', i + 1)
                i = close + 1 if close >= 0 else end
                continue
            if ch in _CLOSERS:
                stack.append((ch, n, i + 1))
            elif stack and ch == _CLOSERS[stack[-1][0]]:
                stack.pop()
            i += 1
    return stack


def _unclosed_note(
    src: Source, line: int, col: int, expected: set[str]
) -> tuple[tuple[str, Location], ...]:
    """A note at the innermost bracket open at `line`:`col` if the parser expects its
    closer and it was opened on an earlier line (a newline inside brackets does not end
    the statement, so a forgotten closer shows up lines later)."""
    stack = _open_brackets(src, line, col)
    if not stack or _CLOSER_TOKENS[stack[-1][0]] not in expected or stack[-1][1] == line:
        return ()
    ch, at_line, at_col = stack[-1]
    return ((f"'{ch}' opened here", src.loc(at_line, at_col)),)


def _syntax_error(src: Source, e: UnexpectedInput) -> NetError:
    line, col = max(1, e.line or 1), max(1, e.column or 1)
    if isinstance(e, UnexpectedCharacters):
        return _unexpected_character(src, line, col)
    if isinstance(e, UnexpectedEOF):
        return _unexpected_end(src, {"RBRACE"})
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    # `accepts` is what the parser state takes; `expected` adds the post-lexer's _NL everywhere
    expected = set(getattr(e, "accepts", None) or e.expected)
    if tok.type == "$END":
        return _unexpected_end(src, expected)
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
    notes = _unclosed_note(src, line, col, expected)
    return NetError(msg, src.loc(line, col, width), hint, notes)


def _unexpected_character(src: Source, line: int, col: int) -> NetError:
    text = src.lines[line - 1] if line <= len(src.lines) else ""
    ch = text[col - 1] if col <= len(text) else "?"
    hint = None
    if ch == "{":
        hint = "'{' opens a block or the train section; is a keyword misspelled before it?"
    elif ch in "'`":
        hint = 'strings use double quotes: "like this"'
    elif ch == "\ufeff":
        hint = "a byte order mark may only start a file; delete this one"
    elif ch == "\r":
        hint = "end lines with \\n or \\r\\n"
    elif is_unprintable(ch) and (ch.isspace() or ch in "\u200b\u2060"):
        hint = "replace it with a plain space"
    elif is_unprintable(ch):
        hint = "delete it (it is invisible in most editors)"
    return NetError(f"unexpected character {describe_char(ch)}", src.loc(line, col), hint)


def _unexpected_end(src: Source, expected: set[str]) -> NetError:
    """End of file inside a statement: name the bracket left open and point at it."""
    last = max(1, len(src.lines) - (1 if src.lines[-1] == "" else 0))
    at = src.loc(last, len(src.lines[last - 1]) + 1)
    stack = _open_brackets(src, last, at.col)
    opener = stack[-1][0] if stack else ""
    if not opener:
        opener = next((c for c, t in _CLOSER_TOKENS.items() if t in expected), "")
    notes = ()
    if stack:
        ch, line, col = stack[-1]
        notes = ((f"'{ch}' opened here", src.loc(line, col)),)
    if opener in ("(", "["):  # a newline inside brackets continues the statement
        return NetError(f"unexpected end of file; a '{opener}' is not closed", at, notes=notes)
    if opener != "{" or "RBRACE" not in expected:  # a trailing ',' joined the end to its line
        return NetError(
            f"unexpected end of file; expected {_expected_words(expected)}",
            at,
            "a line that ends with ',' continues on the next line",
        )
    return NetError(
        "unexpected end of file; a '{' is not closed",
        at,
        "every block, repeat and train section ends with '}' on its own line",
        notes,
    )


def _number(text: str, loc: Location) -> int | float:
    """The value of a number literal, bounded before and after conversion."""
    if len(text) > MAX_NUMBER_CHARS:
        shown = f"{text[:10]}...{text[-10:]}"
        raise NetError(
            f"number {shown} is too long ({len(text)} characters; at most {MAX_NUMBER_CHARS})",
            loc,
        )
    v: int | float = int(text) if text.isdigit() else float(text)
    if not math.isfinite(v) or abs(v) > MAX_NUMBER:
        raise NetError(f"number {text} is too large (at most {_MAX_NUMBER_TEXT})", loc)
    return v


_MAX_NUMBER_TEXT = f"{MAX_NUMBER:.0e}".replace("e+", "e") if MAX_NUMBER >= 1e6 else str(MAX_NUMBER)


class _Builder:
    """Turns Lark's tree into ast nodes; an unknown rule is a bug, so it raises.

    Every method takes the nesting depth of what it builds (blocks, brackets, calls,
    lists, operators): beyond MAX_DEPTH it stops with a located error, so neither this
    recursion nor the evaluator's later can run out of stack.
    """

    def __init__(self, src: Source):
        self.src = src

    def loc(self, node: Tree | Token):
        if isinstance(node, Token):
            return self.src.loc(node.line, node.column, len(str(node)))
        m = node.meta
        width = m.end_column - m.column if m.line == m.end_line else 1
        return self.src.loc(m.line, m.column, width)

    def check_depth(self, node: Tree | Token, depth: int, what: str) -> None:
        if depth > MAX_DEPTH:
            hint = None
            if isinstance(node, Tree) and node.data in ("add", "sub", "mul", "div"):
                hint = "every operator in a chain adds a level; split a long sum with const"
            raise NetError(
                f"{what} nested too deeply (more than {MAX_DEPTH} levels)", self.loc(node), hint
            )

    def brace_alone(self, t: Tree) -> None:
        """The grammar lets `}` follow the last statement on its line; the language does not."""
        last = t.children[-1] if t.children else None
        if isinstance(last, Tree) and last.meta.end_line == t.meta.end_line:
            at = self.src.loc(t.meta.end_line, t.meta.end_column - 1)
            raise NetError("'}' goes on its own line", at, "end the line before the '}'")

    def stmts(self, children, depth: int) -> list[ast.Stmt]:
        return [self.stmt(c, depth) for c in children]

    def stmt(self, t: Tree, depth: int) -> ast.Stmt:
        self.check_depth(t, depth, "statement")
        rule = t.data
        ch = t.children
        d = depth + 1
        if rule == "network":
            return ast.NetworkStmt(str(ch[0]), self.loc(ch[0]))
        if rule == "gpus":
            return ast.GpusStmt(self.value(ch[0], d), self.loc(t))
        if rule == "const":
            return ast.ConstStmt(str(ch[0]), self.value(ch[1], d), self.loc(ch[0]))
        if rule == "include":
            return ast.IncludeStmt(str(ch[0])[1:-1], self.loc(ch[0]))
        if rule == "block":
            name, *rest = ch
            body = rest[-1]
            self.brace_alone(body)
            params = tuple(
                ast.Param(
                    str(p.children[0]),
                    self.value(p.children[1], d) if len(p.children) > 1 else None,
                    self.loc(p.children[0]),
                )
                for p in rest[:-1]
            )
            stmts = tuple(self.stmts(body.children, d))
            return ast.BlockDef(str(name), params, stmts, self.loc(name))
        if rule == "repeat":
            self.brace_alone(ch[1])
            stmts = tuple(self.stmts(ch[1].children, d))
            return ast.RepeatStmt(self.value(ch[0], d), stmts, self.loc(t))
        if rule == "train":
            self.brace_alone(t)
            settings = tuple(
                ast.Setting(
                    str(s.children[0]),
                    self.args(s.children[1], d) if len(s.children) > 1 else (),
                    self.loc(s.children[0]),
                )
                for s in ch
            )
            return ast.TrainStmt(settings, self.loc(t))
        if rule == "layer":
            return self.layer(ch, d)
        raise AssertionError(f"parser produced an unknown rule {rule!r}")

    def layer(self, ch, depth: int) -> ast.LayerStmt:
        type_tok = ch[0]
        name_tok = ch[1] if len(ch) > 1 and isinstance(ch[1], Token) else None
        inputs: tuple[ast.Name, ...] = ()
        args: tuple[ast.Arg, ...] = ()
        for c in ch[1:]:
            if isinstance(c, Tree) and c.data == "inputs":
                inputs = tuple(ast.Name(str(n), self.loc(n)) for n in c.children)
            elif isinstance(c, Tree) and c.data == "args":
                args = self.args(c, depth)
        return ast.LayerStmt(
            str(type_tok),
            str(name_tok) if name_tok is not None else None,
            inputs,
            args,
            self.loc(type_tok),
            self.loc(name_tok) if name_tok is not None else None,
        )

    def args(self, t: Tree, depth: int) -> tuple[ast.Arg, ...]:
        return tuple(
            ast.Arg(tuple(self.value(i, depth) for i in a.children), self.loc(a))
            for a in t.children
        )

    def value(self, t: Tree | Token, depth: int) -> ast.Value:
        if isinstance(t, Token):
            if t.type == "DIMS":
                parts = str(t).split("x")
                return ast.Dims(tuple(int(_number(p, self.loc(t))) for p in parts), self.loc(t))
            if t.type == "STRING":
                return ast.Str(str(t)[1:-1], self.loc(t))
            raise AssertionError(f"unexpected token {t.type}")
        rule, ch = t.data, t.children
        if rule == "number":
            return ast.Num(_number(str(ch[0]), self.loc(ch[0])), self.loc(ch[0]))
        if rule == "name":
            return ast.Name(str(ch[0]), self.loc(ch[0]))
        self.check_depth(t, depth, "expression")  # leaves above do not recurse: no level
        d = depth + 1
        if rule in ("add", "sub", "mul", "div"):
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[rule]
            return ast.BinOp(op, self.value(ch[0], d), self.value(ch[1], d), self.loc(t))
        if rule == "neg":
            return ast.Neg(self.value(ch[0], d), self.loc(t))
        if rule == "keyval":
            return ast.KeyVal(str(ch[0]), self.value(ch[1], d), self.loc(ch[0]))
        if rule == "call":
            args = tuple(self.value(c, d) for c in ch[1:])
            return ast.Call(str(ch[0]), args, self.loc(ch[0]))
        if rule == "list":
            return ast.ListV(tuple(self.value(c, d) for c in ch), self.loc(t))
        raise AssertionError(f"parser produced an unknown value rule {rule!r}")
