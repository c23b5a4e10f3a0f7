"""What every layer type and train setting accepts, and the readers that check it.

A layer's arguments are runs of evaluated items (netdsl/values.py). Each run is read
left to right: `KEY VALUE` (`stride 2`), `KEY=VALUE`, a flag word (`relu`, `ceil`),
`VALUE KEY` for counted things (`6 filters`, `2 pieces`), or a bare value that fills
the layer's positional slot (`5x5` is the kernel, `120` an fc's outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Location, NetError
from .foreign import activation_hint
from .limits import MAX_NUMBER
from .ops import activations as _kinds
from .values import Item, did_you_mean

REQUIRED = object()

# The activation kinds, in code order (netdsl/ops/activations/: a module per kind).
ACTIVATIONS = tuple(_kinds.kinds())
INIT_KINDS = ("gaussian", "uniform", "xavier", "he", "constant")

# Argument lists of the calls the language knows: name -> [(param, default)], in positional order.
INIT_CALLS: dict[str, list[tuple[str, Any]]] = {
    "gaussian": [("std", 0.01), ("mean", 0.0)],
    "uniform": [("scale", 0.05)],  # U(-scale, scale)
    "xavier": [],
    "he": [],
    "constant": [("value", 0.0)],
}
OPTIMIZER_CALLS: dict[str, list[tuple[str, Any]]] = {
    "sgd": [("lr", 0.01), ("momentum", 0.0), ("weight_decay", 0.0), ("nesterov", False)],
    "adam": [("lr", 0.001), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.0)],
}
SCHEDULE_CALLS: dict[str, list[tuple[str, Any]]] = {
    "constant": [],
    "step": [("step_size", REQUIRED), ("gamma", 0.1)],
    "multistep": [("milestones", REQUIRED), ("gamma", 0.1)],
    "exponential": [("gamma", REQUIRED)],
    "poly": [("power", 1.0)],
    "cosine": [("min_lr", 0.0)],
    # AlexNet: divide the learning rate by 10 when the validation error stops improving
    "plateau": [("factor", 0.1), ("patience", 1), ("threshold", 0.0), ("min_lr", 0.0)],
}
AUGMENT_CALLS: dict[str, list[tuple[str, Any]]] = {
    "crop": [("size", REQUIRED), ("pad", 0)],
    "flip": [("p", 0.5)],
    "lighting": [("std", 0.1)],  # AlexNet's PCA colour noise
}
# leaky(slope), elu(alpha), scaled_tanh(A, S): each kind with parameters, from its module
ACTIVATION_CALLS: dict[str, list[tuple[str, Any]]] = {
    k.name: list(zip(k.params, k.defaults)) for k in _kinds.kinds().values() if k.params
}
# The call tables by what they hold (the word used in messages: "unknown optimizer 'x'").
CALLS: dict[str, dict[str, list[tuple[str, Any]]]] = {
    "initialiser": INIT_CALLS,
    "optimizer": OPTIMIZER_CALLS,
    "learning-rate schedule": SCHEDULE_CALLS,
    "augmentation": AUGMENT_CALLS,
    "activation": ACTIVATION_CALLS,
}


@dataclass(frozen=True)
class Arg:
    """What one value accepts: its kind and, for numbers, its range.

    kind: "float" (a finite number), "int" (a whole number), "bool" (true/false, on/off, 1/0),
    "size" (a whole number or a size HxW), "epochs" (a non-empty, increasing list of whole
    numbers). `lo`/`hi` bound the number (each element of a size or list); `lo_open`/`hi_open`
    leave the bound itself out. `choices`, when given, are the only numbers allowed.
    `float32`: the kernels divide by the value in float32, where below FLOAT32_TINY it would
    be 0 (or a denormal) and the division by zero gives inf or NaN.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[int, ...] = ()
    float32: bool = False  # a divisor: must stay above 0 once stored as a float32
    hint: str | None = None  # given with an out-of-range error

    def bounds(self) -> str:
        """The whole range in words: "positive", "at least 0 and below 1", "1 or 10"."""
        if self.choices:
            return " or ".join(map(str, self.choices))
        return " and ".join(filter(None, (self._low(), self._high())))

    def _low(self) -> str:
        if self.lo is None:
            return ""
        if self.lo == 0 and self.lo_open:
            return "positive"
        return f"{'above' if self.lo_open else 'at least'} {_bound(self.lo)}"

    def _high(self) -> str:
        if self.hi is None:
            return ""
        return f"{'below' if self.hi_open else 'at most'} {_bound(self.hi)}"

    def problem(self, v: Any) -> str | None:
        """Why the Python value `v` does not fit, as "must be ..., got v"; None if it fits.

        A list or tuple (a size, milestones) fits when every element does."""
        if isinstance(v, (list, tuple)) and self.kind in ("size", "epochs"):
            return next((p for p in map(self.problem, v) if p), None)
        whole = self.kind in ("int", "size", "epochs")
        if self.kind == "bool":
            return None if isinstance(v, bool) else f"must be true or false, got {_num(v)}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a {'whole ' if whole else ''}number, got {_num(v)}"
        if whole and not isinstance(v, int):
            return f"must be a whole number, got {v!r}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {_num(v)}"
        if abs(v) > MAX_NUMBER:
            return f"is too large (the limit is {MAX_NUMBER:.0e}), got {_num(v)}"
        if self.choices:
            return None if v in self.choices else f"must be {self.bounds()}, got {_num(v)}"
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return f"must be {self._low()}, got {_num(v)}"
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return f"must be {self._high()}, got {_num(v)}"
        if self.float32 and abs(v) < FLOAT32_TINY:
            return f"is too small for float32 (at least {FLOAT32_TINY:.3g}), got {_num(v)}"
        return None

    def expects(self) -> str:
        """What the value is, in words: "a number", "true or false"."""
        return _EXPECTS[self.kind]


_EXPECTS = {
    "float": "a number",
    "int": "a whole number",
    "bool": "true or false",
    "size": "a whole number or a size like 28x28",
    "epochs": "a list of epochs like [30, 60]",
}
BOOL_WORDS = {"true": True, "false": False, "on": True, "off": False}


def arg_value(spec: Arg, it: Item, label: str) -> Any:
    """The Python value of `it` for a value that accepts `spec`; a located NetError if it does
    not fit. `label` names the value in messages: "'std' of gaussian()", "'batch'"."""
    if spec.kind == "bool":
        if it.kind == "word" and it.value in BOOL_WORDS:
            return BOOL_WORDS[it.value]
        if it.kind == "num" and type(it.value) is int and it.value in (0, 1):
            return bool(it.value)
        raise NetError(f"{label} expects true or false, found {it.describe()}", it.loc,
                       did_you_mean(str(it.value), BOOL_WORDS) if it.kind == "word" else
                       None)  # fmt: skip
    if spec.kind == "epochs":
        return _epochs_value(spec, it, label)
    if spec.kind == "size" and it.kind == "dims" and len(it.value) == 2:
        for v in it.value:
            _fits(spec, v, it.loc, label)
        return tuple(it.value)
    whole = spec.kind in ("int", "size")
    if it.kind != "num" or (whole and not isinstance(it.value, int)):
        raise NetError(f"{label} expects {spec.expects()}, found {it.describe()}", it.loc)
    _fits(spec, it.value, it.loc, label)
    return float(it.value) if spec.kind == "float" else it.value


def _fits(spec: Arg, v: Any, loc: Location, label: str) -> None:
    problem = spec.problem(v)
    if problem:
        raise NetError(f"{label} {problem}", loc, spec.hint)


def _epochs_value(spec: Arg, it: Item, label: str) -> list[int]:
    """A non-empty list of increasing whole numbers in range (multistep's milestones)."""
    if it.kind != "list" or not it.value:
        hint = f"write [{it.value}]" if it.kind == "num" else None
        raise NetError(f"{label} expects {spec.expects()}, found {it.describe()}", it.loc, hint)
    out: list[int] = []
    for x in it.value:
        if x.kind != "num" or not isinstance(x.value, int):
            raise NetError(f"{label} are epochs, whole numbers; found {x.describe()}", x.loc)
        if spec.problem(x.value):
            raise NetError(f"{label} must be positive epoch numbers, got {_num(x.value)}",
                           x.loc)  # fmt: skip
        if out and x.value <= out[-1]:
            raise NetError(f"{label} must be increasing, e.g. [30, 60]: {x.value} comes after "
                           f"{out[-1]}", x.loc)  # fmt: skip
        out.append(x.value)
    return out


def _bound(v: float) -> str:
    """A range's end, with thousands separated: 1,000,000."""
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _num(v: Any) -> str:
    """A number as a user wrote it (3, 0.5, 1e-08); a huge integer by its size only."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, int):
        return str(v) if abs(v) <= MAX_NUMBER else f"a {abs(v).bit_length()}-bit number"
    return f"{v:g}"


FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32

FINITE = Arg("float")
POSITIVE = Arg("float", lo=0, lo_open=True)
DIVISOR = Arg("float", lo=0, lo_open=True, float32=True)  # eps, normalize std, lrn k
DECAY = Arg("float", lo=0, hi=1, lo_open=True,
            hint="gamma multiplies the rate: gamma=0.1 divides it by 10")  # fmt: skip
NON_NEGATIVE = Arg("float", lo=0)
PROBABILITY = Arg("float", lo=0, hi=1)
FRACTION = Arg("float", lo=0, hi=1, hi_open=True)  # momentum, Adam's betas: [0, 1)
RATE_FACTOR = Arg("float", lo=0, hi=1, lo_open=True, hi_open=True)  # (0, 1): a real cut
COUNT = Arg("int", lo=1)
BOOL = Arg("bool")

# Every parameter of every call above: what it accepts. A call's argument outside its range
# is a located error at `check` time, so whatever `check` accepts, `train` can run.
CALL_ARGS: dict[str, dict[str, dict[str, Arg]]] = {
    "initialiser": {
        "gaussian": {"std": NON_NEGATIVE, "mean": FINITE},  # std 0 is constant(mean)
        "uniform": {"scale": NON_NEGATIVE},  # scale 0 is constant(0)
        "xavier": {},
        "he": {},
        "constant": {"value": FINITE},
    },
    "optimizer": {
        # momentum 1 never forgets a gradient (the velocity grows without bound)
        "sgd": {
            "lr": POSITIVE,
            "momentum": FRACTION,
            "weight_decay": NON_NEGATIVE,
            "nesterov": BOOL,
        },  # fmt: skip
        # beta 1 divides by 1 - beta^t = 0 in the bias correction; eps 0 divides by zero
        "adam": {
            "lr": POSITIVE,
            "beta1": FRACTION,
            "beta2": FRACTION,
            "eps": DIVISOR,
            "weight_decay": NON_NEGATIVE,
        },  # fmt: skip
    },
    "learning-rate schedule": {
        "constant": {},
        # gamma > 1 would raise the rate at every step: PyTorch allows it, but written here
        # it is far more likely Caffe's "divide by 10" mistyped as 10, and gamma^epoch
        # overflows a float (an OverflowError in the schedule) within a few hundred epochs
        "step": {"step_size": COUNT, "gamma": DECAY},
        "multistep": {"milestones": Arg("epochs", lo=1), "gamma": DECAY},
        "exponential": {"gamma": DECAY},
        "poly": {"power": NON_NEGATIVE},
        "cosine": {"min_lr": NON_NEGATIVE},  # and below the base rate: check_lr_against_schedule
        "plateau": {
            "factor": RATE_FACTOR,
            "patience": COUNT,
            "threshold": NON_NEGATIVE,
            "min_lr": NON_NEGATIVE,
        },  # fmt: skip
    },
    "augmentation": {
        "crop": {"size": Arg("size", lo=1), "pad": Arg("int", lo=0)},  # pad < size: trainconf
        "flip": {"p": PROBABILITY},
        "lighting": {"std": NON_NEGATIVE},
    },
    "activation": {},  # each kind's own Args, filled in below
}
CALL_ARGS["activation"].update({k: _kinds.get(k).args() for k in ACTIVATION_CALLS})


# ---------------------------------------------------------------- value readers
# A reader takes the items after the key and returns (value, number of items used).


def _need(items: list[Item], key: str, at: Location, what: str) -> Item:
    if not items:
        raise NetError(f"'{key}' needs {what}", at)
    return items[0]


def read_int(lo: int = 1, hi: int | None = None) -> Callable:
    """A whole number from `lo` to `hi` (and within the language's MAX_NUMBER)."""
    spec = Arg("int", lo=lo, hi=hi)

    def reader(items, key, at):
        return arg_value(spec, _need(items, key, at, "a whole number"), f"'{key}'"), 1

    return reader


def read_float(lo: float | None = None, hi: float | None = None, open_hi: bool = False,
               positive: bool = False) -> Callable:  # fmt: skip
    """A finite number in range: at least `lo`, at most (or below) `hi`; `positive`: above 0,
    and a divisor that stays above 0 in float32 (bn eps, lrn k)."""
    spec = Arg("float", lo=0 if positive and lo is None else lo, hi=hi,
               lo_open=positive, hi_open=open_hi, float32=positive)  # fmt: skip

    def reader(items, key, at):
        return arg_value(spec, _need(items, key, at, "a number"), f"'{key}'"), 1

    return reader


def read_pair(lo: int = 1, hi: int | None = None) -> Callable:
    """An int (used for both axes) or an HxW size, each from `lo` to `hi`."""
    spec = Arg("int", lo=lo, hi=hi)

    def reader(items, key, at):
        it = _need(items, key, at, "a number or a size like 2x2")
        if it.kind == "num" and isinstance(it.value, int):
            vals = (it.value, it.value)
        elif it.kind == "dims" and len(it.value) == 2:
            vals = tuple(it.value)
        else:
            raise NetError(
                f"'{key}' expects a whole number or a size like 3x3, found {it.describe()}", it.loc
            )
        for v in vals:
            _fits(spec, v, it.loc, f"'{key}'")
        return vals, 1

    return reader


def read_pad(items, key, at):
    it = _need(items, key, at, "a number, a size like 1x2, 'same' or 'valid'")
    if it.kind == "word" and it.value in ("same", "valid"):
        return it.value, 1
    if it.kind == "word":
        raise NetError(
            f"'{key}' expects a number, a size, 'same' or 'valid', found {it.describe()}",
            it.loc,
            did_you_mean(it.value, ("same", "valid")),
        )
    return read_pair(lo=0)(items, key, at)


def read_bool(items, key, at):
    if items and items[0].kind == "word" and items[0].value in ("on", "off", "true", "false"):
        return items[0].value in ("on", "true"), 1
    if items and items[0].kind == "num" and items[0].value in (0, 1):
        return bool(items[0].value), 1
    if items:
        raise NetError(f"'{key}' expects on or off, found {items[0].describe()}", items[0].loc)
    return True, 0


def read_call(table: dict[str, list[tuple[str, Any]]], what: str) -> Callable:
    """A word (`he`) or call (`gaussian(std=0.01)`) from `table`, as {'kind': name, **params}."""

    def reader(items, key, at):
        it = _need(items, key, at, what)
        return call_value(it, table, what), 1

    return reader


def call_value(it: Item, table: dict[str, list[tuple[str, Any]]], what: str) -> dict[str, Any]:
    """A call's value {'kind': name, param: value, ...}, every argument checked (CALL_ARGS)."""
    return call_args(it, table, what)[0]


def call_args(it: Item, table: dict[str, list[tuple[str, Any]]],
              what: str) -> tuple[dict[str, Any], dict[str, Location]]:  # fmt: skip
    """Like call_value, with where each argument was written: {param: its value's location}.

    Every argument is checked against its kind and range in CALL_ARGS[what] and located at
    the value; parameters left out take their defaults."""
    if it.kind == "num" and table is INIT_CALLS:  # `bias_init 1` is constant(1)
        value = arg_value(CALL_ARGS[what]["constant"]["value"], it, "a constant initialiser")
        return {"kind": "constant", "value": value}, {"value": it.loc}
    if it.kind == "word":
        name, args = it.value, []
    elif it.kind == "call":
        name, args = it.value
    else:
        raise NetError(f"expected {what}, found {it.describe()}", it.loc)
    if name not in table:
        raise NetError(
            f"unknown {what} '{name}'",
            it.loc,
            did_you_mean(name, table) or "known: " + ", ".join(table),
        )
    spec = table[name]
    specs = CALL_ARGS[what][name]
    out: dict[str, Any] = {"kind": name}
    locs: dict[str, Location] = {}
    pos = 0
    for a in args:
        if a.kind == "kv":
            k, v = a.value
            if k not in dict(spec):
                names = [p for p, _ in spec]
                raise NetError(
                    f"{name}() has no parameter '{k}'"
                    + (f"; it takes {', '.join(names)}" if names else "; it takes none"),
                    a.loc,
                    did_you_mean(k, names),
                )
        else:
            if pos >= len(spec):
                raise NetError(f"{name}() takes at most {len(spec)} "
                               f"value{'s' if len(spec) != 1 else ''}", a.loc)  # fmt: skip
            k, v = spec[pos][0], a
            pos += 1
        if k in out:
            raise NetError(f"{name}() gets '{k}' twice", a.loc,
                           notes=((f"'{k}' was first given here", locs[k]),))  # fmt: skip
        out[k] = arg_value(specs[k], v, f"'{k}' of {name}()")
        locs[k] = v.loc
    for k, default in spec:
        if k not in out:
            if default is REQUIRED:
                raise NetError(f"{name}() needs '{k}'", it.loc, f"write {name}({k}=...)")
            out[k] = default
    return out, locs


def read_table(items, key, at):
    """A connection table: for each output map, the list of input maps it sees."""
    it = _need(items, key, at, "a table like [[0,1,2], [1,2,3], ...] or 'lenet5'")
    if it.kind == "word" and it.value == "lenet5":
        return [list(r) for r in LENET5_C3_TABLE], 1
    if it.kind != "list" or not all(r.kind == "list" for r in it.value):
        raise NetError(
            f"'{key}' expects a list of lists of input maps, found {it.describe()}",
            it.loc,
            "write connect [[0,1,2], [1,2,3], ...]: one list per output map, or connect lenet5",
        )
    rows = []
    for r in it.value:
        row = []
        for x in r.value:
            if x.kind != "num" or not isinstance(x.value, int) or x.value < 0:
                raise NetError("input map numbers must be whole numbers >= 0", x.loc)
            row.append(x.value)
        if not row:
            raise NetError("every output map needs at least one input map", r.loc)
        if len(set(row)) != len(row):
            raise NetError("an input map is listed twice for one output map", r.loc)
        rows.append(row)
    return rows, 1


# LeCun et al. 1998, Table I: which S2 maps each C3 map combines.
LENET5_C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


def read_leaky(items, key, at):
    """`leaky` alone (slope 0.01), `leaky 0.1` or the call `leaky(0.1)`."""
    if items and items[0].kind == "num":
        return ("leaky", arg_value(FINITE, items[0], "leaky's slope")), 1
    return ("leaky", 0.01), 0


# ---------------------------------------------------------------- layer schemas


@dataclass(frozen=True)
class Opt:
    """One option of a layer type: its reader (None: written only bare, as a flag word or a
    size), its default (REQUIRED: must be given), a one-line doc, and for a required option
    what the "needs ..." error calls it ("a number of filters") and its example hint."""

    reader: Callable | None
    default: Any = None
    doc: str = ""
    required: str = ""
    hint: str | None = None


@dataclass(frozen=True)
class Schema:
    opts: dict[str, Opt]
    flags: dict[str, tuple[str, Any]] = field(default_factory=dict)  # word -> (key, value)
    postfix: tuple[str, ...] = ()  # keys written after their value: `6 filters`
    positional_num: str | None = None  # key a bare number fills
    positional_dims: str | None = None  # key a bare size fills
    min_inputs: int = 1
    max_inputs: int | None = 1
    doc: str = ""


def activation_word(kind: str) -> tuple:
    """The activation a bare word means: (kind, *its defaults), (kind, 0.0) without any."""
    return (kind, *(_kinds.get(kind).defaults or (0.0,)))


def activation_call(it: Item) -> tuple:
    """The activation of a call `leaky(0.1)`, `elu(alpha=0.5)`: (kind, *its values)."""
    value = call_value(it, ACTIVATION_CALLS, "activation")
    return (value["kind"], *(value[p] for p, _ in ACTIVATION_CALLS[value["kind"]]))


# `leaky` is an option of its own (it takes a bare number: `leaky 0.1`), not a flag
ACT_FLAGS = {a: ("activation", activation_word(a)) for a in ACTIVATIONS if a != "leaky"}


def read_activation(items, key, at):
    it = _need(items, key, at, "an activation: " + ", ".join(ACTIVATIONS))
    if it.kind == "word" and it.value in ACTIVATIONS:
        return activation_word(it.value), 1
    if it.kind == "call" and it.value[0] in ACTIVATION_CALLS:
        return activation_call(it), 1
    raise NetError(
        f"unknown activation {it.describe()}",
        it.loc,
        (it.kind == "word" and activation_hint(it.value))
        or did_you_mean(str(it.value), ACTIVATIONS)
        or "known: " + ", ".join(ACTIVATIONS),
    )


ACT_OPTS = {
    "activation": Opt(read_activation, ("linear", 0.0)),
    "leaky": Opt(read_leaky),
}
LEARN_OPTS = {
    "init": Opt(read_call(INIT_CALLS, "initialiser"), None, "weight initialiser"),
    "bias_init": Opt(read_call(INIT_CALLS, "initialiser"), None, "bias initialiser"),
    "lr_mult": Opt(read_float(lo=0.0), 1.0),
    "bias_lr_mult": Opt(read_float(lo=0.0), 1.0),
    "decay_mult": Opt(read_float(lo=0.0), 1.0),
    "bias_decay_mult": Opt(read_float(lo=0.0), 1.0),
}


def read_layer_args(
    ltype: str, runs: list[list[Item]], where: Location, schema: Schema
) -> tuple[dict[str, Any], dict[str, Location]]:
    """Read a layer's argument runs into attributes (defaults filled) and their locations."""
    attrs: dict[str, Any] = {}
    locs: dict[str, Location] = {}

    def put(key: str, value: Any, loc: Location) -> None:
        if key in attrs:
            raise NetError(
                f"'{key}' is given twice",
                loc,
                notes=((f"'{key}' was first given here", locs[key]),),
            )
        attrs[key] = value
        locs[key] = loc

    known = sorted(set(schema.opts) | set(schema.flags))
    for items in runs:
        i = 0
        while i < len(items):
            it = items[i]
            if it.name and (it.name in schema.opts or it.name in schema.flags):
                it = it.as_word()
            rest = items[i + 1 :]
            if it.kind == "kv":
                key, val = it.value
                opt = _opt(ltype, schema, key, it.loc, known)
                if opt.reader is None:
                    value = _slot_value(schema, key, val)
                else:
                    value, _ = opt.reader([val], key, it.loc)
                put("activation" if key == "leaky" else key, value, it.loc)
                i += 1
            elif it.kind == "word" and it.value in schema.flags:
                key, value = schema.flags[it.value]
                put(key, value, it.loc)
                i += 1
            elif it.kind == "word":
                opt = _opt(ltype, schema, it.value, it.loc, known)
                if opt.reader is None:
                    raise NetError(f"'{it.value}' is not an option of {ltype}", it.loc)
                value, used = opt.reader(rest, it.value, it.loc)
                put("activation" if it.value == "leaky" else it.value, value, it.loc)
                i += 1 + used
            elif it.kind == "call" and it.value[0] in ACTIVATION_CALLS and "leaky" in schema.opts:
                # `leaky(0.1)`, `elu(alpha=0.5)` among a layer's options (ACT_OPTS)
                put("activation", activation_call(it), it.loc)
                i += 1
            elif (
                it.kind == "num"
                and rest
                and rest[0].kind == "word"
                and rest[0].value in schema.postfix
            ):
                key = rest[0].value
                value, _ = schema.opts[key].reader([it], key, rest[0].loc)
                put(key, value, it.loc)
                i += 2
            elif it.kind == "num" and schema.positional_num:
                key = schema.positional_num
                value, _ = schema.opts[key].reader([it], key, it.loc)
                put(key, value, it.loc)
                i += 1
            elif it.kind == "dims" and schema.positional_dims:
                key = schema.positional_dims
                reader = schema.opts[key].reader
                value = it.value if reader is None else reader([it], key, it.loc)[0]
                put(key, value, it.loc)
                i += 1
            else:
                raise NetError(
                    f"unexpected {it.describe()} in {ltype}",
                    it.loc,
                    _positional_hint(ltype, schema, it),
                )
    for key, opt in schema.opts.items():
        if key in attrs or key == "leaky":
            continue
        if opt.default is REQUIRED:
            raise NetError(f"{ltype} needs {opt.required or repr(key)}", where,
                           opt.hint)  # fmt: skip
        attrs[key] = opt.default
    return attrs, locs


def _slot_value(schema: Schema, key: str, val: Item) -> Any:
    """`mode=max`, `round=ceil`, `kind=mse`, `shape=1x28x28`: options otherwise written bare."""
    if key == schema.positional_dims and val.kind == "dims":
        return val.value
    words = [w for w, (k, _) in schema.flags.items() if k == key]
    if val.kind == "word" and val.value in words:
        return schema.flags[val.value][1]
    raise NetError(
        f"'{key}' expects one of: {', '.join(words) or 'a size'}; found {val.describe()}",
        val.loc,
        did_you_mean(str(val.value), words),
    )


def _opt(ltype: str, schema: Schema, key: str, loc: Location, known: list[str]) -> Opt:
    if key not in schema.opts:
        raise NetError(
            f"unknown option '{key}' for {ltype}",
            loc,
            ("activation" in schema.opts and activation_hint(key))  # `conv ..., elu`
            or did_you_mean(key, known) or ("known: " + ", ".join(known) if known else
                                         f"{ltype} takes no options"),
        )  # fmt: skip
    return schema.opts[key]


def _positional_hint(ltype: str, schema: Schema, it: Item) -> str | None:
    if it.kind == "num" and "filters" in schema.postfix:
        return "write the number of filters as `N filters`"
    if it.kind == "dims" and not schema.positional_dims:
        return f"{ltype} takes no size"
    return None
