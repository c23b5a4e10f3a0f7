# The pinned diagnostics are as wide as the messages they pin:
# ruff: noqa: E501
"""Elaboration never ends in a traceback or a hang: arithmetic, blocks, includes, positions,
foreign layer names, `repeat 0` and large nets all end in a clean load or a located error.

Each class of issue 11 that elaboration owns has tests here; the pinned texts are whole
rendered diagnostics (``file:line:col: error:``, source line, caret, notes, hint).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.errors import NetError


def rendered(tmp_path: Path, text: str, name: str = "bad.net") -> str:
    """The rendered NetError for `text` written to tmp_path/name, paths shown relative."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(NetError) as info:
        netdsl.load(str(path))
    return info.value.render().replace(str(tmp_path) + os.sep, "")


def load(tmp_path: Path, text: str, name: str = "ok.net") -> netdsl.Network:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return netdsl.load(str(path))


def check_cli(tmp_path: Path, capsys, text: str) -> str:
    """`netdsl check` on `text`: exit 2, nothing on stdout, no traceback; returns stderr."""
    path = tmp_path / "cli.net"
    path.write_text(text, encoding="utf-8")
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "Traceback" not in err
    assert err.startswith(f"{path}:")  # located: file:line:col
    return err


# ---------------------------------------------------------------- 1. arithmetic


def test_constant_arithmetic_is_bounded_at_the_offending_operation(tmp_path):
    text = "input image: 1x28x28\nconst a = 99999*99999*99999*99999*99999*99999*99999*99999\n"
    assert rendered(tmp_path, text) == (
        "bad.net:2:11: error: the result 99996000059999600001 is out of range; numbers are at most 1e15 in size\n"
        "    const a = 99999*99999*99999*99999*99999*99999*99999*99999\n"
        "              ^~~~~~~~~~~~~~~~~~~~~~~"
    )


def test_repeated_squaring_through_constants_stops_early(tmp_path, capsys):
    # without a bound each line doubles the digits: 12 lines build a 60,000-digit integer
    lines = ["input image: 1x28x28", "const c0 = 99999"]
    lines += [f"const c{i} = c{i - 1}*c{i - 1}" for i in range(1, 13)]
    lines += ["conv c: c12 filters 3x3"]
    err = check_cli(tmp_path, capsys, "\n".join(lines) + "\n")
    assert ":4:12: error: the result 99996000059999600001 is out of range" in err


@pytest.mark.parametrize(
    ("expr", "col", "width", "what"),
    [
        ("1e15/1e-300", 11, 11, "the result is infinite or not a number"),
        ("1e15*1e15*1e15", 11, 9, "the result 1e+30 is out of range"),
        ("-1000000000000000 - 1", 11, 21, "the result -1000000000000001 is out of range"),
        ("0.5e15 + 0.6e15", 11, 15, "the result 1100000000000000.0 is out of range"),
    ],
)
def test_every_operation_result_is_finite_and_in_range(tmp_path, expr, col, width, what):
    text = f"input image: 1x28x28\nconst a = {expr}\nconv c: 3 filters 3x3\ndropout d: a\n"
    out = rendered(tmp_path, text)
    head = out.splitlines()[0]
    assert head == f"bad.net:2:{col}: error: {what}; numbers are at most 1e15 in size"
    assert out.splitlines()[2] == " " * (4 + col - 1) + "^" + "~" * (width - 1)


def test_nan_and_inf_never_reach_an_option(tmp_path):
    # inf - inf is NaN, which passes every `v < lo` check; the first overflow is reported
    for value in ("1e300*1e300 - 1e300*1e300", "(1e15/1e-300) - (1e15/1e-300)"):
        text = f"input image: 1x28x28\nconv c: 3 filters 3x3\ndropout d: {value}\n"
        with pytest.raises(NetError) as info:
            netdsl.loads(text, "t.net")
        assert info.value.loc is not None and info.value.loc.line == 3
        assert "numbers are at most 1e15" in info.value.message


def test_arithmetic_within_the_bound_is_exact(tmp_path):
    net = load(tmp_path, "const big = 999999999999999\nconst q = big / 3\nconst s = q*3 - big + 4\n"
                         "input image: 1x8x8\nconv c: s filters 1x1\n")
    assert net.layer("c").out_shape == (4, 8, 8)
