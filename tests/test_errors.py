# The pinned diagnostics are as wide as the messages they pin:
# ruff: noqa: E501
"""Every user mistake renders as a located compiler diagnostic; these pin the exact text.

Each case writes a bad `.net` file to tmp_path/bad.net and checks the whole rendered
error (``file:line:col: error: message``, the source line, the caret, notes, hint),
then that the CLI prints exactly that on stderr, exits 2 and shows no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.errors import NetError

ROOT = Path(__file__).resolve().parent.parent


def write_bad(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.net"
    path.write_text(text, encoding="utf-8")
    return path


def rendered_error(tmp_path: Path, text: str) -> str:
    """The rendered NetError for `text`, with the tmp path shown as plain `bad.net`."""
    path = write_bad(tmp_path, text)
    with pytest.raises(NetError) as info:
        netdsl.load(str(path))
    return info.value.render().replace(str(path), "bad.net")


CASES = [
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5 $
""",
        """\
bad.net:2:24: error: unexpected character '$'
    conv c1: 6 filters 5x5 $
                           ^
""",
        id="syntax-unexpected-character",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, init 'he'
""",
        """\
bad.net:2:30: error: unexpected character '''
    conv c1: 6 filters 5x5, init 'he'
                                 ^
hint: strings use double quotes: "like this"
""",
        id="syntax-single-quotes",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1 c2: 6 filters 5x5
""",
        """\
bad.net:2:11: error: unexpected ':'; expected '(', '*', '+', ',', '-', '/', ...
    conv c1 c2: 6 filters 5x5
              ^
hint: a layer reads `TYPE NAME: args`; only one name before ':'
""",
        id="syntax-two-names-before-colon",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5)
""",
        """\
bad.net:2:23: error: unexpected ')'; expected '(', ',', '-', '[', a "string", a name, ...
    conv c1: 6 filters 5x5)
                          ^
""",
        id="syntax-unexpected-paren",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
""",
        """\
bad.net:3:24: error: unexpected end of file; a '{' is not closed
      conv x: c filters 3x3
                           ^
bad.net:2:12: note: '{' opened here
    block b(c) {
               ^
hint: every block, repeat and train section ends with '}' on its own line
""",
        id="syntax-unclosed-brace",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, init gaussian(std=0.01
""",
        """\
bad.net:2:47: error: unexpected end of file; a '(' is not closed
    conv c1: 6 filters 5x5, init gaussian(std=0.01
                                                  ^
bad.net:2:38: note: '(' opened here
    conv c1: 6 filters 5x5, init gaussian(std=0.01
                                         ^
""",
        id="syntax-unclosed-paren",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5,
""",
        """\
bad.net:2:24: error: unexpected end of file; expected '(', '-', '[', a "string", a name, a number, ...
    conv c1: 6 filters 5x5,
                           ^
hint: a line that ends with ',' continues on the next line
""",
        id="syntax-trailing-comma-at-end",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  batch 4 }
""",
        """\
bad.net:4:11: error: '}' goes on its own line
      batch 4 }
              ^
hint: end the line before the '}'
""",
        id="syntax-brace-after-statement",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
} conv y: 3 filters 3x3
""",
        """\
bad.net:4:3: error: unexpected 'conv'; expected end of file, end of line
    } conv y: 3 filters 3x3
      ^~~~
hint: '}' goes on its own line
""",
        id="syntax-statement-after-brace",
    ),
    pytest.param(
        """\
input image: 1x28x28
repeat 2 {
  relu r }
}
""",
        """\
bad.net:4:1: error: unexpected '}'; expected 'block', 'const', 'gpus', 'include', 'network', 'repeat', ...
    }
    ^
hint: no block, repeat or train section is open here
""",
        id="syntax-brace-closes-nothing",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) { conv x: c filters 3x3
}
""",
        """\
bad.net:2:14: error: unexpected 'conv'; expected end of line
    block b(c) { conv x: c filters 3x3
                 ^~~~
hint: '{' must end the line it is on
""",
        id="syntax-open-brace-not-last",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv 6 filters 5x5
""",
        """\
bad.net:2:6: error: unexpected '6'; expected '(', ':', a name, end of file, end of line
    conv 6 filters 5x5
         ^
hint: a layer reads `TYPE NAME: args`, or `TYPE: args` without a name
""",
        id="syntax-missing-colon-unnamed",
    ),
    pytest.param(
        """\
input image: 1x28x28
const w 64
""",
        """\
bad.net:2:9: error: unexpected '64'; expected '='
    const w 64
            ^~
""",
        id="syntax-missing-equals-const",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, stride 2.5
""",
        """\
bad.net:2:32: error: 'stride' expects a whole number or a size like 3x3, found number 2.5
    conv c1: 6 filters 5x5, stride 2.5
                                   ^~~
""",
        id="bad-number-fractional-stride",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6.5 filters 5x5
""",
        """\
bad.net:2:10: error: 'filters' expects a whole number, found number 6.5
    conv c1: 6.5 filters 5x5
             ^~~
""",
        id="bad-number-fractional-filters",
    ),
    pytest.param(
        """\
input image: 1x28x28
cnov c1: 6 filters 5x5
""",
        """\
bad.net:2:1: error: unknown layer type 'cnov'
    cnov c1: 6 filters 5x5
    ^~~~
hint: did you mean 'conv'?
""",
        id="unknown-layer-type",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, strid 2
""",
        """\
bad.net:2:25: error: unknown option 'strid' for conv
    conv c1: 6 filters 5x5, strid 2
                            ^~~~~
hint: did you mean 'stride'?
""",
        id="unknown-option",
    ),
    pytest.param(
        """\
input image: 1x28x28
pool p1: mx 2x2
""",
        """\
bad.net:2:10: error: unknown option 'mx' for pool
    pool p1: mx 2x2
             ^~
hint: did you mean 'max'?
""",
        id="unknown-pool-mode",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  batchsize 4
}
""",
        """\
bad.net:4:3: error: unknown train setting 'batchsize'
      batchsize 4
      ^~~~~~~~~
hint: did you mean 'batch'?
""",
        id="unknown-train-setting",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10, activation relux
""",
        """\
bad.net:2:22: error: unknown activation 'relux'
    fc f: 10, activation relux
                         ^~~~~
hint: did you mean 'relu'?
""",
        id="unknown-activation",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 5x5
""",
        """\
bad.net:2:1: error: conv needs a number of filters
    conv c1: 5x5
    ^~~~
hint: e.g. conv c1: 6 filters 5x5
""",
        id="missing-filters",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters
""",
        """\
bad.net:2:1: error: conv needs a kernel size
    conv c1: 6 filters
    ^~~~
hint: e.g. conv c1: 6 filters 5x5
""",
        id="missing-kernel",
    ),
    pytest.param(
        """\
input image: 1x28x28
pool p1: 2x2
""",
        """\
bad.net:2:1: error: pool needs a mode: max, avg or sum
    pool p1: 2x2
    ^~~~
hint: e.g. pool p1: max 2x2, stride 2
""",
        id="missing-pool-mode",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f1: relu
""",
        """\
bad.net:2:1: error: fc needs a number of outputs
    fc f1: relu
    ^~
hint: e.g. fc f1: 120, relu
""",
        id="missing-fc-outputs",
    ),
    pytest.param(
        """\
input image
fc f: 10
""",
        """\
bad.net:1:1: error: input needs a shape CxHxW
    input image
    ^~~~~
hint: e.g. input image: 1x28x28
""",
        id="missing-input-shape",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
loss l
""",
        """\
bad.net:3:1: error: loss needs a kind: cross_entropy or mse
    loss l
    ^~~~
hint: e.g. loss: cross_entropy
""",
        id="missing-loss-kind",
    ),
    pytest.param(
        "",
        """\
error: the file defines no layers
hint: start with: input image: 1x28x28
""",
        id="empty-file",
    ),
    pytest.param(
        """\
# nothing here

""",
        """\
error: the file defines no layers
hint: start with: input image: 1x28x28
""",
        id="only-comments",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, stride -1
""",
        """\
bad.net:2:32: error: 'stride' must be at least 1, got -1
    conv c1: 6 filters 5x5, stride -1
                                   ^~
""",
        id="negative-stride",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, stride 0
""",
        """\
bad.net:2:32: error: 'stride' must be at least 1, got 0
    conv c1: 6 filters 5x5, stride 0
                                   ^
""",
        id="zero-stride",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
dropout d: 1.0
""",
        """\
bad.net:3:12: error: 'p' must be below 1, got 1
    dropout d: 1.0
               ^~~
""",
        id="dropout-p-one",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, pad sme
""",
        """\
bad.net:2:29: error: 'pad' expects a number, a size, 'same' or 'valid', found 'sme'
    conv c1: 6 filters 5x5, pad sme
                                ^~~
hint: did you mean 'same'?
""",
        id="bad-pad-word",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, init gausian(std=0.1)
""",
        """\
bad.net:2:30: error: unknown initialiser 'gausian'
    conv c1: 6 filters 5x5, init gausian(std=0.1)
                                 ^~~~~~~
hint: did you mean 'gaussian'?
""",
        id="bad-init",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  optimizer adamw(lr=0.1)
}
""",
        """\
bad.net:4:13: error: unknown optimizer 'adamw'
      optimizer adamw(lr=0.1)
                ^~~~~
hint: did you mean 'adam'?
""",
        id="unknown-optimizer",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  schedule step(gama=0.5)
}
""",
        """\
bad.net:4:17: error: step() has no parameter 'gama'; it takes step_size, gamma
      schedule step(gama=0.5)
                    ^~~~
hint: did you mean 'gamma'?
""",
        id="unknown-schedule-param",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  schedule multistep(gamma=0.5)
}
""",
        """\
bad.net:4:12: error: multistep() needs 'milestones'
      schedule multistep(gamma=0.5)
               ^~~~~~~~~
hint: write multistep(milestones=...)
""",
        id="schedule-missing-param",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  schedule multistep(milestones=[10, -2])
}
""",
        """\
bad.net:4:38: error: 'milestones' of multistep() must be positive epoch numbers, got -2
      schedule multistep(milestones=[10, -2])
                                         ^~
""",
        id="multistep-negative-milestone",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  schedule exponential(0.5, 2)
}
""",
        """\
bad.net:4:29: error: exponential() takes at most 1 value
      schedule exponential(0.5, 2)
                                ^
""",
        id="schedule-too-many-values",
    ),
    pytest.param(
        """\
gpus 0
input image: 1x28x28
""",
        """\
bad.net:1:1: error: gpus needs a whole number, at least 1
    gpus 0
    ^~~~~~
""",
        id="gpus-zero",
    ),
    pytest.param(
        """\
input image: 1x28x28
repeat -1 {
  relu r
}
""",
        """\
bad.net:2:1: error: repeat needs a whole number of times, at least 0
    repeat -1 {
    ^
""",
        id="repeat-negative",
    ),
    pytest.param(
        """\
input image: 1x28x28
const w = 4
conv c: w/0 filters 3x3
""",
        """\
bad.net:3:9: error: division by zero
    conv c: w/0 filters 3x3
            ^~~
""",
        id="division-by-zero",
    ),
    pytest.param(
        """\
input image: 1x28x28
const width = 4
conv c: 2*widht filters 3x3
""",
        """\
bad.net:3:11: error: unknown constant 'widht' in an expression
    conv c: 2*widht filters 3x3
              ^~~~~
hint: did you mean 'width'?
""",
        id="unknown-constant",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5
conv c1: 6 filters 5x5
""",
        """\
bad.net:3:6: error: layer name 'c1' is used twice
    conv c1: 6 filters 5x5
         ^~
bad.net:2:6: note: first used here
    conv c1: 6 filters 5x5
         ^~
hint: give each layer its own name
""",
        id="duplicate-layer-name",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5, stride 2, stride 1
""",
        """\
bad.net:2:35: error: 'stride' is given twice
    conv c1: 6 filters 5x5, stride 2, stride 1
                                      ^~~~~~
bad.net:2:25: note: 'stride' was first given here
    conv c1: 6 filters 5x5, stride 2, stride 1
                            ^~~~~~
""",
        id="duplicate-option",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
train {
  batch 4
  batch 8
}
""",
        """\
bad.net:5:3: error: train setting 'batch' is given twice
      batch 8
      ^~~~~
bad.net:4:3: note: first given here
      batch 4
      ^~~~~
""",
        id="duplicate-train-setting",
    ),
    pytest.param(
        """\
const w = 4
const w = 5
input image: 1x28x28
""",
        """\
bad.net:2:7: error: constant 'w' is defined twice
    const w = 5
          ^
bad.net:1:7: note: first defined here
    const w = 4
          ^
""",
        id="duplicate-constant",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1(imag): 6 filters 5x5
""",
        """\
bad.net:2:9: error: unknown layer 'imag'
    conv c1(imag): 6 filters 5x5
            ^~~~
hint: did you mean 'image'?
""",
        id="unknown-input-layer",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1(in): 6 filters 5x5
""",
        """\
bad.net:2:9: error: 'in' names a block's input; it only works inside a block
    conv c1(in): 6 filters 5x5
            ^~
""",
        id="in-outside-block",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
}
b b1: 4, 5
""",
        """\
bad.net:5:10: error: block 'b' takes 1 parameter
    b b1: 4, 5
             ^
hint: its parameters: c
""",
        id="block-too-many-args",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
}
b b1: d=4
""",
        """\
bad.net:5:7: error: block 'b' has no parameter 'd'
    b b1: d=4
          ^
hint: its parameters: c
""",
        id="block-unknown-param",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
}
b b1
""",
        """\
bad.net:5:1: error: block 'b' needs parameter 'c'
    b b1
    ^
hint: write b b1: c=...
""",
        id="block-missing-param",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3
}
b b1: relu
""",
        """\
bad.net:5:7: error: block parameter 'c' must be a number, found 'relu'
    b b1: relu
          ^~~~
""",
        id="block-param-not-number",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  b inner: c
}
b b1: 4
""",
        """\
bad.net:3:3: error: block 'b' uses itself (recursion)
      b inner: c
      ^
bad.net:5:1: note: in block 'b' used here
    b b1: 4
    ^
""",
        id="block-recursion",
    ),
    pytest.param(
        """\
input image: 1x28x28
block b(c) {
  conv x: c filters 3x3, strid 2
}
b b1: 4
""",
        """\
bad.net:3:26: error: unknown option 'strid' for conv
      conv x: c filters 3x3, strid 2
                             ^~~~~
bad.net:5:1: note: in block 'b' used here
    b b1: 4
    ^
hint: did you mean 'stride'?
""",
        id="error-inside-block",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 6 filters 5x5
add a(c1)
""",
        """\
bad.net:3:1: error: add needs at least 2 inputs, got 1
    add a(c1)
    ^~~
hint: write add a(a, b)
""",
        id="add-one-input",
    ),
    pytest.param(
        """\
input image: 3x227x227
conv conv1: 96 filters 11x11, stride 4
conv conv2: 256 filters 5x5, pad 2
conv conv3: 384 filters 3x3, groups 3
""",
        """\
bad.net:4:30: error: conv3 expects 256 input channels divisible by groups=3
    conv conv3: 384 filters 3x3, groups 3
                                 ^~~~~~
hint: use a groups value that divides 256
""",
        id="groups-vs-channels",
    ),
    pytest.param(
        """\
input image: 3x32x32
conv c1: 64 filters 3x3
conv c2: 100 filters 3x3, groups 8
""",
        """\
bad.net:3:27: error: c2: 100 filters are not divisible by groups=8
    conv c2: 100 filters 3x3, groups 8
                              ^~~~~~
hint: use a number of filters that is a multiple of 8
""",
        id="groups-vs-filters",
    ),
    pytest.param(
        """\
input image: 6x14x14
conv c3: 15 filters 5x5, connect lenet5
""",
        """\
bad.net:2:26: error: c3: the connection table has 16 rows but the layer has 15 filters
    conv c3: 15 filters 5x5, connect lenet5
                             ^~~~~~~
hint: one row per output map
""",
        id="connection-table-rows",
    ),
    pytest.param(
        """\
input image: 1x32x32
conv c1: 4 filters 5x5
conv c3: 16 filters 5x5, connect lenet5
""",
        """\
bad.net:3:26: error: c3: the connection table uses input map 5 but the input has 4 maps (0..3)
    conv c3: 16 filters 5x5, connect lenet5
                             ^~~~~~~
""",
        id="connection-table-maps",
    ),
    pytest.param(
        """\
input image: 1x8x8
conv c1: 4 filters 3x3, stride 2
conv c2: 4 filters 3x3, stride 2
conv c3: 4 filters 3x3, stride 2
""",
        """\
bad.net:4:20: error: c3: kernel 3 is larger than its padded input height 1
    conv c3: 4 filters 3x3, stride 2
                       ^~~
hint: input height is 1; use a smaller kernel or more padding
""",
        id="spatial-size-reaches-zero",
    ),
    pytest.param(
        """\
input image: 1x8x8
conv c1: 4 filters 9x9, pad 0
""",
        """\
bad.net:2:20: error: c1: kernel 9 is larger than its padded input height 8
    conv c1: 4 filters 9x9, pad 0
                       ^~~
hint: input height is 8; use a smaller kernel or more padding
""",
        id="kernel-larger-than-input",
    ),
    pytest.param(
        """\
input image: 1x8x8
conv c1: 4 filters 3x3, dilation 4
""",
        """\
bad.net:2:20: error: c1: kernel 3 (dilated to 9) is larger than its padded input height 8
    conv c1: 4 filters 3x3, dilation 4
                       ^~~
hint: input height is 8; use a smaller kernel or more padding
""",
        id="dilated-kernel-larger-than-input",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c1: 4 filters 3x3
pool p: max 3x3, stride 2
""",
        """\
bad.net:3:1: error: p: output is 12x12 with floor rounding and 13x13 with ceil rounding; say which
    pool p: max 3x3, stride 2
    ^~~~
hint: add `ceil` (Caffe, cuda-convnet) or `floor` (Darknet, PyTorch's default)
""",
        id="pool-floor-ceil-ambiguous",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv a: 4 filters 3x3
conv b(image): 4 filters 5x5
add s(a, b)
""",
        """\
bad.net:4:10: error: s: add operands differ: a is 4x26x26, b is 4x24x24
    add s(a, b)
             ^
hint: add needs equal shapes; project the shortcut with a 1x1 conv
""",
        id="add-shape-mismatch",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv a: 4 filters 3x3
conv b(image): 4 filters 5x5
concat s(a, b)
""",
        """\
bad.net:4:13: error: s: concat operands differ in size: a is 26x26, b is 24x24
    concat s(a, b)
                ^
hint: concat joins channels; heights and widths must match
""",
        id="concat-size-mismatch",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv a: 4 filters 3x3
loss cross_entropy
""",
        """\
bad.net:3:1: error: loss: the loss expects a vector of class scores, got 4x26x26
    loss cross_entropy
    ^~~~
hint: put an fc layer before it
""",
        id="loss-on-non-vector",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc a: 12
loss cross_entropy
train {
  data mnist
}
""",
        """\
bad.net:3:1: error: the loss sees 12 class scores but mnist has 10 classes
    loss cross_entropy
    ^~~~
hint: make the last fc layer 10 wide
""",
        id="loss-size-vs-classes",
    ),
    pytest.param(
        """\
input image: 3x28x28
fc a: 10
loss cross_entropy
train {
  data mnist
}
""",
        """\
bad.net:1:14: error: input is 3x28x28 but mnist images are 1x28x28
    input image: 3x28x28
                 ^~~~~~~
hint: use input image: 1x28x28
""",
        id="input-channels-vs-dataset",
    ),
    pytest.param(
        """\
input image: 1x28x28
lrn n: size 4
""",
        """\
bad.net:2:8: error: lrn size must be odd (a window centred on each map), got 4
    lrn n: size 4
           ^~~~
""",
        id="lrn-even-size",
    ),
    pytest.param(
        """\
input image: 1x28x28
conv c: 6 filters 3x3
maxout m: 4 pieces
""",
        """\
bad.net:3:11: error: m: 6 input channels are not divisible into 4 pieces
    maxout m: 4 pieces
              ^
""",
        id="maxout-divisibility",
    ),
    pytest.param(
        """\
include "missing.net"
input image: 1x28x28
""",
        """\
bad.net:1:9: error: cannot include "missing.net": no such file
    include "missing.net"
            ^~~~~~~~~~~~~
""",
        id="include-missing-file",
    ),
    pytest.param(
        """\
input image: 1x28x28
fc f: 10
loss cross_entropy
fc g: 10
""",
        """\
bad.net:4:1: error: layer 'g' comes after the loss
    fc g: 10
    ^~
hint: the loss must be the last layer
""",
        id="layer-after-loss",
    ),
]


@pytest.mark.parametrize(("source", "expected"), CASES)
def test_error_text(tmp_path, source, expected):
    assert rendered_error(tmp_path, source) + "\n" == expected


@pytest.mark.parametrize(("source", "expected"), CASES)
def test_cli_check_prints_the_error_and_exits_2(tmp_path, capsys, source, expected):
    path = write_bad(tmp_path, source)
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.replace(str(path), "bad.net") == expected
    assert "Traceback" not in err


def test_at_least_forty_distinct_cases():
    sources = [p.values[0] for p in CASES]
    assert len(CASES) >= 40
    assert len(set(sources)) == len(sources)
    assert len({p.id for p in CASES}) == len(CASES)


def test_cli_summary_and_graph_report_the_same_error(tmp_path, capsys):
    source, expected = CASES[0].values
    path = write_bad(tmp_path, source)
    for command in (["summary", str(path)], ["summary", "--json", str(path)], ["graph", str(path)]):
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.replace(str(path), "bad.net") == expected


def test_cli_check_reports_every_bad_file_and_still_checks_the_good_ones(tmp_path, capsys):
    bad = write_bad(tmp_path, "input image: 1x28x28\ncnov c1: 6 filters 5x5\n")
    good = ROOT / "nets" / "lenet5.net"
    code = main(["check", str(bad), str(good)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.startswith(f"{good}: ok  lenet5: ")
    assert err.replace(str(bad), "bad.net") == (
        "bad.net:2:1: error: unknown layer type 'cnov'\n"
        "    cnov c1: 6 filters 5x5\n"
        "    ^~~~\n"
        "hint: did you mean 'conv'?\n"
    )


def test_missing_file_has_no_location(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short path: a long one is shortened in messages
    missing = Path("nope.net")
    assert main(["check", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {missing}: no such file\n"


def test_include_error_points_into_the_included_file(tmp_path):
    (tmp_path / "part.net").write_text("conv c1: 6 filters 5x5, strid 2\n")
    text = rendered_error(tmp_path, 'input image: 1x28x28\ninclude "part.net"\n')
    assert text.replace(str(tmp_path / "part.net"), "part.net") == (
        "part.net:1:25: error: unknown option 'strid' for conv\n"
        "    conv c1: 6 filters 5x5, strid 2\n"
        "                            ^~~~~\n"
        "bad.net:2:9: note: included from here\n"
        '    include "part.net"\n'
        "            ^~~~~~~~~~\n"
        "hint: did you mean 'stride'?"
    )


def test_debug_flag_raises_instead_of_printing(tmp_path):
    path = write_bad(tmp_path, "input image: 1x28x28\ncnov c1: 6 filters 5x5\n")
    with pytest.raises(NetError, match="unknown layer type 'cnov'"):
        main(["--debug", "check", str(path)])


def test_debug_flag_shows_a_traceback_in_a_real_process(tmp_path):
    path = write_bad(tmp_path, "input image: 1x28x28\ncnov c1: 6 filters 5x5\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run(
        [sys.executable, "-m", "netdsl", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    assert "error: unknown layer type 'cnov'" in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "netdsl", "--debug", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "NetError" in debug.stderr
