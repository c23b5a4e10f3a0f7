"""AST -> IR: include files, evaluate constants, expand blocks and repeats, name and wire layers.

Layers chain by default: a layer without explicit inputs takes the previous layer's
output. Inside a block, `in` names the block's input, names are prefixed with the
use's name (`res2a.conv1`), and inside `repeat N` each name gets `_1` .. `_N`.
`repeat 0` expands to nothing, so a block parameter can switch layers off; a block use
that makes no layers that way passes its input through (its name means its input).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import ast
from .errors import Location, NetError
from .foreign import foreign_hint
from .ir import Layer, Network
from .limits import (
    MAX_BLOCK_DEPTH,
    MAX_FILE_BYTES,
    MAX_GPUS,
    MAX_INCLUDE_PATH,
    MAX_LAYERS,
    MAX_NESTING,
)
from .ops import registry
from .parse import parse_file
from .schema import ACTIVATIONS, read_layer_args
from .trainconf import read_train
from .values import Item, did_you_mean, evaluate, evaluate_arg


@dataclass
class _Scope:
    """Names visible while expanding one block instance (or the top level)."""

    prefix: str  # "" at top level, "res2a." inside a block use
    input: str | None  # what `in` means here
    local: dict[str, str] = field(default_factory=dict)  # written name -> full name
    suffix: str = ""  # "_2" in the second iteration of a repeat
    start: int = 0  # how many layers existed when this block instance began


@dataclass(frozen=True)
class _Use:
    """One block use being expanded: which block, its instance prefix, where it is written."""

    block: str
    prefix: str  # "res2a." (unique per instance)
    loc: Location  # the use statement
    name_loc: Location  # the use's name


class _Placed(NetError):
    """A NetError already placed at the block use that caused it, with its context notes;
    enclosing block uses add no further "in block ... used here" note."""


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
    expanding: list[_Use] = field(default_factory=list)  # block uses being expanded, outermost 1st
    # every full name (layers and block uses) -> where it is written and the uses that made it
    names: dict[str, tuple[Location, tuple[_Use, ...]]] = field(default_factory=dict)
    zero_repeats: int = 0  # `repeat 0` bodies skipped so far
    # (layer count, scope prefix, name): a block use that made no layers passes this on
    passthrough: tuple[int, str, str] | None = None
    nesting: int = 0  # block uses, repeats and includes being expanded
    at: Location | None = None  # the statement being expanded (for a last-resort error)


def elaborate(program: ast.Program) -> Network:
    """Expand a parsed program into an unchecked Network (shapes come from passes)."""
    st = _State(included=[str(Path(program.file).resolve())])
    top = _Scope("", None)
    try:
        _stmts(st, program.stmts, top, st.consts, Path(program.file).parent, depth=0)
    except RecursionError:  # the bounds below should make this unreachable; never a traceback
        raise NetError("the file nests too deeply to expand", st.at) from None
    if not st.layers:
        raise NetError("the file defines no layers", None, "start with: input image: 1x28x28")
    first = st.layers[0]
    if not registry.of(first).source:
        raise first.error(
            f"the first layer must be an input, not {first.type}", None, "e.g. input image: 1x28x28"
        )
    train = read_train(st.train, st.consts)
    name = st.network or Path(program.file).stem
    return Network(name, program.file, st.layers, train, st.gpus, st.gpus_loc)


def _stmts(st, stmts, scope: _Scope, env: dict[str, Any], base: Path, depth: int) -> None:
    for s in stmts:
        st.at = s.loc
        if isinstance(s, ast.LayerStmt):
            _layer(st, s, scope, env, base, depth)
        elif isinstance(s, ast.ConstStmt):
            _const(st, s, env)
        elif isinstance(s, ast.BlockDef):
            _define_block(st, s)
        elif isinstance(s, ast.RepeatStmt):
            _repeat(st, s, scope, env, base, depth)
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


def _const(st, s: ast.ConstStmt, env: dict[str, Any]) -> None:
    _not_a_keyword(s.name, "a constant", s.loc)
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


def _not_a_keyword(name: str, what: str, loc: Location) -> None:
    """Constants and block parameters are numbers; a layer type's name would stop meaning it."""
    if name in registry.words() or name in ("in", "x"):
        raise NetError(f"'{name}' cannot be {what} name; it is a keyword", loc)


def _define_block(st, s: ast.BlockDef) -> None:
    taken = _layer_type_name(s.name)
    if taken is not None:
        raise NetError(f"block '{s.name}' has the name of a layer type{taken}", s.loc,
                       "give the block another name")  # fmt: skip
    if s.name in st.blocks:
        raise NetError(f"block '{s.name}' is defined twice", s.loc,
                       notes=(("first defined here", st.blocks[s.name].loc),))  # fmt: skip
    seen: dict[str, Location] = {}
    for p in s.params:
        _not_a_keyword(p.name, "a parameter", p.loc)
        if p.name in seen:
            raise NetError(f"block '{s.name}' has two parameters named '{p.name}'", p.loc,
                           notes=(("the first is here", seen[p.name]),))  # fmt: skip
        seen[p.name] = p.loc
    st.blocks[s.name] = s


def _layer_type_name(name: str) -> str | None:
    """'' or ' (an alias of lrn)' when `name` already means a layer type; else None."""
    aliases = registry.aliases()
    if name in aliases:
        return f" (an alias of {aliases[name]})"
    if name in ACTIVATIONS:
        return " (an activation)"
    if name in registry.words():
        return ""
    return None


def _repeat(st, s: ast.RepeatStmt, scope: _Scope, env, base: Path, depth: int) -> None:
    n = evaluate(s.count, env)
    if n.kind != "num" or not isinstance(n.value, int) or n.value < 0:
        raise NetError("repeat needs a whole number of times, at least 0", s.loc)
    if n.value > MAX_LAYERS:
        raise NetError(f"repeat {n.value:,} is too many (at most {MAX_LAYERS:,})",
                       s.loc)  # fmt: skip
    if n.value == 0:  # `repeat flag { ... }` with flag 0: the layers are switched off
        st.zero_repeats += 1
        return
    st.counters["__repeat__"] = st.counters.get("__repeat__", 0) + n.value
    if st.counters["__repeat__"] > MAX_LAYERS * 10:  # nested empty repeats
        raise NetError("repeats expand too far", s.loc,
                       "is a repeat count too large?")  # fmt: skip
    with _nested(st, s.loc):
        for i in range(1, n.value + 1):
            inner = _Scope(scope.prefix, scope.input, scope.local, scope.suffix + f"_{i}",
                           scope.start)  # fmt: skip
            _stmts(st, s.body, inner, env, base, depth)


@contextmanager
def _nested(st, loc: Location) -> Iterator[None]:
    """One more level of block uses, repeats and includes, at most MAX_NESTING."""
    if st.nesting >= MAX_NESTING:
        raise NetError(f"blocks, repeats and includes nest more than {MAX_NESTING} deep", loc)
    st.nesting += 1
    try:
        yield
    finally:
        st.nesting -= 1


# ---------------------------------------------------------------- include


def _include(st, s: ast.IncludeStmt, scope, env, base: Path, depth: int) -> None:
    """Expand an included file; every problem reading it is reported at this statement."""
    path = _include_path(st, s, base)
    st.included.append(str(path))
    try:
        prog = parse_file(path)
    except NetError as e:
        if e.loc is None:  # the file could not be read: say so at the include
            reason = e.message.removeprefix(f"{path}: ")
            raise NetError(f"cannot include {_show_path(s.path)}: {reason}", s.loc) from None
        e.notes = e.notes + (("included from here", s.loc),)
        raise
    except RecursionError:  # a parser without depth bounds; never a traceback
        raise NetError(f"cannot include {_show_path(s.path)}: it nests too deeply",
                       s.loc) from None  # fmt: skip
    stmts = [s for s in prog.stmts if not isinstance(s, ast.NetworkStmt)]
    first = len(st.layers)
    with _nested(st, s.loc):  # outside the try: a nesting error here is at this include
        try:
            _stmts(st, stmts, scope, env, path.parent, depth)
        except NetError as e:
            e.notes = e.notes + (("included from here", s.loc),)
            raise
    for lyr in st.layers[first:]:
        lyr.notes = lyr.notes + (("included from here", s.loc),)


def _include_path(st, s: ast.IncludeStmt, base: Path) -> Path:
    """The resolved path of an include; any path that cannot be read is a located error."""
    shown = _show_path(s.path)
    if len(s.path) > MAX_INCLUDE_PATH:
        raise NetError(f"cannot include {shown}: the path has {len(s.path):,} characters "
                       f"(at most {MAX_INCLUDE_PATH:,})", s.loc)  # fmt: skip
    if "\0" in s.path:
        raise NetError(f"cannot include {shown}: the path contains a NUL character", s.loc)
    if not s.path:
        raise NetError('cannot include "": the path is empty', s.loc)
    try:
        path = (base / s.path).resolve()
        info = path.stat()
    except RuntimeError:  # Python before 3.13 reports a symlink loop so in resolve()
        raise NetError(f"cannot include {shown}: symbolic links loop", s.loc) from None
    except (OSError, ValueError) as e:
        raise NetError(f"cannot include {shown}: {_os_reason(e)}", s.loc) from None
    if str(path) in st.included:
        raise NetError(f"{shown} is included twice (or includes itself)", s.loc)
    if not stat.S_ISREG(info.st_mode):
        what = "a directory" if path.is_dir() else "not a regular file"
        raise NetError(f"cannot include {shown}: it is {what}", s.loc)
    if info.st_size > MAX_FILE_BYTES:
        raise NetError(f"cannot include {shown}: it has {info.st_size:,} bytes (a .net file "
                       f"has at most {MAX_FILE_BYTES:,})", s.loc)  # fmt: skip
    return path


def _os_reason(e: Exception) -> str:
    """Why a path cannot be used, in words, without repeating the path."""
    words = {
        errno.ENOENT: "no such file",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.ELOOP: "symbolic links loop",
        errno.ENAMETOOLONG: "a name in the path is too long",
        errno.EACCES: "permission denied",
    }
    if isinstance(e, OSError) and e.errno in words:
        return words[e.errno]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e)


def _show_path(path: str, limit: int = 80) -> str:
    """A path as a message shows it: quoted, unprintable characters escaped, long ones cut."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in path)  # fmt: skip
    if len(text) > limit:
        cut = (limit - 5) // 2
        text = f"{text[:cut]}...{text[-cut:]}"
    return f'"{text}"'


# ---------------------------------------------------------------- layers


def _layer(st, s: ast.LayerStmt, scope: _Scope, env, base: Path, depth: int) -> None:
    words, aliases = registry.words(), registry.aliases()
    ltype = aliases.get(s.type, s.type)  # the type word as written, aliases resolved
    if ltype in st.blocks:
        _use_block(st, s, st.blocks[ltype], scope, env, base, depth)
        return
    if ltype not in words:
        known = list(words) + list(aliases) + list(st.blocks)
        raise NetError(
            f"unknown layer type '{s.type}'",
            s.loc,
            foreign_hint(s.type, known)
            or did_you_mean(s.type, list(words) + list(st.blocks))
            or "layer types: " + ", ".join(sorted(words)),
        )
    lt, schema = words[ltype]
    runs = [evaluate_arg(_key_then_negative(a, env), env) for a in s.args]
    name_is_kind = False
    short = lt.short_form and [w for w, (k, _) in schema.flags.items() if k == lt.short_form]
    if short and s.name in short and not runs:
        # `loss cross_entropy`: the short form names the option, not the layer
        runs = [[Item("word", s.name, s.name_loc)]]
        name_is_kind = True
    attrs, locs = read_layer_args(ltype, runs, s.loc, schema)
    written = s.name if s.name and not name_is_kind else None
    if name_is_kind and scope.prefix + ltype not in st.names:
        written = ltype
    name = _name(st, scope, written, ltype, s)
    inputs = _inputs(st, s, scope, schema, ltype)
    attrs = lt.canonical(ltype, attrs, locs, s.loc)  # `relu r1` is an act layer
    ltype = lt.name
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
        while scope.prefix + base in st.names:
            st.counters[ltype] += 1
            base = f"{ltype}{st.counters[ltype]}"
        _claim(st, scope.prefix + base, s.loc)
        return scope.prefix + base
    if written == "in":
        raise NetError("'in' is reserved for a block's input", s.name_loc)
    name = scope.prefix + written + scope.suffix
    _claim(st, name, s.name_loc)
    return name


def _claim(st, name: str, loc: Location) -> None:
    """Record the full name of a layer or block use; a second claim is a located error."""
    if name in st.names:
        raise _duplicate(st, name, loc)
    st.names[name] = (loc, tuple(st.expanding))


def _duplicate(st, name: str, here: Location) -> NetError:
    """'used twice', at what made the clash: the name as written, or the block use whose
    expansion made it (not the block body, which every use shares)."""
    first_loc, first_uses = st.names[name]
    uses = st.expanding
    k = 0  # the block uses both names are made in
    while k < min(len(uses), len(first_uses)) and uses[k].prefix == first_uses[k].prefix:
        k += 1
    first_at = first_uses[k].name_loc if len(first_uses) > k else first_loc
    message = f"layer name '{name}' is used twice"
    notes: tuple[tuple[str, Location], ...] = (("first used here", first_at),)
    if len(uses) == k:  # written twice in one body: the name as written is the culprit
        return NetError(message, here, "give each layer its own name", notes)
    use = uses[k]
    if k:
        notes += ((f"in block '{uses[k - 1].block}' used here", uses[k - 1].loc),)
    return _Placed(message, use.name_loc,
                   f"this use of block '{use.block}' names its layers "
                   f"'{use.prefix}*'; give it another name", notes)  # fmt: skip


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
    """The layer a chained layer reads: the last one this block instance made (or, after a
    use that made none, what that use passed through), else the block's input."""
    through = st.passthrough
    if through is not None and through[:2] == (len(st.layers), scope.prefix):
        return through[2]
    if len(st.layers) > scope.start:
        return st.layers[-1].name
    return scope.input


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
    _check_nesting(st, s, blk, depth)
    if not s.name:
        raise NetError(f"a use of block '{blk.name}' needs a name", s.loc,
                       f"e.g. {blk.name} b1: ...")  # fmt: skip
    if len(s.inputs) > 1:
        raise NetError(f"block '{blk.name}' takes one input", s.inputs[1].loc)
    inp = _resolve(st, scope, s.inputs[0]) if s.inputs else _previous(st, scope)
    if inp is None:
        raise NetError(f"block '{blk.name}' has no input: nothing comes before it", s.loc)
    full = scope.prefix + s.name + scope.suffix
    _claim(st, full, s.name_loc or s.loc)
    bound = _bind_params(blk, s, env)
    use = _Use(blk.name, full + ".", s.loc, s.name_loc or s.loc)
    first, zeros = len(st.layers), st.zero_repeats
    inner = _Scope(use.prefix, inp, start=first)
    with _nested(st, s.loc):
        st.expanding.append(use)
        try:
            _stmts(st, blk.body, inner, {**env, **bound}, base, depth + 1)
        except _Placed:
            raise
        except NetError as e:
            if not any(n[0].startswith("in block") for n in e.notes):
                e.notes = e.notes + ((f"in block '{blk.name}' used here", s.loc),)
            raise
        finally:
            st.expanding.pop()
    for lyr in st.layers[first:]:
        lyr.notes = lyr.notes + ((f"in block '{blk.name}' used here", s.loc),)
    if len(st.layers) == first and st.zero_repeats == zeros:
        raise NetError(f"block '{blk.name}' defines no layers", blk.loc)
    out = _previous(st, inner)  # an instance that made no layers (repeat 0) passes `in` on
    scope.local[s.name + scope.suffix] = out
    if out != st.layers[-1].name:
        st.passthrough = (len(st.layers), scope.prefix, out)


def _check_nesting(st, s: ast.LayerStmt, blk: ast.BlockDef, depth: int) -> None:
    """A block may not use itself, directly or through others; nor may uses nest too deep."""
    names = [u.block for u in st.expanding]
    if blk.name in names:
        chain = names[names.index(blk.name) :] + [blk.name]
        shown = "" if len(chain) == 2 else ": " + " -> ".join(chain)
        raise NetError(f"block '{blk.name}' uses itself (recursion{shown})", s.loc)
    if depth >= MAX_BLOCK_DEPTH:
        chain = names + [blk.name]
        shown = " -> ".join(chain[:3] + ["..."] + chain[-2:])
        raise NetError(f"blocks nest more than {MAX_BLOCK_DEPTH} deep", s.loc,
                       f"the uses: {shown}; flatten some of the nesting")  # fmt: skip


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
    return _defaults(blk, s, env, bound)


def _defaults(blk: ast.BlockDef, s: ast.LayerStmt, env, given: dict[str, Any]) -> dict[str, Any]:
    """The parameters not given, from their defaults, in order: a default sees the
    constants and the parameters before it (given or defaulted), and must be a number."""
    used_here = ((f"in block '{blk.name}' used here", s.loc),)
    names = [p.name for p in blk.params]
    bound: dict[str, Any] = {}
    for i, p in enumerate(blk.params):
        if p.name in given:
            bound[p.name] = given[p.name]
            continue
        if p.default is None:
            raise NetError(f"block '{blk.name}' needs parameter '{p.name}'", s.loc,
                           f"write {blk.name} {s.name}: {p.name}=...")  # fmt: skip
        for ref in _names_in(p.default):
            if ref.id in names[i:]:
                raise NetError(
                    f"the default of '{p.name}' uses parameter '{ref.id}', which comes after it",
                    ref.loc,
                    "a default can use only the parameters before it",
                    used_here,
                )
        visible = {k: v for k, v in env.items() if k not in names}
        try:
            v = evaluate(p.default, {**visible, **bound})
        except NetError as e:
            e.notes = e.notes + used_here
            raise
        if v.kind != "num":
            raise NetError(f"the default of block parameter '{p.name}' must be a number, "
                           f"found {v.describe()}", v.loc, None, used_here)  # fmt: skip
        bound[p.name] = v.value
    return bound


def _names_in(v: ast.Value) -> list[ast.Name]:
    """The names an expression reads (defaults are plain arithmetic)."""
    if isinstance(v, ast.Name):
        return [v]
    if isinstance(v, ast.Neg):
        return _names_in(v.operand)
    if isinstance(v, ast.BinOp):
        return _names_in(v.left) + _names_in(v.right)
    return []
