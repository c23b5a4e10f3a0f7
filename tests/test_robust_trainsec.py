"""The train section: whatever `check` accepts, `train` runs; everything else is a located error.

Most cases are generated from the tables that say what each value accepts
(netdsl.schema.CALL_ARGS for every parameter of every call, netdsl.trainconf.SETTING_ARGS
for the one-number settings), so a parameter added without a kind and a range fails here:
each parameter gets values just outside its range and of the wrong kind (a located error
at the value) and values on the edges of its range (accepted, and a tiny net then trains
on them).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import netdsl
from netdsl.errors import NetError
from netdsl.schema import (
    CALL_ARGS,
    CALLS,
    REQUIRED,
    Arg,
    read_float,
    read_int,
)
from netdsl.trainconf import (
    DEFAULTS,
    SETTING_ARGS,
    check_lr_against_schedule,
    setting_problem,
)
from netdsl.values import Item

NET = """\
input image: 1x8x8
conv c: 2 filters 3x3, pad 1, {act}
fc f: 3
loss cross_entropy
train {{
  batch 8
  epochs 2
  {setting}
}}
"""
SETTING_LINE = 8  # the line of {setting} in NET


def net_text(setting: str = "", act: str = "relu") -> str:
    return NET.format(setting=setting or "seed 1", act=act)


def load_error(text: str) -> NetError:
    with pytest.raises(NetError) as info:
        netdsl.loads(text, "t.net")
    return info.value


def pointed(err: NetError) -> str:
    """The source text under the error's caret."""
    loc = err.loc
    assert loc is not None, err.render()
    return loc.source_line[loc.col - 1 : loc.col - 1 + loc.width]


def assert_points_into(err: NetError, line: str, value: str) -> None:
    """The error is on the line holding `line` and its caret starts inside `value` there."""
    loc = err.loc
    assert loc is not None, err.render()
    assert loc.source_line.strip() == line.strip(), err.render()
    start = loc.source_line.index(line.strip()) + line.strip().rindex(value)
    assert start <= loc.col - 1 < start + len(value), err.render()


# ---------------------------------------------------------------- the issue's examples

ISSUE_CASES = [
    # (setting, the text the caret must point at, words the message must hold)
    ("init weight=gaussian(std=-1)", "-1", "'std' of gaussian() must be at least 0, got -1"),
    ('init weight=uniform(scale="big")', '"big"', "'scale' of uniform() expects a number"),
    ("init bias=constant([1, 2])", "[1, 2]", "'value' of constant() expects a number"),
    ("augment crop(8, pad=1.5)", "1.5", "'pad' of crop() expects a whole number"),
    ("augment crop(8.0)", "8.0", "'size' of crop() expects a whole number"),
    (
        "optimizer sgd(momentum=0.9, nesterov=maybe)",
        "maybe",
        "'nesterov' of sgd() expects true or false, found 'maybe'",
    ),
    ("optimizer adam(beta1=1)", "1", "'beta1' of adam() must be below 1, got 1"),
    (
        "schedule cosine(min_lr=1)",
        "1",
        "'min_lr' of cosine() must be below the learning rate 0.01 (the optimizer's lr), got 1",
    ),
    ("normalize mean=0.5, std=0.5, mean=0.1", "mean", "normalize gets 'mean' twice"),
    ("test_crops 10.0", "10.0", "test_crops is 1 (centre) or 10 (AlexNet's ten views)"),
    (
        "schedule multistep([0, 3])",
        "0",
        "'milestones' of multistep() must be positive epoch numbers, got 0",
    ),
]


@pytest.mark.parametrize(("setting", "at", "message"), ISSUE_CASES)
def test_the_issues_examples_are_located_errors(setting, at, message):
    err = load_error(net_text(setting))
    assert message in err.message
    assert err.loc.line == SETTING_LINE
    assert pointed(err) == at


def test_a_bool_typo_gets_a_did_you_mean():
    err = load_error(net_text("optimizer sgd(momentum=0.9, nesterov=ture)"))
    assert err.hint == "did you mean 'true'?"


def test_unordered_milestones_say_which_comes_after_which():
    err = load_error(net_text("schedule multistep([5, 3])"))
    assert err.message == ("'milestones' of multistep() must be increasing, e.g. [30, 60]: "
                           "3 comes after 5")  # fmt: skip
    assert pointed(err) == "3"


# ---------------------------------------------------------------- the tables are complete


def test_every_parameter_of_every_call_has_a_kind_and_range():
    assert set(CALL_ARGS) == set(CALLS)
    for what, table in CALLS.items():
        assert set(CALL_ARGS[what]) == set(table), what
        for name, params in table.items():
            names = [p for p, _ in params]
            assert set(CALL_ARGS[what][name]) == set(names), f"{what} {name}"
            for p in names:
                spec = CALL_ARGS[what][name][p]
                assert isinstance(spec, Arg) and spec.expects(), (name, p)


def test_every_default_fits_its_own_range():
    for what, table in CALLS.items():
        for name, params in table.items():
            for p, default in params:
                if default is not REQUIRED:
                    assert CALL_ARGS[what][name][p].problem(default) is None, (name, p)
    for key, spec in SETTING_ARGS.items():
        assert spec.problem(DEFAULTS[key]) is None, key
    opt = DEFAULTS["optimizer"]
    for p, spec in CALL_ARGS["optimizer"][opt["kind"]].items():
        assert spec.problem(opt[p]) is None, p


# ---------------------------------------------------------------- generated cases

SMALL = 1e-6  # a step inside an open end of a range


def _fmt(v: float | int) -> str:
    return repr(v) if isinstance(v, int) else f"{v:.10g}"


def accepted_values(spec: Arg) -> list[str]:
    """Values on the edges of the range (and one inside), as written in a .net file."""
    if spec.kind == "bool":
        return ["true", "false", "on", "off", "1", "0"]
    if spec.kind == "epochs":
        return ["[1]", "[1, 2, 7]"]
    if spec.choices:
        return [str(c) for c in spec.choices]
    whole = spec.kind in ("int", "size")
    step = 1 if whole else SMALL
    vals: list[float] = []
    if spec.lo is not None:
        vals.append(spec.lo + step if spec.lo_open else spec.lo)
    if spec.hi is not None:
        vals.append(spec.hi - step if spec.hi_open else spec.hi)
    if spec.lo is None and spec.hi is None:
        vals += [-0.5, 0.5]
    elif spec.hi is None:
        vals.append(vals[0] + (3 if whole else 0.5))
    return [_fmt(v) for v in vals]


def rejected_values(spec: Arg) -> list[tuple[str, str | None]]:
    """(value, words the message must hold): the wrong kind, and just outside the range.
    None: a non-finite number, which may be refused as soon as it is written."""
    out: list[tuple[str, str | None]] = [
        ('"x"', "expects"),
        ("[1, 2]" if spec.kind != "epochs" else "3", "expects"),
    ]
    if spec.kind == "bool":
        return [*out, ("maybe", "expects true or false"), ("2", "expects true or false")]
    if spec.kind == "epochs":
        return [*out, ("[0]", "positive epoch numbers"), ("[2, 2]", "increasing"),
                ("[1.5]", "whole numbers"), ("[]", "expects a list")]  # fmt: skip
    whole = spec.kind in ("int", "size")
    if whole:
        out.append(("2.5", "expects a whole number"))
    else:
        out += [("1e999", None), ("-1e999", None)]
    if spec.float32:  # 0 once stored as a float32
        out.append(("1e-40", "is too small for float32"))
    if spec.choices:
        out.append((str(max(spec.choices) + 1), "must be " + spec.bounds()))
    if spec.lo is not None:
        bad = spec.lo if spec.lo_open else spec.lo - (1 if whole else 0.5)
        out.append((_fmt(bad), "must be"))
    if spec.hi is not None:
        bad = spec.hi if spec.hi_open else spec.hi + (1 if whole else 0.5)
        out.append((_fmt(bad), "must be"))
    return out


# What else a call needs to be used at all (its required parameters, the net's input size)
COMPANIONS = {
    ("learning-rate schedule", "step"): {"step_size": "1"},
    ("learning-rate schedule", "multistep"): {"milestones": "[1]"},
    ("learning-rate schedule", "exponential"): {"gamma": "0.5"},
    ("augmentation", "crop"): {"size": "8"},
    ("optimizer", "sgd"): {"momentum": "0.9"},  # nesterov=true needs momentum
}
# Values the generic edges cannot know: the crop must give the 8x8 input, pad stays below it
ACCEPTED = {
    ("augmentation", "crop", "size"): ["8", "8x8"],
    ("augmentation", "crop", "pad"): ["0", "3", "7"],
    # below the optimizer's lr (0.01): check_lr_against_schedule
    ("learning-rate schedule", "cosine", "min_lr"): ["0", "0.005"],
    ("learning-rate schedule", "plateau", "min_lr"): ["0", "0.005"],
}
REJECTED = {
    ("augmentation", "crop", "pad"): [("8", "must be below the crop size 8")],
}


def call_text(what: str, name: str, param: str, value: str) -> str:
    args = {k: v for k, v in COMPANIONS.get((what, name), {}).items() if k != param}
    args[param] = value
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"


def usage(what: str, call: str) -> tuple[str, str]:
    """(train setting, activation) that put a call into the tiny net."""
    if what == "activation":
        return "", call
    setting = {"initialiser": "init weight=", "optimizer": "optimizer ",
               "learning-rate schedule": "schedule ", "augmentation": "augment "}[what]  # fmt: skip
    return setting + call, "relu"


def all_params():
    for what, calls in CALL_ARGS.items():
        for name, params in calls.items():
            for param, spec in params.items():
                yield what, name, param, spec


REJECTED_CASES = [
    pytest.param(what, name, param, value, words, id=f"{name}-{param}={value}")
    for what, name, param, spec in all_params()
    for value, words in rejected_values(spec) + REJECTED.get((what, name, param), [])
]
ACCEPTED_CASES = [
    pytest.param(what, name, param, value, id=f"{name}-{param}={value}")
    for what, name, param, spec in all_params()
    for value in ACCEPTED.get((what, name, param), accepted_values(spec))
]


@pytest.mark.parametrize(("what", "name", "param", "value", "words"), REJECTED_CASES)
def test_every_parameter_rejects_values_out_of_its_kind_or_range(what, name, param, value,
                                                                 words):  # fmt: skip
    call = call_text(what, name, param, value)
    setting, act = usage(what, call)
    err = load_error(net_text(setting, act))
    assert_points_into(err, setting or f"conv c: 2 filters 3x3, pad 1, {act}", value)
    if words is not None:
        assert f"'{param}' of {name}()" in err.message and words in err.message, err.message


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A train and a test split of 16 random 1x8x8 images in 3 classes."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(d / f"{split}.npz", x=rng.random((16, 1, 8, 8)).astype(np.float32),
                 y=rng.integers(0, 3, 16))  # fmt: skip
    return f"{d}/train.npz,{d}/test.npz"


def train_two_epochs(text: str, data: str, out: Path, **flags) -> dict:
    from netdsl.train.trainer import fit_file

    (out.parent / "t.net").write_text(text)
    return fit_file(out.parent / "t.net", data=data, out=out, quiet=True, **flags)


@pytest.mark.parametrize(("what", "name", "param", "value"), ACCEPTED_CASES)
def test_what_check_accepts_trains(what, name, param, value, data, tmp_path):
    setting, act = usage(what, call_text(what, name, param, value))
    text = net_text(setting, act)
    netdsl.loads(text, "t.net")  # check accepts it
    r = train_two_epochs(text, data, tmp_path / "run")
    assert r["epoch"] == 2 and math.isfinite(r["train_loss"])


SETTING_CASES = [
    pytest.param(key, value, id=f"{key}={value}")
    for key, spec in SETTING_ARGS.items()
    for value in accepted_values(spec)
    if key not in ("batch", "epochs", "validate")  # sized by the data below
] + [
    pytest.param("batch", "1", id="batch=1"),
    pytest.param("batch", "16", id="batch=16"),
    pytest.param("epochs", "1", id="epochs=1"),
    pytest.param("validate", "0", id="validate=0"),
    pytest.param("validate", "8", id="validate=8"),
    pytest.param("seed", str(10**15), id="seed=1e15"),
]


@pytest.mark.parametrize(("key", "value"), SETTING_CASES)
def test_what_check_accepts_in_one_number_settings_trains(key, value, data, tmp_path):
    text = net_text(f"{key} {value}").replace("  batch 8\n", "" if key == "batch" else
                                              "  batch 8\n")  # fmt: skip
    text = text.replace("  epochs 2\n", "" if key == "epochs" else "  epochs 2\n")
    netdsl.loads(text, "t.net")
    r = train_two_epochs(text, data, tmp_path / "run")
    assert math.isfinite(r["train_loss"])


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        (key, value, words)
        for key, spec in SETTING_ARGS.items()
        for value, words in rejected_values(spec)
        if words is not None
    ],  # fmt: skip
)
def test_one_number_settings_reject_values_out_of_range(key, value, words):
    text = net_text(f"{key} {value}").replace(f"  {key} 8\n", "").replace(f"  {key} 2\n", "")
    err = load_error(text)
    assert_points_into(err, f"{key} {value}", value)
    words = "test_crops is 1 (centre) or 10" if key == "test_crops" else words
    assert words in err.message and key in err.message, err.message


def test_batch_and_epochs_are_bounded():
    assert setting_problem("batch", 2**20 + 1) == "must be at most 1,048,576, got 1048577"
    assert setting_problem("epochs", 10**6 + 1) == "must be at most 1,000,000, got 1000001"
    assert setting_problem("seed", -1) == "must be at least 0, got -1"
    assert setting_problem("batch", 2.5) == "must be a whole number, got 2.5"
    assert setting_problem("batch", True) == "must be a whole number, got True"
    assert setting_problem("test_crops", 5) == "must be 1 or 10, got 5"
    assert setting_problem("batch", 64) is None


# ---------------------------------------------------------------- cross-parameter rules


def test_nesterov_needs_momentum():
    err = load_error(net_text("optimizer sgd(nesterov=true)"))
    assert "nesterov needs momentum" in err.message and pointed(err) == "true"
    netdsl.loads(net_text("optimizer sgd(momentum=0.9, nesterov=true)"))


@pytest.mark.parametrize("sched", ["cosine", "plateau"])
def test_min_lr_must_be_below_the_learning_rate(sched):
    err = load_error(net_text(f"schedule {sched}(min_lr=0.01)"))  # the default lr is 0.01
    assert f"'min_lr' of {sched}() must be below the learning rate 0.01" in err.message
    assert pointed(err) == "0.01"


def test_the_lr_flag_is_checked_against_the_schedule():
    net = netdsl.loads(net_text("schedule cosine(min_lr=0.001)"))
    check_lr_against_schedule(net.train, 0.1)  # fine
    with pytest.raises(NetError) as info:
        check_lr_against_schedule(net.train, 0.0005, "--lr")
    assert "below the learning rate 0.0005 (--lr), got 0.001" in info.value.message
    assert pointed(info.value) == "0.001"
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(NetError, match=r"the learning rate \(--lr\) must be"):
            check_lr_against_schedule(net.train, bad)


def test_why_a_min_lr_above_the_rate_is_refused():
    """A cosine "decay" from a base rate below min_lr raises the rate: why check_lr_against_
    schedule refuses it (and why the trainer must call it for --lr)."""
    from netdsl.train.schedule import Schedule

    net = netdsl.loads(net_text("schedule cosine(min_lr=0.001)"))
    s = Schedule(net.train["schedule"], 0.0005, 2)
    assert s.lr(1, 0.99) > s.lr(0, 0.0)  # a "decay" that grows: why --lr must be checked


@pytest.mark.parametrize("sched", ["step(step_size=1, gamma=10)", "multistep([1], 10)",
                                   "exponential(1.5)"])  # fmt: skip
def test_gamma_multiplies_so_above_1_is_refused(sched):
    """Caffe's "divide by 10" written as 10 would raise the rate every step (and gamma^epoch
    overflows a float within a few hundred epochs): refused, with the reading of gamma."""
    err = load_error(net_text(f"schedule {sched}"))
    assert "'gamma' of" in err.message and "must be at most 1" in err.message
    assert err.hint == "gamma multiplies the rate: gamma=0.1 divides it by 10"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (net_text("normalize mean=0.5, std=1e-40"), "1e-40"),
        (net_text("optimizer adam(eps=1e-40)"), "1e-40"),
        ("input image: 1x8x8\nlrn n: k 1e-40\n", "1e-40"),
        ("input image: 1x8x8\nbn b: eps 1e-40\n", "1e-40"),
    ],
)
def test_a_divisor_must_stay_above_0_in_float32(text, value):
    """The kernels divide by these in float32, where 1e-40 is a denormal (1e-46 is 0)."""
    err = load_error(text)
    assert "is too small for float32 (at least 1.18e-38), got 1e-40" in err.message
    assert pointed(err) == value


def test_crop_pad_must_leave_part_of_the_image_in_every_crop():
    err = load_error(net_text("augment crop(8, pad=8)"))
    assert "'pad' of crop() must be below the crop size 8, got 8" in err.message


# ---------------------------------------------------------------- repeated keys and forms


@pytest.mark.parametrize(
    ("setting", "message", "second"),
    [
        ("normalize mean=0.5, std=0.5, mean=0.1", "normalize gets 'mean' twice", "mean"),
        ("normalize std=[0.5], mean=0.1, std=0.2", "normalize gets 'std' twice", "std"),
        ("init weight=he, bias=0, weight=xavier", "init gets 'weight' twice", "weight"),
        ("optimizer sgd(lr=0.1, lr=0.2)", "sgd() gets 'lr' twice", "lr"),
        ("optimizer sgd(0.1, lr=0.2)", "sgd() gets 'lr' twice", "lr"),
        ("augment flip, crop(8), flip(0.2)", "augment lists flip twice", "flip"),
    ],
)
def test_a_repeated_key_is_an_error_with_a_note(setting, message, second):
    err = load_error(net_text(setting))
    assert err.message == message
    assert pointed(err).startswith(second)
    assert err.loc.col - 1 == err.loc.source_line.rindex(second)  # the second one
    assert err.notes and "first given here" in err.notes[0][0]


@pytest.mark.parametrize(
    ("setting", "at", "words"),
    [
        ("normalize mean=0.1, std=0", "0", "normalize std must be positive, got 0"),
        ("normalize mean=[0.1, x], std=1", "x", "normalize mean expects a number"),
        ("normalize mean=[], std=1", "[]", "must be a number or a list"),
        ("normalize mean=[0.1, 0.2], std=[1, 2, 3]", "[1, 2, 3]", "std has 3 values but mean"),
        ("normalize mean=0.1", "normalize", "needs both mean and std"),
        ('data ""', '""', "the data path is empty"),
        ('data "a.npz,b.npz,c.npz"', '"a.npz,b.npz,c.npz"', "a data path with a comma"),
        ("data cifar10(3)", "3", "cifar10() takes one directory"),
        ('data "cifar10"', '"cifar10"', "CIFAR-10 is not shipped"),
        ("data imagenet", "imagenet", "unknown dataset"),
        ("seed 1, 2", "2", "'seed' takes one value"),
    ],
)
def test_normalize_and_data_forms(setting, at, words):
    err = load_error(net_text(setting))
    assert words in err.message
    assert pointed(err) == at


def test_a_very_long_data_path_is_refused_at_check():
    err = load_error(net_text('data "' + "d/" * 3000 + 'x.npz"'))
    assert "the data path is 6,005 characters long" in err.message


def test_accepted_forms_keep_their_values():
    t = netdsl.loads(net_text('data "a.npz,b.npz"')).train
    assert t["data"] == "a.npz,b.npz"
    t = netdsl.loads(net_text("augment crop(8x8, pad=2), flip(p=1)")).train
    assert t["augment"] == [{"kind": "crop", "size": (8, 8), "pad": 2}, {"kind": "flip", "p": 1.0}]
    t = netdsl.loads(net_text("optimizer sgd(0.1, 0.9, 0, on)")).train
    assert t["optimizer"]["nesterov"] is True and t["optimizer"]["weight_decay"] == 0.0
    t = netdsl.loads(net_text("init weight=gaussian(0), bias=-1")).train
    assert t["init"]["weight"] == {"kind": "gaussian", "std": 0.0, "mean": 0.0}
    assert t["init"]["bias"] == {"kind": "constant", "value": -1.0}


# ---------------------------------------------------------------- layer options


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("dropout d: 1e999", "1e999"),
        ("conv c2: 2 filters 3x3, lr_mult 1e999", "1e999"),
        ("conv c2: 2 filters 3x3, decay_mult -1e999", "-1e999"),
        ("bn b: momentum 1e999-1e999", "1e999-1e999"),
        ("leaky l: 1e999", "1e999"),
        ("conv c2: 2 filters 3x3, leaky 1e999", "1e999"),
        ("conv c2: 2 filters 3x3, leaky(slope=1e999)", "1e999"),
        ("conv c2: 2 filters 3x3, init gaussian(std=1e999)", "1e999"),
        ("conv c2: 2 filters 3x3, bias_init 1e999", "1e999"),
        ("bn b: eps 0", "0"),
    ],
)
def test_layer_options_must_be_finite(line, value):
    err = load_error(f"input image: 1x8x8\nconv c: 2 filters 3x3\n{line}\n")
    assert_points_into(err, line, value)


def test_a_layers_own_initialiser_is_checked_like_the_train_sections():
    err = load_error("input image: 1x8x8\nconv c: 2 filters 3x3, init gaussian(std=-1)\n")
    assert err.message == "'std' of gaussian() must be at least 0, got -1"
    err = load_error("input image: 1x8x8\nconv c: 2 filters 3x3, bias_init constant([1])\n")
    assert "'value' of constant() expects a number" in err.message


def at(value) -> Item:
    from netdsl.errors import Location

    return Item("num", value, Location("t.net", 1, 1, 1, "x"))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (math.nan, "must be a finite number, got nan"),
        (math.inf, "must be a finite number, got inf"),
        (-math.inf, "must be a finite number, got -inf"),
        (10**15 + 1, "is too large"),
        (10**400, "is too large (the limit is 1e+15), got a 1329-bit number"),
        (1e300, "is too large"),
    ],
)
def test_the_number_readers_refuse_nan_inf_and_huge_numbers(value, words):
    with pytest.raises(NetError) as info:
        read_float(lo=0.0)([at(value)], "lr_mult", None)
    assert words in info.value.message
    if isinstance(value, int):
        with pytest.raises(NetError) as info:
            read_int()([at(value)], "filters", None)
        assert words in info.value.message


def test_arg_problem_refuses_bools_as_numbers():
    assert Arg("float").problem(True) == "must be a number, got True"
    assert Arg("int", lo=1).problem(False) == "must be a whole number, got False"
    assert Arg("bool").problem(1) == "must be true or false, got 1"
