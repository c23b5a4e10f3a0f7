"""AST -> IR: include files, evaluate constants, expand blocks and repeats, name and wire layers.

Layers chain by default: a layer without explicit inputs takes the previous layer's
output. Inside a block, `in` names the block's input, names are prefixed with the
use's name (`res2a.conv1`), and inside `repeat N` each name gets `_1` .. `_N`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import ast
from .errors import Location, NetError
from .ir import Layer, Network
from .limits import MAX_BLOCK_DEPTH, MAX_GPUS, MAX_LAYERS
from .parse import parse_file
from .schema import ACTIVATIONS, ALIASES, LAYERS, read_layer_args
from .trainconf import read_train
from .values import Item, did_you_mean, evaluate, evaluate_arg


@dataclass
class _Scope:
    """Names visible while expanding one block instance (or the top level)."""

    prefix: str  # "" at top level, "res2a." inside a block use
    input: str | None  # what `in` means here
    local: dict[str, str] = field(default_factory=dict)  # written name -> full name
    suffix: str = ""  # "_2" in the second iteration of a repeat


@dataclass
class _State:
    layers: list[Layer] = field(default_factory=list)
    by_name: dict[str, Layer] = field(default_factory=dict)
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    consts: dict[str, Any] = field(default_factory=dict)
    const_locs: dict[str, Location] = field(default_factory=dict)
    network: str | None = None
    gpus: int = 1
    gpus_loc: Location | None = None
    train: ast.TrainStmt | None = None
    included: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    expanding: list[str] = field(default_factory=list)  # the blocks being expanded, outermost first


def elaborate(program: ast.Program) -> Network:
    """Expand a parsed program into an unchecked Network (shapes come from passes)."""
    st = _State(included=[str(Path(program.file).resolve())])
    top = _Scope("", None)
    _stmts(st, program.stmts, top, st.consts, Path(program.file).parent, depth=0)
    if not st.layers:
        raise NetError("the file defines no layers", None, "start with: input image: 1x28x28")
    first = st.layers[0]
    if first.type != "input":
        raise first.error(
            f"the first layer must be an input, not {first.type}", None, "e.g. input image: 1x28x28"
        )
    train = read_train(st.train, st.consts)
    name = st.network or Path(program.file).stem
    return Network(name, program.file, st.layers, train, st.gpus, st.gpus_loc)


def _stmts(st, stmts, scope: _Scope, env: dict[str, Any], base: Path, depth: int) -> None:
    for s in stmts:
        if isinstance(s, ast.LayerStmt):
            _layer(st, s, scope, env, base, depth)
        elif isinstance(s, ast.ConstStmt):
            if s.name in LAYERS or s.name in ("in", "x"):
                raise NetError(f"'{s.name}' cannot be a constant name; it is a keyword", s.loc)
            v = evaluate(s.value, env)
            if v.kind != "num":
                raise NetError(f"constant '{s.name}' must be a number", s.value.loc
                               if hasattr(s.value, "loc") else s.loc)  # fmt: skip
            if s.name in env and s.name in st.const_locs:
                raise NetError(
                    f"constant '{s.name}' is defined twice",
                    s.loc,
                    notes=(("first defined here", st.const_locs[s.name]),),
                )
            env[s.name] = v.value
            st.const_locs[s.name] = s.loc
        elif isinstance(s, ast.BlockDef):
            if s.name in LAYERS:
                raise NetError(f"block '{s.name}' has the name of a layer type", s.loc)
            if s.name in st.blocks:
                raise NetError(f"block '{s.name}' is defined twice", s.loc,
                               notes=(("first defined here", st.blocks[s.name].loc),))  # fmt: skip
            st.blocks[s.name] = s
        elif isinstance(s, ast.RepeatStmt):
            n = evaluate(s.count, env)
            if n.kind != "num" or not isinstance(n.value, int) or n.value < 1:
                raise NetError("repeat needs a whole number of times, at least 1", s.loc)
            if n.value > MAX_LAYERS:
                raise NetError(f"repeat {n.value:,} is too many (at most {MAX_LAYERS:,})",
                               s.loc)  # fmt: skip
            st.counters["__repeat__"] = st.counters.get("__repeat__", 0) + n.value
            if st.counters["__repeat__"] > MAX_LAYERS * 10:  # nested empty repeats
                raise NetError("repeats expand too far", s.loc,
                               "is a repeat count too large?")  # fmt: skip
            for i in range(1, n.value + 1):
                inner = _Scope(scope.prefix, scope.input, scope.local, scope.suffix + f"_{i}")
                _stmts(st, s.body, inner, env, base, depth)
        elif isinstance(s, ast.NetworkStmt):
            if st.network is not None:
                raise NetError("a second `network` line", s.loc, "a file names one network")
            st.network = s.name
        elif isinstance(s, ast.GpusStmt):
            v = evaluate(s.count, env)
            if v.kind != "num" or not isinstance(v.value, int) or v.value < 1:
                raise NetError("gpus needs a whole number, at least 1", s.loc)
            if v.value > MAX_GPUS:  # placement walks every GPU of every layer
                raise NetError(f"gpus {v.value:,} is too many (at most {MAX_GPUS:,})", s.loc)
            if st.gpus_loc is not None:
                raise NetError("`gpus` is given twice", s.loc,
                               notes=(("first given here", st.gpus_loc),))  # fmt: skip
            st.gpus, st.gpus_loc = v.value, s.loc
        elif isinstance(s, ast.TrainStmt):
            if st.train is not None:
                raise NetError("a second train section", s.loc,
                               notes=(("the first is here", st.train.loc),))  # fmt: skip
            st.train = s
        elif isinstance(s, ast.IncludeStmt):
            _include(st, s, scope, env, base, depth)
        else:
            raise AssertionError(f"unknown statement {s!r}")


def _include(st, s: ast.IncludeStmt, scope, env, base: Path, depth: int) -> None:
    path = (base / s.path).resolve()
    if str(path) in st.included:
        raise NetError(f'"{s.path}" is included twice (or includes itself)', s.loc)
    if not path.is_file():
        raise NetError(f'cannot include "{s.path}": no such file', s.loc)
    st.included.append(str(path))
    prog = parse_file(path)
    stmts = [s for s in prog.stmts if not isinstance(s, ast.NetworkStmt)]
    _stmts(st, stmts, scope, env, path.parent, depth)


def _layer(st, s: ast.LayerStmt, scope: _Scope, env, base: Path, depth: int) -> None:
    ltype = ALIASES.get(s.type, s.type)
    if ltype in st.blocks:
        _use_block(st, s, st.blocks[ltype], scope, env, base, depth)
        return
    if ltype not in LAYERS:
        raise NetError(
            f"unknown layer type '{s.type}'",
            s.loc,
            did_you_mean(s.type, list(LAYERS) + list(st.blocks))
            or "layer types: " + ", ".join(sorted(LAYERS)),
        )
    schema = LAYERS[ltype]
    runs = [evaluate_arg(_key_then_negative(a, env), env) for a in s.args]
    name_is_kind = False
    if ltype == "loss" and s.name in ("cross_entropy", "mse") and not runs:
        # `loss cross_entropy`: the short form names the kind, not the layer
        runs = [[Item("word", s.name, s.name_loc)]]
        name_is_kind = True
    attrs, locs = read_layer_args(ltype, runs, s.loc, schema)
    written = s.name if s.name and not name_is_kind else None
    if name_is_kind and scope.prefix + "loss" not in st.by_name:
        written = "loss"
    name = _name(st, scope, written, ltype, s)
    inputs = _inputs(st, s, scope, schema, ltype)
    if ltype in ACTIVATIONS:  # `relu r1` is an act layer
        slope = attrs.pop("slope", 0.01)
        locs["activation"] = s.loc
        attrs = {"activation": (ltype, slope if ltype == "leaky" else 0.0)}
        ltype = "act"
    if len(st.layers) >= MAX_LAYERS:
        raise NetError(f"the network expands to more than {MAX_LAYERS:,} layers", s.loc,
                       "is a repeat count or a recursive block too large?")  # fmt: skip
    layer = Layer(name, ltype, inputs, attrs, s.loc, locs)
    if s.name_loc is not None and not name_is_kind:
        layer.arg_locs["__name__"] = s.name_loc
    for i, n in enumerate(s.inputs):
        layer.arg_locs[f"__input{i}__"] = n.loc
    st.layers.append(layer)
    st.by_name[name] = layer
    if written:
        scope.local[written + scope.suffix] = name


def _name(st, scope: _Scope, written: str | None, ltype: str, s: ast.LayerStmt) -> str:
    if written is None:
        st.counters[ltype] = st.counters.get(ltype, 0) + 1
        base = f"{ltype}{st.counters[ltype]}"
        while scope.prefix + base in st.by_name:
            st.counters[ltype] += 1
            base = f"{ltype}{st.counters[ltype]}"
        return scope.prefix + base
    if written == "in":
        raise NetError("'in' is reserved for a block's input", s.name_loc)
    name = scope.prefix + written + scope.suffix
    if name in st.by_name:
        raise NetError(
            f"layer name '{name}' is used twice",
            s.name_loc,
            "give each layer its own name",
            notes=(("first used here", st.by_name[name].arg_locs.get("__name__",
                                                                    st.by_name[name].loc)),),
        )  # fmt: skip
    return name


def _resolve(st, scope: _Scope, ref: ast.Name) -> str:
    if ref.id == "in":
        if scope.input is None:
            raise NetError("'in' names a block's input; it only works inside a block", ref.loc)
        return scope.input
    for cand in (ref.id + scope.suffix, ref.id):
        if cand in scope.local:
            return scope.local[cand]
    if ref.id in st.by_name:
        return ref.id
    known = list(scope.local) + list(st.by_name)
    raise NetError(
        f"unknown layer '{ref.id}'",
        ref.loc,
        did_you_mean(ref.id, known) or "a layer can only take inputs defined above it",
    )


def _inputs(st, s: ast.LayerStmt, scope: _Scope, schema, ltype: str) -> list[str]:
    if schema.max_inputs == 0:
        if s.inputs:
            raise NetError(f"{ltype} takes no inputs", s.inputs[0].loc)
        return []
    if s.inputs:
        names = [_resolve(st, scope, r) for r in s.inputs]
    else:
        prev = _previous(st, scope)
        if prev is None:
            raise NetError(f"{ltype} has no input: nothing comes before it", s.loc,
                           "start the network with: input image: 1x28x28")  # fmt: skip
        names = [prev]
    if len(names) < schema.min_inputs:
        raise NetError(
            f"{ltype} needs at least {schema.min_inputs} inputs, got {len(names)}",
            s.loc,
            f"write {ltype} {s.name or 'name'}(a, b)",
        )
    if schema.max_inputs is not None and len(names) > schema.max_inputs:
        raise NetError(f"{ltype} takes one input, got {len(names)}", s.inputs[1].loc)
    return names


def _previous(st, scope: _Scope) -> str | None:
    """The layer a chained layer reads: the last one defined, or the block's input."""
    if scope.prefix and not (st.layers and st.layers[-1].name.startswith(scope.prefix)):
        return scope.input
    return st.layers[-1].name if st.layers else None


def _key_then_negative(arg: ast.Arg, env) -> ast.Arg:
    """`stride -1` parses as the subtraction `stride - 1`: read it as a key and a negative value,
    so the option's own check reports it, when the key is not a constant."""
    items: list[ast.Value] = []
    for v in arg.items:
        key, rest = _peel_key(v, env)
        items += [v] if key is None else [key, rest]
    return ast.Arg(tuple(items), arg.loc) if len(items) != len(arg.items) else arg


def _peel_key(v: ast.Value, env) -> tuple[ast.Name | None, ast.Value | None]:
    if not (isinstance(v, ast.BinOp) and v.op in "+-"):
        return None, None
    if v.op == "-" and isinstance(v.left, ast.Name) and v.left.id not in env:
        line = v.loc.source_line
        minus = line.find("-", v.left.loc.col - 1 + v.left.loc.width) + 1
        end = v.loc.col + v.loc.width if v.loc.width > 1 else minus + 1
        at = replace(v.loc, col=minus, width=end - minus) if minus > 0 else v.right.loc
        return v.left, ast.Neg(v.right, at)
    key, rest = _peel_key(v.left, env)
    if key is None or rest is None:
        return None, None
    at = replace(v.loc, col=rest.loc.col, width=v.loc.col + v.loc.width - rest.loc.col)
    return key, ast.BinOp(v.op, rest, v.right, at)


def _use_block(st, s: ast.LayerStmt, blk: ast.BlockDef, scope, env, base, depth: int) -> None:
    if depth >= MAX_BLOCK_DEPTH or blk.name in st.expanding:
        raise NetError(f"block '{blk.name}' uses itself (recursion)", s.loc)
    if not s.name:
        raise NetError(f"a use of block '{blk.name}' needs a name", s.loc,
                       f"e.g. {blk.name} b1: ...")  # fmt: skip
    if len(s.inputs) > 1:
        raise NetError(f"block '{blk.name}' takes one input", s.inputs[1].loc)
    inp = _resolve(st, scope, s.inputs[0]) if s.inputs else _previous(st, scope)
    if inp is None:
        raise NetError(f"block '{blk.name}' has no input: nothing comes before it", s.loc)
    bound = _bind_params(blk, s, env)
    inner = _Scope(scope.prefix + s.name + scope.suffix + ".", inp)
    first = len(st.layers)
    st.expanding.append(blk.name)
    try:
        _stmts(st, blk.body, inner, {**env, **bound}, base, depth + 1)
    except NetError as e:
        if not any(n[0].startswith("in block") for n in e.notes):
            e.notes = e.notes + ((f"in block '{blk.name}' used here", s.loc),)
        raise
    finally:
        st.expanding.pop()
    for lyr in st.layers[first:]:
        lyr.notes = lyr.notes + ((f"in block '{blk.name}' used here", s.loc),)
    last = st.layers[-1].name
    if not last.startswith(inner.prefix):
        raise NetError(f"block '{blk.name}' defines no layers", blk.loc)
    scope.local[s.name + scope.suffix] = last


def _bind_params(blk: ast.BlockDef, s: ast.LayerStmt, env) -> dict[str, Any]:
    names = [p.name for p in blk.params]
    bound: dict[str, Any] = {}
    pos = 0
    for a in s.args:
        for it in evaluate_arg(a, env):
            if it.kind == "kv":
                key, val = it.value
                if key not in names:
                    raise NetError(f"block '{blk.name}' has no parameter '{key}'", it.loc,
                                   did_you_mean(key, names)
                                   or f"its parameters: {', '.join(names) or 'none'}")  # fmt: skip
            else:
                if pos >= len(names):
                    raise NetError(
                        f"block '{blk.name}' takes {len(names)} "
                        f"parameter{'s' if len(names) != 1 else ''}", it.loc,
                        f"its parameters: {', '.join(names) or 'none'}",
                    )  # fmt: skip
                key, val = names[pos], it
                pos += 1
            if key in bound:
                raise NetError(f"parameter '{key}' is given twice", it.loc)
            if val.kind != "num":
                raise NetError(f"block parameter '{key}' must be a number, "
                               f"found {val.describe()}", val.loc)  # fmt: skip
            bound[key] = val.value
    for p in blk.params:
        if p.name not in bound:
            if p.default is None:
                raise NetError(f"block '{blk.name}' needs parameter '{p.name}'", s.loc,
                               f"write {blk.name} {s.name}: {p.name}=...")  # fmt: skip
            bound[p.name] = evaluate(p.default, {**env, **bound}).value
    return bound
