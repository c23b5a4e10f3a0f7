"""`netdsl import` of Darknet .cfg files (tests/interop/darknet/: pjreddie/darknet's cfg/).

The shapes and parameter counts the imported nets must have are computed here from
Darknet's own rules (parser.c and the layers' make_* functions: the conv and maxpool output
formulas, a batch-normalised conv's biases + scales + rolling statistics), from the .cfg
text read by a reader of this file, independently of the importer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.errors import NetError
from netdsl.interop.cli import ImportOptions, convert

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "tests" / "interop" / "darknet"
CLASSIFIERS = ["darknet.cfg", "tiny.cfg", "alexnet.cfg", "darknet19.cfg", "extraction.cfg"]


def sections(text: str) -> list[tuple[str, dict[str, str], int]]:
    """(word, options, header line) of each section, as Darknet's read_cfg reads them."""
    out: list[tuple[str, dict[str, str], int]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        line = "".join(line.split())  # Darknet drops every blank
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            out.append((line[1:-1], {}, i))
        else:
            k, v = line.split("=", 1)
            out[-1][1][k] = v
    return out


def darknet_layers(text: str) -> list[dict]:
    """Darknet's shape, trainable and running-statistics counts of every layer."""
    secs = sections(text)
    net = secs[0][1]
    shape = (int(net["channels"]), int(net["height"]), int(net["width"]))
    layers: list[dict] = []
    for i, (word, o, _) in enumerate(secs[1:]):
        c, h, w = layers[-1]["shape"] if layers else shape
        params = stats = 0
        if word == "convolutional":
            n, size, stride = int(o["filters"]), int(o["size"]), int(o.get("stride", 1))
            pad = size // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            groups = int(o.get("groups", 1))
            out = (n, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1)
            params = n * (c // groups) * size * size + n  # weights, biases
            if int(o.get("batch_normalize", 0)):
                params += n  # scales
                stats = 2 * n  # rolling mean and variance
        elif word == "maxpool":
            stride = int(o.get("stride", 1))
            size = int(o.get("size", stride))
            pad = int(o.get("padding", size - 1))
            out = (c, (h + pad - size) // stride + 1, (w + pad - size) // stride + 1)
        elif word == "avgpool":
            out = (c, 1, 1)
        elif word == "connected":
            n = int(o["output"])
            out = (n, 1, 1)
            params = n * c * h * w + n
        elif word == "route":
            idx = [int(s) + i if int(s) < 0 else int(s) for s in o["layers"].split(",")]
            shapes = [layers[j]["shape"] for j in idx]
            out = (sum(s[0] for s in shapes), *shapes[0][1:])
        elif word == "upsample":
            s = int(o.get("stride", 2))
            out = (c, h * s, w * s)
        else:  # dropout, softmax, cost, shortcut: the input's shape
            out = (c, h, w)
        single = word == "route" and "," not in o["layers"]  # read again: no layer of its own
        layers.append({"word": word, "shape": out, "params": params, "stats": stats,
                       "line": not single})  # fmt: skip
    return layers


def summary_json(capsys, tmp_path: Path, cfg: Path, *extra: str) -> dict:
    out = tmp_path / (cfg.stem + ".net")
    assert main(["import", str(cfg), "-o", str(out), *extra]) == 0
    capsys.readouterr()
    assert main(["summary", "--json", str(out)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_summary_reproduces_darknets_shapes_and_parameter_counts(name, capsys, tmp_path):
    cfg = CFG / name
    expected = darknet_layers(cfg.read_text())
    report = summary_json(capsys, tmp_path, cfg)
    by_name = {lyr["name"]: lyr for lyr in report["layers"]}
    short = {"convolutional": "conv", "connected": "fc"}
    for i, d in enumerate(expected):
        if d["word"] in ("softmax", "cost") or not d["line"]:
            continue  # the loss at the end; a one-layer route has no line
        base = f"{short.get(d['word'], d['word'])}{i}"
        mine = [lyr for n, lyr in by_name.items() if n in (base, f"{base}_bn")]
        assert mine, f"{name}: no .net layer for Darknet layer {i} ({d['word']})"
        assert tuple(mine[-1]["output_shape"]) == d["shape"], (name, i, d)
        assert sum(lyr["params"] for lyr in mine) == d["params"], (name, i, d)
    assert report["totals"]["params"] == sum(d["params"] for d in expected)
    assert report["totals"]["non_trainable"] == sum(d["stats"] for d in expected)
    scores = report["layers"][-1]
    assert scores["type"] == "loss" and scores["geometry"] == "cross_entropy"
    assert tuple(scores["output_shape"]) == expected[-1]["shape"]


def test_the_output_is_a_file_a_person_keeps(capsys, tmp_path):
    """Header naming the source, one layer per line, Darknet's numbers in the names, the
    [net] settings in the train section, and `netdsl check` accepts it."""
    out = tmp_path / "darknet.net"
    assert main(["import", "tests/interop/darknet/darknet.cfg", "-o", str(out)]) == 0
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == ("# Imported by `netdsl import` from tests/interop/darknet/darknet.cfg "
                        "(Darknet cfg).")  # fmt: skip
    assert "network darknet" in lines
    assert "input data: 3x256x256" in lines
    assert "conv  conv0: 16 filters 3x3, pad 1, bias off" in lines
    assert "bn    conv0_bn: momentum 0.01, leaky(0.1)" in lines
    assert "pool  maxpool1: max 2x2, stride 2" in lines
    assert "pool  avgpool13: avg, global" in lines
    assert lines.count("train {") == 1
    assert "  optimizer sgd(lr=0.1, momentum=0.9, weight_decay=0.0005)" in lines
    assert "  schedule poly(power=4)" in lines
    assert any("burn_in=1000" in ln for ln in lines)
    assert any("max_batches=800000" in ln for ln in lines)
    net = netdsl.load(out)
    n_sections = len(sections((CFG / "darknet.cfg").read_text())) - 1
    bn = sum(1 for lyr in net.layers if lyr.type == "bn")
    assert len(net.layers) == 1 + n_sections + bn  # input + one line per section + bn
    capsys.readouterr()
    assert main(["check", str(out)]) == 0


def test_maxpool_rounding_is_darknets(tmp_path):
    """Darknet pads a maxpool by size-1 at the bottom/right and rounds down: on odd sizes
    that is netdsl's ceil rounding; a 3x3/2 window with padding 2 is pad 1, floor."""
    cfg = tmp_path / "pools.cfg"
    cfg.write_text("[net]\nheight=13\nwidth=13\nchannels=3\n\n"
                   "[maxpool]\nsize=2\nstride=2\n\n"  # 13 -> 7: ceil
                   "[maxpool]\nsize=3\nstride=2\n\n"  # 7 + 2 - 3 -> 4: pad 1, floor = ceil
                   "[maxpool]\nsize=3\nstride=2\npadding=0\n")  # fmt: skip
    text = convert(str(cfg))
    assert "pool  maxpool0: max 2x2, stride 2, ceil" in text
    assert "pool  maxpool1: max 3x3, stride 2, pad 1  #" in text
    assert "pool  maxpool2: max 3x3, stride 2, floor  #" in text
    net = netdsl.loads(text)
    expected = darknet_layers(cfg.read_text())
    assert [tuple(lyr.out_shape) for lyr in net.layers[1:]] == [d["shape"] for d in expected]


def test_routes_and_shortcuts_follow_darknets_numbers(tmp_path):
    cfg = tmp_path / "res.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n\n"
                   "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"  # 0
                   "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n\n"  # 1
                   "[shortcut]\nfrom=-2\nactivation=relu\n\n"  # 2: 1 + 0
                   "[route]\nlayers=-1,0\n\n"  # 3: concat(2, 0)
                   "[route]\nlayers=1\n\n"  # 4: layer 1 again, no line
                   "[upsample]\nstride=2\n\n"  # 5: reads 1
                   "[convolutional]\nfilters=2\nsize=1\nactivation=logistic\n")  # 6  # fmt: skip
    text = convert(str(cfg))
    assert "add      shortcut2(conv1, conv0): relu" in text
    assert "concat   route3(shortcut2, conv0)" in text
    assert "upsample upsample5(conv1): 2" in text
    assert "conv     conv6: 2 filters 1x1, sigmoid" in text  # Darknet's default: logistic
    net = netdsl.loads(text)
    shapes = {lyr.name: tuple(lyr.out_shape) for lyr in net.layers}
    assert shapes["route3"] == (8, 8, 8) and shapes["conv6"] == (2, 16, 16)


def _where(path: Path, pattern: str, nth: int = 0) -> int:
    """The line number of the nth line matching a pattern."""
    hits = [i for i, ln in enumerate(path.read_text().splitlines(), 1) if re.match(pattern, ln)]
    return hits[nth]


def test_detection_layers_are_refused_at_their_section(capsys, tmp_path):
    """yolov3.cfg imports up to its first [yolo], which is refused there; no output file."""
    cfg = CFG / "yolov3.cfg"
    out = tmp_path / "y.net"
    assert main(["import", str(cfg), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    line = _where(cfg, r"\[yolo\]")
    assert err.startswith(f"{cfg}:{line}:1: error: layer type 'yolo' is not supported\n"
                          "    [yolo]\n    ^~~~~~\n")  # fmt: skip
    assert "hint: netdsl has no detection layers" in err
    assert not out.exists()


def test_a_maxpool_netdsl_cannot_pad_is_refused_at_its_section():
    """yolov3-tiny's 2x2/1 maxpool keeps 13x13 by padding only the bottom/right."""
    cfg = CFG / "yolov3-tiny.cfg"
    with pytest.raises(NetError) as e:
        convert(str(cfg))
    text = cfg.read_text().splitlines()
    line = next(i for i in range(len(text)) if text[i] == "[maxpool]" and text[i + 2] ==
                "stride=1") + 1  # fmt: skip
    assert (e.value.loc.line, e.value.loc.col) == (line, 1)
    assert "gives 13x13 on this 13x13 input" in e.value.message
    assert e.value.message.endswith("pads both sides alike and gives 12x12")


def test_vgg16s_crop_section_is_refused():
    cfg = CFG / "vgg-16.cfg"
    with pytest.raises(NetError) as e:
        convert(str(cfg))
    assert e.value.loc.line == _where(cfg, r"\[crop\]")
    assert e.value.message == "layer type 'crop' is not supported"


BAD = [
    # (cfg text after [net], the text the caret points at, message part)
    ("[convolutional]\nfilters=8\nsize=3\nactivation=mish\n", "mish",
     "activation 'mish' has no netdsl equivalent"),
    ("[convolutional]\nfilters=abc\nsize=3\n", "abc", "filters must be a whole number"),
    ("[convolutional]\nfilters=8\nsize=3\nxnor=1\n", "1", "xnor=1 in [convolutional]"),
    ("[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,3\n", "-1,3",
     "layer 3 is not a layer before this one (layer 1)"),
    ("[convolutional]\nfilters=8\nsize=3\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1\n",
     "0,1", "differ in height and width"),
    ("[convolutional]\nfilters=8\nsize=3\n[shortcut]\nfrom=-2\n", "-2",
     "layer -2 is not a layer before this one"),
    ("[convolutional]\nfilters=8\nsize=1\n[convolutional]\nfilters=4\nsize=1\n"
     "[shortcut]\nfrom=-2\n", "-2", "netdsl's add needs equal shapes"),
    ("[upsample]\nstride=-2\n", "-2", "upsample stride=-2"),
    ("[upsample]\nscale=2\n", "2", "scale=2 in [upsample]"),
    ("[avgpool]\n[softmax]\ngroups=2\n", "2", "groups=2 in [softmax]"),
    ("[softmax]\n", "[softmax]", "this softmax reads a 3x8x8 map"),
    ("[convolutional]\nfilters=4\nsize=1\n[softmax]\n[convolutional]\nfilters=2\nsize=1\n",
     "[softmax]", "this softmax reads a 4x8x8 map"),
    ("[avgpool]\n[cost]\ntype=smooth\n", "smooth", "cost type 'smooth'"),
    ("[maxpool]\nsize=2\nstride=1\n", "[maxpool]", "Darknet's maxpool 2x2/1 gives 8x8"),
    ("[region]\nclasses=20\n", "[region]", "layer type 'region' is not supported"),
    ("[convolutional]\nfilters=4\nsize=1\n[maxpool]\nsize=2\nstride=2\n[maxpool]\nsize=2\n"
     "stride=2\n[maxpool]\nsize=2\nstride=2\n[maxpool]\nsize=2\nstride=2\n", "[maxpool]",
     "Darknet's maxpool 2x2/2 with padding 1 reaches past this 1x1 input"),
    ("[net]\n", "[net]", "a second [net] section"),
    ("[convolutional]\nfilters=4\nsize=11\n", "[convolutional]",
     "conv0: kernel 11 is larger than its padded input height 8 (in the .net line `conv"),
    ("[convolutional]\nfilters=4\nsize=1\ngroups=2\n", "[convolutional]",
     "conv0 expects 3 input channels divisible by groups=2"),
    ("[convolutional]\nfilters=4\nsize=1\n[cost]\n", "[cost]", "this cost reads a 4x8x8 map"),
    ("[cost]\n[avgpool]\n", "[cost]", "a [cost] before other layers"),
    ("filters\n", "filters", "expected `key=value` or a `[section]`"),
    ("=5\n", "=5", "an option without a name"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "caret", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_every_error_is_located_in_the_cfg(body, caret, message, tmp_path, capsys):
    head = "[net]\nheight=8\nwidth=8\nchannels=3\n\n"
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(head + body)
    out = tmp_path / "bad.net"
    assert main(["import", str(cfg), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    lines = (head + body).splitlines()
    # the caret's line: the last one holding its text (a repeated key: the repeat)
    line = [i for i, ln in enumerate(lines) if caret in ln and i >= 5][-1]
    col = lines[line].index(caret) + 1
    assert err.startswith(f"{cfg}:{line + 1}:{col}: error: "), err
    assert message in err.splitlines()[0], err
    assert f"    {lines[line]}\n" in err and "^" in err
    assert not out.exists()


def test_the_input_size_comes_from_net_or_from_the_command_line(tmp_path):
    cfg = tmp_path / "noinput.cfg"
    cfg.write_text("[net]\nbatch=64\n\n[connected]\noutput=10\nactivation=linear\n")
    with pytest.raises(NetError) as e:
        convert(str(cfg))
    assert (e.value.loc.line, e.value.loc.col) == (1, 1)
    assert "does not state the input size" in e.value.message
    assert "--input CxHxW" in e.value.hint
    text = convert(str(cfg), opts=ImportOptions(input_shape=(1, 28, 28)))
    assert "input data: 1x28x28" in text
    assert "fc    fc0: 10" in text
    assert "# The input size is --input 1x28x28." in text


def test_an_input_size_beyond_netdsls_is_refused_at_its_value(tmp_path):
    cfg = tmp_path / "big.cfg"
    cfg.write_text("[net]\nheight=99999999999999999999\nwidth=4\nchannels=3\n")
    with pytest.raises(NetError) as e:
        convert(str(cfg))
    assert (e.value.loc.line, e.value.loc.col) == (2, 8)
    assert e.value.message.startswith("height=99999999999999999999 is larger than netdsl's")


def test_a_cfg_starts_with_net(tmp_path):
    cfg = tmp_path / "nonet.cfg"
    cfg.write_text("\n[convolutional]\nfilters=8\n")
    with pytest.raises(NetError) as e:
        convert(str(cfg), fmt="darknet")
    assert (e.value.loc.line, e.value.loc.col) == (2, 1)
    assert "starts with a [net] or [network] section" in e.value.message


def test_train_settings_that_count_updates_are_comments(tmp_path):
    cfg = tmp_path / "steps.cfg"
    cfg.write_text("[net]\nbatch=64\nsubdivisions=8\nheight=8\nwidth=8\nchannels=3\n"
                   "learning_rate=0.001\nmomentum=0.949\ndecay=0.0005\nburn_in=1000\n"
                   "max_batches=500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1\n\n"
                   "[avgpool]\n\n[connected]\noutput=5\nactivation=linear\n\n"
                   "[cost]\ntype=sse\n")  # fmt: skip
    text = convert(str(cfg))
    net = netdsl.loads(text)
    assert net.train["batch"] == 64
    opt = net.train["optimizer"]
    assert (opt["kind"], opt["lr"], opt["momentum"], opt["weight_decay"]) == (
        "sgd", 0.001, 0.949, 0.0005)  # fmt: skip
    assert net.train["schedule"] == {"kind": "constant"}
    assert "policy=steps (steps=400000,450000, scales=.1,.1) counts updates" in text
    assert "subdivisions=8 only splits each batch of 64" in text
    assert net.layers[-1].type == "loss" and net.layers[-1].attrs["kind"] == "mse"


def test_a_repeated_option_takes_its_first_value_as_in_darknet(tmp_path):
    """yolo9000.cfg writes batch=1 twice in [net]; Darknet's option_find takes the first."""
    cfg = tmp_path / "rep.cfg"
    cfg.write_text("[net]\nbatch=1\nheight=4\nwidth=4\nchannels=1\nbatch=64\n\n"
                   "[convolutional]\nfilters=2\nfilters=3\nsize=1\n")  # fmt: skip
    text = convert(str(cfg))
    net = netdsl.loads(text)
    assert net.train["batch"] == 1 and net.layers[1].out_shape[0] == 2
    assert "# batch=64 at line 6 repeats an option of [net]: Darknet uses the first, batch=1" \
        in text.splitlines()  # fmt: skip
    assert "# filters=3 at line 10 repeats an option of [convolutional]: Darknet uses the " \
           "first, filters=2" in text.splitlines()  # fmt: skip


def test_standalone_batchnorm_and_activation_sections(tmp_path):
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=2\n\n[batchnorm]\n\n"
                   "[activation]\nactivation=relu\n")  # fmt: skip
    net = netdsl.loads(convert(str(cfg)))
    bn, act = net.layers[1:]
    assert (bn.type, bn.name, bn.attrs["momentum"], bn.n_params) == ("bn", "batchnorm0", 0.01, 4)
    assert (act.type, act.name, act.attrs["activation"][0]) == ("act", "activation1", "relu")


def test_per_layer_learning_rate_and_adam(tmp_path):
    cfg = tmp_path / "adam.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=1\nadam=1\nlearning_rate=0.002\n\n"
                   "[convolutional]\nfilters=2\nsize=3\nlearning_rate=0.5\n"
                   "activation=elu\n")  # fmt: skip
    net = netdsl.loads(convert(str(cfg)))
    conv = net.layers[1]
    assert conv.attrs["lr_mult"] == 0.5 and conv.attrs["bias_lr_mult"] == 0.5
    assert conv.attrs["activation"][0] == "elu"
    assert net.train["optimizer"]["kind"] == "adam"
    assert net.train["optimizer"]["lr"] == 0.002


# ------------------------------------------------------------------------------ the docs


def _import_listings() -> list[tuple[str, list[str], str, dict[str, str]]]:
    """From every page under docs/: each `text` block that shows `$ netdsl import` of a file
    of tests/interop/darknet or cudaconvnet, with its output, and the `net` listings by
    their `# file:` name."""
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        blocks = re.findall(r"^```(\w[\w-]*)\n(.*?)^```$", page.read_text(), re.M | re.S)
        files = {b.split("\n", 1)[0][len("# file: "):]: b.split("\n", 1)[1]
                 for kind, b in blocks if kind == "net" and b.startswith("# file: ")}  # fmt: skip
        for kind, b in blocks:
            first, _, shown = b.partition("\n")
            if kind == "text" and re.match(r"\$ netdsl import tests/interop/(darknet|cudaconvnet)/",
                                           first):  # fmt: skip
                found.append((page.name, first[2:].split()[1:], shown, files))
    return found


def test_the_docs_show_what_netdsl_import_does(tmp_path, monkeypatch, capsys):
    """Each `$ netdsl import` shown is run: its messages are the ones shown, and the file it
    writes is the `net` listing of that name, exactly."""
    listings = _import_listings()
    assert len(listings) >= 6, "the Darknet and cuda-convnet sections show their imports"
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    monkeypatch.chdir(tmp_path)
    for page, argv, shown, files in listings:
        code = main(argv)
        out, err = capsys.readouterr()
        assert out + err == shown, (page, argv)
        if "-o" in argv:
            target = argv[argv.index("-o") + 1]
            assert code == 0 and target in files, (page, argv)
            assert (tmp_path / target).read_text() == files[target], (page, target)
        else:
            assert code == 2, (page, argv)


# ----------------------------------------------------------------------------- .weights

WEIGHTS_CFG = """[net]
height=7
width=7
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=1
groups=2
activation=relu

[batchnorm]

[activation]
activation=leaky

[connected]
batch_normalize=1
output=5
activation=tanh

[connected]
output=3
activation=linear

[softmax]
"""


def _darknet_forward(torch, x, layers, values):
    """Darknet's forward (test-time batch norm), from its own rules and the raw values."""
    F = torch.nn.functional  # noqa: N806
    eps = 1e-5  # Darknet's GPU path and backward: sqrt(variance + .00001)
    acts = {"leaky": lambda y: F.leaky_relu(y, 0.1), "relu": torch.relu, "tanh": torch.tanh,
            "linear": lambda y: y}  # fmt: skip

    def bn(y, scales, mean, var, biases):
        shape = (1, -1, 1, 1) if y.dim() == 4 else (1, -1)
        return ((y - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * scales.view(shape)
                + biases.view(shape))  # fmt: skip

    for (word, o, _), v in zip(layers, values):
        if word == "convolutional":
            size, groups = int(o["size"]), int(o.get("groups", 1))
            pad = size // 2 if int(o.get("pad", 0)) else 0
            x = F.conv2d(x, v["weights"], None, padding=pad, groups=groups)
            x = bn(x, v["scales"], v["mean"], v["var"], v["biases"]) if "scales" in v else \
                x + v["biases"].view(1, -1, 1, 1)  # fmt: skip
            x = acts[o["activation"]](x)
        elif word == "maxpool":
            size, stride = int(o["size"]), int(o["stride"])
            padding = size - 1
            out = (x.shape[2] + padding - size) // stride + 1
            before = padding // 2
            after = (out - 1) * stride + size - x.shape[2] - before
            x = F.max_pool2d(F.pad(x, (before, after, before, after), value=float("-inf")),
                             size, stride)  # fmt: skip
        elif word == "batchnorm":
            x = bn(x, v["scales"], v["mean"], v["var"], torch.zeros_like(v["scales"]))
        elif word == "activation":
            x = acts[o["activation"]](x)
        elif word == "connected":
            x = x.flatten(1) @ v["weights"].T
            x = bn(x, v["scales"], v["mean"], v["var"], v["biases"]) if "scales" in v else \
                x + v["biases"]  # fmt: skip
            x = acts[o["activation"]](x)
    return x.flatten(1)


@pytest.mark.parametrize(("major", "minor"), [(0, 2), (0, 1), (0, 1001)],
                         ids=["seen-uint64", "seen-int32", "transposed"])  # fmt: skip
def test_weights_become_a_checkpoint_that_computes_darknets_outputs(major, minor, tmp_path,
                                                                    capsys):  # fmt: skip
    """A .weights file written here in Darknet's layout (load_weights_upto) imports as a
    checkpoint whose net, run by netdsl's PyTorch twin, gives Darknet's scores."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from netdsl.torch_ref import build
    from netdsl.train.checkpoint import load_checkpoint

    cfg = tmp_path / "w.cfg"
    cfg.write_text(WEIGHTS_CFG)
    layers = sections(WEIGHTS_CFG)[1:]
    dims = darknet_layers(WEIGHTS_CFG)
    rng = np.random.default_rng(0)
    chunks = [np.array([major, minor, 0], "<i4").tobytes(),
              np.array([1234], "<u8" if minor == 2 else "<i4").tobytes()]  # fmt: skip
    values = []
    for i, (word, o, _) in enumerate(layers):
        c, h, w = dims[i - 1]["shape"] if i else (3, 7, 7)
        n = dims[i]["shape"][0]
        v: dict = {}
        if word in ("convolutional", "connected", "batchnorm"):
            r = lambda *s: rng.standard_normal(s).astype("<f4")  # noqa: E731
            if word == "convolutional":
                size, g = int(o["size"]), int(o.get("groups", 1))
                v["weights"] = r(n, c // g, size, size)
            elif word == "connected":
                v["weights"] = r(n, c * h * w)
            if word != "batchnorm":
                v["biases"] = r(n)
            if word == "batchnorm" or int(o.get("batch_normalize", 0)):
                v["scales"], v["mean"] = r(n), r(n)
                v["var"] = (rng.random(n) + 0.5).astype("<f4")
            order = {"convolutional": ["biases", "scales", "mean", "var", "weights"],
                     "connected": ["biases", "weights", "scales", "mean", "var"],
                     "batchnorm": ["scales", "mean", "var"]}[word]  # fmt: skip
            for k in order:
                if k in v:
                    stored = v[k].T if k == "weights" and word == "connected" and minor > 1000 \
                        else v[k]  # fmt: skip
                    chunks.append(np.ascontiguousarray(stored).tobytes())
        values.append({k: torch.from_numpy(a.astype(np.float64)) for k, a in v.items()})
    wfile = tmp_path / "w.weights"
    wfile.write_bytes(b"".join(chunks))
    out = tmp_path / "w.net"
    assert main(["import", str(cfg), "-o", str(out), "--weights", str(wfile)]) == 0
    assert capsys.readouterr().err == f"wrote {out} and {tmp_path / 'w.npz'}\n"
    arrays, meta = load_checkpoint(tmp_path / "w.npz")
    assert meta["network"] == "w"
    net = netdsl.load(out)
    model = build(net).double().eval()
    model.load_numpy({k.split(".", 1)[1]: v for k, v in arrays.items()})
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 7)))
    with torch.no_grad():
        got = model(x)
        want = _darknet_forward(torch, x, layers, values)
    assert got.shape == (2, 3)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)


def test_weights_that_do_not_fit_name_the_file(tmp_path, capsys):
    import numpy as np

    cfg = tmp_path / "w.cfg"
    cfg.write_text(WEIGHTS_CFG)
    wfile = tmp_path / "short.weights"
    header = np.array([0, 2, 0], "<i4").tobytes() + b"\0" * 8  # version 0.2: a uint64 seen
    wfile.write_bytes(header + b"\0" * 400)  # 100 values; the net needs more
    out = tmp_path / "w.net"
    assert main(["import", str(cfg), "-o", str(out), "--weights", str(wfile)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {wfile}: ends after 100 values; layer convolutional at line "
                          "6 needs")  # fmt: skip
    assert not out.exists() and not (tmp_path / "w.npz").exists()
    assert main(["import", str(cfg), "--weights", str(wfile)]) == 2
    assert "--weights needs -o OUT.net" in capsys.readouterr().err


# ------------------------------------------------------------- maxpool, numerically


def _darknet_maxpool(x, size: int, stride: int, padding: int):
    """forward_maxpool_layer (maxpool_layer.c), loop for loop: windows start padding/2
    before the image, pixels outside it are skipped."""
    import numpy as np

    n, c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    y = np.full((n, c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for a in range(size):
                for b in range(size):
                    r, s = off + i * stride + a, off + j * stride + b
                    if 0 <= r < h and 0 <= s < w:
                        y[:, :, i, j] = np.maximum(y[:, :, i, j], x[:, :, r, s])
    return y


@pytest.mark.parametrize("h", [5, 6, 7, 13])
@pytest.mark.parametrize(("size", "stride", "padding"),
                         [(2, 2, None), (3, 2, None), (2, 1, None), (3, 1, None), (3, 3, None),
                          (3, 2, 0), (5, 2, 2), (4, 2, 1), (3, 2, 3)])  # fmt: skip
def test_an_imported_maxpool_computes_darknets_maxpool(h, size, stride, padding, tmp_path):
    """Every maxpool the importer accepts gives, through netdsl's PyTorch twin, the values
    of Darknet's own loop; one it refuses has no floor or ceil pool with the same windows
    (pad padding/2) and Darknet's size."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from netdsl.torch_ref import build

    pad_line = "" if padding is None else f"padding={padding}\n"
    cfg = tmp_path / "p.cfg"
    cfg.write_text(f"[net]\nheight={h}\nwidth={h + 1}\nchannels=2\n\n"
                   f"[maxpool]\nsize={size}\nstride={stride}\n{pad_line}")  # fmt: skip
    pad = size - 1 if padding is None else padding
    x = np.random.default_rng(h * 100 + size * 10 + stride).standard_normal((1, 2, h, h + 1))
    want = _darknet_maxpool(x, size, stride, pad)
    try:
        net = netdsl.loads(convert(str(cfg)))
    except NetError as e:
        assert e.message.startswith("Darknet's maxpool")
        p = pad // 2
        for rounding in ("floor", "ceil"):
            text = f"input i: 2x{h}x{h + 1}\npool p: max {size}x{size}, stride {stride}, " \
                   f"pad {p}, {rounding}\n"  # fmt: skip
            try:
                got = netdsl.loads(text).layers[-1].out_shape[1:]
            except NetError:
                continue  # netdsl cannot even make this window
            assert tuple(got) != want.shape[2:], (rounding, got)
        return
    model = build(net).double().eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy().reshape(want.shape)
    np.testing.assert_array_equal(got, want)
