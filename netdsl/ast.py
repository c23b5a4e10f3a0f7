"""Frozen syntax-tree nodes produced by the parser; every node carries a Location."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import Location

# ---- values (inside layer arguments and train settings) ----


@dataclass(frozen=True)
class Num:
    value: float | int
    loc: Location


@dataclass(frozen=True)
class Name:
    id: str
    loc: Location


@dataclass(frozen=True)
class Dims:
    values: tuple[int, ...]
    loc: Location


@dataclass(frozen=True)
class Str:
    value: str
    loc: Location


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * /
    left: Value
    right: Value
    loc: Location


@dataclass(frozen=True)
class Neg:
    operand: Value
    loc: Location


@dataclass(frozen=True)
class KeyVal:
    key: str
    value: Value
    loc: Location


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Value, ...]  # positional and KeyVal, in order
    loc: Location


@dataclass(frozen=True)
class ListV:
    items: tuple[Value, ...]
    loc: Location


Value = Union[Num, Name, Dims, Str, BinOp, Neg, KeyVal, Call, ListV]


@dataclass(frozen=True)
class Arg:
    """One comma-separated argument: a short run of values, e.g. `6 filters` or `pad same`."""

    items: tuple[Value, ...]
    loc: Location


# ---- statements ----


@dataclass(frozen=True)
class NetworkStmt:
    name: str
    loc: Location


@dataclass(frozen=True)
class GpusStmt:
    count: Value
    loc: Location


@dataclass(frozen=True)
class ConstStmt:
    name: str
    value: Value
    loc: Location


@dataclass(frozen=True)
class IncludeStmt:
    path: str
    loc: Location


@dataclass(frozen=True)
class Param:
    name: str
    default: Value | None
    loc: Location


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    loc: Location


@dataclass(frozen=True)
class RepeatStmt:
    count: Value
    body: tuple[Stmt, ...]
    loc: Location


@dataclass(frozen=True)
class Setting:
    key: str
    args: tuple[Arg, ...]
    loc: Location


@dataclass(frozen=True)
class TrainStmt:
    settings: tuple[Setting, ...]
    loc: Location


@dataclass(frozen=True)
class LayerStmt:
    type: str
    name: str | None
    inputs: tuple[Name, ...]
    args: tuple[Arg, ...]
    loc: Location  # the layer type
    name_loc: Location | None


Stmt = Union[
    NetworkStmt, GpusStmt, ConstStmt, IncludeStmt, BlockDef, RepeatStmt, TrainStmt, LayerStmt
]


@dataclass(frozen=True)
class Program:
    file: str
    stmts: tuple[Stmt, ...]
