"""`netdsl import` of Caffe prototxt: real nets reproduce Caffe's shapes and parameter counts,
the conversions keep Caffe's semantics, and every refusal points into the source file.

Caffe's shapes and counts are computed here from Caffe's own rules (conv_layer.cpp,
pooling_layer.cpp, inner_product_layer.cpp ...) over the prototxt read by a small reader of
this file's own, not by the importer's grammar, so a mistake of the importer cannot hide
itself. The real files are in tests/interop/caffe/ (see its README for their sources).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netdsl
from netdsl.errors import NetError
from netdsl.interop.cli import ImportOptions, convert

ROOT = Path(__file__).resolve().parent.parent
CAFFE = ROOT / "tests" / "interop" / "caffe"


def netdsl_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    env.pop("NETDSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "netdsl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def imported(path: Path | str, **opts) -> tuple[str, netdsl.Network]:
    text = convert(str(path), None, ImportOptions(**opts))
    return text, netdsl.loads(text, name="imported.net")


# ------------------------------------------------------------ Caffe's rules, independently

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{}]|#[^\n]*|[^\s{}:#"]+')


def read_prototxt(text: str) -> list:
    """The file as nested [(key, value)] lists (a message's value is such a list)."""
    toks = [t for t in _TOKENS.findall(text) if not t.startswith("#")]
    pos = 0

    def message() -> list:
        nonlocal pos
        out = []
        while pos < len(toks) and toks[pos] != "}":
            key = toks[pos]
            if toks[pos + 1] == "{":
                pos += 2
                out.append((key, message()))
                pos += 1  # the closing brace
            else:
                v = toks[pos + 1]
                out.append((key, v.strip('"')))
                pos += 2
        return out

    return message()


def get(msg: list, key: str, default=None):
    vals = [v for k, v in msg if k == key]
    return vals[-1] if vals else default


def every(msg: list, key: str) -> list:
    return [v for k, v in msg if k == key]


V1 = {"CONVOLUTION": "Convolution", "POOLING": "Pooling", "INNER_PRODUCT": "InnerProduct",
      "RELU": "ReLU", "SOFTMAX": "Softmax", "DATA": "Data", "SOFTMAX_LOSS": "SoftmaxWithLoss",
      "ACCURACY": "Accuracy", "LRN": "LRN", "DROPOUT": "Dropout", "CONCAT": "Concat"}  # fmt: skip


def _window(p: list, base: str, default: int) -> tuple[int, int]:
    key = "kernel_size" if base == "kernel" else base
    vals = [int(v) for v in every(p, key)]
    if get(p, f"{base}_h") is not None:
        return int(get(p, f"{base}_h")), int(get(p, f"{base}_w"))
    return (vals[0], vals[-1]) if vals else (default, default)


def caffe_net(path: Path, input_chw: tuple[int, int, int] | None = None):
    """Caffe's TRAIN-phase net: {layer name: output (C, H, W)} and its learnable
    parameter count, by Caffe's rules."""
    top = read_prototxt(path.read_text())
    blobs: dict[str, tuple[int, int, int]] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    n_params = 0
    if get(top, "input"):
        dims = every(top, "input_dim") or every(get(top, "input_shape", []), "dim")
        blobs[get(top, "input")] = tuple(int(d) for d in dims[1:])
    for key, lyr in top:
        if key not in ("layer", "layers"):
            continue
        phases = [get(r, "phase") for r in every(lyr, "include")]
        if phases and "TRAIN" not in phases:
            continue
        kind = V1.get(get(lyr, "type"), get(lyr, "type"))
        name, bottoms, tops = get(lyr, "name"), every(lyr, "bottom"), every(lyr, "top")
        ins = [blobs[b] for b in bottoms if b in blobs]
        if kind == "Input":
            dims = every(get(get(lyr, "input_param"), "shape"), "dim")
            out = tuple(int(d) for d in dims[1:])
        elif kind == "Data":
            out = input_chw
        elif kind == "Convolution":
            p = get(lyr, "convolution_param")
            (c, h, w), o = ins[0], int(get(p, "num_output"))
            (kh, kw), (sh, sw) = _window(p, "kernel", 0), _window(p, "stride", 1)
            (ph, pw), (dh, dw) = _window(p, "pad", 0), _window(p, "dilation", 1)
            g, bias = int(get(p, "group", 1)), get(p, "bias_term", "true") == "true"
            # conv_layer.cpp: (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1, rounded down
            ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
            wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
            out = (o, ho, wo)
            n_params += o * (c // g) * kh * kw + (o if bias else 0)
        elif kind == "Pooling":
            p = get(lyr, "pooling_param")
            c, h, w = ins[0]
            if get(p, "global_pooling") == "true":
                out = (c, 1, 1)
            else:
                (kh, kw), (sh, sw) = _window(p, "kernel", 0), _window(p, "stride", 1)
                ph, pw = _window(p, "pad", 0)
                # pooling_layer.cpp: rounded up; with padding, the last window must start
                # inside the image or its top/left padding
                ho = int(math.ceil((h + 2 * ph - kh) / sh)) + 1
                wo = int(math.ceil((w + 2 * pw - kw) / sw)) + 1
                if ph or pw:
                    ho -= (ho - 1) * sh >= h + ph
                    wo -= (wo - 1) * sw >= w + pw
                out = (c, ho, wo)
        elif kind == "InnerProduct":
            p = get(lyr, "inner_product_param")
            o, f = int(get(p, "num_output")), math.prod(ins[0])
            bias = get(p, "bias_term", "true") == "true"
            out = (o, 1, 1)
            n_params += o * f + (o if bias else 0)
        elif kind == "Concat":
            out = (sum(s[0] for s in ins), *ins[0][1:])
        elif kind == "Scale":
            bias = get(get(lyr, "scale_param", []), "bias_term") == "true"
            out = ins[0]
            n_params += ins[0][0] * (2 if bias else 1)
        elif kind in ("ReLU", "LRN", "Dropout", "Softmax", "BatchNorm", "Eltwise"):
            out = ins[0]  # BatchNorm's blobs are statistics, not learned (lr_mult 0)
        elif kind in ("SoftmaxWithLoss", "Accuracy"):
            continue
        else:
            raise AssertionError(f"the test's Caffe rules lack {kind}")
        for t in tops:
            blobs[t] = out
        shapes[name] = out
    return shapes, n_params


REAL = [
    ("lenet.prototxt", {}),
    ("lenet_v1.prototxt", {}),
    ("lenet_train_test.prototxt", {"input_shape": (1, 28, 28)}),
    ("cifar10_quick.prototxt", {}),
    ("cifar10_quick_train_test.prototxt", {"input_shape": (3, 32, 32)}),
    ("alexnet_deploy.prototxt", {}),
    ("caffenet_train_val.prototxt", {"input_shape": (3, 227, 227)}),
    ("googlenet_deploy.prototxt", {}),
    ("ResNet-50-deploy.prototxt", {}),
]


def _net_name(caffe_name: str) -> str:
    return re.sub(r"[^A-Za-z_0-9.]", "_", caffe_name)


@pytest.mark.parametrize(("file", "opts"), REAL, ids=[f for f, _ in REAL])
def test_a_real_net_has_caffes_shapes_and_parameter_count(file, opts):
    shapes, n_params = caffe_net(CAFFE / file, opts.get("input_shape"))
    _, net = imported(CAFFE / file, **opts)
    ours = {lyr.name: tuple(lyr.out_shape) for lyr in net.layers}
    compared = 0
    for name, shape in shapes.items():
        if _net_name(name) in ours:
            assert ours[_net_name(name)] == shape, name
            compared += 1
    kinds = {lyr.type for lyr in net.layers}
    assert compared >= len([ly for ly in net.layers if ly.type in ("conv", "pool", "fc")])
    assert sum(lyr.n_params for lyr in net.layers) == n_params
    assert kinds <= {"input", "conv", "pool", "fc", "lrn", "act", "dropout", "softmax", "loss",
                     "bn", "add", "concat"}  # fmt: skip


def test_the_summary_command_shows_caffes_alexnet(tmp_path):
    out = tmp_path / "alexnet.net"
    r = netdsl_cli("import", str(CAFFE / "alexnet_deploy.prototxt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    shapes, n_params = caffe_net(CAFFE / "alexnet_deploy.prototxt")
    r = netdsl_cli("summary", str(out))
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^trainable parameters +{n_params:,}$", r.stdout, re.M), r.stdout
    rows = {s.split()[1]: s.split() for s in r.stdout.splitlines() if s[:3].strip().isdigit()}
    for name, (c, h, w) in shapes.items():  # every layer's output column is Caffe's shape
        if name.startswith("relu"):
            assert f"conv{name[4:]}" in rows or f"fc{name[4:]}" in rows  # folded in
            continue
        maps = [t for t in rows[name] if re.fullmatch(r"\d+x\d+x\d+", t)]  # input, output
        assert maps[-1] == f"{c}x{h}x{w}", rows[name]
    assert len(rows) == len([n for n in shapes if not n.startswith("relu")])


# ------------------------------------------------------------------- the file a person keeps


def test_the_output_is_a_readable_file_netdsl_checks(tmp_path):
    out = tmp_path / "lenet.net"
    src = CAFFE / "lenet.prototxt"
    r = netdsl_cli("import", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == f"wrote {out}\n"
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == f"# Imported by `netdsl import` from {src} (Caffe prototxt)."
    assert lines[1] == "network LeNet"
    body = [s for s in lines[2:] if s]
    names = [s.split()[1].rstrip(":") for s in body]  # one layer per line, Caffe's names
    assert names == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert "relu1" not in names and ", relu" in body[5]  # the in-place ReLU is ip1's
    r = netdsl_cli("check", str(out))
    assert r.returncode == 0 and r.stdout.startswith(f"{out}: ok  LeNet: "), r.stdout + r.stderr


def test_the_old_layers_form_imports_as_the_current_one():
    old, _ = imported(CAFFE / "lenet_v1.prototxt")
    new, _ = imported(CAFFE / "lenet.prototxt")
    assert old.split("\n", 1)[1] == new.split("\n", 1)[1]
    assert "bias_lr_mult 2" in old  # blobs_lr: 1, 2 of the old form


def _write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


HEAD = 'name: "t"\ninput: "data"\ninput_shape { dim: 1 dim: 4 dim: 8 dim: 8 }\n'


def _conv(name: str, bottom: str, top: str, extra: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}"\n'
            f"  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 {extra} }} }}\n"
            )  # fmt: skip


def _act(name: str, blob: str, kind: str = "ReLU", extra: str = "") -> str:
    return f'layer {{ name: "{name}" type: "{kind}" bottom: "{blob}" top: "{blob}" {extra} }}\n'


def test_in_place_activations_fold_only_where_caffe_computes_the_same(tmp_path):
    text = (HEAD + _conv("c1", "data", "c1") + _act("r1", "c1")
            + 'layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1"\n'
            "  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
            + _act("r2", "p1")  # after a pool: a layer of its own
            + _conv("c2", "p1", "c2") + _conv("side", "c2", "side")  # side reads c2 first ...
            + _act("r3", "c2")  # ... so this ReLU cannot be c2's activation
            + _conv("c3", "c2", "c3") + _act("r4", "c3", extra="relu_param { negative_slope: 0.1 }")
            + _conv("c4", "c3", "c4") + _act("s4", "c4", "Sigmoid"))  # fmt: skip
    out, net = imported(_write(tmp_path, text))
    acts = {lyr.name: lyr.attrs.get("activation") for lyr in net.layers}
    assert acts["c1"] == ("relu", 0.0) and "r1" not in acts
    assert net.layer("r2").type == "act" and acts["r2"][0] == "relu"
    assert acts["c2"] == ("linear", 0.0) and net.layer("r3").type == "act"
    assert net.layer("side").inputs == ["c2"]  # side saw c2 before r3
    assert net.layer("c3").inputs == ["r3"]  # c3 sees the ReLU's output
    assert acts["c3"] == ("leaky", 0.1) and acts["c4"][0] == "sigmoid"
    assert "# r1 (ReLU) folded in" in out


def test_batchnorm_and_scale_become_one_bn(tmp_path):
    bn = ('layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1"\n'
          "  batch_norm_param { eps: 0.001 } }\n")  # fmt: skip
    scale = ('layer { name: "sc1" type: "Scale" bottom: "c1" top: "c1"\n'
             "  scale_param { bias_term: true } }\n")  # fmt: skip
    out, net = imported(_write(tmp_path, HEAD + _conv("c1", "data", "c1", "bias_term: false")
                               + bn + scale + _act("r1", "c1")))  # fmt: skip
    assert [lyr.type for lyr in net.layers] == ["input", "conv", "bn"]
    b = net.layer("bn1")
    assert b.attrs["eps"] == 0.001 and b.attrs["activation"] == ("relu", 0.0)
    assert b.n_params == 2 * 6  # the Scale's gamma and beta
    assert b.attrs["lr_mult"] == 1.0 and b.attrs["decay_mult"] == 1.0  # as Caffe's Scale
    assert "bn1 (BatchNorm) + sc1 (Scale)" in out
    # a BatchNorm alone: gamma 1, beta 0 held
    _, net = imported(_write(tmp_path, HEAD + _conv("c1", "data", "c1") + bn, "alone.prototxt"))
    assert net.layer("bn1").attrs["lr_mult"] == 0.0


def test_lrn_alpha_is_converted_to_what_caffe_computes(tmp_path):
    """Caffe: y = x / (k + alpha/n * sum of x^2 over the n channels around)^beta."""
    from netdsl.ops import lrn

    n, alpha, beta, k = 5, 0.7, 0.75, 2.0
    text = (HEAD + f'layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"\n'
            f"  lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }} }}\n"
            )  # fmt: skip
    out, net = imported(_write(tmp_path, text))
    a = net.layer("norm").attrs
    assert "Caffe's alpha 0.7 / local_size 5" in out
    x = np.random.default_rng(0).normal(size=(2, 4, 8, 8)) * 3
    ours = lrn.ref_forward(x, a["size"], a["k"], a["alpha"], a["beta"])
    sq = np.pad(x**2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(n))
    caffes = x / (k + alpha / n * window) ** beta
    np.testing.assert_allclose(ours, caffes, rtol=1e-12)
    assert a["alpha"] != alpha  # the test would pass trivially otherwise


def test_a_train_val_file_keeps_the_train_phase_and_its_data_settings():
    out, net = imported(CAFFE / "caffenet_train_val.prototxt", input_shape=(3, 227, 227))
    assert "# Dropped: data (Data, TEST phase only), accuracy (Accuracy, TEST phase only)." in out
    assert net.layers[-1].type == "loss" and net.layers[-1].attrs["kind"] == "cross_entropy"
    assert net.train["batch"] == 256
    assert "augment crop(227), flip" in out  # crop_size and mirror
    assert "mean image data/ilsvrc12/imagenet_mean.binaryproto" in out


def test_the_input_size_comes_from_input_when_the_file_lacks_it(tmp_path):
    r = netdsl_cli("import", str(CAFFE / "lenet_train_test.prototxt"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == (
        f"{CAFFE / 'lenet_train_test.prototxt'}:2:1: error: the Data layer reads its images "
        "from examples/mnist/mnist_train_lmdb; their size is not in the prototxt"
    )
    assert r.stderr.splitlines()[-1] == "hint: give it with --input CxHxW, e.g. --input 1x28x28"
    _, net = imported(CAFFE / "lenet_train_test.prototxt", input_shape=(1, 28, 28))
    assert net.train["data"] == "mnist" and net.train["batch"] == 64
    # Caffe's scale 1/256 on 0..255 pixels: netdsl's (x/255 - 0) / std
    assert net.train["normalize"]["std"][0] == pytest.approx(256 / 255, rel=1e-5)


# ---------------------------------------------------------------------------- the solver


def test_the_solver_becomes_the_train_section():
    out, net = imported(CAFFE / "caffenet_train_val.prototxt", input_shape=(3, 227, 227),
                        solver=str(CAFFE / "caffenet_solver.prototxt"))  # fmt: skip
    t = net.train
    assert t["optimizer"]["lr"] == 0.01 and t["optimizer"]["momentum"] == 0.9
    assert t["optimizer"]["weight_decay"] == 0.0005
    per_epoch = 1281167 / 256  # iterations per epoch of ILSVRC-2012 at batch 256
    assert t["epochs"] == round(450000 / per_epoch)
    assert t["schedule"]["kind"] == "step"
    assert t["schedule"]["step_size"] == round(100000 / per_epoch)
    assert t["schedule"]["gamma"] == 0.1
    assert "solver_mode" in out and "snapshot" in out  # named as not converted


def test_the_inv_policy_is_approximated_within_what_the_comment_says():
    out, net = imported(CAFFE / "lenet_train_test.prototxt", input_shape=(1, 28, 28),
                        solver=str(CAFFE / "lenet_solver.prototxt"))  # fmt: skip
    t = net.train
    assert t["epochs"] == round(10000 * 64 / 60000)
    g = t["schedule"]["gamma"]
    assert t["schedule"]["kind"] == "exponential"
    stated = float(re.search(r"inv .* within ([\d.]+)%", out).group(1)) / 100
    per_epoch = 60000 / 64
    worst = max(abs(g**e / (1 + 1e-4 * e * per_epoch) ** -0.75 - 1) for e in range(t["epochs"]))
    assert worst <= stated < 0.05


def test_multistep_and_adam(tmp_path):
    solver = _write(tmp_path, 'type: "Adam"\nbase_lr: 0.001\nmomentum: 0.9\nmomentum2: 0.999\n'
                    'lr_policy: "multistep"\ngamma: 0.5\nstepvalue: 5000\nstepvalue: 7000\n'
                    "max_iter: 10000\n", "solver.prototxt")  # fmt: skip
    _, net = imported(CAFFE / "lenet_train_test.prototxt", input_shape=(1, 28, 28),
                      solver=str(solver))  # fmt: skip
    t = net.train
    assert t["optimizer"]["kind"] == "adam" and t["optimizer"]["lr"] == 0.001
    assert t["schedule"]["milestones"] == [round(5000 * 64 / 60000), round(7000 * 64 / 60000)]


# ------------------------------------------------------------------------ located errors

ERRORS = [
    ("deconv", HEAD + 'layer {\n  name: "up"\n  type: "Deconvolution"\n  bottom: "data"\n'
     '  top: "up" }\n', 6, "type", "layer type 'Deconvolution' is not supported"),
    ("within", HEAD + 'layer { name: "n" type: "LRN" bottom: "data" top: "n"\n'
     "  lrn_param { norm_region: WITHIN_CHANNEL } }\n", 5, "WITHIN_CHANNEL",
     "LRN within a channel"),
    ("prod", HEAD + _conv("a", "data", "a") + 'layer { name: "e" type: "Eltwise" '
     'bottom: "a" bottom: "a" top: "e"\n  eltwise_param { operation: PROD } }\n', 7, "PROD",
     "Eltwise PROD is not supported"),
    ("coeff", HEAD + _conv("a", "data", "a") + 'layer { name: "e" type: "Eltwise" '
     'bottom: "a" bottom: "a" top: "e"\n  eltwise_param { coeff: 1 coeff: -1 } }\n', 7, "1 coeff",
     "Eltwise with coefficients"),
    ("avepad", HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
     "  pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }\n", 5, "1 }",
     "average pooling with padding is not supported"),
    ("outside", HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
     "  pooling_param { pool: MAX kernel_size: 1 stride: 3 } }\n", 5, "3 }",
     "a last window that lies wholly outside the input"),
    ("losses", HEAD + _conv("c", "data", "c") + 'layer { name: "l1" type: "EuclideanLoss" '
     'bottom: "c" }\nlayer { name: "l2" type: "EuclideanLoss" bottom: "c" }\n', 7, "layer",
     "a second loss"),
    ("perpixel", HEAD + _conv("c", "data", "c") + 'layer { name: "l" type: "SoftmaxWithLoss" '
     'bottom: "c" }\n', 6, "layer", "the loss expects a vector of class scores, got 6x8x8"),
    ("groups", HEAD + _conv("c", "data", "c", "group: 3"), 4, "layer",
     "c expects 4 input channels divisible by groups=3"),
    ("syntax", HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
     "  pooling_param { pool: MAX kernel_size 3 } }\n", 5, "3 }", "unexpected '3'"),
    ("badchar", HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" @ }\n',
     4, "@", "unexpected character '@'"),
    ("bottom", HEAD + _conv("c", "nothing", "c"), 4, '"nothing"',
     "bottom 'nothing' is not the top of any layer before"),
    ("scale", HEAD + _conv("c", "data", "c") + 'layer { name: "s" type: "Scale" '
     'bottom: "c" top: "c" }\n', 6, "type", "layer type 'Scale' is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "at", "message"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])  # fmt: skip
def test_what_netdsl_cannot_express_is_an_error_in_the_source(tmp_path, text, line, at,
                                                              message):  # fmt: skip
    """The error is at `line`, at the first `at` on it."""
    src = _write(tmp_path, text, "deploy.prototxt")
    col = text.split("\n")[line - 1].index(at) + 1
    out = tmp_path / "out.net"
    r = netdsl_cli("import", "deploy.prototxt", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"deploy.prototxt:{line}:{col}: error: "), r.stderr
    assert message in first, r.stderr
    shown = src.read_text().split("\n")[line - 1]
    assert r.stderr.splitlines()[1].strip() == shown.strip()  # the source line and a caret
    assert "^" in r.stderr.splitlines()[2]
    assert "Traceback" not in r.stderr and not out.exists()  # never a partial file


@pytest.mark.parametrize(("solver", "line", "col", "message"), [
    ('base_lr: 0.1\nlr_policy: "sigmoid"\ngamma: 0.1\n', 2, 12, "lr_policy 'sigmoid'"),
    ('base_lr: 0.1\ntype: "AdaGrad"\n', 2, 7, "solver type AdaGrad is not supported"),
    ("base_lr: 0.1\nmomentum: 1.5\n", 2, 11, "momentum 1.5 is out of range"),
    ("base_lr: 0.1\nclip_gradients: 10\n", 2, 1, "gradient clipping is not supported"),
])  # fmt: skip
def test_a_solver_netdsl_cannot_follow_is_an_error_in_the_solver(tmp_path, solver, line, col,
                                                                 message):  # fmt: skip
    _write(tmp_path, solver, "solver.prototxt")
    r = netdsl_cli("import", str(CAFFE / "lenet.prototxt"), "--solver", "solver.prototxt",
                   cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"solver.prototxt:{line}:{col}: error: ") and message in first, first


def test_errors_are_netdsl_errors_in_process(tmp_path):
    with pytest.raises(NetError) as e:
        convert(str(_write(tmp_path, HEAD + 'layer { name: "x" type: "Crop" bottom: "data" '
                           'top: "x" }\n')), None, ImportOptions())  # fmt: skip
    assert e.value.loc.line == 4 and e.value.loc.col == len('layer { name: "x" ') + 1


def test_import_does_not_import_numba():
    code = (
        "import sys; from netdsl.cli import main; "
        f"code = main(['import', {str(CAFFE / 'googlenet_deploy.prototxt')!r}, '-o', "
        "'/dev/null']); "
        "assert code == 0, code; assert 'numba' not in sys.modules, 'numba was imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert r.returncode == 0, r.stderr


def caffe_pool(x: np.ndarray, mode: str, k: int, s: int, p: int, out: int) -> np.ndarray:
    """Caffe's pooling_layer.cpp forward, as written there: windows clipped to the padded
    input (hend = min(hstart + k, H + pad)) give AVE's divisor, then clipped to the image."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out, out))
    for i in range(out):
        for j in range(out):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.max(axis=(2, 3)) if mode == "MAX" else win.sum(axis=(2, 3)) / size
    return y


@pytest.mark.parametrize(
    ("mode", "k", "s", "pad"),
    [("AVE", 3, 2, 0), ("MAX", 3, 2, 1), ("MAX", 2, 2, 0), ("AVE", 2, 3, 0)],
)
def test_imported_pooling_computes_what_caffe_computes(tmp_path, mode, k, s, pad):
    """Caffe's rounding and its average (cifar10_quick's 3x3/2 AVE on 8x8 overhangs the
    input): netdsl's pooling of the imported line equals Caffe's, numerically."""
    from netdsl.ops import pool

    text = (HEAD + f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p"\n'
            f"  pooling_param {{ pool: {mode} kernel_size: {k} stride: {s} pad: {pad} }} }}\n"
            )  # fmt: skip
    _, net = imported(_write(tmp_path, text))
    a = net.layer("p").attrs
    x = np.random.default_rng(1).normal(size=(2, 4, 8, 8))
    out = int(math.ceil((8 + 2 * pad - k) / s)) + 1
    out -= bool(pad) and (out - 1) * s >= 8 + pad
    assert net.layer("p").out_shape == (4, out, out)
    ours = pool.ref_forward(x, a["mode"], a["kernel"], a["stride"], a["pad_tl"], a["out_hw"])
    np.testing.assert_allclose(ours, caffe_pool(x, mode, k, s, pad, out), rtol=1e-12)


def test_a_network_name_is_made_a_net_name(tmp_path):
    _, net = imported(CAFFE / "lenet.prototxt", name="my lenet/v2")
    assert net.name == "my_lenet_v2"


def test_each_layer_types_mapping(tmp_path):
    text = (HEAD
            + 'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"\n'
            "  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 3 }\n"
            "  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 stride: 2\n"
            "    dilation: 1 group: 2 weight_filler { type: \"msra\" }\n"
            "    bias_filler { type: \"constant\" value: 0.1 } } }\n"
            'layer { name: "pr" type: "PReLU" bottom: "c1" top: "pr"\n'
            "  prelu_param { channel_shared: true } }\n"
            'layer { name: "e" type: "ELU" bottom: "pr" top: "e" elu_param { alpha: 0.5 } }\n'
            'layer { name: "d" type: "Dropout" bottom: "e" top: "e"\n'
            "  dropout_param { dropout_ratio: 0.3 } }\n"
            'layer { name: "c2" type: "Convolution" bottom: "data" top: "c2"\n'
            "  convolution_param { num_output: 2 kernel_size: 3 stride: 2 pad: 1 dilation: 1\n"
            "    bias_term: false weight_filler { type: \"xavier\" variance_norm: AVERAGE } } }\n"
            'layer { name: "cat" type: "Concat" bottom: "e" bottom: "c2" top: "cat" }\n'
            'layer { name: "gap" type: "Pooling" bottom: "cat" top: "gap"\n'
            "  pooling_param { pool: AVE global_pooling: true } }\n"
            'layer { name: "f" type: "Flatten" bottom: "gap" top: "f" }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip"\n'
            "  inner_product_param { num_output: 3 weight_filler { type: \"gaussian\" std: 0.02 }"
            " } }\n"
            'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" }\n'
            )  # fmt: skip
    out, net = imported(_write(tmp_path, text))
    c1 = net.layer("c1").attrs
    assert (c1["kernel"], c1["stride"], c1["pad"], c1["groups"]) == ((3, 1), (2, 2), (1, 0), 2)
    assert (c1["lr_mult"], c1["decay_mult"], c1["bias_lr_mult"]) == (0, 0, 3)
    assert c1["init"]["kind"] == "he" and c1["bias_init"]["value"] == 0.1
    assert net.layer("pr").type == "prelu" and net.layer("pr").attrs["shared"] is True
    assert net.layer("pr").attrs["decay_mult"] == 1.0  # Caffe decays PReLU's slopes
    assert net.layer("e").attrs["activation"] == ("elu", 0.5)
    assert net.layer("d").attrs["p"] == 0.3 and net.layer("d").inputs == ["e"]
    # Caffe's xavier with variance_norm AVERAGE: sqrt(3 / ((fan_in + fan_out) / 2))
    fan_in, fan_out = 4 * 3 * 3, 2 * 3 * 3
    scale = net.layer("c2").attrs["init"]["scale"]
    assert scale == pytest.approx(math.sqrt(3 / ((fan_in + fan_out) / 2)), rel=1e-5)
    assert net.layer("cat").inputs == ["d", "c2"] and net.layer("cat").out_shape == (8, 4, 4)
    assert net.layer("gap").out_shape == (8, 1, 1) and net.layer("gap").attrs["mode"] == "avg"
    assert net.layer("f").type == "flatten"
    assert net.layer("ip").attrs["init"] == {"kind": "gaussian", "std": 0.02, "mean": 0.0}
    assert net.layer("loss").attrs["kind"] == "mse"


@pytest.mark.parametrize(("data", "shape"), [
    ('type: "MemoryData" memory_data_param { batch_size: 8 channels: 2 height: 12 width: 10 }',
     (2, 12, 10)),
    ('type: "ImageData" image_data_param { source: "list.txt" batch_size: 8 is_color: false }\n'
     "  transform_param { crop_size: 9 mirror: true }", (1, 9, 9)),
    ('type: "ImageData" image_data_param { source: "list.txt" new_height: 11 new_width: 13 }',
     (3, 11, 13)),
])  # fmt: skip
def test_data_layers_that_state_their_size(tmp_path, data, shape):
    text = (f'layer {{ name: "in" {data} top: "data" top: "label" }}\n'
            + _conv("c", "data", "c")
            + 'layer { name: "ip" type: "InnerProduct" bottom: "c" top: "ip"\n'
            "  inner_product_param { num_output: 3 } }\n"
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }\n'
            )  # fmt: skip
    out, net = imported(_write(tmp_path, text))
    assert net.layers[0].out_shape == shape
    assert net.train["batch"] == 8 or "list.txt" in out
    if "mirror" in data:
        assert "augment crop(9), flip" in out
    with pytest.raises(NetError, match="differs from the file's input"):
        imported(_write(tmp_path, text), input_shape=(5, 5, 5))


def test_a_crop_size_and_another_input_disagree(tmp_path):
    text = ('layer { name: "in" type: "Data" top: "data" top: "label"\n'
            '  data_param { source: "x_lmdb" batch_size: 4 } transform_param { crop_size: 20 } }\n'
            + _conv("c", "data", "c"))  # fmt: skip
    _, net = imported(_write(tmp_path, text), input_shape=(3, 20, 20))
    assert net.layers[0].out_shape == (3, 20, 20)
    with pytest.raises(NetError) as e:
        imported(_write(tmp_path, text), input_shape=(3, 24, 24))
    assert "crop_size 20" in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (2, text.split("\n")[1].index("20") + 1)


def test_googlenets_auxiliary_losses_are_refused_at_their_weight():
    src = CAFFE / "googlenet_train_val.prototxt"
    with pytest.raises(NetError) as e:
        convert(str(src), None, ImportOptions(input_shape=(3, 224, 224)))
    line = src.read_text().split("\n").index("  loss_weight: 0.3") + 1  # the first one
    assert (e.value.loc.line, e.value.loc.col) == (line, len("  loss_weight: ") + 1)
