"""Evaluating argument values: constants, arithmetic, `k x k` sizes, calls like gaussian(std=0.01).

After evaluation every value is an `Item`; option readers (netdsl/schema.py) then turn
runs of items into typed attributes, naming the offending item on any mistake.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from . import ast
from .errors import Location, NetError
from .limits import MAX_NUMBER


@dataclass(frozen=True)
class Item:
    """An evaluated value. kind: num, word, dims, str, call, list, kv."""

    kind: str
    value: Any  # num: int|float; word/str: str; dims: tuple; call: (name, [Item]); list: [Item];
    #             kv: (key, Item)
    loc: Location
    name: str | None = None  # the constant's name when a bound name evaluated to a number

    def as_word(self) -> Item:
        """The name as written, for a constant that shadows an option key (`stride stride`)."""
        return Item("word", self.name, self.loc) if self.name else self

    def describe(self) -> str:
        if self.kind == "word":
            return f"'{self.value}'"
        if self.kind == "num":
            return f"number {self.value}"
        if self.kind == "dims":
            return "size " + "x".join(map(str, self.value))
        if self.kind == "str":
            return f'string "{self.value}"'
        if self.kind == "call":
            return f"'{self.value[0]}(...)'"
        if self.kind == "kv":
            return f"'{self.value[0]}=...'"
        return "a list"


def did_you_mean(word: str, choices) -> str | None:
    """A hint naming the closest choice, if one is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def evaluate(v: ast.Value, env: dict[str, Any]) -> Item:
    """Evaluate one syntax value with constants `env` (name -> int/float)."""
    if isinstance(v, ast.Num):
        return Item("num", checked(v.value, v.loc, "number"), v.loc)
    if isinstance(v, ast.Name):
        if v.id in env:
            return Item("num", env[v.id], v.loc, v.id)
        return Item("word", v.id, v.loc)
    if isinstance(v, ast.Dims):
        for d in v.values:
            checked(d, v.loc, "size")
        return Item("dims", v.values, v.loc)
    if isinstance(v, ast.Str):
        return Item("str", v.value, v.loc)
    if isinstance(v, (ast.BinOp, ast.Neg)):
        return Item("num", _arith(v, env), v.loc)
    if isinstance(v, ast.KeyVal):
        return Item("kv", (v.key, evaluate(v.value, env)), v.loc)
    if isinstance(v, ast.Call):
        return Item("call", (v.func, [evaluate(a, env) for a in v.args]), v.loc)
    if isinstance(v, ast.ListV):
        return Item("list", [evaluate(a, env) for a in v.items], v.loc)
    raise AssertionError(f"unknown value node {v!r}")


def checked(value: int | float, loc: Location | None, what: str = "the result") -> int | float:
    """`value` if it is finite and within +-MAX_NUMBER, else a NetError at `loc`.

    Checked after every operation, so constant arithmetic never builds huge integers (a chain
    of squarings would otherwise grow without bound) and NaN or infinity never reaches an
    option's range check, which NaN passes silently.
    """
    limit = f"numbers are at most {MAX_NUMBER:.0e} in size".replace("e+", "e")
    if isinstance(value, float) and not math.isfinite(value):
        raise NetError(f"{what} is infinite or not a number; {limit}", loc)
    if abs(value) > MAX_NUMBER:
        # an int literal may have thousands of digits: never str() it (CPython's limit)
        big = isinstance(value, int) and abs(value) >= 10**40
        shown = "with more than 40 digits" if big else repr(value)
        raise NetError(f"{what} {shown} is out of range; {limit}", loc)
    return value


def _arith(v: ast.Value, env: dict[str, Any]) -> int | float:
    if isinstance(v, ast.Num):
        return checked(v.value, v.loc, "number")
    if isinstance(v, ast.Name):
        if v.id not in env:
            raise NetError(
                f"unknown constant '{v.id}' in an expression", v.loc, did_you_mean(v.id, env)
            )
        return env[v.id]
    if isinstance(v, ast.Neg):
        return -_arith(v.operand, env)
    if isinstance(v, ast.BinOp):
        return checked(_binop(v, _arith(v.left, env), _arith(v.right, env)), v.loc)
    raise NetError("expected a number", getattr(v, "loc", None))


def _binop(v: ast.BinOp, a: int | float, b: int | float) -> int | float:
    """One operation on two checked operands (each within MAX_NUMBER, so this stays small)."""
    if v.op == "+":
        return a + b
    if v.op == "-":
        return a - b
    if v.op == "*":
        return a * b
    if b == 0:
        raise NetError("division by zero", v.loc)
    if isinstance(a, int) and isinstance(b, int):
        # integer division that divides exactly stays an int, so `c/2 filters` works
        return a // b if a % b == 0 else a / b
    return a / b


def evaluate_arg(arg: ast.Arg, env: dict[str, Any]) -> list[Item]:
    """Evaluate an argument's items and merge `a x b [x c]` runs into one size."""
    items = [evaluate(v, env) for v in arg.items]
    out: list[Item] = []
    i = 0
    while i < len(items):
        it = items[i]
        if it.kind in ("num", "dims") and i + 2 < len(items) and _is_x(items[i + 1]):
            vals = list(it.value) if it.kind == "dims" else [it.value]
            j = i
            while j + 2 < len(items) and _is_x(items[j + 1]) and items[j + 2].kind == "num":
                vals.append(items[j + 2].value)
                j += 2
            if j > i:
                if not all(isinstance(x, int) for x in vals):
                    raise NetError("sizes must be whole numbers", it.loc)
                out.append(Item("dims", tuple(vals), it.loc))
                i = j + 1
                continue
        out.append(it)
        i += 1
    return out


def _is_x(it: Item) -> bool:
    return it.kind == "word" and it.value == "x"
