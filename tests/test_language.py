"""The .net language, feature by feature: each test loads a small net and checks the IR."""

from __future__ import annotations

from pathlib import Path

import pytest

import netdsl
from netdsl.passes.placement import exchange_bytes, per_gpu
from netdsl.schema import LENET5_C3_TABLE

ROOT = Path(__file__).resolve().parent.parent


def load(text: str) -> netdsl.Network:
    return netdsl.loads(text, "test.net")


def names(net) -> list[str]:
    return [lyr.name for lyr in net.layers]


def shapes(net) -> dict[str, tuple[int, int, int]]:
    return {lyr.name: lyr.out_shape for lyr in net.layers}


# ---------------------------------------------------------------- blocks, repeat, constants


def test_block_defaults_and_keyword_arguments():
    net = load("""\
input image: 3x32x32
block unit(c, k=3, s=1) {
  conv conv: c filters k x k, stride s, pad same, relu
}
unit u1: 8
unit u2: 16, k=5
unit u3: 16, s=2, k=1
unit u4: c=4, k=3, s=2
""")
    assert names(net) == ["image", "u1.conv", "u2.conv", "u3.conv", "u4.conv"]
    kernels = {lyr.name: (lyr.attrs["kernel"], lyr.attrs["stride"]) for lyr in net.layers[1:]}
    assert kernels == {
        "u1.conv": ((3, 3), (1, 1)),
        "u2.conv": ((5, 5), (1, 1)),
        "u3.conv": ((1, 1), (2, 2)),
        "u4.conv": ((3, 3), (2, 2)),
    }
    assert shapes(net)["u4.conv"] == (4, 8, 8)
    assert net.layer("u1.conv").attrs["activation"] == ("relu", 0.0)


def test_block_default_may_use_earlier_parameters():
    net = load("""\
input image: 3x8x8
block widen(c, out=c*2) {
  conv conv: out filters 1x1
}
widen w: 5
""")
    assert shapes(net)["w.conv"] == (10, 8, 8)


def test_nested_blocks_prefix_names_and_in_means_the_block_input():
    net = load("""\
input image: 4x8x8
block inner(c) {
  conv a: c filters 3x3, pad 1
  add sum(a, in)
}
block outer(c) {
  inner i1: c
  inner i2: c
}
outer o1: 4
outer o2: 4
""")
    assert names(net) == [
        "image",
        "o1.i1.a",
        "o1.i1.sum",
        "o1.i2.a",
        "o1.i2.sum",
        "o2.i1.a",
        "o2.i1.sum",
        "o2.i2.a",
        "o2.i2.sum",
    ]
    assert net.layer("o1.i1.sum").inputs == ["o1.i1.a", "image"]
    assert net.layer("o1.i2.a").inputs == ["o1.i1.sum"]
    assert net.layer("o1.i2.sum").inputs == ["o1.i2.a", "o1.i1.sum"]
    assert net.layer("o2.i1.a").inputs == ["o1.i2.sum"]


def test_a_block_use_can_be_named_as_an_input():
    net = load("""\
input image: 1x8x8
block b(c) {
  conv x: c filters 3x3, pad 1
  relu y
}
b first: 2
b second(image): 2
concat both(first, second)
""")
    assert net.layer("second.x").inputs == ["image"]
    assert net.layer("both").inputs == ["first.y", "second.y"]
    assert shapes(net)["both"] == (4, 8, 8)


def test_repeat_inside_a_block_numbers_the_names():
    net = netdsl.load(ROOT / "nets" / "vgg16.net")
    assert names(net)[:7] == [
        "image",
        "s1.conv_1",
        "s1.conv_2",
        "s1.pool",
        "s2.conv_1",
        "s2.conv_2",
        "s2.pool",
    ]
    assert [n for n in names(net) if n.startswith("s3.")] == [
        "s3.conv_1",
        "s3.conv_2",
        "s3.conv_3",
        "s3.pool",
    ]
    assert net.layer("s1.conv_2").inputs == ["s1.conv_1"]
    assert net.layer("s2.conv_1").inputs == ["s1.pool"]


def test_repeat_at_top_level_and_references_within_an_iteration():
    net = load("""\
input image: 2x8x8
repeat 3 {
  conv c: 2 filters 3x3, pad 1
  add s(c, image)
}
""")
    assert names(net) == ["image", "c_1", "s_1", "c_2", "s_2", "c_3", "s_3"]
    assert net.layer("s_2").inputs == ["c_2", "image"]
    assert net.layer("c_3").inputs == ["s_2"]


def test_constants_and_arithmetic():
    net = load("""\
const w = 8
const half = w / 2
const odd = w / 3
const k = 3
input image: 1x16x16
conv a: w*2 filters k x k, pad 1
conv b: half filters 1x1
conv c: (w + 2) * 3 - w filters 1x1
conv d: -(-w) filters k x 1, pad 1x0
dropout e: 1 / 4
""")
    assert shapes(net)["a"] == (16, 16, 16)
    assert shapes(net)["b"] == (4, 16, 16)
    assert shapes(net)["c"] == (22, 16, 16)
    assert net.layer("d").attrs["kernel"] == (3, 1)
    assert shapes(net)["d"] == (8, 16, 16)
    assert net.layer("e").attrs["p"] == 0.25
    with pytest.raises(netdsl.NetError, match="'filters' expects a whole number, found number"):
        load("const w = 8\ninput image: 1x8x8\nconv a: w/3 filters 1x1\n")


def test_sizes_from_constants():
    net = load("""\
const k = 5
const h = 12
input image: 3 x h x h
conv a: 2 filters k x k
pool b: max 2 x 2, stride 2
""")
    assert net.input.out_shape == (3, 12, 12)
    assert net.layer("a").attrs["kernel"] == (5, 5)
    assert shapes(net)["b"] == (2, 4, 4)


def test_include_another_file(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "blocks.net").write_text("""\
# shared pieces
const width = 6
block convrelu(c) {
  conv conv: c filters 3x3, pad 1
  relu act
}
""")
    main = tmp_path / "main.net"
    main.write_text("""\
network uses_include
include "parts/blocks.net"
input image: 1x28x28
convrelu a: width
convrelu b: width * 2
fc out: 10
loss cross_entropy
""")
    net = netdsl.load(main)
    assert net.name == "uses_include"
    assert names(net) == ["image", "a.conv", "a.act", "b.conv", "b.act", "out", "loss"]
    assert shapes(net)["b.conv"] == (12, 28, 28)
    assert net.layer("a.conv").loc.file == str(tmp_path / "parts" / "blocks.net")


def test_include_resolves_relative_to_the_including_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.net").write_text('include "two.net"\n')
    (tmp_path / "a" / "two.net").write_text("conv c: 4 filters 3x3\n")
    (tmp_path / "top.net").write_text('input image: 1x8x8\ninclude "a/one.net"\n')
    net = netdsl.load(tmp_path / "top.net")
    assert names(net) == ["image", "c"]


def test_including_a_file_twice_is_an_error(tmp_path):
    (tmp_path / "part.net").write_text("relu r\n")
    (tmp_path / "top.net").write_text(
        'input image: 1x8x8\ninclude "part.net"\ninclude "part.net"\n'
    )
    with pytest.raises(netdsl.NetError, match='"part.net" is included twice'):
        netdsl.load(tmp_path / "top.net")


def test_line_continuation_and_comments_everywhere():
    net = load("""\
# a comment before anything
network cont   # after a statement

input image: 3x8x8   # C x H x W
conv c1: 4 filters 3x3,    # a trailing comma continues the statement
         pad 1,
         # a whole comment line inside the continuation
         relu
conv c2: 3 filters 1x1, connect [[0, 1],   # inside brackets
                                 [2, 3],
                                 [0,
                                  3]]
conv c3: 2 filters 3x3, init gaussian(
    std=0.5,     # inside a call
    mean=0.1)
block b(c) {   # a comment after the brace
  # a comment inside a block
  conv x: c filters 1x1,
          relu
}
b b1: 5
train {
  # a comment inside train
  batch 16      # after a setting
  augment crop(8,
               pad=1),
          flip
}
""")
    assert names(net) == ["image", "c1", "c2", "c3", "b1.x"]
    assert net.layer("c1").attrs["pad"] == (1, 1)
    assert net.layer("c1").attrs["activation"] == ("relu", 0.0)
    assert net.layer("c2").attrs["connect"] == [[0, 1], [2, 3], [0, 3]]
    assert net.layer("c3").attrs["init"] == {"kind": "gaussian", "std": 0.5, "mean": 0.1}
    assert net.train["batch"] == 16
    assert net.train["augment"] == [
        {"kind": "crop", "size": 8, "pad": 1},
        {"kind": "flip", "p": 0.5},
    ]


def test_windows_line_endings_and_no_final_newline():
    net = load("input image: 1x8x8\r\nconv c: 2 filters 3x3\r\nrelu r")
    assert names(net) == ["image", "c", "r"]


def test_unnamed_layers_get_names():
    net = load("""\
input image: 1x28x28
conv: 4 filters 3x3
relu
conv: 4 filters 3x3
leaky: 0.2
pool: max 2x2
dropout: 0.3
fc: 10
loss cross_entropy
""")
    assert names(net) == [
        "image",
        "conv1",
        "relu1",
        "conv2",
        "leaky1",
        "pool1",
        "dropout1",
        "fc1",
        "loss",
    ]
    assert net.layer("conv2").inputs == ["relu1"]
    assert net.layer("dropout1").attrs["p"] == 0.3


def test_layer_statement_forms():
    net = load("""\
input image 1x8x8
conv c1 4 filters 3x3
conv c2(c1): 4 filters 3x3
conv(c1): 2 filters 1x1
""")
    assert net.input.out_shape == (1, 8, 8)
    assert net.layer("c2").inputs == ["c1"]
    assert net.layer("conv1").inputs == ["c1"]


def test_loss_short_and_long_forms():
    short = load("input image: 1x4x4\nfc f: 10\nloss cross_entropy\n")
    assert short.loss.name == "loss"
    assert short.loss.attrs["kind"] == "cross_entropy"
    mse = load("input image: 1x4x4\nfc f: 3\nloss: mse\n")
    assert mse.loss.name == "loss1"
    assert mse.loss.attrs["kind"] == "mse"
    named = load("input image: 1x4x4\nfc f: 3\nloss objective: mse\n")
    assert named.loss.name == "objective"
    keyed = load("input image: 1x4x4\nfc f: 3\nloss l: kind=cross_entropy\n")
    assert keyed.loss.attrs["kind"] == "cross_entropy"


def test_aliases_of_layer_types():
    net = load(
        "input image: 1x8x8\nconvolution c: 2 filters 3x3\nbatchnorm b\n"
        "pooling p: avg 2x2\ndense d: 5\n"
    )
    assert [lyr.type for lyr in net.layers] == ["input", "conv", "bn", "pool", "fc"]


# ---------------------------------------------------------------- layer rules


def test_connection_table_counts_only_its_links():
    net = load("input image: 3x6x6\nconv c: 2 filters 3x3, connect [[0, 1], [2]]\n")
    c = net.layer("c")
    assert c.out_shape == (2, 4, 4)
    assert c.n_params == 3 * 9 + 2  # three input links of 3x3, two biases
    assert c.macs == 3 * 9 * 4 * 4
    assert c.params["weight"] == (2, 3, 3, 3)  # the dense tensor; the table masks it


def test_lenet5_connection_table():
    net = load("input image: 6x14x14\nconv c3: 16 filters 5x5, connect lenet5, bias off\n")
    links = sum(len(r) for r in LENET5_C3_TABLE)
    assert links == 60
    assert net.layer("c3").n_params == 60 * 25
    assert net.layer("c3").macs == 60 * 25 * 10 * 10


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "dilation", "out", "pad_tl"),
    [
        (28, 3, 1, 1, 28, (1, 1)),
        (28, 5, 1, 1, 28, (2, 2)),
        (28, 3, 2, 1, 14, (0, 0)),  # total 1: TensorFlow puts the extra row at the bottom
        (27, 3, 2, 1, 14, (1, 1)),
        (28, 4, 1, 1, 28, (1, 1)),  # even kernel: total 3, one row on top and two below
        (28, 4, 2, 1, 14, (1, 1)),
        (28, 3, 1, 2, 28, (2, 2)),
        (7, 1, 2, 1, 4, (0, 0)),
    ],
)
def test_same_padding(size, kernel, stride, dilation, out, pad_tl):
    net = load(
        f"input image: 1x{size}x{size}\nconv c: 2 filters {kernel}x{kernel}, "
        f"stride {stride}, dilation {dilation}, pad same\n"
    )
    c = net.layer("c")
    assert c.out_shape == (2, out, out)
    assert c.attrs["pad_tl"] == pad_tl
    assert out == -(-size // stride)  # 'same' means ceil(size / stride)


def test_dilation():
    net = load(
        "input image: 1x28x28\nconv c: 2 filters 3x3, dilation 2\n"
        "conv d: 2 filters 3x3, dilation 2x1, pad 2x1\n"
    )
    assert shapes(net)["c"] == (2, 24, 24)  # a 3x3 kernel dilated by 2 spans 5x5
    assert shapes(net)["d"] == (2, 24, 24)
    assert net.layer("c").rf == (5, 1)
    assert net.layer("c").n_params == 2 * 9 + 2


def test_ceil_and_floor_pooling():
    net = load(
        "input image: 1x26x26\npool f(image): max 3x3, stride 2, floor\n"
        "pool c(image): max 3x3, stride 2, ceil\npool e(image): max 2x2, stride 2\n"
    )
    assert shapes(net)["f"] == (1, 12, 12)
    assert shapes(net)["c"] == (1, 13, 13)
    assert shapes(net)["e"] == (1, 13, 13)  # both roundings agree: no need to say
    assert net.layer("c").attrs["round"] == "ceil"


def test_ceil_pooling_never_starts_a_window_in_the_padding():
    # Caffe's rule: on 5 rows with pad 1, ceil((5 + 2 - 2) / 2) + 1 = 4 windows, but the
    # fourth would start in the bottom padding row, so it is dropped
    net = load("input image: 1x5x5\npool p: max 2x2, stride 2, pad 1, ceil\n")
    assert shapes(net)["p"] == (1, 3, 3)
    # on 6 rows the fourth window starts on the last image row: it stays
    net = load("input image: 1x6x6\npool p: max 2x2, stride 2, pad 1, ceil\n")
    assert shapes(net)["p"] == (1, 4, 4)


def test_global_average_pooling():
    net = load("input image: 7x5x9\npool g: avg, global\n")
    g = net.layer("g")
    assert g.out_shape == (7, 1, 1)
    assert g.attrs["kernel"] == (5, 9)
    assert g.attrs["mode"] == "avg"


def test_maxout():
    net = load("input image: 1x8x8\nconv c: 6 filters 3x3\nmaxout m: 3 pieces\nmaxout n: 2\n")
    assert shapes(net)["m"] == (2, 6, 6)
    assert shapes(net)["n"] == (1, 6, 6)
    assert net.layer("m").n_params == 0


def test_concat_sums_channels_and_add_keeps_the_shape():
    net = load("""\
input image: 3x16x16
conv a: 4 filters 3x3, pad 1
conv b(image): 6 filters 5x5, pad 2
conv c(image): 2 filters 1x1
concat j(a, b, c)
conv d(j): 12 filters 1x1
add s(d, j, j): relu
""")
    assert shapes(net)["j"] == (12, 16, 16)
    assert net.layer("j").inputs == ["a", "b", "c"]
    assert shapes(net)["s"] == (12, 16, 16)
    assert net.layer("s").attrs["activation"] == ("relu", 0.0)
    assert net.layer("s").n_params == 0


def test_standalone_activations():
    net = load("""\
input image: 1x4x4
relu a
leaky b: 0.2
leaky c
tanh d
sigmoid e
linear f
act g: leaky(0.3)
act h: activation sigmoid
""")
    acts = {lyr.name: lyr.attrs["activation"] for lyr in net.layers[1:]}
    assert acts == {
        "a": ("relu", 0.0),
        "b": ("leaky", 0.2),
        "c": ("leaky", 0.01),
        "d": ("tanh", 0.0),
        "e": ("sigmoid", 0.0),
        "f": ("linear", 0.0),
        "g": ("leaky", 0.3),
        "h": ("sigmoid", 0.0),
    }
    assert {lyr.type for lyr in net.layers[1:]} == {"act"}


def test_fused_activations_on_learned_layers():
    net = load(
        "input image: 1x8x8\nconv c: 2 filters 3x3, leaky 0.2\nfc f: 4, leaky(0.3)\n"
        "fc g: 4, tanh\nfc h: 4\n"
    )
    acts = {lyr.name: lyr.attrs["activation"] for lyr in net.layers[1:]}
    assert acts == {
        "c": ("leaky", 0.2),
        "f": ("leaky", 0.3),
        "g": ("tanh", 0.0),
        "h": ("linear", 0.0),
    }


def test_fc_flattens_and_counts():
    net = load("input image: 3x4x5\nfc f: 7\nfc g: 2, bias off\nflatten h\n")
    assert net.layer("f").n_params == 3 * 4 * 5 * 7 + 7
    assert net.layer("f").macs == 3 * 4 * 5 * 7
    assert net.layer("g").n_params == 7 * 2
    assert shapes(net)["h"] == (2, 1, 1)


def test_batch_norm_and_lrn():
    net = load("input image: 4x8x8\nbn b: relu\nlrn n: size 3, k 1, alpha 1e-4, beta 0.75\n")
    b = net.layer("b")
    assert b.n_params == 8 and b.state == {"running_mean": (4,), "running_var": (4,)}
    assert net.layer("n").attrs == {"size": 3, "k": 1.0, "alpha": 1e-4, "beta": 0.75}


def test_subsample_layers():
    net = load("input image: 6x28x28\nsubsample s: 2x2, tanh\n")
    assert shapes(net)["s"] == (6, 14, 14)
    assert net.layer("s").n_params == 12


def test_receptive_fields():
    net = load(
        "input image: 1x32x32\nconv a: 2 filters 3x3\npool b: max 2x2, stride 2\n"
        "conv c: 2 filters 3x3\n"
    )
    assert [lyr.rf for lyr in net.layers] == [(1, 1), (3, 1), (4, 2), (8, 2)]


# ---------------------------------------------------------------- the train section


def test_train_defaults():
    t = load("input image: 1x8x8\nfc f: 10\n").train
    assert t["batch"] == 64
    assert t["epochs"] == 1
    assert t["seed"] == 0
    assert t["optimizer"] == {
        "kind": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    }
    assert t["schedule"] == {"kind": "constant"}
    assert t["init"] == {"weight": {"kind": "he"}, "bias": {"kind": "constant", "value": 0.0}}
    assert t["augment"] == []
    assert t["normalize"] is None
    assert t["test_crops"] == 1


def test_optimizer_defaults_are_filled_in():
    t = load("input image: 1x8x8\nfc f: 10\ntrain {\n  optimizer adam(lr=0.002)\n}\n").train
    assert t["optimizer"] == {
        "kind": "adam",
        "lr": 0.002,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    t = load(
        "input image: 1x8x8\nfc f: 10\ntrain {\n  optimizer sgd(0.1, 0.9, nesterov=true)\n}\n"
    ).train
    assert t["optimizer"] == {
        "kind": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": True,
    }


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("constant", {"kind": "constant"}),
        ("step(step_size=30)", {"kind": "step", "step_size": 30, "gamma": 0.1}),
        ("step(10, 0.5)", {"kind": "step", "step_size": 10, "gamma": 0.5}),
        (
            "multistep(milestones=[20, 25], gamma=0.2)",
            {"kind": "multistep", "milestones": [20, 25], "gamma": 0.2},
        ),
        ("exponential(gamma=0.95)", {"kind": "exponential", "gamma": 0.95}),
        ("poly", {"kind": "poly", "power": 1.0}),
        ("poly(power=2)", {"kind": "poly", "power": 2}),
        ("cosine", {"kind": "cosine", "min_lr": 0.0}),
        (
            "plateau(factor=0.1)",
            {"kind": "plateau", "factor": 0.1, "patience": 1, "threshold": 0.0, "min_lr": 0.0},
        ),
    ],
)
def test_schedule_kinds(written, value):
    t = load(f"input image: 1x8x8\nfc f: 10\ntrain {{\n  schedule {written}\n}}\n").train
    assert t["schedule"] == value


def test_augment_normalize_init_and_the_rest():
    t = load("""\
input image: 3x32x32
fc f: 10
loss cross_entropy
train {
  data cifar10("cifar-10-batches-bin")
  normalize mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2]
  batch_size 32
  epochs 3
  seed 7
  augment crop(32, pad=4), flip, lighting(0.1)
  init weight=gaussian(std=0.01), bias=1
  test_crops 10
  validate 5000
}
""").train
    assert t["data"] == "cifar10:cifar-10-batches-bin"
    assert t["normalize"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    assert (t["batch"], t["epochs"], t["seed"]) == (32, 3, 7)
    assert t["augment"] == [
        {"kind": "crop", "size": 32, "pad": 4},
        {"kind": "flip", "p": 0.5},
        {"kind": "lighting", "std": 0.1},
    ]
    assert t["init"] == {
        "weight": {"kind": "gaussian", "std": 0.01, "mean": 0.0},
        "bias": {"kind": "constant", "value": 1.0},
    }
    assert t["test_crops"] == 10
    assert t["validate"] == 5000


def test_init_keeps_the_other_default():
    t = load("input image: 1x8x8\nfc f: 10\ntrain {\n  init weight=xavier\n}\n").train
    assert t["init"] == {"weight": {"kind": "xavier"}, "bias": {"kind": "constant", "value": 0.0}}


def test_layer_initialisers():
    net = load(
        "input image: 1x8x8\nconv c: 2 filters 3x3, init uniform(0.1), bias_init 1\n"
        "fc f: 3, init he, bias_init constant(0.5)\n"
    )
    assert net.layer("c").attrs["init"] == {"kind": "uniform", "scale": 0.1}
    assert net.layer("c").attrs["bias_init"] == {"kind": "constant", "value": 1.0}
    assert net.layer("f").attrs["init"] == {"kind": "he"}
    assert net.layer("f").attrs["bias_init"] == {"kind": "constant", "value": 0.5}


def test_train_values_of_the_example_nets():
    alex = netdsl.load(ROOT / "nets" / "alexnet.net").train
    assert alex["optimizer"] == {
        "kind": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
    }
    assert alex["schedule"]["kind"] == "plateau"
    assert [a["kind"] for a in alex["augment"]] == ["crop", "flip", "lighting"]
    assert alex["test_crops"] == 10
    cifar = netdsl.load(ROOT / "nets" / "cifar10.net").train
    assert cifar["schedule"] == {"kind": "multistep", "milestones": [20, 25], "gamma": 0.1}


# ---------------------------------------------------------------- GPU placement


TWO_GPUS = """\
gpus 2
input image: 3x16x16
conv c1: 8 filters 3x3, pad 1, relu
lrn n1: size 3
conv c2: 8 filters 3x3, pad 1, groups 2
conv c3: 8 filters 3x3, pad 1
pool p: max 2x2
fc f: 10
loss cross_entropy
train {
  batch 4
}
"""


def test_gpu_placement_on_a_small_two_gpu_net():
    net = load(TWO_GPUS)
    assert net.gpus == 2
    gpus = {lyr.name: lyr.gpus for lyr in net.layers}
    assert gpus == {
        "image": (0, 1),
        "c1": (0, 1),
        "n1": (0, 1),
        "c2": (0, 1),
        "c3": (0, 1),
        "p": (0, 1),
        "f": (0, 1),
        "loss": (0,),
    }
    exchange = {lyr.name: lyr.exchange for lyr in net.layers}
    assert exchange == {
        "image": 0,
        "c1": 0,  # reads the image, which every GPU holds
        "n1": 2 * 1 * 16 * 16,  # LRN size 3: one map of halo each way across the boundary
        "c2": 0,  # groups 2: each GPU's kernels read only its own maps
        "c3": 2 * 4 * 16 * 16,  # ungrouped: each GPU reads the other's 4 maps
        "p": 0,
        "f": 2 * 4 * 8 * 8,  # fc reads every map of p
        "loss": 5,  # GPU 0 gathers GPU 1's 5 scores
    }
    per_image = sum(exchange.values())
    assert exchange_bytes(net, 4) == per_image * 4 * 4 * 2  # batch 4, float32, fwd + bwd
    total = sum(lyr.n_params for lyr in net.layers)
    assert [d["params"] for d in per_gpu(net)] == [total // 2, total // 2]


def test_one_gpu_exchanges_nothing():
    net = load(TWO_GPUS.replace("gpus 2\n", ""))
    assert net.gpus == 1
    assert all(lyr.gpus == (0,) for lyr in net.layers)
    assert exchange_bytes(net, 4) == 0


def test_connection_table_placement_counts_the_maps_it_reads():
    net = load(
        "gpus 2\ninput image: 4x8x8\nconv a: 4 filters 1x1\n"
        "conv b: 2 filters 1x1, connect [[0, 1], [0, 3]]\n"
    )
    # GPU 0 makes map 0 from a's maps 0 and 1 (its own); GPU 1 makes map 1 from maps 0
    # (GPU 0's) and 3 (its own): one map crosses
    assert net.layer("b").exchange == 1 * 8 * 8


def test_placement_of_replicated_inputs_and_flatten():
    net = load("""\
gpus 2
input image: 4x8x8
conv c: 4 filters 3x3, pad 1
concat j(image, c)
flatten f
fc o: 10
""")
    exchange = {lyr.name: lyr.exchange for lyr in net.layers}
    # j's first 4 maps are the image, which both GPUs hold; GPU 1 owns j's maps 4..7,
    # c's maps 0..3, of which it holds 2 and 3: it fetches c's maps 0 and 1
    assert exchange["j"] == 2 * 8 * 8
    # flatten keeps each GPU's maps where they are: element i*64 + k comes from map i
    assert exchange["f"] == 0
    # the fc reads all 512 inputs; each GPU fetches the other's 256
    assert exchange["o"] == 2 * 256
