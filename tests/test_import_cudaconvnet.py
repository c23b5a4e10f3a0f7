"""`netdsl import` of cuda-convnet layer files with their layer-params files
(tests/interop/cudaconvnet/: akrizhevsky/cuda-convnet2's layers/).

The shapes, parameter counts and learning rates the imported nets must have are computed
here from cuda-convnet's own rules (layer.py: modulesX = 1 + ceil((2·padding + imgSize −
filterSize) / stride), pooling's outputsX = ceil((imgSize − start − sizeX) / stride) + 1,
cmrnorm's scale divided by its size), reading the files with Python's configparser as
cuda-convnet does, independently of the importer.
"""

from __future__ import annotations

import configparser
import json
import re
from math import ceil
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.errors import NetError
from netdsl.interop.cli import ImportOptions, convert

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "tests" / "interop" / "cudaconvnet"
IMAGENET = (DIR / "layers-imagenet-1gpu.cfg", DIR / "layer-params-imagenet-1gpu.cfg")
CIFAR = (DIR / "layers-cifar10-11pct.cfg", DIR / "layer-params-cifar10-11pct.cfg")
SEC80 = (DIR / "layers-80sec.cfg", DIR / "layer-params-80sec.cfg")  # the 2011 cuda-convnet
PCT18 = (DIR / "layers-18pct.cfg", DIR / "layer-params-18pct.cfg")


def cfg(path: Path) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser()  # keys lower-cased, as cuda-convnet's parser does
    p.read(path)
    return p


def base(value: str) -> float:
    """A number, or a schedule's base (`dexp[base=0.01;tgtFactor=250;numSteps=4]`)."""
    m = re.search(r"base=([^;\]]+)", value)
    return float(m.group(1) if m else value)


def convnet_layers(layers: Path, c: int, size: int) -> dict[str, dict]:
    """Each layer's output (channels, imgSize) and parameter count, by cuda-convnet's rules."""
    p = cfg(layers)
    out: dict[str, dict] = {}
    for name in p.sections():
        o = dict(p.items(name))
        t = o["type"]
        if t == "data":
            if o.get("dataidx", "0") == "0":
                out[name] = {"shape": (c, size, size), "params": 0, "type": t}
            continue
        src = out.get(o["inputs"].split(",")[-1].strip())
        ch, img = src["shape"][0], src["shape"][1]
        params = 0
        if t in ("conv", "local"):
            fs, pad = int(o["filtersize"]), int(o.get("padding", 0))
            stride, groups = int(o.get("stride", 1)), int(o.get("groups", 1))
            filters = int(o["filters"]) * groups
            m = 1 + ceil((2 * pad + img - fs) / stride)
            shape = (filters, m, m)
            per_filter = int(o["channels"]) // groups * fs * fs
            if t == "conv":
                params = filters * per_filter + filters  # shared biases
            else:
                params = m * m * filters * per_filter + m * m * filters
        elif t == "pool":
            m = (
                int(o.get("outputsx", 0))
                or ceil((img - int(o.get("start", 0)) - int(o["sizex"])) / int(o["stride"])) + 1
            )
            shape = (ch, m, m)
        elif t == "fc":
            n = int(o["outputs"])
            shape, params = (n, 1, 1), n * ch * img * img + n
        else:  # cmrnorm, neuron, dropout, softmax, cost: the input's shape
            shape = src["shape"]
        out[name] = {"shape": shape, "params": params, "type": t}
    return out


def plain(text: str) -> list[str]:
    """The lines of a .net text, the padding after the type word taken out."""
    return [re.sub(r"^(\w+) +", r"\1 ", ln) for ln in text.splitlines()]


def summary_json(capsys, tmp_path: Path, layers: Path, params: Path, shape: str) -> dict:
    out = tmp_path / (layers.stem + ".net")
    argv = ["import", str(layers), "--params", str(params), "--input", shape, "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["summary", "--json", str(out)]) == 0
    return json.loads(capsys.readouterr().out)


def check_against_convnet(report: dict, layers: Path, c: int, size: int) -> None:
    expected = convnet_layers(layers, c, size)
    mine = {lyr["name"]: lyr for lyr in report["layers"]}
    for name, d in expected.items():
        if d["type"] in ("softmax", "cost.logreg", "data"):
            continue  # the softmax is inside the loss; the data layer is the input
        got = mine.get(f"{name}_neuron", mine[name])  # a detached neuron=
        assert tuple(got["output_shape"]) == d["shape"], (name, got["output_shape"], d)
        assert mine[name]["params"] == d["params"], (name, mine[name]["params"], d)
    assert report["totals"]["params"] == sum(d["params"] for d in expected.values())
    assert report["layers"][-1]["type"] == "loss"


def test_the_imagenet_net_has_cuda_convnets_shapes_and_counts(capsys, tmp_path):
    report = summary_json(capsys, tmp_path, *IMAGENET, "3x227x227")
    check_against_convnet(report, IMAGENET[0], 3, 227)
    types = [lyr["type"] for lyr in report["layers"]]
    assert types.count("lrn") == 2 and types.count("act") == 2  # pool1's and pool3's neuron=


def test_the_2011_cifar10_net_has_cuda_convnets_shapes_and_counts(capsys, tmp_path):
    report = summary_json(capsys, tmp_path, *SEC80, "3x32x32")
    check_against_convnet(report, SEC80[0], 3, 32)
    pools = [lyr for lyr in report["layers"] if lyr["type"] == "pool"]
    assert [p["geometry"] for p in pools] == ["max 3x3/2 ceil", "avg 3x3/2 ceil",
                                              "avg 3x3/2 ceil"]  # fmt: skip


def test_within_map_response_normalisation_is_refused_at_its_type():
    """The 18 % net of the 2011 cuda-convnet normalises within each map (rnorm)."""
    with pytest.raises(NetError) as e:
        convert(str(PCT18[0]), opts=ImportOptions((3, 32, 32), params=str(PCT18[1])))
    lines = PCT18[0].read_text().splitlines()
    assert (e.value.loc.line, e.value.loc.col) == (lines.index("type=rnorm") + 1, 6)
    assert e.value.message == "layer type 'rnorm' is not supported"
    assert "across maps" in e.value.hint


def test_the_cifar10_net_has_cuda_convnets_shapes_and_counts(capsys, tmp_path):
    report = summary_json(capsys, tmp_path, *CIFAR, "3x24x24")
    check_against_convnet(report, CIFAR[0], 3, 24)


def test_pooling_rounds_up_as_cuda_convnet(tmp_path):
    """cuda-convnet's pool1 (3x3/2, start 0) on CIFAR's 24x24 crops gives 12x12: ceil."""
    layers = tmp_path / "l.cfg"
    layers.write_text(
        "[data]\ntype=data\ndataIdx=0\n\n[labels]\ntype=data\ndataIdx=1\n\n"
        "[conv1]\ntype=conv\ninputs=data\nchannels=3\nfilters=16\npadding=2\nstride=1\n"
        "filterSize=5\nneuron=relu\ninitW=0.0001\n\n"
        "[pool1]\ntype=pool\npool=max\ninputs=conv1\nstart=0\nsizeX=3\nstride=2\n"
        "outputsX=0\nchannels=16\n\n"
        "[pool2]\ntype=pool\npool=avg\ninputs=pool1\nstart=-1\nsizeX=3\nstride=2\n"
        "channels=16\n\n"
        "[fc10]\ntype=fc\noutputs=10\ninputs=pool2\n\n"
        "[probs]\ntype=softmax\ninputs=fc10\n\n"
        "[logprob]\ntype=cost.logreg\ninputs=labels,probs\n"
    )
    text = convert(str(layers), opts=ImportOptions(input_shape=(3, 24, 24)))
    lines = plain(text)
    assert "pool pool1: max 3x3, stride 2, ceil  # cuda-convnet rounds up: the last window " \
           "may be clipped" in lines  # fmt: skip
    assert "pool pool2: avg 3x3, stride 2, pad 1, floor  # clipped windows average the pixels " \
           "inside (cuda-convnet2); cuda-convnet 2011 divided by sizeX^2" in lines  # fmt: skip
    assert "conv conv1: 16 filters 5x5, pad 2, relu, init gaussian(std=0.0001), bias_init 0" \
        in lines  # fmt: skip
    assert "loss logprob: cross_entropy  # the softmax it reads is part of netdsl's " \
           "cross-entropy loss" in lines  # fmt: skip
    net = netdsl.loads(text)
    expected = convnet_layers(layers, 3, 24)
    shapes = {lyr.name: tuple(lyr.out_shape) for lyr in net.layers}
    for name in ("conv1", "pool1", "pool2", "fc10"):
        assert shapes[name] == expected[name]["shape"], name


def test_layer_params_become_base_rates_and_multipliers():
    """Every weight's and bias's effective rate (lr x multiplier) is its epsW / epsB, its
    decay wc, biases never decayed; the norms' scale is divided by the size."""
    opts = ImportOptions((3, 227, 227), params=str(IMAGENET[1]))
    net = netdsl.loads(convert(str(IMAGENET[0]), opts=opts))
    p = cfg(IMAGENET[1])
    layers = cfg(IMAGENET[0])
    opt = net.train["optimizer"]
    by_name = {lyr.name: lyr for lyr in net.layers}
    checked = 0
    for name in p.sections():
        o = dict(p.items(name))
        lyr = by_name.get(name)
        if "epsw" in o:
            a = lyr.attrs
            assert opt["lr"] * a["lr_mult"] == pytest.approx(base(o["epsw"]))
            assert opt["lr"] * a["bias_lr_mult"] == pytest.approx(base(o["epsb"]))
            assert opt["weight_decay"] * a["decay_mult"] == pytest.approx(float(o["wc"]))
            assert a["bias_decay_mult"] == 0
            assert opt["momentum"] == float(o["momw"]) == float(o["momb"])
            assert a["init"] == {"kind": "gaussian", "std": float(layers.get(name, "initw")),
                                 "mean": 0.0}  # fmt: skip
            checked += 1
        if "scale" in o:
            size = int(layers.get(name, "size"))
            assert lyr.attrs["alpha"] == pytest.approx(float(o["scale"]) / size)
            assert lyr.attrs["beta"] == float(o["pow"])
            assert lyr.attrs["k"] == float(o.get("mindiv", 1))
            checked += 1
    assert checked == 10  # 5 conv + 3 fc + 2 cmrnorm


def test_the_output_is_a_file_a_person_keeps(capsys, tmp_path):
    out = tmp_path / "imagenet.net"
    argv = ["import", str(IMAGENET[0]), "--params", str(IMAGENET[1]), "--input", "3x227x227",
            "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == (f"# Imported by `netdsl import` from {IMAGENET[0]} (cuda-convnet "
                        "layer definitions).")  # fmt: skip
    assert "network layers_imagenet_1gpu" in lines
    assert "lrn     rnorm1: size 5, k 2, alpha 0.0001/5, beta 0.75  # cuda-convnet's " \
           "scale=0.0001 is divided by size 5" in lines  # fmt: skip
    assert "act     pool1_neuron: relu  # pool1's neuron=relu" in lines
    assert any(ln.startswith("  # schedules not converted") and "dexp[" in ln for ln in lines)
    names = [ln.split()[1].rstrip(":").split("(")[0] for ln in lines
             if re.match(r"(conv|lrn|pool|fc|dropout|act|loss) ", ln)]  # fmt: skip
    assert names[:3] == ["conv1", "rnorm1", "pool1"] and names[-1] == "logprob"
    capsys.readouterr()
    assert main(["check", str(out)]) == 0


def test_without_input_the_error_says_to_give_it(capsys, tmp_path):
    out = tmp_path / "x.net"
    assert main(["import", str(IMAGENET[0]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{IMAGENET[0]}:1:1: error: cuda-convnet takes the input size from "
                          "its data provider, not from the layer file: give it with --input "
                          "CxHxW\n    [data]\n")  # fmt: skip
    assert not out.exists()


def test_an_input_whose_windows_overhang_is_refused_with_one_that_fits(capsys):
    """AlexNet's 11x11/4 conv1 on 224 pixels: cuda-convnet makes 55 outputs (zeros past the
    right edge), a symmetric pad 54; 227 pixels make 55 either way."""
    argv = ["import", str(IMAGENET[0]), "--params", str(IMAGENET[1]), "--input", "3x224x224"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    text = IMAGENET[0].read_text().splitlines()
    line = text.index("filterSize=11") + 1
    assert err.startswith(f"{IMAGENET[0]}:{line}:12: error: cuda-convnet gives this conv 55x55 "
                          "outputs on a 224x224 input")  # fmt: skip
    assert "e.g. 227x227 here" in err


HEAD = ("[data]\ntype=data\ndataIdx=0\n\n[labels]\ntype=data\ndataIdx=1\n\n"
        "[conv1]\ntype=conv\ninputs=data\nchannels=3\nfilters=16\npadding=1\n"
        "filterSize=3\n\n")  # fmt: skip
TAIL = "[fc]\ntype=fc\ninputs={last}\noutputs=10\n\n[probs]\ntype=softmax\ninputs=fc\n\n" \
       "[cost]\ntype=cost.logreg\ninputs=labels,probs\n"  # fmt: skip
PARAMS = "[conv1]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\nwc=0.004\n\n" \
         "[fc]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\nwc=0.01\n"  # fmt: skip

BAD = [
    # (layers between conv1 and fc, fc's input, extra params, the line the caret is on, message)
    ("[n1]\ntype=rnorm\ninputs=conv1\nchannels=16\nsize=3\n", "n1", "", "type=rnorm",
     "layer type 'rnorm' is not supported"),
    ("[n1]\ntype=cnorm\ninputs=conv1\nchannels=16\nsize=3\n", "n1", "", "type=cnorm",
     "layer type 'cnorm' is not supported"),
    ("[a1]\ntype=neuron\ninputs=conv1\nneuron=abs\n", "a1", "", "neuron=abs",
     "neuron 'abs' has no netdsl activation"),
    ("[p1]\ntype=pool\npool=max\ninputs=conv1\nsizeX=2\nstride=2\nchannels=8\n", "p1", "",
     "channels=8", "says channels=8, but its input has 16"),
    ("[p1]\ntype=pool\npool=max\ninputs=conv1\nsizeX=2\nstride=2\nstart=1\nchannels=16\n",
     "p1", "", "start=1", "start=1 skips the first pixels"),
    ("[p1]\ntype=pool\npool=maxabs\ninputs=conv1\nsizeX=2\nstride=2\nchannels=16\n", "p1", "",
     "pool=maxabs", "pool=maxabs"),
    ("[r1]\ntype=cmrnorm\ninputs=conv1\nchannels=16\nsize=4\n", "r1",
     "[r1]\nscale=0.001\npow=0.75\n", "size=4", "size=4: an even window"),
    ("[s1]\ntype=eltsum\ninputs=conv1,conv1\n", "s1", "[s1]\ncoeffs=1,0.5\n", "coeffs=1,0.5",
     "coefficient 1, not 0.5"),
    ("[c2]\ntype=conv\ninputs=conv1,data\nchannels=16,3\nfilters=16\nfilterSize=3\n"
     "padding=1\n", "c2", "[c2]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\n",
     "inputs=conv1,data", "reads several inputs"),
    ("[c2]\ntype=conv\ninputs=conv1\nchannels=16\nfilters=16\nfilterSize=3\npadding=1\n"
     "sharedBiases=0\n", "c2", "[c2]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\n",
     "sharedBiases=0", "sharedBiases=0"),
    ("[c2]\ntype=conv\ninputs=conv1\nchannels=16\nfilters=16\nfilterSize=3\npadding=1\n", "c2",
     "[c2]\nepsW=0.001\nepsB=0.002\nmomW=0.5\nmomB=0.5\n", "momW=0.5",
     "momentum 0.5 here, 0.9 elsewhere"),
    ("[c2]\ntype=conv\ninputs=conv1\nchannels=16\nfilters=16\nfilterSize=3\npadding=1\n"
     "groups=3\n", "c2", "[c2]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\n", "[c2]",
     "c2 expects 16 input channels divisible by groups=3 (in the .net line `conv"),
    ("[m1]\ntype=eltmax\ninputs=conv1,conv1\n", "m1", "", "type=eltmax",
     "layer type 'eltmax' is not supported"),
    ("", "nowhere", "", "inputs=nowhere", "reads 'nowhere', which is not a layer defined above"),
    ("", "conv1", "[conv9]\nepsW=1\n", "[conv9]", "sets layer 'conv9', which the layer file"),
]  # fmt: skip


@pytest.mark.parametrize(("middle", "last", "extra", "at", "message"), BAD,
                         ids=[b[4][:30] for b in BAD])  # fmt: skip
def test_every_error_is_located_in_the_layer_or_params_file(middle, last, extra, at, message,
                                                            tmp_path, capsys):  # fmt: skip
    layers, params = tmp_path / "layers.cfg", tmp_path / "params.cfg"
    layer_text, param_text = HEAD + middle + TAIL.format(last=last), PARAMS + "\n" + extra
    layers.write_text(layer_text)
    params.write_text(param_text)
    out = tmp_path / "bad.net"
    argv = ["import", str(layers), "--params", str(params), "--input", "3x8x8", "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # the line `at` is on (in the params file if only that holds it), the caret at the value
    path, text = (layers, layer_text) if at in layer_text.splitlines() else (params, param_text)
    line = text.splitlines().index(at) + 1
    col = 1 if at.startswith("[") else at.index("=") + 2
    assert err.startswith(f"{path}:{line}:{col}: error: "), err
    assert message in err.splitlines()[0], err
    assert not out.exists()


def test_cmrnorm_without_params_says_where_scale_belongs(tmp_path):
    layers = tmp_path / "l.cfg"
    layers.write_text(HEAD + "[r1]\ntype=cmrnorm\ninputs=conv1\nchannels=16\nsize=5\n\n"
                      + TAIL.format(last="r1"))  # fmt: skip
    with pytest.raises(NetError) as e:
        convert(str(layers), opts=ImportOptions((3, 8, 8)))
    assert "needs `scale=` in the layer-params file (--params)" in e.value.message
    assert e.value.loc.line == (HEAD + "[r1]").count("\n") + 1


def test_neurons_fold_into_the_layer_they_read_or_stand_alone(tmp_path):
    layers, params = tmp_path / "l.cfg", tmp_path / "p.cfg"
    layers.write_text(HEAD +
                      "[act1]\ntype=neuron\ninputs=conv1\nneuron=tanh[1.7159,0.6667]\n\n"
                      "[pool1]\ntype=pool\npool=max\ninputs=act1\nsizeX=2\nstride=2\n"
                      "channels=16\nneuron=relu\n\n"
                      "[act2]\ntype=neuron\ninputs=pool1\nneuron=logistic\n\n"
                      + TAIL.format(last="act2"))  # fmt: skip
    params.write_text(PARAMS)
    text = convert(str(layers), opts=ImportOptions((3, 8, 8), params=str(params)))
    lines = plain(text)
    assert (
        "conv conv1: 16 filters 3x3, pad 1, scaled_tanh(A=1.7159, S=0.6667), "
        "init gaussian(std=0.01), bias_init 0, bias_lr_mult 2, "
        "bias_decay_mult 0  # [act1] neuron=tanh[1.7159,0.6667] folded in"
    ) in lines
    assert "act pool1_neuron: relu  # pool1's neuron=relu" in lines
    assert "act act2: sigmoid" in lines
    net = netdsl.loads(text)
    assert [lyr.name for lyr in net.layers] == ["data", "conv1", "pool1", "pool1_neuron",
                                                "act2", "fc", "cost"]  # fmt: skip
    assert net.train["optimizer"]["weight_decay"] == 0.004  # a tie: the first most common


def test_a_layer_after_the_cost_is_refused_at_that_layer(tmp_path):
    layers = tmp_path / "l.cfg"
    layers.write_text(
        HEAD + TAIL.format(last="conv1") + "\n[fc2]\ntype=fc\ninputs=fc\noutputs=10\n"
    )
    with pytest.raises(NetError) as e:
        convert(str(layers), opts=ImportOptions((3, 8, 8)))
    assert e.value.loc.line == layers.read_text().splitlines().index("[fc2]") + 1
    assert e.value.message.startswith("layer 'fc2' comes after the loss (in the .net line `fc")


def _convnet_pool(x, mode: str, size: int, start: int, stride: int, outputs: int):
    """cuda-convnet2's kLocalPool, loop for loop: windows at start + i*stride clipped to
    the image; max, or the sum over the pixels inside divided by their number."""
    import numpy as np

    n, c, h, w = x.shape
    y = np.zeros((n, c, outputs, outputs))
    for i in range(outputs):
        for j in range(outputs):
            r0, s0 = start + i * stride, start + j * stride
            win = x[:, :, max(0, r0) : min(h, r0 + size), max(0, s0) : min(w, s0 + size)]
            y[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return y


@pytest.mark.parametrize("img", [7, 8, 12])
@pytest.mark.parametrize(("mode", "size", "start", "stride"),
                         [("max", 3, 0, 2), ("avg", 3, 0, 2), ("max", 2, 0, 2), ("avg", 3, -1, 2),
                          ("max", 3, -1, 1), ("avg", 4, -1, 3), ("max", 5, -2, 2)])  # fmt: skip
def test_an_imported_pool_computes_cuda_convnets_pool(img, mode, size, start, stride, tmp_path):
    torch = pytest.importorskip("torch")
    import numpy as np

    from netdsl.torch_ref import build

    layers = tmp_path / "l.cfg"
    layers.write_text("[data]\ntype=data\ndataIdx=0\n\n"
                      f"[p]\ntype=pool\npool={mode}\ninputs=data\nsizeX={size}\nstart={start}\n"
                      f"stride={stride}\noutputsX=0\nchannels=2\n")  # fmt: skip
    outputs = ceil((img - start - size) / stride) + 1  # layer.py's outputsX=0
    x = np.random.default_rng(img + size).standard_normal((1, 2, img, img))
    want = _convnet_pool(x, mode, size, start, stride, outputs)
    try:
        net = netdsl.loads(convert(str(layers), opts=ImportOptions((2, img, img))))
    except NetError as e:
        assert e.message.startswith("cuda-convnet's pool gives"), e.message
        for rounding in ("floor", "ceil"):
            text = (f"input i: 2x{img}x{img}\npool q: {mode} {size}x{size}, stride {stride}, "
                    f"pad {-start}, {rounding}\n")  # fmt: skip
            try:
                got = netdsl.loads(text).layers[-1].out_shape[1:]
            except NetError:
                continue
            assert tuple(got) != want.shape[2:], (rounding, got)
        return
    model = build(net).double().eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy().reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
