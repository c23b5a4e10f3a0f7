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
    for value in ("1e15*1e15 - 1e15*1e15", "(1e15/1e-300) - (1e15/1e-300)"):
        text = f"input image: 1x28x28\nconv c: 3 filters 3x3\ndropout d: {value}\n"
        with pytest.raises(NetError) as info:
            netdsl.loads(text, "t.net")
        assert info.value.loc is not None and info.value.loc.line == 3
        assert "numbers are at most 1e15" in info.value.message


def test_arithmetic_within_the_bound_is_exact(tmp_path):
    net = load(
        tmp_path,
        "const big = 999999999999999\nconst q = big / 3\nconst s = q*3 - big + 4\n"
        "input image: 1x8x8\nconv c: s filters 1x1\n",
    )
    assert net.layer("c").out_shape == (4, 8, 8)


# ---------------------------------------------------------------- 2. blocks


def test_a_default_that_is_a_word_is_located_at_the_default(tmp_path):
    text = "input image: 1x28x28\nblock b(c, e=relu) {\n  conv x: c filters 3x3\n}\nb b1: 4\n"
    assert rendered(tmp_path, text) == (
        "bad.net:2:14: error: the default of block parameter 'e' must be a number, found 'relu'\n"
        "    block b(c, e=relu) {\n"
        "                 ^~~~\n"
        "bad.net:5:1: note: in block 'b' used here\n"
        "    b b1: 4\n"
        "    ^"
    )


def test_a_default_may_not_use_a_later_parameter(tmp_path):
    text = "input image: 1x28x28\nblock b(d=c, c=1) {\n  conv x: d filters 3x3\n}\nb b1\n"
    assert rendered(tmp_path, text) == (
        "bad.net:2:11: error: the default of 'd' uses parameter 'c', which comes after it\n"
        "    block b(d=c, c=1) {\n"
        "              ^\n"
        "bad.net:5:1: note: in block 'b' used here\n"
        "    b b1\n"
        "    ^\n"
        "hint: a default can use only the parameters before it"
    )


def test_defaults_are_evaluated_in_order_from_earlier_parameters(tmp_path):
    # e's default reads d's default, which reads c; an outer constant `d` is not seen
    net = load(
        tmp_path,
        """\
const d = 100
input image: 1x8x8
block b(c, d=c*2, e=d+1) {
  conv x: e filters 1x1
}
b one: 3
b two: 3, d=1
""",
    )
    assert net.layer("one.x").out_shape == (7, 8, 8)
    assert net.layer("two.x").out_shape == (2, 8, 8)


def test_a_default_overflowing_is_located_in_the_definition(tmp_path):
    text = "input image: 1x28x28\nblock b(c, d=c*c) {\n  conv x: 3 filters 3x3\n}\nb b1: 99999999\n"
    out = rendered(tmp_path, text)
    assert out.startswith("bad.net:2:14: error: the result 9999999800000001 is out of range")
    assert "bad.net:5:1: note: in block 'b' used here" in out


def test_duplicate_parameter_names_are_rejected_at_the_second(tmp_path):
    text = "input image: 1x28x28\nblock b(c, k, c) {\n  conv x: c filters k x k\n}\n"
    assert rendered(tmp_path, text) == (
        "bad.net:2:15: error: block 'b' has two parameters named 'c'\n"
        "    block b(c, k, c) {\n"
        "                  ^\n"
        "bad.net:2:9: note: the first is here\n"
        "    block b(c, k, c) {\n"
        "            ^"
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("norm", " (an alias of lrn)"),
        ("dense", " (an alias of fc)"),
        ("batchnorm", " (an alias of bn)"),
        ("relu", " (an activation)"),
        ("conv", ""),
        ("loss", ""),
    ],
)
def test_a_block_named_like_a_layer_type_or_alias_is_rejected(tmp_path, name, why):
    text = f"input image: 1x8x8\nblock {name}(c) {{\n  conv x: c filters 1x1\n}}\n{name} n: 2\n"
    assert rendered(tmp_path, text) == (
        f"bad.net:2:7: error: block '{name}' has the name of a layer type{why}\n"
        f"    block {name}(c) {{\n"
        f"          ^{'~' * (len(name) - 1)}\n"
        "hint: give the block another name"
    )


@pytest.mark.parametrize("param", ["relu", "conv", "in", "x"])
def test_a_parameter_named_like_a_keyword_is_rejected(tmp_path, param):
    text = f"input image: 1x8x8\nblock b(c, {param}=1) {{\n  conv y: c filters 1x1\n}}\n"
    out = rendered(tmp_path, text)
    assert out.splitlines()[0] == (
        f"bad.net:2:12: error: '{param}' cannot be a parameter name; it is a keyword"
    )


def _nested_blocks(n: int) -> str:
    lines = ["input image: 1x8x8", "block b0(c) {", "  conv x: c filters 1x1", "}"]
    for i in range(1, n):
        lines += [f"block b{i}(c) {{", f"  b{i - 1} u: c", "}"]
    return "\n".join(lines + [f"b{n - 1} top: 2"]) + "\n"


def test_deep_but_not_recursive_nesting_is_not_called_recursion(tmp_path):
    out = rendered(tmp_path, _nested_blocks(40))
    first = out.splitlines()[0]
    assert first == "bad.net:27:3: error: blocks nest more than 32 deep"
    assert "recursion" not in out
    assert out.endswith(
        "hint: the uses: b39 -> b38 -> b37 -> ... -> b8 -> b7; flatten some of the nesting"
    )


def test_nesting_up_to_the_bound_loads(tmp_path):
    net = load(tmp_path, _nested_blocks(32))
    assert net.layers[-1].name == "top" + ".u" * 31 + ".x"


def test_indirect_recursion_names_the_chain(tmp_path):
    text = """\
input image: 1x28x28
block a(c) {
  b x: c
}
block b(c) {
  a y: c
}
a top: 3
"""
    assert rendered(tmp_path, text) == (
        "bad.net:6:3: error: block 'a' uses itself (recursion: a -> b -> a)\n"
        "      a y: c\n"
        "      ^\n"
        "bad.net:3:3: note: in block 'b' used here\n"
        "      b x: c\n"
        "      ^"
    )


def test_deeply_nested_repeats_are_a_located_error(tmp_path):
    n = 150
    text = "input image: 1x8x8\n" + "repeat 1 {\n" * n + "relu r\n" + "}\n" * n
    out = rendered(tmp_path, text)
    assert out.splitlines()[0] == (
        "bad.net:102:1: error: blocks, repeats and includes nest more than 100 deep"
    )


def test_nested_repeats_inside_nested_blocks_never_overflow_the_stack(tmp_path):
    lines = ["input image: 1x8x8", "block b0(c) {", "  relu x", "}"]
    for i in range(1, 30):
        lines += [f"block b{i}(c) {{", *["repeat 1 {"] * 20, f"b{i - 1} u: c", *["}"] * 20, "}"]
    out = rendered(tmp_path, "\n".join(lines + ["b29 top: 1"]) + "\n")
    assert out.splitlines()[:4] == [
        "bad.net:1053:1: error: blocks, repeats and includes nest more than 100 deep",
        "    repeat 1 {",
        "    ^",
        "bad.net:1101:1: note: in block 'b25' used here",
    ]


# ---------------------------------------------------------------- 3. includes


def _include(tmp_path: Path, target: str) -> str:
    return rendered(tmp_path, f'input image: 1x8x8\ninclude "{target}"\n')


def test_include_path_with_a_nul_byte(tmp_path):
    # a NUL byte in a .net file is refused where it stands, before any include is resolved
    out = _include(tmp_path, "a\0b.net")
    assert out.splitlines()[0] == (
        "bad.net:2:11: error: the file contains a NUL byte; is it a binary file, not a .net file?"
    )


def test_include_path_too_long_is_abbreviated(tmp_path):
    out = _include(tmp_path, "x" * 5000 + ".net")
    head = out.splitlines()[0]
    assert head == (
        'bad.net:2:9: error: cannot include "'
        + "x" * 37
        + "..."
        + "x" * 33
        + '.net": the path has 5,004 characters (at most 1,024)'
    )


def test_include_name_too_long_for_the_file_system(tmp_path):
    out = _include(tmp_path, "y" * 300 + ".net")
    assert out.splitlines()[0].endswith('yyyy.net": a name in the path is too long')


def test_include_symlink_loop(tmp_path):
    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    out = _include(tmp_path, "one")
    assert out.splitlines()[0] == 'bad.net:2:9: error: cannot include "one": symbolic links loop'


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (".", "it is a directory"),
        ("/dev/null", "it is not a regular file"),
        ("nowhere/x.net", "no such file"),
    ],
)
def test_include_of_what_is_not_a_file(tmp_path, target, reason):
    out = _include(tmp_path, target)
    assert out.splitlines()[0] == f'bad.net:2:9: error: cannot include "{target}": {reason}'


def test_include_of_a_binary_or_non_utf8_file_points_at_the_include(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin.net").write_bytes("conv c: 3 filters 3x3 # caf\xe9\n".encode("latin-1"))
    for target in ("blob.bin", "latin.net"):
        with pytest.raises(NetError) as info:
            netdsl.loads(f'input image: 1x8x8\ninclude "{target}"\n', str(tmp_path / "m.net"))
        err = info.value
        # either at the include statement, or inside the file with a note at the include
        at_include = err.loc is not None and err.loc.line == 2 and err.loc.file.endswith("m.net")
        noted = any(t == "included from here" and loc.line == 2 for t, loc in err.notes)
        assert at_include or (err.loc is not None and noted), err.render()


def test_an_include_too_large_is_refused_before_reading(tmp_path):
    from netdsl.limits import MAX_FILE_BYTES

    with open(tmp_path / "huge.net", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    out = _include(tmp_path, "huge.net")
    assert out.splitlines()[0] == (
        f'bad.net:2:9: error: cannot include "huge.net": it has {MAX_FILE_BYTES + 1:,} bytes '
        f"(a .net file has at most {MAX_FILE_BYTES:,})"
    )


def test_errors_inside_an_include_keep_their_place_and_note_the_include(tmp_path):
    (tmp_path / "inner.net").write_text("conv c: 3 filters 3x3\ndropout d: 2\n")
    (tmp_path / "mid.net").write_text('include "inner.net"\n')
    out = _include(tmp_path, "mid.net")
    assert out == (
        "inner.net:2:12: error: 'p' must be below 1, got 2\n"
        "    dropout d: 2\n"
        "               ^\n"
        "mid.net:1:9: note: included from here\n"
        '    include "inner.net"\n'
        "            ^~~~~~~~~~~\n"
        "bad.net:2:9: note: included from here\n"
        '    include "mid.net"\n'
        "            ^~~~~~~~~"
    )


def test_a_long_chain_of_includes_is_a_located_error(tmp_path):
    for i in range(150):
        (tmp_path / f"f{i}.net").write_text(f'include "f{i + 1}.net"\n')
    (tmp_path / "f150.net").write_text("relu r\n")
    out = _include(tmp_path, "f0.net")
    assert out.splitlines()[0] == (
        "f99.net:1:9: error: blocks, repeats and includes nest more than 100 deep"
    )
    assert out.splitlines()[3] == "f98.net:1:9: note: included from here"


def test_shape_errors_in_included_layers_note_the_include(tmp_path):
    (tmp_path / "part.net").write_text("conv c: 3 filters 30x30\n")
    out = _include(tmp_path, "part.net")
    assert out.splitlines()[0].startswith("part.net:1:19: error: c: kernel 30 is larger")
    assert "bad.net:2:9: note: included from here" in out


# ---------------------------------------------------------------- 4. positions


def test_two_uses_of_one_block_with_one_name_point_at_the_second_use(tmp_path):
    text = """\
input image: 1x28x28
block blk(c) {
  conv x: c filters 3x3
}
blk a: 1
blk a: 1
"""
    assert rendered(tmp_path, text) == (
        "bad.net:6:5: error: layer name 'a' is used twice\n"
        "    blk a: 1\n"
        "        ^\n"
        "bad.net:5:5: note: first used here\n"
        "    blk a: 1\n"
        "        ^\n"
        "hint: give each layer its own name"
    )


def test_a_use_whose_layers_clash_with_a_written_name_points_at_the_use(tmp_path):
    text = """\
input image: 1x28x28
conv a.x: 3 filters 3x3
block blk(c) {
  conv x: c filters 3x3
}
blk a: 1
"""
    assert rendered(tmp_path, text) == (
        "bad.net:6:5: error: layer name 'a.x' is used twice\n"
        "    blk a: 1\n"
        "        ^\n"
        "bad.net:2:6: note: first used here\n"
        "    conv a.x: 3 filters 3x3\n"
        "         ^~~\n"
        "hint: this use of block 'blk' names its layers 'a.*'; give it another name"
    )


def test_two_uses_making_one_full_name_point_at_the_second_use(tmp_path):
    # `p` makes p.q.y (body `conv q.y`); `p.q` makes p.q.y again (body of `inner`)
    text = """\
input image: 1x28x28
block outer(c) {
  conv q.y: c filters 1x1
}
block inner(c) {
  conv y: c filters 1x1
}
outer p: 2
inner p.q: 2
"""
    assert rendered(tmp_path, text) == (
        "bad.net:9:7: error: layer name 'p.q.y' is used twice\n"
        "    inner p.q: 2\n"
        "          ^~~\n"
        "bad.net:8:7: note: first used here\n"
        "    outer p: 2\n"
        "          ^\n"
        "hint: this use of block 'inner' names its layers 'p.q.*'; give it another name"
    )


def test_a_clash_inside_nested_uses_points_at_the_inner_use_with_its_context(tmp_path):
    text = """\
input image: 1x28x28
block blk(c) {
  conv x: c filters 3x3
}
block outer(c) {
  conv a.x: c filters 1x1
  blk a: c
}
outer o: 2
"""
    assert rendered(tmp_path, text) == (
        "bad.net:7:7: error: layer name 'o.a.x' is used twice\n"
        "      blk a: c\n"
        "          ^\n"
        "bad.net:6:8: note: first used here\n"
        "      conv a.x: c filters 1x1\n"
        "           ^~~\n"
        "bad.net:9:1: note: in block 'outer' used here\n"
        "    outer o: 2\n"
        "    ^~~~~\n"
        "hint: this use of block 'blk' names its layers 'o.a.*'; give it another name"
    )


def test_a_block_input_is_not_confused_with_a_dotted_layer_name(tmp_path):
    # the first layer of use `a` reads the use's input, not the earlier layer `a.x`
    net = load(
        tmp_path,
        """\
input image: 1x8x8
conv a.x: 3 filters 1x1
block blk(c) {
  conv y: c filters 1x1
}
blk a(image): 2
""",
    )
    assert net.layer("a.y").inputs == ["image"]


# ---------------------------------------------------------------- 5. foreign layer names


@pytest.mark.parametrize(
    ("word", "hint"),
    [
        (
            "convolutional",
            "Darknet's convolutional is netdsl's conv: conv c1: 32 filters 3x3, pad 1, leaky",
        ),
        ("connected", "Darknet's connected is netdsl's fc: fc f1: 256, leaky"),
        ("maxpool", "Darknet's maxpool is netdsl's pool: pool p1: max 2x2, stride 2"),
        ("avgpool", "Darknet's avgpool is netdsl's pool: pool gap: avg, global"),
        ("shortcut", "Darknet's shortcut is netdsl's add: add s(a, b), linear"),
        (
            "route",
            "Darknet's route is netdsl's concat: concat r(a, b); to read one earlier layer, name it as the input: conv c(a): ...",
        ),
        ("cost", "Darknet's cost is netdsl's loss: loss mse"),
        (
            "UpSampling2D",
            "Keras's UpSampling2D is netdsl's upsample: upsample u1: 2 (nearest; 2x3 for HxW)",
        ),
        (
            "Upsample",
            "PyTorch's Upsample is netdsl's upsample: upsample u1: 2 (mode nearest, whole factors)",
        ),
        (
            "Convolution",
            "Caffe's Convolution is netdsl's conv: conv c1: 32 filters 3x3, pad 1, relu",
        ),
        ("InnerProduct", "Caffe's InnerProduct is netdsl's fc: fc f1: 500, relu"),
        ("Pooling", "Caffe's Pooling is netdsl's pool: pool p1: max 2x2, stride 2"),
        ("LRN", "Caffe's LRN is netdsl's lrn: lrn n1: size 5, alpha 1e-4, beta 0.75"),
        ("Eltwise", "Caffe's Eltwise is netdsl's add: add s(a, b), relu"),
        ("Concat", "Caffe's Concat is netdsl's concat: concat c(a, b)"),
        (
            "BatchNorm",
            "Caffe's BatchNorm is netdsl's bn: bn b1: relu (bn also learns Caffe's Scale)",
        ),
        (
            "Scale",
            "Caffe's Scale is netdsl's bn: bn b1 (a Caffe BatchNorm + Scale pair is one bn layer)",
        ),
        (
            "SoftmaxWithLoss",
            "Caffe's SoftmaxWithLoss is netdsl's loss: loss cross_entropy (it applies the softmax itself)",
        ),
        (
            "ReLU",
            "Caffe, Keras and PyTorch's ReLU is netdsl's relu: relu r1, or `relu` on the layer before",
        ),
        ("Dropout", "Caffe, Keras and PyTorch's Dropout is netdsl's dropout: dropout d1: 0.5"),
        (
            "Softmax",
            "Caffe, Keras and PyTorch's Softmax is netdsl's softmax: softmax s1 (not before `loss cross_entropy`, which applies it itself)",
        ),
        ("Conv2D", "Keras's Conv2D is netdsl's conv: conv c1: 32 filters 3x3, pad same, relu"),
        ("Dense", "Keras's Dense is netdsl's fc: fc f1: 128, relu"),
        ("MaxPooling2D", "Keras's MaxPooling2D is netdsl's pool: pool p1: max 2x2, stride 2"),
        (
            "AveragePooling2D",
            "Keras's AveragePooling2D is netdsl's pool: pool p1: avg 2x2, stride 2",
        ),
        (
            "GlobalAveragePooling2D",
            "Keras's GlobalAveragePooling2D is netdsl's pool: pool gap: avg, global",
        ),
        ("BatchNormalization", "Keras's BatchNormalization is netdsl's bn: bn b1: relu"),
        (
            "Activation",
            "Keras's Activation is netdsl's act: act a1: relu, or `relu` on the layer before",
        ),
        (
            "Flatten",
            "Caffe, Keras and PyTorch's Flatten is netdsl's flatten: flatten f (fc flattens by itself)",
        ),
        ("Add", "Keras's Add is netdsl's add: add s(a, b)"),
        ("Concatenate", "Keras's Concatenate is netdsl's concat: concat c(a, b)"),
        ("Linear", "PyTorch's Linear is netdsl's fc: fc f1: 128, relu"),
        # other case of a foreign name, and of netdsl's own types
        ("innerproduct", "Caffe's InnerProduct is netdsl's fc: fc f1: 500, relu"),
        ("Conv", "did you mean 'conv'? (names are case-sensitive)"),
        ("RELU", "did you mean 'relu'? (names are case-sensitive)"),
        ("Norm", "did you mean 'norm'? (names are case-sensitive)"),
        # activations netdsl lacks are not near misses of ones it has
        # (elu was one until it became a kind of its own: netdsl/ops/activations/elu.py)
        (
            "selu",
            "selu is not available in netdsl; activations: relu, leaky, tanh, sigmoid, linear, "
            "elu, scaled_tanh",
        ),
        (
            "gelu",
            "gelu is not available in netdsl; activations: relu, leaky, tanh, sigmoid, linear, "
            "elu, scaled_tanh",
        ),
        ("logistic", "Darknet's logistic is netdsl's sigmoid"),
        # a plain misspelling still gets the nearest spelling
        ("cnov", "did you mean 'conv'?"),
    ],
)
def test_foreign_layer_names_get_the_netdsl_spelling(tmp_path, word, hint):
    out = rendered(tmp_path, f"input image: 1x28x28\n{word} l1: 3\n")
    lines = out.splitlines()
    assert lines[0] == f"bad.net:2:1: error: unknown layer type '{word}'"
    assert lines[-1] == f"hint: {hint}"


def test_the_foreign_tables_name_only_real_netdsl_types():
    from netdsl.foreign import ACTIVATION_NAMES, FOREIGN, FOREIGN_ACTIVATIONS
    from netdsl.ops.registry import words
    from netdsl.schema import ACTIVATIONS

    LAYERS = words()  # noqa: N806 - every word that starts a layer statement

    assert tuple(ACTIVATION_NAMES) == tuple(ACTIVATIONS)
    for name, (_, ours, _) in FOREIGN.items():
        assert name not in LAYERS
        assert ours is None or ours in LAYERS, name
    for name, (_, ours) in FOREIGN_ACTIVATIONS.items():
        assert name not in LAYERS
        assert ours is None or ours in ACTIVATIONS, name


def test_a_block_with_a_foreign_name_is_still_the_block(tmp_path):
    net = load(
        tmp_path, "input image: 1x8x8\nblock Conv2D(c) {\n  conv x: c filters 1x1\n}\nConv2D k: 2\n"
    )
    assert net.layers[-1].name == "k.x"


# ---------------------------------------------------------------- 6. repeat 0: optional layers

RESNET_UNIT = """\
input image: 4x8x8
block unit(c, stride=1, proj=0) {
  conv a: c filters 3x3, stride stride, pad 1, relu
  conv b: c filters 3x3, pad 1
  repeat proj {
    conv p(in): c filters 1x1, stride stride
    add s(b, p): relu
  }
  repeat 1 - proj {
    add s(b, in): relu
  }
}
unit u1: 4
unit u2: 8, stride=2, proj=1
unit u3: 8
pool gap: avg, global
fc f: 10
loss cross_entropy
"""


def test_a_parameter_switches_a_projection_shortcut_on_and_off(tmp_path):
    net = load(tmp_path, RESNET_UNIT)
    wiring = {lyr.name: lyr.inputs for lyr in net.layers}
    assert list(wiring) == [
        "image",
        "u1.a",
        "u1.b",
        "u1.s_1",
        "u2.a",
        "u2.b",
        "u2.p_1",
        "u2.s_1",
        "u3.a",
        "u3.b",
        "u3.s_1",
        "gap",
        "f",
        "loss",
    ]
    assert wiring["u1.s_1"] == ["u1.b", "image"]  # identity shortcut
    assert wiring["u2.a"] == ["u1.s_1"]
    assert wiring["u2.p_1"] == ["u1.s_1"]  # projection of the unit's input
    assert wiring["u2.s_1"] == ["u2.b", "u2.p_1"]
    assert wiring["u3.a"] == ["u2.s_1"]  # a use's name means its last layer
    assert wiring["u3.s_1"] == ["u3.b", "u2.s_1"]
    assert net.layer("u2.p_1").out_shape == (8, 4, 4)


def test_a_use_that_makes_no_layers_passes_its_input_through(tmp_path):
    net = load(
        tmp_path,
        """\
input image: 4x8x8
block projection(c, stride, on) {
  repeat on {
    conv p: c filters 1x1, stride stride
  }
}
block unit(c, stride=1, proj=0) {
  conv a: c filters 3x3, stride stride, pad 1, relu
  conv b: c filters 3x3, pad 1
  projection sc(in): c, stride, proj
  add s(b, sc): relu
}
unit u1: 4
unit u2: 8, stride=2, proj=1
conv c1: 2 filters 1x1
projection skip(u1): 2, 1, 0
conv c2: 2 filters 1x1
""",
    )
    wiring = {lyr.name: lyr.inputs for lyr in net.layers}
    assert wiring["u1.s"] == ["u1.b", "image"]
    assert wiring["u2.sc.p_1"] == ["u1.s"]
    assert wiring["u2.s"] == ["u2.b", "u2.sc.p_1"]
    # after a use that made nothing, the chain continues from what it passed on
    assert wiring["c2"] == ["u1.s"]


def test_a_layer_after_an_empty_repeat_chains_to_what_came_before(tmp_path):
    net = load(
        tmp_path,
        """\
const extra = 0
input image: 1x8x8
conv a: 2 filters 1x1
repeat extra {
  conv b: 2 filters 1x1
}
relu r
block blk(n) {
  conv c: 2 filters 1x1
  repeat n {
    relu d
  }
}
blk k: 0
fc f: 3
""",
    )
    wiring = {lyr.name: lyr.inputs for lyr in net.layers}
    assert wiring == {"image": [], "a": ["image"], "r": ["a"], "k.c": ["r"], "f": ["k.c"]}


def test_a_block_with_no_layer_statements_still_defines_no_layers(tmp_path):
    text = "input image: 1x8x8\nblock b(c) {\n  const z = c\n}\nb b1: 2\n"
    assert rendered(tmp_path, text) == (
        "bad.net:2:7: error: block 'b' defines no layers\n    block b(c) {\n          ^"
    )


def test_repeat_counts_below_zero_or_fractional_are_errors(tmp_path):
    for count in ("-1", "0.5", "relu"):
        out = rendered(tmp_path, f"input image: 1x8x8\nrepeat {count} {{\n  relu r\n}}\n")
        assert out.splitlines()[0] == (
            "bad.net:2:1: error: repeat needs a whole number of times, at least 0"
        )


# ---------------------------------------------------------------- 7. size: placement is fast and unchanged


def _ref_own(g: int, c: int, gpus: int) -> tuple[int, int]:
    return -(-g * c // gpus), -(-(g + 1) * c // gpus)


def _ref_needed(layer, gpu: int, gpus: int) -> list[tuple[int, int]]:
    """The per-GPU rule as it was first written (one GPU at a time), as the reference."""
    cin = sum(s[0] for s in layer.in_shapes)
    cout = layer.out_shape[0]
    lo, hi = _ref_own(gpu, cout, gpus)
    if lo >= hi:
        return []
    t = layer.type
    if t in ("fc", "softmax", "loss"):
        return [(0, cin)]
    if t == "conv":
        a = layer.attrs
        if a["connect"] is not None:
            return [(i, i + 1) for i in sorted({i for o in range(lo, hi) for i in a["connect"][o]})]
        g = a["groups"]
        per = cin // g
        return [((lo * g // cout) * per, ((hi - 1) * g // cout + 1) * per)]
    if t == "lrn":
        half = layer.attrs["size"] // 2
        return [(max(0, lo - half), min(cin, hi + half))]
    if t == "flatten":
        hw = layer.in_shapes[0][1] * layer.in_shapes[0][2]
        return [(lo // hw, (hi - 1) // hw + 1)]
    if t == "maxout":
        k = layer.attrs["pieces"]
        return [(lo * k, hi * k)]
    return [(lo, hi)]


def _ref_placement(net) -> tuple[list[int], list[dict[str, int]]]:
    """Exchange per layer and the per-GPU table, computed (GPU by GPU) as they first were."""
    g, owners, exchange = net.gpus, {}, []
    for layer in net.layers:
        if layer.type == "input":
            owners[layer.name] = "all"
            exchange.append(0)
            continue
        gathered = layer.type in ("loss", "softmax")
        received = 0
        if g > 1 and not all(owners[n] == "all" for n in layer.inputs):
            for gpu in (0,) if gathered else range(g):
                held, offset = [], 0
                for name, shape in zip(layer.inputs, layer.in_shapes):
                    c = shape[0]
                    lo, hi = {"all": (0, c), "gpu0": (0, c) if gpu == 0 else (0, 0)}.get(
                        owners[name], None
                    ) or _ref_own(gpu, c, g)
                    held.append((offset + lo, offset + hi))
                    offset += c
                for a, b in _ref_needed(layer, gpu, g):
                    received += (b - a) - sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in held)
        exchange.append(received * layer.in_shapes[0][1] * layer.in_shapes[0][2])
        owners[layer.name] = "gpu0" if gathered else "split"
    table = [{"params": 0, "activations": 0} for _ in range(g)]
    for layer in net.layers:
        elems = layer.out_shape[0] * layer.out_shape[1] * layer.out_shape[2]
        if layer.type == "loss":
            continue
        if layer.type == "input" or len(layer.gpus) == g:
            for d in range(g):
                table[d]["activations"] += elems if layer.type == "input" else elems // g
                table[d]["params"] += layer.n_params // g
            table[0]["params"] += layer.n_params % g if layer.type != "input" else 0
        else:
            table[layer.gpus[0]]["activations"] += elems
            table[layer.gpus[0]]["params"] += layer.n_params
    return exchange, table


def _random_net(seed: int, gpus: int) -> str:
    import random

    rnd = random.Random(seed)
    c = rnd.choice([3, 4, 6, 12])
    lines = [f"gpus {gpus}", f"input image: {c}x6x6"]
    shapes = {"image": c}
    prev = "image"
    for i in range(rnd.randint(4, 12)):
        kind = rnd.choice(
            [
                "conv",
                "gconv",
                "table",
                "lrn",
                "maxout",
                "concat",
                "add",
                "bn",
                "pool",
                "relu",
                "dropout",
            ]
        )
        name = f"l{i}"
        if kind == "conv":
            out = rnd.randint(1, 20)
            lines.append(f"conv {name}({prev}): {out} filters 3x3, pad 1")
        elif kind == "gconv":
            g = rnd.choice([d for d in range(1, shapes[prev] + 1) if shapes[prev] % d == 0])
            out = g * rnd.randint(1, 4)
            lines.append(f"conv {name}({prev}): {out} filters 1x1, groups {g}")
        elif kind == "table":
            out = rnd.randint(1, 6)
            rows = [
                sorted(rnd.sample(range(shapes[prev]), rnd.randint(1, shapes[prev])))
                for _ in range(out)
            ]
            lines.append(f"conv {name}({prev}): {out} filters 1x1, connect {rows}")
        elif kind == "lrn":
            out = shapes[prev]
            lines.append(f"lrn {name}({prev}): size {rnd.choice([1, 3, 5])}")
        elif kind == "maxout":
            ks = [k for k in range(2, shapes[prev] + 1) if shapes[prev] % k == 0]
            if not ks:
                continue
            k = rnd.choice(ks)
            out = shapes[prev] // k
            lines.append(f"maxout {name}({prev}): {k} pieces")
        elif kind == "concat":
            other = rnd.choice(list(shapes))
            out = shapes[prev] + shapes[other]
            lines.append(f"concat {name}({prev}, {other})")
        elif kind == "add":
            same = [n for n, ch in shapes.items() if ch == shapes[prev]]
            out = shapes[prev]
            lines.append(f"add {name}({prev}, {rnd.choice(same)})")
        else:
            out = shapes[prev]
            lines.append(
                {
                    "bn": f"bn {name}({prev})",
                    "relu": f"relu {name}({prev})",
                    "dropout": f"dropout {name}({prev}): 0.5",
                    "pool": f"pool {name}({prev}): max 1x1",
                }[kind]
            )
        shapes[name] = out
        prev = name
    tail = rnd.choice(
        ["flatten fl\nfc f: 5\nloss cross_entropy", "fc f: 7\nsoftmax s", "fc f: 3\nloss mse"]
    )
    return "\n".join(lines + [tail]) + "\n"


@pytest.mark.parametrize("gpus", [2, 3, 5, 8, 13, 64])
def test_placement_equals_the_gpu_by_gpu_rule(gpus):
    for seed in range(25):
        net = netdsl.loads(_random_net(seed * 100 + gpus, gpus), "r.net")
        exchange, table = _ref_placement(net)
        assert [lyr.exchange for lyr in net.layers] == exchange, seed
        from netdsl.passes.placement import per_gpu

        assert per_gpu(net) == table, seed


def test_a_ten_thousand_layer_net_on_1024_gpus_is_checked(tmp_path):
    # ten million (layer, GPU) pairs: placement works on all GPUs at once (once ~21 s)
    lines = [
        "gpus 1024",
        "input image: 1024x4x4",
        "block u(c) {",
        "  conv a: c filters 3x3, pad 1, groups 1024",
        "  bn b: relu",
        "  conv d: c filters 1x1",
        "  add s(d, in)",
        "  lrn n: size 5",
        "}",
    ]
    lines += [f"u u{i}: 1024" for i in range(1999)]
    lines += ["pool gap: avg, global", "fc f: 10", "loss cross_entropy"]
    net = load(tmp_path, "\n".join(lines) + "\n")
    assert len(net.layers) == 9999
    # lrn: each GPU owns one map and reads 2 on each side (fewer at the two ends), 4x4 each
    assert net.layer("u5.n").exchange == (1020 * 4 + 2 * (2 + 3)) * 4 * 4
    # GPU lists are shared, not ten million separate entries
    assert len({id(lyr.gpus) for lyr in net.layers[1:-1]}) == 1


@pytest.mark.parametrize("arg", ["gelu", "activation gelu", "activation=gelu", "selu", "swish"])
def test_a_foreign_activation_as_an_option_gets_the_activation_hint(tmp_path, arg):
    text = rendered(tmp_path, f"input i: 1x8x8\nconv c1: 4 filters 3x3, {arg}\n")
    word = arg.split()[-1].split("=")[-1]
    assert f"hint: {word} is not available in netdsl; activations: relu, leaky" in text
    assert "did you mean 'relu'" not in text
