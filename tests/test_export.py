"""`netdsl export` (ONNX, safetensors, PyTorch source) and `netdsl train --init-from`.

Every layer type and activation kind (tiny nets) and every net in nets/ (random weights,
batch norm with random running statistics) is exported and run in onnxruntime and, through
the generated PyTorch module loading the safetensors file, in PyTorch; both must give
CompiledNet.forward's output within 1e-4 of the output's largest magnitude.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netdsl
from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NETS = sorted((ROOT / "nets").glob("*.net"))
TOL = 1e-4  # of the output's largest magnitude

# (name, body after the input line, input shape): every layer type, option and kind
TINY = [
    ("conv", "conv c: 4 filters 3x3, stride 2, pad 1, relu", "3x9x9"),
    ("conv_same_odd", "conv c: 4 filters 4x4, stride 2, pad same, leaky(0.1)", "3x9x8"),
    ("conv_dilated_nobias", "conv c: 4 filters 3x3, dilation 2, bias false, elu", "2x9x9"),
    (
        "conv_grouped",
        "conv c: 6 filters 3x3, groups 2, tanh\nconv d: 4 filters 1x1, groups 2",
        "4x7x7",
    ),
    ("conv_table", "conv c: 3 filters 3x3, connect [[0], [1, 2], [0, 2, 3]], sigmoid", "4x7x7"),
    ("local", "local l: 4 filters 3x3, stride 2, pad 1, groups 2, relu", "4x7x7"),
    ("local_same_nobias", "local l: 3 filters 2x2, stride 1x2, pad same, bias false", "2x5x6"),
    ("local_after_fc", "fc h: 12\nlocal l: 2 filters 1x1, groups 2, sigmoid", "2x3x3"),
    ("pool_max_ceil", "pool p: max 3x3, stride 2, ceil", "3x8x8"),
    ("pool_max_pad", "pool p: max 3x3, stride 2, pad 1, floor", "3x8x8"),
    ("pool_max_wide_pad", "pool p: max 3x3, stride 2, pad 2, ceil", "3x8x8"),
    ("pool_avg_ceil_pad", "pool p: avg 3x3, stride 2, pad 1, ceil", "3x8x8"),
    ("pool_avg_wide_pad", "pool p: avg 3x3, stride 2, pad 2, floor", "3x9x9"),
    ("pool_max_ceil_drop", "pool p: max 2x2, stride 3, pad 1, ceil", "3x4x4"),  # Caffe's rule
    ("pool_avg_ceil_drop", "pool p: avg 2x2, stride 3, pad 1, ceil", "3x4x4"),
    ("pool_sum_ceil", "pool p: sum 2x2, stride 2, ceil", "3x7x7"),
    ("pool_sum_pad", "pool p: sum 3x3, stride 2, pad 2, ceil", "3x7x7"),
    ("pool_global_max", "pool p: max, global", "3x5x6"),
    ("pool_global_avg", "pool p: avg, global", "3x5x6"),
    ("pool_global_sum", "pool p: sum, global", "3x5x6"),
    ("lrn", "lrn n: size 3, k 1.5, alpha 0.3, beta 0.75", "6x4x4"),
    ("subsample", "subsample s: 2x2, scaled_tanh", "3x8x8"),
    ("subsample_stride", "subsample s: 3x3, stride 2", "3x9x9"),
    ("maxout", "conv c: 6 filters 1x1\nmaxout m: 3 pieces", "2x5x5"),
    ("bn_prelu", "conv c: 4 filters 3x3\nbn b: relu\nprelu p", "3x6x6"),
    ("prelu_shared", "prelu p: shared", "3x4x4"),
    ("upsample", "upsample u: 2x3\nconv c: 2 filters 3x3", "2x4x4"),
    (
        "concat_add",
        "conv a: 3 filters 3x3, pad 1\nconv b: 3 filters 1x1\n"
        "add s(a, b): relu\nconcat c(s, a, image)",
        "3x5x5",
    ),
    (
        "act_layers",
        "relu r1\ntanh t1\nsigmoid s1\nelu e1: 0.5\nleaky l1: 0.2\n"
        "act st: scaled_tanh(A=1.5, S=0.5)\nact a1: linear",
        "2x3x3",
    ),
    ("flatten_fc", "flatten f\nfc h: 7, bias false, tanh\ndropout d: 0.3", "2x3x3"),
    (
        "fc_then_vector_layers",
        "fc h: 6\nbn b\nprelu p\nfc g: 6\nconcat c(b, g)\nadd s(c, c)\nsoftmax sm",
        "2x3x3",
    ),
    ("fc_then_maps", "fc h: 8\nconv c: 2 filters 1x1\nmaxout m: 2 pieces", "2x3x3"),
]


def tiny_net(tmp_path: Path, name: str, body: str, shape: str, gpus: int = 1) -> Path:
    head = f"network {name}\n" + (f"gpus {gpus}\n" if gpus > 1 else "")
    text = f"{head}input image: {shape}\n{body}\nfc out: 5\nloss cross_entropy\n"
    path = tmp_path / f"{name}.net"
    path.write_text(text)
    return path


def random_weights(cnet, seed: int = 0):
    """Random parameters (the compiled init, plus noise for gammas and biases that start
    constant) and random running statistics; set into cnet, returned as a checkpoint dict."""
    rng = np.random.default_rng(seed)
    params = {k: (v + rng.normal(0, 0.2, v.shape)).astype(np.float32)
              for k, v in cnet.params.items()}  # fmt: skip
    for k, v in cnet.buffers.items():
        params[k] = (rng.uniform(0.5, 2.0, v.shape) if k.endswith("running_var")
                     else rng.normal(0, 0.3, v.shape)).astype(np.float32)  # fmt: skip
    cnet.set_params(params)
    arrays = {f"param.{k}": v for k, v in cnet.params.items()}
    arrays.update({f"state.{k}": v for k, v in cnet.buffers.items()})
    return arrays


def session(ort, model):
    """An onnxruntime session running the graph as exported (no graph rewrites: faster to
    build for the big nets, and what runs is exactly what was written)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= TOL, f"relative error {err:.2e}"


def export_and_compare(tmp_path: Path, net_file: Path, batch: int) -> None:
    """Export net_file with random weights through the CLI and compare onnxruntime and the
    generated PyTorch module with CompiledNet.forward."""
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from netdsl.export.pytorch import load_generated

    cnet = netdsl.compile(net_file, batch=batch, seed=1)
    ckpt = tmp_path / "ckpt.npz"
    save_checkpoint(ckpt, random_weights(cnet), {"epoch": 1})
    x = np.random.default_rng(2).normal(size=(batch, *cnet.net.input.out_shape))
    x = x.astype(np.float32)
    want = cnet.forward(x).astype(np.float64)
    outs = [tmp_path / "m.onnx", tmp_path / "m.safetensors", tmp_path / "m.py"]
    assert main(["export", str(net_file), str(ckpt), "--onnx", str(outs[0]),
                 "--safetensors", str(outs[1]), "--pytorch", str(outs[2])]) == 0  # fmt: skip

    sess = session(ort, str(outs[0]))
    close(sess.run(["scores"], {"input": x})[0], want)

    model = load_generated(outs[2])
    model.load_state_dict(st.load_file(str(outs[1])))  # strict: every name and shape
    model.eval()
    with torch.no_grad():
        close(model(torch.from_numpy(x)).numpy(), want)


def test_the_tiny_nets_cover_every_layer_type_and_activation(tmp_path):
    from netdsl.ops import activations, registry

    types, kinds = set(), set()
    for name, body, shape in TINY:
        for lyr in netdsl.load(tiny_net(tmp_path, name, body, shape)).layers:
            types.add(lyr.type)
            if "activation" in lyr.attrs:
                kinds.add(lyr.attrs["activation"][0])
    assert types == set(registry.types()), "add a tiny net for the new layer type to TINY"
    assert kinds == set(activations.kinds()), "add the new activation kind to TINY"


@pytest.mark.parametrize("name,body,shape", TINY, ids=[t[0] for t in TINY])
def test_every_layer_type_exports_exactly(tmp_path, name, body, shape):
    export_and_compare(tmp_path, tiny_net(tmp_path, name, body, shape), batch=2)


def test_gpu_groups_flatten_into_one_graph(tmp_path):
    body = ("conv c: 8 filters 3x3, groups 2, relu\nlrn n: size 3\n"
            "conv d: 4 filters 3x3, pad 1, groups 2\nconv e: 4 filters 1x1")  # fmt: skip
    export_and_compare(tmp_path, tiny_net(tmp_path, "twogpus", body, "4x7x7", gpus=2), batch=2)


BIG = 20_000_000  # parameters: AlexNet and VGG-16 are checked in ONNX only, in memory


def _shipped():
    for p in NETS:  # the big two take 15-30 s each (compile, 0.2-0.5 GB of weights)
        big = sum(lyr.n_params for lyr in netdsl.load(p).layers) >= BIG
        yield pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if big else [])


@pytest.mark.parametrize("net_file", list(_shipped()))
def test_every_shipped_net_exports_exactly(tmp_path, net_file):
    if sum(lyr.n_params for lyr in netdsl.load(net_file).layers) < BIG:
        export_and_compare(tmp_path, net_file, batch=1)
        return
    ort = pytest.importorskip("onnxruntime")
    from netdsl.export.onnx import build_model

    cnet = netdsl.compile(net_file, batch=1, seed=1)  # its own random init: no copies
    x = np.random.default_rng(2).normal(size=(1, *cnet.net.input.out_shape))
    x = x.astype(np.float32)
    want = cnet.forward(x).astype(np.float64)
    model = build_model(cnet.net, {**cnet.params, **cnet.buffers}).SerializeToString()
    del cnet
    sess = session(ort, model)
    close(sess.run(["scores"], {"input": x})[0], want)


# ---------------------------------------------------------------- formats, in detail
def test_onnx_is_checked_and_keeps_alpha_converted(tmp_path):
    onnx = pytest.importorskip("onnx")
    from netdsl.export.onnx import build_model

    net = netdsl.load(tiny_net(tmp_path, "lrn", "lrn n: size 5, k 2, alpha 1e-4", "6x4x4"))
    tensors = {"out.weight": np.zeros((5, 96), np.float32), "out.bias": np.zeros(5, np.float32)}
    model = build_model(net, tensors, probabilities=True)
    onnx.checker.check_model(model)
    (lrn,) = [n for n in model.graph.node if n.op_type == "LRN"]
    alpha = next(a.f for a in lrn.attribute if a.name == "alpha")
    assert alpha == pytest.approx(5e-4)  # ONNX divides alpha by size; netdsl does not
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not [n for n in model.graph.node if n.op_type == "Dropout"]


def test_state_dict_names_and_layouts(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    net_file = tiny_net(tmp_path, "names", "conv c: 4 filters 3x3\nbn b\nfc h: 6", "3x6x6")
    cnet = netdsl.compile(net_file, batch=1)
    save_checkpoint(tmp_path / "c.npz", random_weights(cnet), {})
    out = tmp_path / "w.safetensors"
    assert main(["export", str(net_file), str(tmp_path / "c.npz"), "--safetensors",
                 str(out)]) == 0  # fmt: skip
    got = st.load_file(str(out))
    assert {k: v.shape for k, v in got.items()} == {
        "c.weight": (4, 3, 3, 3), "c.bias": (4,), "b.weight": (4,), "b.bias": (4,),
        "b.running_mean": (4,), "b.running_var": (4,), "b.num_batches_tracked": (),
        "h.weight": (6, 64), "h.bias": (6,), "out.weight": (5, 6), "out.bias": (5,),
    }  # fmt: skip
    np.testing.assert_array_equal(got["h.weight"], cnet.params["h.weight"])
    assert got["b.num_batches_tracked"].dtype == np.int64
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, none left


def test_local_state_dict_layout_and_the_generated_module_round_trip(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    pytest.importorskip("torch")
    from netdsl.export.pytorch import load_generated
    from netdsl.export.safetensors import init_compiled

    body = "local l: 4 filters 3x3, stride 2, groups 2\nlocal m: 2 filters 1x1, bias false"
    net_file = tiny_net(tmp_path, "loc", body, "2x5x5")
    cnet = netdsl.compile(net_file, batch=1)
    save_checkpoint(tmp_path / "c.npz", random_weights(cnet), {})
    out = tmp_path / "w.safetensors"
    assert main(["export", str(net_file), str(tmp_path / "c.npz"), "--safetensors", str(out),
                 "--pytorch", str(tmp_path / "m.py")]) == 0  # fmt: skip
    got = {k: v.numpy() for k, v in st.load_file(str(out)).items()}
    shapes = {"l.weight": (4, 2, 2, 1, 3, 3), "l.bias": (4, 2, 2), "m.weight": (2, 2, 2, 4, 1, 1),
              "out.weight": (5, 8), "out.bias": (5,)}  # fmt: skip
    assert {k: v.shape for k, v in got.items()} == shapes  # (O, Ho, Wo, C/g, kh, kw), (O, Ho, Wo)
    np.testing.assert_array_equal(got["l.weight"], cnet.params["l.weight"])
    # the generated module's own (PyTorch) init has those names and shapes: --init-from takes it
    model = load_generated(tmp_path / "m.py")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    st.save_file(model.state_dict(), str(tmp_path / "pt.safetensors"))
    init_compiled(cnet, tmp_path / "pt.safetensors")
    np.testing.assert_array_equal(cnet.params["m.weight"], model.m.weight.detach().numpy())


def test_connection_table_is_exported_with_zeroed_links(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    net_file = tiny_net(tmp_path, "table", "conv c: 2 filters 1x1, connect [[0], [1]]", "2x3x3")
    cnet = netdsl.compile(net_file, batch=1)
    save_checkpoint(tmp_path / "c.npz", random_weights(cnet), {})
    out = tmp_path / "w.safetensors"
    assert main(["export", str(net_file), str(tmp_path / "c.npz"), "--safetensors",
                 str(out)]) == 0  # fmt: skip
    w = st.load_file(str(out))["c.weight"][:, :, 0, 0]
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[0, 0] != 0 and w[1, 1] != 0


def test_export_imports_no_numba(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("safetensors")
    net_file = ROOT / "nets" / "lenet5.net"
    net = netdsl.load(net_file)
    rng = np.random.default_rng(0)
    arrays = {f"param.{lyr.name}.{k}": rng.normal(size=s).astype(np.float32)
              for lyr in net.layers for k, s in lyr.params.items()}  # fmt: skip
    save_checkpoint(tmp_path / "c.npz", arrays, {})
    argv = ["export", str(net_file), str(tmp_path / "c.npz"), "--onnx",
            str(tmp_path / "m.onnx"), "--safetensors", str(tmp_path / "m.st"),
            "--pytorch", str(tmp_path / "m.py")]  # fmt: skip
    code = f"import sys; from netdsl.cli import main; print(main({argv!r}), 'numba' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["0", "False"], r.stderr
    assert "class Lenet5(nn.Module)" in (tmp_path / "m.py").read_text()


def test_a_layer_type_without_a_mapping_is_a_located_error(tmp_path):
    from netdsl.errors import NetError
    from netdsl.ops.base import LayerType

    net = netdsl.load(tiny_net(tmp_path, "new", "relu r", "1x4x4"))
    with pytest.raises(NetError, match="cannot export layer type 'newtype' to ONNX") as info:
        type("NewType", (LayerType,), {"name": "newtype"})().onnx_nodes(net.layers[1], None)
    assert info.value.loc.line == 3  # the layer's line in the .net file


def test_probabilities_output(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from netdsl.export.onnx import build_model

    cnet = netdsl.compile(tiny_net(tmp_path, "p", "conv c: 2 filters 3x3", "1x5x5"), batch=2)
    x = np.random.default_rng(0).normal(size=(2, 1, 5, 5)).astype(np.float32)
    z = cnet.forward(x).astype(np.float64)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    model = build_model(cnet.net, {**cnet.params, **cnet.buffers}, probabilities=True)
    sess = session(ort, model.SerializeToString())
    close(sess.run(["probabilities"], {"input": x})[0], want)


# ---------------------------------------------------------------- errors
def test_export_usage_errors(tmp_path, capsys):
    net_file = str(ROOT / "nets" / "lenet5.net")
    assert main(["export", net_file]) == 2
    assert "say what to write" in capsys.readouterr().err
    assert main(["export", net_file, "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "--onnx needs the weights: give a CHECKPOINT" in capsys.readouterr().err
    assert main(["export", net_file, "--pytorch", net_file]) == 2
    assert "would overwrite an input file" in capsys.readouterr().err


def test_checkpoint_of_another_net_is_refused(tmp_path, capsys):
    a = tiny_net(tmp_path, "a", "conv c: 4 filters 3x3", "3x6x6")
    b = tiny_net(tmp_path, "b", "conv c: 5 filters 3x3", "3x6x6")
    save_checkpoint(tmp_path / "a.npz", random_weights(netdsl.compile(a, batch=1)), {})
    out = tmp_path / "b.safetensors"
    assert main(["export", str(b), str(tmp_path / "a.npz"), "--safetensors", str(out)]) == 1
    err = capsys.readouterr().err
    assert "a.npz: does not fit b: c.weight is (4, 3, 3, 3) in the checkpoint" in err
    assert "(5, 3, 3, 3)" in err and not out.exists()


def test_diverged_checkpoint_and_bad_init_file_are_refused(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from netdsl.export.safetensors import init_compiled

    net_file = tiny_net(tmp_path, "nan", "conv c: 2 filters 3x3", "1x5x5")
    cnet = netdsl.compile(net_file, batch=1)
    arrays = random_weights(cnet)
    arrays["param.c.bias"][0] = np.nan
    save_checkpoint(tmp_path / "c.npz", arrays, {})
    out = tmp_path / "m.safetensors"
    assert main(["export", str(net_file), str(tmp_path / "c.npz"), "--safetensors",
                 str(out)]) == 1  # fmt: skip
    assert "c.npz: c.bias holds NaN or infinite values" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="junk.safetensors: not a readable safetensors file"):
        init_compiled(cnet, tmp_path / "junk.safetensors")


def test_unwritable_output_and_missing_extra(tmp_path, capsys, monkeypatch):
    net_file = str(ROOT / "nets" / "lenet5.net")
    bad = tmp_path / "no" / "such" / "m.py"
    assert main(["export", net_file, "--pytorch", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "m.py: cannot write:" in err and err.count("\n") == 1  # one line, no traceback
    assert not bad.parent.exists()
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    save_checkpoint(tmp_path / "c.npz", {}, {})
    assert main(["export", net_file, str(tmp_path / "c.npz"), "--onnx",
                 str(tmp_path / "m.onnx")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "needs the onnx package" in err and "pip install 'netdsl[onnx]'" in err
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- --init-from
def test_init_from_loads_every_tensor(tmp_path):
    pytest.importorskip("safetensors")
    from netdsl.export.safetensors import init_compiled, save_safetensors

    net_file = tiny_net(tmp_path, "init", "conv c: 4 filters 3x3\nbn b: relu", "3x6x6")
    a = netdsl.compile(net_file, batch=2, seed=1)
    random_weights(a)
    save_safetensors(a.net, {**a.params, **a.buffers}, tmp_path / "w.safetensors")
    b = netdsl.compile(net_file, batch=2, seed=7)
    init_compiled(b, tmp_path / "w.safetensors")
    for k, v in {**a.params, **a.buffers}.items():
        np.testing.assert_array_equal({**b.params, **b.buffers}[k], v)


def test_init_from_refuses_what_does_not_fit_unless_partial(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from netdsl.export.safetensors import init_compiled, save_safetensors

    a = netdsl.compile(tiny_net(tmp_path, "a", "conv c: 4 filters 3x3", "3x6x6"), batch=1)
    w = tmp_path / "w.safetensors"
    save_safetensors(a.net, {**a.params, **a.buffers}, w)
    b = netdsl.compile(tiny_net(tmp_path, "b", "conv c: 4 filters 3x3\nfc h: 3", "3x6x6"),
                       batch=1)  # fmt: skip
    with pytest.raises(DataError, match=r"w.safetensors: does not fit b: no tensor h.weight"):
        init_compiled(b, w)
    before = b.params["out.weight"].copy()
    init_compiled(b, w, partial=True)
    err = capsys.readouterr().err
    assert "3 of 6 tensors loaded" in err  # c.weight, c.bias and out.bias: (5,) in both
    assert "left at their init: h.weight, h.bias, out.weight\n" in err
    assert "not used from the file: out.weight\n" in err  # (5, 64) is not (5, 3)
    np.testing.assert_array_equal(b.params["c.weight"], a.params["c.weight"])
    np.testing.assert_array_equal(b.params["out.weight"], before)


def test_train_init_from_a_pytorch_state_dict(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from netdsl.export.pytorch import load_generated

    net_file = tiny_net(tmp_path, "ft", "conv c: 4 filters 3x3, relu", "1x6x6")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(32, 1, 6, 6)).astype(np.float32),
             y=rng.integers(0, 5, 32))  # fmt: skip
    assert main(["export", str(net_file), "--pytorch", str(tmp_path / "m.py")]) == 0
    model = load_generated(tmp_path / "m.py")  # PyTorch's own init, saved by PyTorch
    st.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    data = f"{tmp_path / 'd.npz'},{tmp_path / 'd.npz'}"  # train and test sets
    args = ["train", str(net_file), "--data", data, "--epochs", "1", "--batch", "16",
            "--quiet"]  # fmt: skip
    run = ["--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "w.safetensors")]
    assert main([*args, *run]) == 0
    assert "--init-from" in capsys.readouterr().err
    assert main([*args, *run, "--resume"]) == 2
    bad = {**model.state_dict(), "c.weight": torch.zeros(4, 1, 2, 2)}
    st.save_file(bad, str(tmp_path / "bad.safetensors"))
    assert main([*args, "--out", str(tmp_path / "run2"), "--init-from",
                 str(tmp_path / "bad.safetensors")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "bad.safetensors: does not fit ft: c.weight is (4, 1, 2, 2)" in err
