"""Warnings: nets that check and train but train badly, or that ignore a setting.

`netdsl check` prints each warning located like an error, with the fix, on stderr and
still exits 0; the example nets get none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.passes.lint import LintWarning, find_warnings, print_warnings, warnings_of

ROOT = Path(__file__).resolve().parent.parent

KERAS = """\
input image: 1x28x28
conv c1: 8 filters 5x5, relu
pool p1: max 2x2
fc f1: 10
softmax prob
loss cross_entropy
"""


def messages(text: str) -> list[str]:
    return [w.message for w in warnings_of(netdsl.loads(text, "t.net"))]


def test_softmax_before_cross_entropy_is_a_located_warning_with_the_fix():
    (w,) = warnings_of(netdsl.loads(KERAS, "t.net"))
    assert w.render() == (
        "t.net:5:1: warning: loss cross_entropy applies softmax itself; remove the softmax "
        "layer 'prob'\n"
        "    softmax prob\n"
        "    ^~~~~~~\n"
        "hint: softmax twice squashes the scores into (0, 1) and training stalls; eval and "
        "predict report probabilities without it"
    )


def test_check_prints_the_warning_and_still_exits_0(tmp_path, capsys):
    path = tmp_path / "keras.net"
    path.write_text(KERAS)
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok")
    assert err.startswith(f"{path}:5:1: warning: loss cross_entropy applies softmax itself")
    assert err.count("warning:") == 1 and "Traceback" not in err


@pytest.mark.parametrize("json", [False, True])
def test_summary_prints_the_warning_on_stderr_only(tmp_path, capsys, json):
    path = tmp_path / "keras.net"
    path.write_text(KERAS)
    assert main(["summary", str(path), *(["--json"] if json else [])]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in out and err.count("warning: loss cross_entropy applies softmax") == 1


def test_train_prints_the_warning_once_even_when_quiet(tmp_path, capsys):
    path = tmp_path / "keras.net"
    path.write_text(KERAS)  # no data: training stops at once, after the warning
    assert main(["train", str(path), "--quiet", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("warning: loss cross_entropy applies softmax") == 1
    assert "no dataset" in err


def test_loading_a_net_prints_nothing(capsys):
    netdsl.loads(KERAS)
    assert capsys.readouterr() == ("", "")


def test_print_warnings_goes_to_the_given_stream(capsys):
    import io

    buf = io.StringIO()
    print_warnings(netdsl.loads(KERAS, "t.net"), buf)
    assert buf.getvalue().startswith("t.net:5:1: warning:") and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "text",
    [
        KERAS.replace("softmax prob\n", ""),  # the fix
        KERAS.replace("cross_entropy", "mse"),  # softmax then mse is Caffe's usual pairing
        KERAS.replace("softmax prob\nloss cross_entropy\n", "softmax prob\n"),  # no loss
        KERAS.replace("fc f1: 10\nsoftmax prob\n", "fc f1: 10, leaky\n"),
        KERAS.replace("fc f1: 10\nsoftmax prob\n", "fc f1: 10, linear\n"),
        KERAS.replace("fc f1: 10\nsoftmax prob\n", "dropout d: 0.5\nfc f1: 10\n"),
    ],
)
def test_right_nets_get_no_warning(text):
    assert messages(text) == []


@pytest.mark.parametrize("path", sorted((ROOT / "nets").glob("*.net")), ids=lambda p: p.name)
def test_the_example_nets_get_no_warning(path):
    assert warnings_of(netdsl.load(path)) == []


def test_softmax_is_found_through_flatten_and_dropout():
    text = KERAS.replace("softmax prob\n", "softmax prob\nflatten fl\ndropout d: 0.5\n")
    assert messages(text) == [
        "loss cross_entropy applies softmax itself; remove the softmax layer 'prob'",
        "dropout 'd' drops class scores right before the loss",
    ]


def test_dropout_right_before_the_loss():
    text = KERAS.replace("softmax prob\n", "dropout d: 0.5\n")
    (w,) = warnings_of(netdsl.loads(text, "t.net"))
    assert w.message == "dropout 'd' drops class scores right before the loss"
    assert w.loc.line == 5


@pytest.mark.parametrize(
    ("layers", "act", "pointed"),
    [
        ("fc f1: 10, sigmoid\n", "sigmoid", "sigmoid"),
        ("fc f1: 10, activation=tanh\n", "tanh", "activation=tanh"),
        ("fc f1: 10, relu\n", "relu", "relu"),
        ("fc f1: 10\nsigmoid s\n", "sigmoid", "sigmoid"),
        ("fc f1: 10\nact a: tanh\n", "tanh", "tanh"),
        ("fc f1: 10, relu\nflatten fl\n", "relu", "relu"),
    ],
)
def test_a_squashing_activation_on_the_class_scores(layers, act, pointed):
    text = KERAS.replace("fc f1: 10\nsoftmax prob\n", layers)
    (w,) = warnings_of(netdsl.loads(text, "t.net"))
    assert f"applies {act} to the class scores before loss cross_entropy" in w.message
    assert w.hint.startswith(f"remove the {act}: ")
    src = w.loc.source_line
    assert src[w.loc.col - 1 :].startswith(pointed)


def test_no_squash_warning_for_mse():
    assert messages(KERAS.replace("fc f1: 10\nsoftmax prob\nloss cross_entropy",
                                  "fc f1: 10, sigmoid\nloss mse")) == []  # fmt: skip


def test_cross_entropy_over_one_score():
    text = KERAS.replace("fc f1: 10\nsoftmax prob\n", "fc f1: 1\n")
    assert messages(text) == [
        "loss cross_entropy over a single class score is always 0: nothing will learn"
    ]


def test_a_warning_inside_a_block_notes_the_block_use():
    text = """\
input image: 1x8x8
block head(n) {
  fc f: n
  softmax prob
}
head h: 10
loss cross_entropy
"""
    (w,) = warnings_of(netdsl.loads(text, "t.net"))
    assert "remove the softmax layer 'h.prob'" in w.message
    assert w.loc.line == 4
    assert [loc.line for _, loc in w.notes] == [6]
    assert "t.net:6:" in w.render()


MNIST_NET = """\
input image: 1x{size}x{size}
fc f: 10
loss cross_entropy
train {{
  data mnist
  {setting}
}}
"""


@pytest.mark.parametrize(
    ("size", "setting", "expected"),
    [
        (28, "augment crop(28)", "crop() has no effect: mnist images are 28x28 and the input "
                                 "28x28, so every crop is the whole image"),
        (32, "augment crop(32), flip", "crop() has no effect: mnist images are 28x28 and the "
                                       "input 32x32, so every crop is the whole image"),
        (28, "test_crops 10", "test_crops 10 has no effect: mnist images are 28x28 and the "
                              "input 28x28, so there is one view to test"),
        (28, "augment crop(28, pad=2)", None),
        (24, "augment crop(24)", None),
        (24, "test_crops 10", None),
    ],
)  # fmt: skip
def test_crops_with_nothing_to_crop(size, setting, expected):
    ws = warnings_of(netdsl.loads(MNIST_NET.format(size=size, setting=setting), "t.net"))
    assert [w.message for w in ws] == ([expected] if expected else [])
    if expected:
        assert ws[0].loc.line == 6


def test_find_warnings_is_the_pass_result():
    net = netdsl.loads(KERAS, "t.net")
    assert find_warnings(net) == warnings_of(net)
    assert all(isinstance(w, LintWarning) for w in warnings_of(net))
