# The pinned diagnostics are as wide as the messages they pin:
# ruff: noqa: E501
"""Hostile or mistaken input to the reader and parser: every case ends in a located
NetError (or a clean load), never a traceback or a hang.

Classes (issue 11): number literals out of bounds; nesting and operator chains deeper
than the language's limit; files that are not readable .net text (too large, binary,
invalid UTF-8, a byte-order mark, a directory, a bad name, a symlink loop); unprintable
characters in messages; caret positions after tabs and wide characters; unclosed
brackets pointing at their opener; empty, comment-only, CRLF and unterminated files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import netdsl
from netdsl import parse
from netdsl.cli import main
from netdsl.errors import Location, NetError, describe_char, shorten
from netdsl.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NESTING, MAX_NUMBER_CHARS
from netdsl.parse import parse_source
from netdsl.source import Source

BASE = "input image: 1x28x28\n"


def rendered(text: str) -> str:
    """The rendered NetError of loading `text` as bad.net."""
    with pytest.raises(NetError) as info:
        netdsl.loads(text, "bad.net")
    return info.value.render()


def rendered_file(path: Path) -> str:
    """The rendered NetError of loading the file at `path`, with its folder shown as ./"""
    with pytest.raises(NetError) as info:
        netdsl.load(path)
    return info.value.render().replace(str(path.parent), ".")


def check_cli(path: Path | str, capsys) -> str:
    """`netdsl check path` exits 2 with a message and no traceback; returns stderr."""
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- number literals


def test_a_literal_of_thousands_of_digits_is_too_long():
    text = rendered(BASE + "conv c1: " + "9" * 5000 + " filters 5x5\n")
    assert text.splitlines()[0] == (
        "bad.net:2:10: error: number 9999999999...9999999999 is too long "
        f"(5000 characters; at most {MAX_NUMBER_CHARS})"
    )


def test_a_literal_is_bounded_in_length_even_when_its_value_is_small():
    zeros = "0" * MAX_NUMBER_CHARS + "1"
    text = rendered(BASE + f"conv c1: {zeros} filters 5x5\n")
    assert "is too long (65 characters; at most 64)" in text.splitlines()[0]


@pytest.mark.parametrize(
    ("literal", "col"),
    [("1e400", 10), ("1E16", 10), ("10000000000000001", 10), ("1.5e300", 10)],
)
def test_a_literal_beyond_the_largest_number_is_an_error_at_the_literal(literal, col):
    assert rendered(BASE + f"conv c1: {literal} filters 5x5\n") == (
        f"bad.net:2:{col}: error: number {literal} is too large (at most 1e15)\n"
        f"    conv c1: {literal} filters 5x5\n"
        f"             ^{'~' * (len(literal) - 1)}"
    )


def test_a_size_with_a_huge_side_is_bounded_too():
    text = rendered(BASE + "conv c1: 6 filters 3x" + "9" * 70 + "\n")
    assert text.splitlines()[0].startswith(
        "bad.net:2:20: error: number 9999999999...9999999999 is too long"
    )
    text = rendered(BASE + "conv c1: 6 filters 3x" + "9" * 20 + "\n")
    assert (
        text.splitlines()[0]
        == "bad.net:2:20: error: number 99999999999999999999 is too large (at most 1e15)"
    )


def test_numbers_at_the_bounds_and_underflowing_ones_are_read():
    prog = parse_source(
        Source(
            "x.net", "const a = 1e15\nconst b = 1000000000000000\nconst c = 1e-400\nconst d = -0\n"
        )
    )
    values = [s.value for s in prog.stmts]
    assert [values[0].value, values[1].value, values[2].value] == [1e15, 10**15, 0.0]
    assert values[3].operand.value == 0
    net = netdsl.loads(
        BASE + "const tiny = 1e-400\nconst z = -0\nconv c1: 6 filters 5x5, pad z\nfc f: 10\n"
    )
    assert net.layer("c1").attrs["pad"] == (0, 0)


# ---------------------------------------------------------------- depth


TOO_LONG = "expression too long (more than 200 operators in a row)"


@pytest.mark.parametrize(
    ("body", "col", "message"),
    [
        ("+".join(["1"] * 3000), 411, TOO_LONG),  # the 201st '+'
        ("*".join(["1"] * 3000), 411, TOO_LONG),
        ("-" * 3000 + "1", 210, TOO_LONG),  # the 201st '-'
        ("(" * 2000 + "1" + ")" * 2000, 210, "brackets nested too deeply (more than 200 levels)"),
    ],
    ids=["sum", "product", "minus", "parens"],
)
def test_long_chains_and_deep_brackets_are_errors_where_the_limit_is_crossed(body, col, message):
    lines = rendered(BASE + f"conv c1: {body} filters 5x5\n").splitlines()
    assert lines[0] == f"bad.net:2:{col}: error: {message}"


@pytest.mark.parametrize("kind", ["list", "call"])
def test_deep_lists_and_calls_are_located_errors(kind):
    wrap = {"list": ("[", "]"), "call": ("f(", ")")}[kind]
    line = "conv c1: 6 filters 5x5, init " + wrap[0] * 2000 + "1" + wrap[1] * 2000
    text = rendered(BASE + line + "\n")
    col = len("conv c1: 6 filters 5x5, init ") + (MAX_DEPTH + 1) * len(wrap[0])  # the 201st
    assert (
        text.splitlines()[0]
        == f"bad.net:2:{col}: error: brackets nested too deeply (more than 200 levels)"
    )


def test_nested_repeats_count_towards_the_depth():
    text = rendered(BASE + "repeat 1 {\n" * 201 + "relu\n" + "}\n" * 201)
    assert (
        text.splitlines()[0]
        == "bad.net:202:10: error: brackets nested too deeply (more than 200 levels)"
    )


def test_depth_of_statements_brackets_and_operators_adds_up():
    # 150 repeats and a 60-term sum: each within its own limit, together too deep
    sum60 = "+".join(["1"] * 60)
    text = rendered(
        BASE + "repeat 1 {\n" * 150 + f"conv: {sum60} filters 3x3, pad 1\n" + "}\n" * 150
    )
    assert (
        text.splitlines()[0]
        == "bad.net:152:7: error: expression nested too deeply (more than 200 levels)"
    )
    assert (
        text.splitlines()[-1]
        == "hint: every operator in a chain adds a level; split a long sum with const"
    )


def _with_frames_in_use(n: int, fn):
    """Call fn with n extra Python frames on the stack (as a caller deep in a program has)."""
    return fn() if n == 0 else _with_frames_in_use(n - 1, fn)


@pytest.mark.parametrize(
    "text",
    [
        BASE
        + "const a = "
        + "+".join(["1"] * (MAX_DEPTH + 1))
        + "\nconv c1: a - 199 filters 5x5\n",
        BASE + "const a = " + "-" * MAX_DEPTH + "2\nconv c1: 6 filters 5x5, pad a + 2\n",
        BASE + "const a = " + "(1+" * (MAX_DEPTH - 2) + "1" + ")" * (MAX_DEPTH - 2) + "\nfc f: a\n",
        # the parser takes repeats MAX_DEPTH deep; the expander takes MAX_NESTING of them
        BASE + "repeat 1 {\n" * MAX_NESTING + "relu\n" + "}\n" * MAX_NESTING + "fc f: 10\n",
    ],
    ids=["sum", "minus", "right-nested-sum", "repeats"],
)
def test_the_deepest_allowed_input_loads_with_stack_to_spare(text):
    net = _with_frames_in_use(150, lambda: netdsl.loads(text, "ok.net"))
    assert net.layers[0].type == "input" and len(net.layers) >= 2


@pytest.mark.parametrize(
    "value",
    [
        "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1),
        "gaussian(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1),
    ],
    ids=["list", "call"],
)
def test_the_deepest_allowed_values_are_evaluated_without_recursion_error(value):
    text = BASE + f"conv c1: 6 filters 5x5, init {value}\n"
    with pytest.raises(NetError) as info:
        _with_frames_in_use(150, lambda: netdsl.loads(text, "ok.net"))
    assert "nested too deeply" not in info.value.message  # the checker's own complaint


def test_a_file_with_too_many_tokens_stops_early(monkeypatch):
    monkeypatch.setattr(parse, "MAX_TOKENS", 1000)
    text = rendered(BASE + "relu\n" * 600)
    assert (
        text.splitlines()[0]
        == "bad.net:499:5: error: the file is too long (more than 1,000 names, numbers and symbols)"
    )
    assert (
        text.splitlines()[-1]
        == "hint: a net has at most 10,000 layers; repeat and blocks write many layers in a few lines"
    )


# ---------------------------------------------------------------- reading files


def test_dev_zero_is_refused_at_once(capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system")
    err = check_cli("/dev/zero", capsys)
    assert err == "error: /dev/zero: file is larger than 4 MiB; is it a .net file?\n"


def test_a_file_over_the_size_limit_is_refused_and_one_at_it_is_read(tmp_path):
    big = tmp_path / "big.net"
    big.write_bytes(b"#" * MAX_FILE_BYTES + b"\n")
    assert rendered_file(big) == "error: ./big.net: file is larger than 4 MiB; is it a .net file?"
    big.write_bytes(b"#" * (MAX_FILE_BYTES - 1) + b"\n")
    assert (
        rendered_file(big)
        == "error: the file defines no layers\nhint: start with: input image: 1x28x28"
    )


def test_invalid_utf8_is_located_at_the_byte(tmp_path):
    path = tmp_path / "bad.net"
    path.write_bytes(b"input image: 1x28x28\nconv c1: 6\tfilters \xe9 5x5\n")
    assert rendered_file(path) == (
        "./bad.net:2:20: error: byte 0xe9 is not valid UTF-8\n"
        "    conv c1: 6  filters \ufffd 5x5\n"
        "                        ^\n"
        "hint: save the file as UTF-8"
    )


def test_a_binary_file_is_reported_as_one(tmp_path):
    path = tmp_path / "model.net"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00\n\x00")
    assert rendered_file(path) == (
        "./model.net:1:8: error: the file contains a NUL byte; is it a binary file, not a .net file?\n"
        "    <U+007F>ELF<U+0002><U+0001><U+0001><U+0000><U+0000><U+0000>\n"
        "                                       ^~~~~~~~"
    )


def test_a_byte_order_mark_is_accepted_and_does_not_shift_columns(tmp_path, capsys):
    path = tmp_path / "bom.net"
    path.write_bytes(b"\xef\xbb\xbfinput image: 1x28x28\nfc f: 10\n")
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok ")
    path.write_bytes(b"\xef\xbb\xbfinput image: 1x28x28 $\n")
    assert rendered_file(path).splitlines()[:3] == [
        "./bom.net:1:22: error: unexpected character '$'",
        "    input image: 1x28x28 $",
        "                         ^",
    ]
    path.write_bytes(b"\xef\xbb\xbfinput \xff image: 1x28x28\n")
    assert (
        rendered_file(path).splitlines()[0] == "./bom.net:1:7: error: byte 0xff is not valid UTF-8"
    )
    assert netdsl.loads("\ufeff" + BASE + "fc f: 10\n").layers[1].name == "f"


def test_a_directory_is_not_a_net_file(tmp_path, capsys):
    assert check_cli(tmp_path, capsys) == f"error: {tmp_path}: is a directory, not a .net file\n"


def test_a_path_with_a_nul_byte(capsys):
    with pytest.raises(
        NetError, match=r"a<U\+0000>b.net: not a valid file name \(it contains a NUL"
    ):
        netdsl.load("a\0b.net")
    # the command line refuses it before reading: a usage error, exit 2 as well
    with pytest.raises(SystemExit) as e:
        main(["check", "a\0b.net"])
    assert e.value.code == 2 and "a path cannot hold a NUL character" in capsys.readouterr().err


def test_a_very_long_path_is_shortened_in_the_message(tmp_path, capsys):
    err = check_cli("x" * 5000 + ".net", capsys)
    assert err == (
        "error: "
        + "x" * 38
        + "..."
        + "x" * 34
        + ".net (5004 characters): cannot read: file name too long\n"
    )


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_a_symlink_loop(tmp_path, capsys):
    (tmp_path / "a.net").symlink_to(tmp_path / "b.net")
    (tmp_path / "b.net").symlink_to(tmp_path / "a.net")
    err = check_cli(tmp_path / "a.net", capsys)
    assert (
        err
        == f"error: {tmp_path / 'a.net'}: cannot read: too many levels of symbolic links (a symlink loop?)\n"
    )


def test_read_errors_carry_no_location_and_bad_bytes_do(tmp_path):
    """An include adds its own location to the first kind (netdsl/elaborate.py)."""
    with pytest.raises(NetError) as info:
        Source.from_file(tmp_path)
    assert info.value.loc is None
    (tmp_path / "x.net").write_bytes(b"\n\n  \xff\n")
    with pytest.raises(NetError) as info:
        Source.from_file(tmp_path / "x.net")
    assert info.value.loc == Location(str(tmp_path / "x.net"), 3, 3, 1, "  \ufffd")


# ---------------------------------------------------------------- unprintable characters


@pytest.mark.parametrize(
    ("char", "described", "hint"),
    [
        ("\u00a0", "U+00A0 (no-break space)", "replace it with a plain space"),
        ("\u200b", "U+200B (zero width space)", "replace it with a plain space"),
        (
            "\ufeff",
            "U+FEFF (byte order mark)",
            "a byte order mark may only start a file; delete this one",
        ),
        ("\x01", "U+0001 (control character)", "delete it (it is invisible in most editors)"),
        ("\x00", "U+0000 (NUL)", "delete it (it is invisible in most editors)"),
        ("\r", "U+000D (carriage return)", "end lines with \\n or \\r\\n"),
    ],
)
def test_unprintable_characters_are_escaped(char, described, hint):
    assert rendered(BASE + f"conv c1:{char}6 filters 5x5\n") == (
        f"bad.net:2:9: error: unexpected character {described}\n"
        f"    conv c1:<U+{ord(char):04X}>6 filters 5x5\n"
        f"            ^~~~~~~~\n"
        f"hint: {hint}"
    )


def test_describe_char_and_shorten():
    assert describe_char("{") == "'{'"
    assert describe_char("\u0301") == "U+0301 (combining acute accent)"
    assert shorten("ok.net") == "ok.net"
    assert shorten("a\nb") == "a<U+000A>b"


def test_unprintable_characters_inside_an_unexpected_token_are_escaped():
    text = rendered(BASE + 'conv c1: 6 filters 5x5 "a\x01b" (\nrelu\n')
    assert "<U+0001>" in text and "\x01" not in text


# ---------------------------------------------------------------- caret positions


def test_tabs_before_an_error_keep_the_caret_under_it():
    assert rendered(BASE + "\tconv\tc1:\t6 filters 5x5 $\n") == (
        "bad.net:2:25: error: unexpected character '$'\n"
        "        conv    c1: 6 filters 5x5 $\n"
        "                                  ^"
    )


def test_a_tab_inside_the_span_widens_the_caret():
    text = rendered(BASE + "conv c1: 6 filters 5x5, stride 1\t+ 0.5\n").splitlines()
    assert text[0].startswith("bad.net:2:32: error: ")
    assert text[1:3] == [
        "    conv c1: 6 filters 5x5, stride 1    + 0.5",
        "                                   ^~~~~~~~~~",
    ]


def test_wide_characters_before_an_error_take_two_columns():
    assert rendered(BASE + 'conv c1: 6 filters 5x5, init "日本語" $\n').splitlines()[1:] == [
        '    conv c1: 6 filters 5x5, init "日本語" $',
        "                                          ^",
    ]


def test_a_long_line_is_shown_as_a_window_around_the_caret():
    line = "conv c1: 6 filters 5x5, init " + "relu " * 100 + "$ " + "relu " * 100
    text = rendered(BASE + line + "\n").splitlines()
    assert text[0] == "bad.net:2:530: error: unexpected character '$'"
    # 25 columns of context before the caret, 100 in all
    assert text[1] == "    ..." + ("relu " * 100)[-25:] + ("$ " + "relu " * 100)[:75] + "..."
    assert text[2] == "    " + " " * 28 + "^"


def test_a_huge_line_shows_only_the_window_and_a_caret_ends_with_the_line():
    line = "relu " * 400_000
    text = NetError("x", Location("f.net", 1, 1_000_001, 4, line)).render().splitlines()
    assert text[1] == "    ..." + ("relu " * 20)[:100] + "..."
    assert text[2] == "    " + " " * 28 + "^~~~"
    text = NetError("x", Location("f.net", 1, 2, 50, "abc")).render().splitlines()
    assert text[1:] == ["    abc", "     ^~~"]  # not past the end of the line (and one beyond)


# ---------------------------------------------------------------- unclosed brackets


def test_an_unclosed_bracket_at_end_of_file_points_at_its_opener():
    assert rendered(BASE + "conv c1: 6 filters 5x5, init [1,\n  2,\n") == (
        "bad.net:3:5: error: unexpected end of file; a '[' is not closed\n"
        "      2,\n"
        "        ^\n"
        "bad.net:2:30: note: '[' opened here\n"
        "    conv c1: 6 filters 5x5, init [1,\n"
        "                                 ^"
    )


def test_an_unclosed_brace_at_end_of_file_points_at_its_opener():
    assert rendered(BASE + "fc f: 10\ntrain {\n  batch 4\n") == (
        "bad.net:4:10: error: unexpected end of file; a '{' is not closed\n"
        "      batch 4\n"
        "             ^\n"
        "bad.net:3:7: note: '{' opened here\n"
        "    train {\n"
        "          ^\n"
        "hint: every block, repeat and train section ends with '}' on its own line"
    )


def test_a_bracket_left_open_lines_earlier_is_pointed_at():
    assert rendered(BASE + "conv c1: 6 filters 5x5, init gaussian(std=[0.01,\n\nfc f: 10\n") == (
        "bad.net:4:4: error: unexpected 'f'; expected ',', ']'\n"
        "    fc f: 10\n"
        "       ^\n"
        "bad.net:2:43: note: '[' opened here\n"
        "    conv c1: 6 filters 5x5, init gaussian(std=[0.01,\n"
        "                                              ^"
    )


def test_brackets_in_strings_and_comments_are_not_openers():
    text = rendered(BASE + 'conv c1: 6 filters 5x5, init gaussian(std="[(", # [ (\n')
    assert (
        text.splitlines()[0] == "bad.net:2:54: error: unexpected end of file; a '(' is not closed"
    )
    assert text.splitlines()[3] == "bad.net:2:38: note: '(' opened here"
    text = rendered(BASE + "# ( [\nconv c1: 6 filters 5x5, init (\n")
    assert text.splitlines()[3] == "bad.net:3:30: note: '(' opened here"


# ---------------------------------------------------------------- ordinary odd files


@pytest.mark.parametrize(
    "data",
    [b"", b"# only\n# comments\n", b"\n\n\n", b"\xef\xbb\xbf"],
    ids=["empty", "comments", "blank", "bom"],
)
def test_files_without_layers_say_so(tmp_path, capsys, data):
    path = tmp_path / "x.net"
    path.write_bytes(data)
    assert (
        check_cli(path, capsys)
        == "error: the file defines no layers\nhint: start with: input image: 1x28x28\n"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"input image: 1x28x28\r\nfc f: 10\r\n",
        b"input image: 1x28x28\nfc f: 10",
        b"input image: 1x28x28\r\nfc f: 10",
    ],
    ids=["crlf", "no-final-newline", "crlf-no-final-newline"],
)
def test_crlf_and_a_missing_final_newline_load(tmp_path, capsys, data):
    path = tmp_path / "x.net"
    path.write_bytes(data)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok  x: 2 layers")


def test_an_error_in_a_crlf_file_shows_no_carriage_return(tmp_path):
    path = tmp_path / "x.net"
    path.write_bytes(b"input image: 1x28x28\r\nconv c1: 6 filters 5x5 $\r\n")
    assert rendered_file(path) == (
        "./x.net:2:24: error: unexpected character '$'\n"
        "    conv c1: 6 filters 5x5 $\n"
        "                           ^"
    )
