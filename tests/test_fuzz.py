"""Property: any text, however mangled, either loads or raises a NetError that points inside it.

The inputs are the example nets with random mutations: characters, tokens and lines
deleted, duplicated or swapped; numbers replaced by 0, -1, huge or random values; words
replaced by random identifiers or keywords; punctuation inserted. Whatever comes out,
loading must never raise anything but a NetError, and a NetError's location (and the
locations of its notes) must lie inside the file. Only an empty program may have no
location at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netdsl
from netdsl.errors import Location, NetError

ROOT = Path(__file__).resolve().parent.parent
NETS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "nets").glob("*.net"))}
NAME = "fuzz.net"

TOKEN = re.compile(r"[0-9]+(?:x[0-9]+)+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[A-Za-z_][\w.]*|\S")
NUMBER = re.compile(r"(?<![A-Za-z_])[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")
WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")

KEYWORDS = [
    "in",
    "x",
    "conv",
    "pool",
    "fc",
    "loss",
    "relu",
    "block",
    "repeat",
    "train",
    "include",
    "const",
    "gpus",
    "network",
    "filters",
    "stride",
    "pad",
    "same",
    "groups",
    "global",
    "ceil",
    "floor",
    "connect",
    "lenet5",
    "input",
    "add",
    "concat",
    "cross_entropy",
    "mse",
    "mnist",
    "cifar10",
    "sgd",
    "adam",
    "step",
]
PUNCTUATION = list("(){}[],:=+-*/#\"'.x\n\t ") + ["\r\n", "//", "..", "->", "\\"]
HUGE = ["0", "-1", "-0", "00", "1e9", "1e300", "9" * 30, str(2**31), str(2**63 + 1)]

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
numbers = st.one_of(st.sampled_from(HUGE), st.integers(-10, 10**12).map(str))
words = st.one_of(st.sampled_from(KEYWORDS), identifiers)


def _spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


@st.composite
def mutation(draw, text: str) -> str:
    """Apply one random edit to `text`."""
    kind = draw(st.sampled_from(["char", "token", "line", "number", "word", "punct"]))
    if not text:
        return draw(st.sampled_from(PUNCTUATION))
    if kind == "char":
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if op == "delete":
            return text[:i] + text[i + 1 :]
        if op == "duplicate":
            return text[:i] + text[i] + text[i:]
        chars = list(text)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if kind in ("token", "line"):
        if kind == "token":
            spans = _spans(TOKEN, text)
        else:
            starts = [0] + [m.end() for m in re.finditer("\n", text)]
            spans = [(a, text.find("\n", a) + 1 or len(text)) for a in starts]
        if not spans:
            return text
        a = draw(st.sampled_from(spans))
        b = draw(st.sampled_from(spans))
        op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        piece = text[a[0] : a[1]]
        if op == "delete":
            return text[: a[0]] + text[a[1] :]
        if op == "duplicate":
            sep = " " if kind == "token" else ""
            return text[: a[1]] + sep + piece + text[a[1] :]
        if a == b:
            return text
        (a, b) = sorted((a, b))
        if a[1] > b[0]:
            return text
        return text[: a[0]] + text[b[0] : b[1]] + text[a[1] : b[0]] + piece + text[b[1] :]
    if kind in ("number", "word"):
        spans = _spans(NUMBER if kind == "number" else WORD, text)
        if not spans:
            return text
        a, b = draw(st.sampled_from(spans))
        new = draw(numbers if kind == "number" else words)
        return text[:a] + new + text[b:]
    i = draw(st.integers(0, len(text)))
    return text[:i] + draw(st.sampled_from(PUNCTUATION)) + text[i:]


@st.composite
def mutated_net(draw) -> str:
    text = NETS[draw(st.sampled_from(sorted(NETS)))]
    for _ in range(draw(st.integers(1, 4))):
        text = draw(mutation(text))
    return text


def _inside(loc: Location, text: str) -> bool:
    lines = text.split("\n")
    return (
        loc.file == NAME
        and 1 <= loc.line <= len(lines)
        and 1 <= loc.col <= len(lines[loc.line - 1]) + 1
        and loc.width >= 1
    )


def _check(text: str) -> None:
    try:
        net = netdsl.loads(text, NAME)
    except NetError as e:
        e.render()  # rendering never fails either
        if e.loc is None:
            assert e.message == "the file defines no layers", e.render()
            return
        assert _inside(e.loc, text), (e.render(), e.loc)
        for _, loc in e.notes:
            assert _inside(loc, text), (e.render(), loc)
    else:
        assert net.layers and net.layers[0].type == "input"
        assert all(lyr.out_shape is not None and min(lyr.out_shape) >= 1 for lyr in net.layers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_net())
def test_mutated_nets_load_or_raise_a_located_net_error(text):
    _check(text)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(KEYWORDS + PUNCTUATION),
            numbers,
            identifiers,
            st.just(" "),
            st.just("\n"),
        ),
        max_size=30,
    ).map("".join)
)
def test_token_soup_loads_or_raises_a_located_net_error(text):
    _check(text)


def test_the_unmutated_nets_load():
    for text in NETS.values():
        _check(text)
        netdsl.loads(text, NAME)


def test_empty_programs_have_no_location():
    for text in ("", "\n\n", "# just a comment\n", "network empty\n"):
        try:
            netdsl.loads(text, NAME)
        except NetError as e:
            assert e.loc is None
            assert e.message == "the file defines no layers"
        else:
            raise AssertionError(f"{text!r} loaded")
