"""Locally connected layer (`local`): reference vs finite differences and hand values, CPU and
CUDA (simulator) kernels vs reference, reference vs PyTorch; the language, the report; a
tiny net that trains, on CPU, CUDA and 2 logical GPUs; the cuda-convnet / Darknet mappings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, assert_net_matches_torch, check_reference_grad

import netdsl
from netdsl import reference
from netdsl.backends import compile_network
from netdsl.errors import Location, NetError
from netdsl.interop import ForeignLayer, ImportContext, ImportedNet, write_net
from netdsl.ops import local
from netdsl.ops.registry import get
from netdsl.report import summary_text

# (name, N, C, H, W, O, (kh, kw), stride, pad (top, left), (Ho, Wo), groups). The output size
# is given: smaller than the padded input allows drops the bottom/right taps (asymmetric).
CASES = [
    ("pad-stride-groups", 2, 4, 5, 6, 4, (3, 2), (2, 1), (1, 1), (3, 7), 2),
    ("valid", 2, 3, 4, 4, 2, (3, 3), (1, 1), (0, 0), (2, 2), 1),
    ("one-by-one", 3, 2, 3, 2, 3, (1, 1), (1, 1), (0, 0), (3, 2), 1),
    ("kernel-covers-input", 2, 2, 3, 4, 2, (3, 4), (1, 1), (0, 0), (1, 1), 1),
    ("drops-bottom-right", 1, 2, 5, 5, 2, (2, 2), (2, 2), (1, 0), (3, 2), 2),
    ("windows-all-padding", 2, 2, 2, 3, 2, (2, 1), (1, 2), (3, 2), (7, 4), 1),
]
IDS = [c[0] for c in CASES]


def tensors(case, seed: int = 0, dtype=np.float64):
    _, n, c, h, w, o, k, s, p, out_hw, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, *out_hw, c // g, *k)).astype(dtype)
    b = rng.standard_normal((o, *out_hw)).astype(dtype)
    return x, wt, b


def test_reference_values() -> None:
    # 1 channel, 3x3 input, 2x2 kernel, pad 1: output (i, j) sums its window times (i*3 + j),
    # its own weight, plus its own bias 0.5*(i*3 + j)
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    scale = np.arange(9.0).reshape(3, 3)
    w = np.ones((1, 3, 3, 1, 2, 2)) * scale[None, :, :, None, None, None]
    y = local.ref_forward(x, w, 0.5 * scale[None], (1, 1), (1, 1), 1)
    sums = np.array([[0, 1, 3], [3, 8, 12], [9, 20, 24]])  # the 2x2 window sums (conv's)
    np.testing.assert_allclose(y[0, 0], sums * scale + 0.5 * scale)


def test_shared_filters_are_a_convolution() -> None:
    """With one filter copied to every location, the layer is conv's (an independent rule)."""
    from netdsl.ops import conv

    x, wt, b = tensors(CASES[0])
    _, n, c, h, w, o, k, s, p, out_hw, g = CASES[0]
    shared = np.broadcast_to(wt[:, :1, :1], wt.shape)
    y = local.ref_forward(x, shared, None, s, p, g)
    assert_close(y, conv.ref_forward(x, wt[:, 0, 0], None, s, p, (1, 1), g, out_hw), 1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_grad(case) -> None:
    _, n, c, h, w, o, k, s, p, out_hw, g = case
    x, wt, b = tensors(case)
    check_reference_grad(
        lambda x, wt, b: local.ref_forward(x, wt, b, s, p, g),
        lambda dy: local.ref_backward(dy, x, wt, s, p, g),
        [x, wt, b],
    )


def run_op(make, case, bias: bool, want_dx: bool, dev=lambda a: a, host=lambda a: a):
    """Forward and backward of a LocalCPU / LocalCUDA built by `make`; NaN-filled outputs, so
    every element must be written, and the backward run twice (no state kept between calls)."""
    _, n, c, h, w, o, k, s, p, out_hw, g = case
    x, wt, b = tensors(case, 1, np.float32)
    b = b if bias else None
    op = make(n, c, h, w, o, *k, s, p, g, out_hw, bias)
    y = dev(np.full((n, o, *out_hw), np.nan, np.float32))
    op.forward(dev(x), dev(wt), None if b is None else dev(b), y)
    dy = np.random.default_rng(2).standard_normal((n, o, *out_hw)).astype(np.float32)
    dx = dev(np.full_like(x, np.nan)) if want_dx else None
    dw = dev(np.full_like(wt, np.nan))
    db = dev(np.full((o, *out_hw), np.nan, np.float32)) if bias else None
    for _ in range(2):
        op.backward(dev(dy), dev(x), dev(wt), dx, dw, db)
    y_ref = local.ref_forward(x, wt, b, s, p, g)
    dx_ref, dw_ref, db_ref = local.ref_backward(dy, x, wt, s, p, g)
    assert_close(host(y), y_ref, 1e-4, "forward")
    assert_close(host(dw), dw_ref, 1e-4, "dw")
    if want_dx:
        assert_close(host(dx), dx_ref, 1e-4, "dx")
    if bias:
        assert_close(host(db), db_ref, 1e-4, "db")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("bias, want_dx", [(True, True), (False, False)])
def test_cpu_matches_reference(case, bias: bool, want_dx: bool) -> None:
    run_op(local.LocalCPU, case, bias, want_dx)


def test_cpu_several_workers(monkeypatch) -> None:
    """Locations split over 3 threads (7 of them: uneven), input gradients summed over them."""
    monkeypatch.setattr(local, "num_threads", lambda: 3)
    monkeypatch.setattr(local, "PARALLEL_MIN_WORK", 0)
    case = ("workers", 3, 2, 4, 7, 4, (2, 2), (1, 1), (0, 0), (1, 7), 2)
    run_op(local.LocalCPU, case, True, True)
    assert local.LocalCPU(3, 2, 4, 7, 4, 2, 2, (1, 1), (0, 0), 2, (1, 7), True).workers.n == 3


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]], ids=[IDS[0], IDS[4], IDS[5]])
def test_cuda_matches_reference(case) -> None:
    from numba import cuda

    run_op(local.LocalCUDA, case, True, True, dev=cuda.to_device, host=lambda a: a.copy_to_host())


def test_cuda_fused_activation() -> None:
    from numba import cuda

    from netdsl.ops.activation import ACT_CODE

    _, n, c, h, w, o, k, s, p, out_hw, g = case = CASES[1]
    x, wt, b = tensors(case, 3, np.float32)
    op = local.LocalCUDA(n, c, h, w, o, *k, s, p, g, out_hw, True, ACT_CODE["relu"])
    y = cuda.to_device(np.full((n, o, *out_hw), np.nan, np.float32))
    op.forward(cuda.to_device(x), cuda.to_device(wt), cuda.to_device(b), y)
    expect = np.maximum(local.ref_forward(x, wt, b, s, p, g), 0.0)
    assert_close(y.copy_to_host(), expect, 1e-4, "relu(local)")


def test_import_does_not_load_numba() -> None:
    code = ("import sys, netdsl.ops.local, netdsl.ops.layers.local; "
            "assert 'numba' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_torch(case) -> None:
    """Against PyTorch written out location by location (no unfold, unlike the twin)."""
    import torch
    import torch.nn.functional as F

    _, n, c, h, w, o, k, s, p, (ho, wo), g = case
    x, wt, b = tensors(case, seed=4)
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    xp = F.pad(xt, (p[1], max(0, (wo - 1) * s[1] + k[1] - w - p[1]),
                    p[0], max(0, (ho - 1) * s[0] + k[0] - h - p[0])))  # fmt: skip
    cg, og = c // g, o // g
    rows = []
    for i in range(ho):
        cols = []
        for j in range(wo):
            win = xp[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]
            outs = [torch.einsum("nckl,ockl->no", win[:, q * cg : (q + 1) * cg],
                                 wtt[q * og : (q + 1) * og, i, j]) for q in range(g)]  # fmt: skip
            cols.append(torch.cat(outs, 1))
        rows.append(torch.stack(cols, -1))
    yt = torch.stack(rows, -2) + bt[None]
    dy = np.random.default_rng(5).standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    assert_close(local.ref_forward(x, wt, b, s, p, g), yt.detach().numpy(), 1e-10, "y")
    grads = local.ref_backward(dy, x, wt, s, p, g)
    for name, mine, theirs in zip(("dx", "dw", "db"), grads, (xt, wtt, bt), strict=True):
        assert_close(mine, theirs.grad.numpy(), 1e-10, name)


# ------------------------------------------------------------------------------- the language


def one(text: str, shape: str = "4x6x6") -> netdsl.Network:
    return netdsl.loads(f"input image: {shape}\n{text}\nfc out: 3\nloss cross_entropy\n", "l.net")


@pytest.mark.parametrize(
    ("text", "shape", "params"),
    [
        ("local l: 8 filters 3x3", (8, 4, 4), 8 * 16 * 4 * 9 + 8 * 16),
        ("local l: 8 filters 3x3, pad 1, relu", (8, 6, 6), 8 * 36 * 4 * 9 + 8 * 36),
        ("local l: filters=8, kernel=3, stride=2, pad=same", (8, 3, 3), 8 * 9 * 4 * 9 + 8 * 9),
        ("local l: 6 filters 2x3, stride 2x1, groups 2, bias off", (6, 3, 4), 6 * 12 * 2 * 6),
        ("locally_connected l: 2 filters 1x1", (2, 6, 6), 2 * 36 * 4 + 2 * 36),
    ],
)
def test_spellings_shapes_and_counts(text, shape, params) -> None:
    lyr = one(text).layer("l")
    assert lyr.type == "local"
    assert lyr.out_shape == shape
    assert lyr.n_params == params
    o, ho, wo = shape
    k = lyr.attrs["kernel"][0] * lyr.attrs["kernel"][1] * 4 // lyr.attrs["groups"]
    assert lyr.macs == o * ho * wo * k
    assert lyr.params["weight"] == (o, ho, wo, 4 // lyr.attrs["groups"], *lyr.attrs["kernel"])


@pytest.mark.parametrize(
    ("text", "message", "col"),
    [
        ("local l: 8 filters 9x3", "l: kernel 9 is larger than its padded input height 6", 20),
        ("local l: 8 filters 3x3, groups 3", "l expects 4 input channels divisible by groups=3",
         25),
        ("local l: 6 filters 3x3, groups 4", "l: 6 filters are not divisible by groups=4", 25),
        ("local l: 3x3", "local needs a number of filters", 1),
        ("local l: 8 filters 3x3, dilation 2", "unknown option 'dilation' for local", 25),
    ],
)  # fmt: skip
def test_errors_are_located(text, message, col) -> None:
    with pytest.raises(NetError) as info:
        one(text)
    assert info.value.message == message
    assert (info.value.loc.line, info.value.loc.col) == (2, col)


def test_summary_row() -> None:
    text = summary_text(one("local l: 8 filters 3x3, pad 1, stride 2, groups 2, relu"))
    row = next(ln for ln in text.splitlines() if ln.split()[:2] == ["1", "l"])
    assert row.split()[2:6] == ["local+relu", "3x3/2", "p1", "g2"]
    assert row.split()[6:9] == ["4x6x6", "8x3x3", "1,368"]  # 8*9*2*9 weights + 8*9 biases


# ------------------------------------------------------------------------------- whole nets

NET = """network loc
input image: 3x8x8
conv  c1: 4 filters 3x3, pad 1, relu
local l2: 6 filters 3x3, stride 2, pad 1, leaky(0.1)
local l3: 4 filters 2x2, pad same, groups 2      # the odd pixel padded at the bottom/right
fc    out: 5
loss  cross_entropy
"""


def batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, n)


def test_net_matches_the_reference() -> None:
    cn = compile_network(netdsl.loads(NET, "loc.net"), device="cpu", batch=2, seed=0)
    x, y = batch(2, 1)
    loss, grads = cn.loss_and_grads(x, y)
    params = {k: v.astype(np.float64) for k, v in cn.params.items()}
    ref_loss, ref_grads = reference.loss_and_grads(cn.net, params, x.astype(np.float64), y,
                                                   {}, cn.masks)  # fmt: skip
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    assert {"l2.weight", "l2.bias", "l3.weight", "l3.bias"} <= grads.keys()
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)


def test_net_trains_on_cpu() -> None:
    cn = compile_network(netdsl.loads(NET, "loc.net"), device="cpu", batch=8, seed=0)
    x, y = batch(8, 3)
    first, _ = cn.loss_and_grads(x, y)
    for _ in range(30):
        loss, grads = cn.loss_and_grads(x, y)
        cn.set_params({k: v - 0.05 * grads[k] for k, v in cn.params.items()})
    assert loss < 0.5 * first, (first, loss)


def test_net_cuda_matches_cpu_on_one_and_two_gpus() -> None:
    from netdsl.backends.cuda_groups import GroupedCudaNet

    net = netdsl.loads(NET, "loc.net")
    cpu = compile_network(net, device="cpu", batch=2, seed=0)
    x, y = batch(2, 4)
    l1, g1 = cpu.loss_and_grads(x, y)
    for gpus in (1, 2):
        text = NET.replace("network loc", f"network loc\ngpus {gpus}")
        gpu = compile_network(netdsl.loads(text, "loc.net"), device="cuda", batch=2, seed=0)
        assert isinstance(gpu, GroupedCudaNet) == (gpus == 2)
        l2, g2 = gpu.loss_and_grads(x, y)
        assert abs(l1 - l2) <= 1e-4 * max(1.0, abs(l1)), (gpus, l1, l2)
        for k in g1:
            assert_close(g2[k], g1[k], 1e-4, f"{k} on {gpus} GPUs")
        assert_close(gpu.forward(x), cpu.forward(x), 1e-4, f"eval forward on {gpus} GPUs")


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_net_matches_pytorch() -> None:
    cn = compile_network(netdsl.loads(NET, "loc.net"), device="cpu", batch=3, seed=1)
    assert_net_matches_torch(cn, *batch(3, 5))


# ------------------------------------------------------------------------------- import mappings


def foreign(kind: str, params: dict) -> ForeignLayer:
    loc = Location("layers.cfg", 7, 1, 7, "[local3]")
    locs = {k: Location("layers.cfg", 8 + i, 1, len(k), f"{k}={v}")
            for i, (k, v) in enumerate(params.items())}  # fmt: skip
    return ForeignLayer(kind, "local3", {k: str(v) for k, v in params.items()}, loc, locs)


def context(fmt: str, shape=(64, 8, 8)) -> ImportContext:
    return ImportContext(fmt, ImportedNet("n", "layers.cfg", fmt, shape))


def imported(fmt: str, params: dict, shape=(64, 8, 8)) -> netdsl.Network:
    ctx = context(fmt, shape)
    lines = getattr(get("local"), f"import_{fmt}")(foreign("local", params), None, "local3", ctx)
    ctx.net.lines += lines
    return netdsl.loads(write_net(ctx.net), "imported.net")


def test_darknet_local() -> None:
    params = {"filters": 10, "size": 3, "stride": 2, "pad": 1, "activation": "leaky"}
    lyr = imported("darknet", params, (3, 9, 9)).layer("local3")
    # Darknet's local_out_height with pad: (h - 1) / stride + 1
    assert lyr.out_shape == (10, (9 - 1) // 2 + 1, (9 - 1) // 2 + 1)
    locations = lyr.out_shape[1] * lyr.out_shape[2]
    assert lyr.n_params == 3 * 10 * 9 * locations + 10 * locations  # local_layer.c's calloc
    assert lyr.attrs["activation"] == ("leaky", 0.1)
    plain = imported("darknet", {"filters": 4, "size": 2}, (3, 5, 5)).layer("local3")
    assert plain.out_shape == (4, 4, 4)  # (h - size) / stride + 1 without pad
    assert plain.attrs["activation"][0] == "sigmoid"  # Darknet's default is logistic


def test_darknet_pad_that_darknet_sizes_differently_is_refused() -> None:
    src = foreign("local", {"filters": 4, "size": 5, "pad": 1})
    with pytest.raises(NetError) as info:
        get("local").import_darknet(src, None, "local3", context("darknet"))
    assert info.value.message == ("Darknet's [local] with pad=1 and size=5 pads 1 pixels but "
                                  "sizes its output as if it padded 2")  # fmt: skip
    assert info.value.loc == src.at("pad")


def test_kernels_compile_for_a_real_gpu(tmp_path) -> None:
    """The simulator runs kernels as Python: compile every launch of the net's CUDA step (the
    local kernels with and without an activation, groups, stride) to PTX with NVVM, in a
    process without the simulator (netdsl/backends/cuda_ptx.py)."""
    import os
    import pickle

    from netdsl.ops import cudakit

    if not cudakit.simulator():
        pytest.skip("records launches in the simulator")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = "from cuda.pathfinder import load_nvidia_dynamic_lib as l; l('nvvm'); l('nvrtc')"
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode:
        pytest.skip("NVVM / NVRTC libraries not installed (pip install '.[ptx]')")
    with cudakit.recording() as rec:
        gpu = compile_network(netdsl.loads(NET, "loc.net"), device="cuda", batch=2, seed=0)
        gpu.step_grads(*batch(2, 6))
        gpu.forward(batch(2, 6)[0])
    names = {r[3] for r in rec if r[0] == "netdsl.ops.local"}
    assert names == {"local_forward", "local_backward_data", "local_backward_weights",
                     "local_bias_grad"}  # fmt: skip
    path = tmp_path / "launches.pkl"
    path.write_bytes(pickle.dumps([r for r in rec if r[0] == "netdsl.ops.local"]))
    cmd = [sys.executable, "-m", "netdsl.backends.cuda_ptx", str(path), "--per-family", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    *lines, _ = out.stdout.splitlines()
    assert len(lines) >= 5 and all(line.startswith("ok") for line in lines), out.stdout


CUDACONVNET = """[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[local3]
type=local
inputs=data
channels=8
filters=16
groups=2
padding=2
stride=1
filterSize=5
neuron=tanh[1.7159,0.6667]
initW=0.04

[fc]
type=fc
inputs=local3
outputs=10

[probs]
type=softmax
inputs=fc

[cost]
type=cost.logreg
inputs=labels,probs
"""


def test_cudaconvnet_local_keeps_its_parameter_count(tmp_path) -> None:
    """cuda-convnet's LocalUnsharedLayerParser: filters=F with groups=G makes F*G filters,
    modules*filterPixels*filterChannels x filters weights and modules*filters biases."""
    from netdsl.interop.cli import ImportOptions, convert

    src = tmp_path / "layers.cfg"
    src.write_text(CUDACONVNET)
    net = netdsl.loads(convert(str(src), opts=ImportOptions((8, 6, 6))), "imported.net")
    lyr = net.layer("local3")
    modules_x = 1 + -(-(2 * 2 + 6 - 5) // 1)  # cuda-convnet's rule (rounded up)
    assert lyr.out_shape == (32, modules_x, modules_x)
    filter_channels = 8 // 2
    assert lyr.n_params == modules_x**2 * 25 * filter_channels * 32 + modules_x**2 * 32
    assert lyr.attrs["groups"] == 2
    assert lyr.attrs["activation"] == ("scaled_tanh", 1.7159, 0.6667)
