"""Property: any text, however mangled, either loads or raises a NetError that points inside it.

The inputs are the example nets with random mutations: characters, tokens and lines
deleted, duplicated or swapped; numbers replaced by 0, -1, huge or random values; words
replaced by random identifiers or keywords; punctuation inserted. Whatever comes out,
loading must never raise anything but a NetError, and a NetError's location (and the
locations of its notes) must lie inside the file. Only an empty program may have no
location at all.

Three more families go through the file reader too (netdsl.load of a temporary file):
byte-level edits (invalid UTF-8, NUL, byte-order marks, tabs, carriage returns, unusual
spaces), extreme number literals (thousands of digits, 1e400, 1e-400, -0) and deep
nesting (brackets, calls, lists, long sums, chains of unary minus, nested repeats), each
of them also just inside and just outside the language's limits (netdsl/limits.py).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netdsl
from netdsl.errors import Location, NetError
from netdsl.limits import MAX_DEPTH, MAX_NUMBER_CHARS

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


def _inside(loc: Location, text: str, name: str = NAME) -> bool:
    lines = text.split("\n")
    return (
        loc.file == name
        and 1 <= loc.line <= len(lines)
        and 1 <= loc.col <= len(lines[loc.line - 1]) + 1
        and loc.width >= 1
    )


def _check(text: str) -> None:
    try:
        net = netdsl.loads(text, NAME)
    except NetError as e:
        _check_error(e, text, NAME)
    else:
        _check_net(net)


def _check_error(e: NetError, text: str, name: str) -> None:
    e.render()  # rendering never fails either
    if e.loc is None:
        assert e.message == "the file defines no layers", e.render()
        return
    assert _inside(e.loc, text, name), (e.render(), e.loc)
    for _, loc in e.notes:
        assert _inside(loc, text, name), (e.render(), loc)


def _check_net(net) -> None:
    assert net.layers and net.layers[0].type == "input"
    assert all(lyr.out_shape is not None and min(lyr.out_shape) >= 1 for lyr in net.layers)


def _check_file(data: bytes) -> None:
    """Load `data` from a file: a clean load or a NetError located inside the file's text
    (its bytes decoded with invalid ones replaced, a leading byte-order mark dropped)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / NAME
        path.write_bytes(data)
        try:
            net = netdsl.load(path)
        except NetError as e:
            text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
            _check_error(e, text, str(path))
        else:
            _check_net(net)


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


# ---------------------------------------------------------------- bytes, numbers, depth

ODD_BYTES = [
    b"\x00",  # a binary file
    b"\xff",  # never valid UTF-8
    b"\x80",  # a continuation byte alone
    b"\xc3",  # a truncated two-byte sequence
    b"\xef\xbb\xbf",  # a byte-order mark
    b"\t",
    b"\r",
    b"\r\n",
    b"\x0c",  # form feed
    b"\x1b",  # escape
    b"\xc2\xa0",  # no-break space
    b"\xe2\x80\x8b",  # zero width space
    b"\xe2\x80\xa8",  # line separator
    b"\xe6\x97\xa5",  # a wide character
    b"\xcc\x81",  # a combining accent
]


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    """Insert, replace or delete bytes, or put a byte-order mark in front."""
    op = draw(st.sampled_from(["insert", "replace", "delete", "bom"]))
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    new = draw(st.one_of(st.sampled_from(ODD_BYTES), st.binary(min_size=1, max_size=3)))
    i = draw(st.integers(0, len(data)))
    if op == "insert":
        return data[:i] + new + data[i:]
    j = min(len(data), i + draw(st.integers(1, 3)))
    return data[:i] + (new if op == "replace" else b"") + data[j:]


@st.composite
def byte_mutated_net(draw) -> bytes:
    data = NETS[draw(st.sampled_from(sorted(NETS)))].encode("utf-8")
    for _ in range(draw(st.integers(1, 3))):
        data = draw(byte_mutation(data))
    return data


def _edge_counts(limit: int) -> list[int]:
    return [1, 2, limit - 1, limit, limit + 1, 3 * limit, 3000]


EXTREME_NUMBERS = [
    "9" * 5000,  # past CPython's int-to-str limit
    "1" + "0" * (MAX_NUMBER_CHARS - 1),  # the longest literal
    "1" + "0" * MAX_NUMBER_CHARS,
    "0" * (MAX_NUMBER_CHARS + 1),
    "1e400",  # overflows to inf
    "1E308",
    "1e-400",  # underflows to 0: fine
    "4.9e-324",
    "1e15",
    "1e16",
    "1000000000000000",
    "1000000000000001",
    "-0",
    "0.0",
    "." + "5" * 80,
    "1.5e",  # not a number: "1.5" and a name "e"
    "3x" + "9" * 70,  # a size with a huge side
    "2x3x" + "1" * 16,
]


def _deep(kind: str, n: int, inner: str) -> str:
    """`inner` wrapped `n` deep in one of the language's nesting constructs."""
    if kind == "parens":
        return "(" * n + inner + ")" * n
    if kind == "list":
        return "[" * n + inner + "]" * n
    if kind == "call":
        return "gaussian(" * n + inner + ")" * n
    if kind == "minus":
        return "-" * n + inner
    if kind == "sum":
        return "+".join([inner] * (n + 1))
    if kind == "product":
        return "*".join([inner] * (n + 1))
    if kind == "right-sum":
        return "(".join([inner + "+"] * n) + inner + ")" * (n - 1)
    raise AssertionError(kind)


@st.composite
def extreme_net(draw) -> bytes:
    """A net with some of its numbers replaced by extreme literals or deep expressions."""
    text = NETS[draw(st.sampled_from(sorted(NETS)))]
    spans = _spans(NUMBER, text)
    for _ in range(draw(st.integers(1, 3))):
        a, b = draw(st.sampled_from(spans))
        number = draw(st.sampled_from(EXTREME_NUMBERS + [text[a:b]]))
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["parens", "list", "call", "minus", "sum", "product",
                                         "right-sum"]))  # fmt: skip
            if len(number) > 20:  # keep the input small: a long literal is tested alone
                number = text[a:b]
            number = _deep(kind, draw(st.sampled_from(_edge_counts(MAX_DEPTH))), number)
        text = text[:a] + number + text[b:]
        spans = _spans(NUMBER, text)  # the edit moved the later numbers
        if not spans:
            break
    return text.encode("utf-8")


@st.composite
def nested_repeats(draw) -> bytes:
    """Layers nested inside many repeats (the statement nesting counts with brackets)."""
    n = draw(st.sampled_from(_edge_counts(MAX_DEPTH)))
    inner = draw(
        st.sampled_from(
            [
                "relu",
                "fc f: 10",
                "conv: 1+1 filters 3x3, pad 1",
                "conv: " + _deep("sum", MAX_DEPTH // 2, "1") + " filters 3x3",
            ]
        )
    )
    body = "repeat 1 {\n" * n + inner + "\n" + "}\n" * n
    return ("input image: 1x8x8\n" + body + "fc out: 10\n").encode("utf-8")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_mutated_net())
def test_byte_mutated_files_load_or_raise_a_located_net_error(data):
    _check_file(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extreme_net())
def test_extreme_numbers_and_deep_nesting_load_or_raise_a_located_net_error(data):
    _check_file(data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_repeats())
def test_nested_repeats_load_or_raise_a_located_net_error(data):
    _check_file(data)


@pytest.mark.parametrize("number", EXTREME_NUMBERS)
def test_every_extreme_number_loads_or_raises_a_located_net_error(number):
    for text in NETS.values():
        spans = _spans(NUMBER, text)
        for a, b in spans[:: max(1, len(spans) // 3)]:  # a few places in every net
            _check_file((text[:a] + number + text[b:]).encode("utf-8"))
