"""The `train { }` section: every setting, its reader and its default.

Every value is checked for its kind and range where it is read (schema.CALL_ARGS for the
arguments of calls like `sgd(...)`, SETTING_ARGS for the plain numbers), and located at
the value itself: whatever `netdsl check` accepts, `netdsl train` can run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ast
from .errors import Location, NetError
from .ir import TrainConfig
from .schema import (
    AUGMENT_CALLS,
    DIVISOR,
    FINITE,
    INIT_CALLS,
    OPTIMIZER_CALLS,
    POSITIVE,
    SCHEDULE_CALLS,
    Arg,
    arg_value,
    call_args,
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

MAX_BATCH = 2**20  # images in one step; a guard against a mistyped batch, not a design limit
MAX_EPOCHS = 10**6
MAX_DATA_PATH = 4096  # characters in a data path (PATH_MAX on Linux)

# The settings that are one number: what each accepts. The CLI's flags that override them
# (--batch, --epochs, --seed) are checked against the same table (setting_problem).
SETTING_ARGS: dict[str, Arg] = {
    "batch": Arg("int", lo=1, hi=MAX_BATCH),
    "epochs": Arg("int", lo=1, hi=MAX_EPOCHS),
    "seed": Arg("int", lo=0),  # numpy takes any seed >= 0; the language caps numbers at 1e15
    "validate": Arg("int", lo=0),
    "test_crops": Arg("int", choices=(1, 10)),
}

Reader = Callable[[list[Item], str, Location, dict[str, Location]], Any]


def setting_problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be the one-number setting `key` (batch, epochs, seed, validate,
    test_crops), as "must be at least 1, got 0"; None when it can. For the CLI's flags."""
    return SETTING_ARGS[key].problem(value)


def _single(items: list[Item], key: str, at: Location) -> Item:
    if len(items) != 1:
        where = items[1].loc if len(items) > 1 else at
        raise NetError(f"'{key}' takes one value", where)
    return items[0]


def _data(items, key, at, locs):
    it = _single(items, key, at)
    if it.kind == "word" and it.value == "mnist":
        return it.value
    if it.kind in ("word", "str") and it.value.lower() == "cifar10":
        raise NetError(
            "CIFAR-10 is not shipped; say where its binary batches are",
            it.loc,
            'write data cifar10("cifar-10-batches-bin")',
        )
    if it.kind == "word":
        raise NetError(
            f"unknown dataset '{it.value}'",
            it.loc,
            'use mnist, cifar10("DIR") or a "path" in quotes',
        )
    if it.kind == "str":
        return _data_path(it.value, it.loc)
    if it.kind == "call" and it.value[0] == "cifar10":
        args = it.value[1]
        if len(args) != 1 or args[0].kind != "str":
            where = args[0].loc if args else it.loc
            raise NetError("cifar10() takes one directory, in quotes", where,
                           'write data cifar10("cifar-10-batches-bin")')  # fmt: skip
        return "cifar10:" + _data_path(args[0].value, args[0].loc, comma=False)
    raise NetError(f"'data' expects mnist, cifar10(\"DIR\") or a \"path\", found {it.describe()}",
                   it.loc)  # fmt: skip


def _data_path(path: str, loc: Location, comma: bool = True) -> str:
    """A data path as netdsl.train.data.load_dataset will take it."""
    if not path.strip():
        raise NetError("the data path is empty", loc, 'e.g. data "digits.npz"')
    if len(path) > MAX_DATA_PATH:
        raise NetError(f"the data path is {len(path):,} characters long (at most "
                       f"{MAX_DATA_PATH:,})", loc)  # fmt: skip
    if "\0" in path:
        raise NetError("the data path holds a NUL character", loc)
    parts = [p.strip() for p in path.split(",")]
    if comma and len(parts) > 1 and (len(parts) != 2 or not all(
            p.lower().endswith(".npz") for p in parts)):  # fmt: skip
        raise NetError("a data path with a comma names two files: the training and the test "
                       "set", loc, 'write data "train.npz,test.npz"')  # fmt: skip
    return path


def _scalar(key: str) -> Reader:
    def read(items, key, at, locs):
        return arg_value(SETTING_ARGS[key], _single(items, key, at), f"'{key}'")

    return read


def _test_crops(items, key, at, locs):
    it = _single(items, key, at)
    if it.kind != "num" or type(it.value) is not int or it.value not in (1, 10):
        raise NetError("test_crops is 1 (centre) or 10 (AlexNet's ten views), found "
                       f"{it.describe()}", it.loc)  # fmt: skip
    return it.value


def _calls(table, what) -> Reader:
    def read(items, key, at, locs):
        value, arg_locs = call_args(_single(items, key, at), table, what)
        locs.update({f"{key}.{k}": v for k, v in arg_locs.items()})
        return value

    return read


def _init(items, key, at, locs):
    out = {k: dict(v) for k, v in DEFAULTS["init"].items()}
    for it in items:
        if it.kind != "kv" or it.value[0] not in ("weight", "bias"):
            raise NetError("init expects weight=... and bias=...", it.loc,
                           "e.g. init weight=gaussian(std=0.01), bias=constant(0)")  # fmt: skip
        k, v = it.value
        if f"init.{k}" in locs:
            raise NetError(f"init gets '{k}' twice", it.loc,
                           notes=((f"'{k}' was first given here", locs[f"init.{k}"]),))  # fmt: skip
        out[k] = call_args(v, INIT_CALLS, "initialiser")[0]
        locs[f"init.{k}"] = it.loc
    return out


def _normalize(items, key, at, locs):
    if len(items) == 1 and items[0].kind == "word" and items[0].value == "none":
        return None
    out: dict[str, list[float]] = {}
    for it in items:
        if it.kind != "kv" or it.value[0] not in ("mean", "std"):
            raise NetError("normalize expects mean=... and std=...", it.loc,
                           "e.g. normalize mean=0.1307, std=0.3081")  # fmt: skip
        k, v = it.value
        if k in out:
            first = locs[f"normalize.{k}"]
            raise NetError(f"normalize gets '{k}' twice", it.loc,
                           notes=((f"'{k}' was first given here", first),))  # fmt: skip
        spec = DIVISOR if k == "std" else FINITE  # x / std, in float32
        vals = v.value if v.kind == "list" else [v]
        if not vals:
            raise NetError(f"normalize {k} must be a number or a list of numbers", v.loc)
        out[k] = [arg_value(spec, x, f"normalize {k}") for x in vals]
        locs[f"normalize.{k}"] = v.loc
    if "mean" not in out or "std" not in out:
        raise NetError("normalize needs both mean and std", at)
    m, s = len(out["mean"]), len(out["std"])
    if m > 1 and s > 1 and m != s:
        raise NetError(f"normalize std has {s} values but mean has {m}", locs["normalize.std"],
                       "give one value per input channel (or one for all), the same number "
                       "for mean and std")  # fmt: skip
    return out


def _augment(items, key, at, locs):
    out: list[dict[str, Any]] = []
    for it in items:
        a, arg_locs = call_args(it, AUGMENT_CALLS, "augmentation")
        kind = a["kind"]
        if f"augment.{kind}" in locs:
            first = locs[f"augment.{kind}"]
            raise NetError(f"augment lists {kind} twice", it.loc,
                           notes=((f"{kind} was first given here", first),))  # fmt: skip
        locs[f"augment.{kind}"] = it.loc
        locs.update({f"augment.{kind}.{k}": v for k, v in arg_locs.items()})
        if kind == "crop":
            size = min(a["size"]) if isinstance(a["size"], tuple) else a["size"]
            if a["pad"] >= size:  # a crop could then miss the image and be all padding
                raise NetError(f"'pad' of crop() must be below the crop size {size}, got "
                               f"{a['pad']}", arg_locs.get("pad", it.loc),
                               "CIFAR pads 32x32 images by 4: crop(32, pad=4)")  # fmt: skip
        out.append(a)
    return out


SETTINGS: dict[str, Reader] = {
    "data": _data,
    "batch": _scalar("batch"),
    "epochs": _scalar("epochs"),
    "seed": _scalar("seed"),
    "optimizer": _calls(OPTIMIZER_CALLS, "optimizer"),
    "schedule": _calls(SCHEDULE_CALLS, "learning-rate schedule"),
    "init": _init,
    "normalize": _normalize,
    "augment": _augment,
    "test_crops": _test_crops,
    "validate": _scalar("validate"),
}
ALIASES = {"batch_size": "batch", "lr_schedule": "schedule", "optim": "optimizer"}


def _check_optimizer(values: dict[str, Any], locs: dict[str, Location]) -> None:
    opt = values["optimizer"]
    if opt["kind"] == "sgd" and opt["nesterov"] and opt["momentum"] == 0:
        raise NetError("nesterov needs momentum: with momentum 0 it is plain SGD",
                       locs.get("optimizer.nesterov", locs.get("optimizer")),
                       "e.g. sgd(lr=0.01, momentum=0.9, nesterov=true)")  # fmt: skip


def check_lr_against_schedule(train: TrainConfig, lr: float, origin: str = "--lr") -> None:
    """Check a base learning rate against the train section's schedule.

    The rate must be positive and finite, and a cosine or plateau schedule's `min_lr` below
    it (cosine would raise the rate instead of lowering it; plateau would start at min_lr).
    `netdsl train --lr` changes the base rate after `check`, so the trainer calls this with
    the flag's value; `origin` names where the rate came from in the message. Raises a
    NetError (exit code 2), located at `min_lr` in the file.
    """
    problem = POSITIVE.problem(lr)
    if problem:
        raise NetError(f"the learning rate ({origin}) {problem}")
    sched = train["schedule"]
    if sched["kind"] in ("cosine", "plateau") and sched["min_lr"] >= lr:
        what = ("decays from the learning rate down to min_lr" if sched["kind"] == "cosine"
                else "never lowers the rate below min_lr")  # fmt: skip
        raise NetError(
            f"'min_lr' of {sched['kind']}() must be below the learning rate {lr:g} ({origin}), "
            f"got {sched['min_lr']:g}",
            train.locs.get("schedule.min_lr", train.locs.get("schedule")),
            f"{sched['kind']} {what}",
        )


def read_train(stmt: ast.TrainStmt | None, env: dict[str, Any] | None = None) -> TrainConfig:
    """Validate the train section; unknown keys get a did-you-mean.

    `locs` of the result maps each setting to where it was written, and each argument to
    where its value was written: "optimizer.lr", "schedule.min_lr", "normalize.std",
    "augment.crop", "augment.crop.pad", "init.weight".
    """
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
        values[key] = SETTINGS[key](items, key, s.loc, locs)
        locs[key] = s.loc
    _check_optimizer(values, locs)
    config = TrainConfig(values, locs)
    check_lr_against_schedule(config, values["optimizer"]["lr"], "the optimizer's lr")
    return config
