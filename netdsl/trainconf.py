"""The `train { }` section: every setting, its reader and its default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ast
from .errors import Location, NetError
from .ir import TrainConfig
from .schema import (
    AUGMENT_CALLS,
    INIT_CALLS,
    OPTIMIZER_CALLS,
    SCHEDULE_CALLS,
    call_value,
    plain,
    read_int,
)
from .values import Item, did_you_mean, evaluate_arg

DEFAULTS: dict[str, Any] = {
    "data": None,  # no dataset: training needs `data` or --data
    "batch": 64,
    "epochs": 1,
    "seed": 0,
    "optimizer": {
        "kind": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    },  # fmt: skip
    "schedule": {"kind": "constant"},
    "init": {"weight": {"kind": "he"}, "bias": {"kind": "constant", "value": 0.0}},
    "normalize": None,  # {"mean": [...], "std": [...]} or None for x/255
    "augment": [],
    "test_crops": 1,
    "validate": 0,  # images held out of the training set for validation (0: use the test set)
}


def _single(items: list[Item], key: str, at: Location) -> Item:
    if len(items) != 1:
        where = items[1].loc if len(items) > 1 else at
        raise NetError(f"'{key}' takes one value", where)
    return items[0]


def _data(items, key, at):
    it = _single(items, key, at)
    if it.kind == "word" and it.value == "cifar10":
        raise NetError(
            "CIFAR-10 is not shipped; say where its binary batches are",
            it.loc,
            'write data cifar10("cifar-10-batches-bin")',
        )
    if it.kind == "word" and it.value != "mnist":
        raise NetError(
            f"unknown dataset '{it.value}'",
            it.loc,
            'use mnist, cifar10("DIR") or a "path" in quotes',
        )
    if it.kind in ("word", "str"):
        return it.value
    if it.kind == "call" and it.value[0] == "cifar10" and len(it.value[1]) == 1:
        return "cifar10:" + str(plain(it.value[1][0]))
    raise NetError(f"'data' expects mnist, cifar10(\"DIR\") or a \"path\", found {it.describe()}",
                   it.loc)  # fmt: skip


def _number(reader) -> Callable:
    def read(items, key, at):
        return reader([_single(items, key, at)], key, at)[0]

    return read


def _calls(table, what):
    def read(items, key, at):
        return call_value(_single(items, key, at), table, what)

    return read


def _init(items, key, at):
    out = {k: dict(v) for k, v in DEFAULTS["init"].items()}
    for it in items:
        if it.kind != "kv" or it.value[0] not in ("weight", "bias"):
            raise NetError("init expects weight=... and bias=...", it.loc,
                           "e.g. init weight=gaussian(std=0.01), bias=constant(0)")  # fmt: skip
        k, v = it.value
        out[k] = _init_value(v)
    return out


def _init_value(v: Item) -> dict[str, Any]:
    if v.kind == "num":
        return {"kind": "constant", "value": float(v.value)}
    return call_value(v, INIT_CALLS, "initialiser")


def _normalize(items, key, at):
    if len(items) == 1 and items[0].kind == "word" and items[0].value == "none":
        return None
    out: dict[str, list[float]] = {}
    for it in items:
        if it.kind != "kv" or it.value[0] not in ("mean", "std"):
            raise NetError("normalize expects mean=... and std=...", it.loc,
                           "e.g. normalize mean=0.1307, std=0.3081")  # fmt: skip
        k, v = it.value
        val = plain(v)
        vals = val if isinstance(val, list) else [val]
        if not vals or not all(isinstance(x, (int, float)) for x in vals):
            raise NetError(f"normalize {k} must be a number or a list of numbers", v.loc)
        if k == "std" and any(x <= 0 for x in vals):
            raise NetError("normalize std must be positive", v.loc)
        out[k] = [float(x) for x in vals]
    if "mean" not in out or "std" not in out:
        raise NetError("normalize needs both mean and std", at)
    return out


def _augment(items, key, at):
    return [call_value(it, AUGMENT_CALLS, "augmentation") for it in items]


def _test_crops(items, key, at):
    it = _single(items, key, at)
    if it.kind != "num" or it.value not in (1, 10):
        raise NetError("test_crops is 1 (centre) or 10 (AlexNet's ten views)", it.loc)
    return it.value


SETTINGS: dict[str, Callable] = {
    "data": _data,
    "batch": _number(read_int()),
    "epochs": _number(read_int()),
    "seed": _number(read_int(lo=0)),
    "optimizer": _calls(OPTIMIZER_CALLS, "optimizer"),
    "schedule": _calls(SCHEDULE_CALLS, "learning-rate schedule"),
    "init": _init,
    "normalize": _normalize,
    "augment": _augment,
    "test_crops": _test_crops,
    "validate": _number(read_int(lo=0)),
}
ALIASES = {"batch_size": "batch", "lr_schedule": "schedule", "optim": "optimizer"}


# (setting, parameter) -> (lowest, highest, whether the lowest itself is allowed)
_RANGES = {
    ("optimizer", "lr"): (0.0, None, False),
    ("optimizer", "momentum"): (0.0, 1.0, True),
    ("optimizer", "weight_decay"): (0.0, None, True),
    ("optimizer", "beta1"): (0.0, 1.0, True),
    ("optimizer", "beta2"): (0.0, 1.0, True),
    ("optimizer", "eps"): (0.0, None, False),
    ("schedule", "step_size"): (1, None, True),
    ("schedule", "gamma"): (0.0, None, False),
    ("schedule", "power"): (0.0, None, True),
    ("schedule", "min_lr"): (0.0, None, True),
    ("schedule", "factor"): (0.0, 1.0, False),
    ("schedule", "patience"): (1, None, True),
    ("schedule", "threshold"): (0.0, None, True),
}
_AUG_RANGES = {"p": (0.0, 1.0, True), "std": (0.0, None, True), "size": (1, None, True),
               "pad": (0, None, True)}  # fmt: skip


def _in_range(v: Any, lo, hi, lo_ok: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (v >= lo if lo_ok else v > lo) and (hi is None or v <= hi)


def _check_ranges(values: dict[str, Any], locs: dict[str, Location]) -> None:
    for (setting, param), (lo, hi, lo_ok) in _RANGES.items():
        spec = values[setting]
        if param in spec and not _in_range(spec[param], lo, hi, lo_ok):
            bound = f"{'at least' if lo_ok else 'above'} {lo}"
            bound += f" and at most {hi}" if hi else ""
            raise NetError(f"{spec['kind']}() {param} must be a number {bound}, got "
                           f"{spec[param]!r}", locs.get(setting))  # fmt: skip
    for a in values["augment"]:
        for param, (lo, hi, lo_ok) in _AUG_RANGES.items():
            if param in a and not _in_range(a[param], lo, hi, lo_ok):
                raise NetError(f"{a['kind']}() {param} is out of range: {a[param]!r}",
                               locs.get("augment"))  # fmt: skip


def read_train(stmt: ast.TrainStmt | None, env: dict[str, Any] | None = None) -> TrainConfig:
    """Validate the train section; unknown keys get a did-you-mean."""
    values = {k: v for k, v in DEFAULTS.items()}
    locs: dict[str, Location] = {}
    if stmt is None:
        return TrainConfig(values, locs)
    for s in stmt.settings:
        key = ALIASES.get(s.key, s.key)
        if key not in SETTINGS:
            raise NetError(
                f"unknown train setting '{s.key}'",
                s.loc,
                did_you_mean(s.key, SETTINGS) or "settings: " + ", ".join(SETTINGS),
            )
        if key in locs:
            raise NetError(f"train setting '{key}' is given twice", s.loc,
                           notes=(("first given here", locs[key]),))  # fmt: skip
        if not s.args:
            raise NetError(f"train setting '{key}' needs a value", s.loc)
        items = [it for a in s.args for it in evaluate_arg(a, env or {})]
        values[key] = SETTINGS[key](items, key, s.loc)
        locs[key] = s.loc
    _check_ranges(values, locs)
    sched = values["schedule"]
    if sched["kind"] == "multistep":
        ms = sched["milestones"]
        if (not isinstance(ms, list) or not all(isinstance(m, int) and m > 0 for m in ms)
                or ms != sorted(set(ms))):  # fmt: skip
            raise NetError("multistep milestones must be increasing epochs, e.g. [30, 60]",
                           locs["schedule"])  # fmt: skip
    opt = values["optimizer"]
    if not (isinstance(opt["lr"], (int, float)) and opt["lr"] > 0):
        raise NetError("the learning rate must be a positive number", locs.get("optimizer"))
    return TrainConfig(values, locs)
