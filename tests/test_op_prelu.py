"""PReLU (nn.PReLU): the op (reference vs finite differences for dx and the slopes, CPU and
CUDA vs reference, reference vs torch), the layer in nets (gradients, CPU vs CUDA, training,
weight decay, checkpoints, GPU split), its options and errors, its golden summary rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, assert_net_matches_torch, check_reference_grad

import netdsl
from netdsl import reference
from netdsl.backends import compile_network
from netdsl.compiler import CompiledNet
from netdsl.errors import NetError
from netdsl.ops import prelu
from netdsl.train.optimizer import Optimizer
from tests.test_compiler import data
from tests.test_golden import _check_golden, _cli_stdout

ROOT = Path(__file__).resolve().parent.parent

# (name, N, C, H, W, K): K slopes, C (per channel) or 1 (shared)
CASES = [
    ("conv", 2, 3, 4, 5, 3),
    ("fc", 3, 5, 1, 1, 5),
    ("shared", 2, 3, 3, 2, 1),
]
IDS = [c[0] for c in CASES]


def tensors(case, seed: int = 0, dtype=np.float64):
    _, n, c, h, w, k = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    a = rng.uniform(-0.5, 1.0, k).astype(dtype)  # negative slopes too: nothing assumes a > 0
    return x, a


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_grad(case) -> None:
    x, a = tensors(case)
    check_reference_grad(prelu.ref_forward, lambda dy: prelu.ref_backward(dy, x, a), [x, a])


def test_reference_values() -> None:
    x = np.array([-2.0, -0.5, 0.0, 1.5]).reshape(1, 2, 2, 1)  # channel 0: -2, -0.5; 1: 0, 1.5
    y = prelu.ref_forward(x, np.array([0.25, 0.5]))
    np.testing.assert_array_equal(y.reshape(-1), [-0.5, -0.125, 0.0, 1.5])
    dx, da = prelu.ref_backward(np.ones_like(x), x, np.array([0.25, 0.5]))
    np.testing.assert_array_equal(dx.reshape(-1), [0.25, 0.25, 0.5, 1.0])  # a * dy at x = 0
    np.testing.assert_array_equal(da, [-2.5, 0.0])
    assert prelu.ref_backward(np.ones_like(x), x, np.array([0.3]))[1].shape == (1,)


def run_op(op_cls, case, want_dx: bool, seed: int = 1, to_dev=np.asarray, to_host=np.asarray):
    _, n, c, h, w, k = case
    x, a = tensors(case, seed, np.float32)
    op = op_cls(n, c, h, w, k)
    y = to_dev(np.full_like(x, np.nan))
    op.forward(to_dev(x), to_dev(a), y)
    assert_close(to_host(y), prelu.ref_forward(x, a), 1e-6, "forward")
    dy = np.random.default_rng(seed + 1).standard_normal(x.shape).astype(np.float32)
    dx = to_dev(np.full_like(x, np.nan)) if want_dx else None  # NaN: all must be written
    da = to_dev(np.full_like(a, np.nan))
    for _ in range(2):  # twice: the backward overwrites, it does not accumulate
        op.backward(to_dev(dy), to_dev(x), to_dev(a), dx, da)
    dx_ref, da_ref = prelu.ref_backward(dy, x, a)
    if want_dx:
        assert_close(to_host(dx), dx_ref, 1e-6, "dx")
    assert_close(to_host(da), da_ref, 1e-5, "da")


@pytest.mark.parametrize("want_dx", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_matches_reference(case, want_dx: bool) -> None:
    run_op(prelu.PReLUCPU, case, want_dx)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_matches_reference(case) -> None:
    from numba import cuda

    run_op(prelu.PReLUCUDA, case, True, to_dev=cuda.to_device, to_host=lambda d: d.copy_to_host())


def test_import_does_not_load_numba() -> None:
    code = (
        "import sys, netdsl.ops.prelu, netdsl.ops.layers.prelu; assert 'numba' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_torch(case) -> None:
    import torch

    x, a = tensors(case, seed=2)
    m = torch.nn.PReLU(num_parameters=a.size).double()
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(a))
    xt = torch.tensor(x, requires_grad=True)
    yt = m(xt)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    yt.backward(torch.from_numpy(dy))
    assert_close(prelu.ref_forward(x, a), yt.detach().numpy(), 1e-12, "y")
    dx, da = prelu.ref_backward(dy, x, a)
    assert_close(dx, xt.grad.numpy(), 1e-12, "dx")
    assert_close(da, m.weight.grad.numpy(), 1e-12, "da")


# ------------------------------------------------------------------------------ in a net

NET = """
network p
input image: 2x6x6
conv c1: 4 filters 3x3, pad 1
prelu a1
pool p1: max 2x2, stride 2
fc   f2: 6
prelu a2: shared
fc   out: 3
loss cross_entropy
"""


def test_slopes_are_weights_of_c_values_starting_at_a_quarter():
    cn = CompiledNet(netdsl.loads(NET, "p.net"), batch=3, seed=0)
    assert cn.params["a1.weight"].shape == (4,) and cn.params["a2.weight"].shape == (1,)
    assert np.all(cn.params["a1.weight"] == 0.25) and np.all(cn.params["a2.weight"] == 0.25)
    src = NET.replace("prelu a1", "prelu a1: init gaussian(std=0.1, mean=0.5)")
    a1 = CompiledNet(netdsl.loads(src, "p.net"), batch=3, seed=0).params["a1.weight"]
    assert len(set(a1.tolist())) == 4 and abs(a1.mean() - 0.5) < 0.3
    a1 = CompiledNet(netdsl.loads(NET.replace("prelu a1", "prelu a1: init 0.1"), "p.net"),
                     batch=3).params["a1.weight"]  # fmt: skip
    assert np.allclose(a1, 0.1)


def test_net_reference_gradients_match_finite_differences():
    cn = CompiledNet(netdsl.loads(NET, "p.net"), batch=3, seed=0)
    x, y = data(cn)
    params = {k: v.astype(np.float64) for k, v in cn.params.items()}
    params["a1.weight"][:] = [0.3, -0.2, -0.7, -0.1]  # < 0: negatives can win the max pool
    _, grads = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
    eps = 1e-6
    for key in ("a1.weight", "a2.weight", "c1.weight"):
        flat = params[key].reshape(-1)
        for i in range(min(4, flat.size)):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
            flat[i] = old - eps
            lm, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(grads[key].reshape(-1)[i] - num) <= 1e-6 * max(1.0, abs(num)), key
    assert np.all(grads["a1.weight"] != 0)


def test_cpu_and_cuda_follow_the_reference():
    net = netdsl.loads(NET, "p.net")
    cpu = compile_network(net, device="cpu", batch=3, seed=0)
    gpu = compile_network(net, device="cuda", batch=3, seed=0)
    x, y = data(cpu)
    lc, gc = cpu.loss_and_grads(x, y)
    lg, gg = gpu.loss_and_grads(x, y)
    lr, gr = reference.loss_and_grads(net, cpu.params, x.astype(np.float64), y, {}, cpu.masks)
    assert abs(lc - lr) <= 1e-5 * max(1.0, abs(lr)) and abs(lg - lc) <= 1e-6 * max(1.0, abs(lc))
    for k in gr:
        assert_close(gc[k], gr[k], 1e-4, k)
        assert_close(gg[k], gc[k], 1e-5, k)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_whole_net_matches_pytorch():

    cn = CompiledNet(netdsl.loads(NET, "p.net"), batch=4, seed=1)
    x, y = data(cn)
    assert_net_matches_torch(cn, x, y)


@pytest.mark.parametrize("decay_mult, shrinks", [(None, False), (1.0, True)])
def test_sgd_weight_decay_reaches_the_slopes_only_when_asked(decay_mult, shrinks):
    src = (
        NET if decay_mult is None else NET.replace("prelu a1", f"prelu a1: decay_mult {decay_mult}")
    )
    cn = CompiledNet(netdsl.loads(src, "p.net"), batch=3, seed=0)
    spec = {"kind": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.5, "nesterov": False}
    opt = Optimizer(spec, cn.slots, cn.theta.size)
    before = cn.params["a1.weight"].copy()
    opt.step(cn.theta, np.zeros_like(cn.theta), 0.1)  # no gradient: only the decay moves
    after = cn.params["a1.weight"]
    assert (
        np.allclose(after, before * (1 - 0.1 * 0.5)) if shrinks else np.array_equal(after, before)
    )
    assert not np.array_equal(cn.params["c1.weight"], 0)  # conv weights decay either way


TRAIN = (
    NET.replace("input image: 2x6x6", "input image: 1x8x8")
    + """
train {
  data "tiny.npz"
  batch 16
  epochs 4
  optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
  seed 3
}
"""
)


def test_a_prelu_net_trains_and_its_checkpoint_round_trips(tmp_path):
    from netdsl.train.checkpoint import load_checkpoint
    from netdsl.train.trainer import fit_file
    from tests.test_train import make_data

    (tmp_path / "p.net").write_text(TRAIN)
    make_data(tmp_path / "tiny.npz")
    make_data(tmp_path / "test.npz", n=48, seed=1)
    fit_file(tmp_path / "p.net", data=f"{tmp_path}/tiny.npz,{tmp_path}/test.npz",
             out=tmp_path / "run", quiet=True)  # fmt: skip
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < 0.5 * lines[0]["train_loss"]
    arrays, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    a1, a2 = arrays["param.a1.weight"], arrays["param.a2.weight"]
    assert a1.shape == (4,) and a2.shape == (1,)
    assert np.all(a1 != 0.25) and np.all(a2 != 0.25)  # the slopes learned
    cn = CompiledNet(netdsl.loads(TRAIN, "p.net"), batch=2)
    cn.set_params({k.removeprefix("param."): v for k, v in arrays.items()
                   if k.startswith("param.")})  # fmt: skip
    assert np.array_equal(cn.params["a1.weight"], a1)
    with pytest.raises(ValueError, match="expected shape"):
        cn.set_params({**cn.params, "a1.weight": np.zeros(3, np.float32)})


def test_two_gpus_split_the_slopes_by_channel():
    from netdsl.backends.cuda_groups import GroupedCudaNet, unsupported

    src = NET.replace("prelu a2: shared", "prelu a2")
    one = netdsl.loads(src, "one.net")
    two = netdsl.loads("gpus 2\n" + src.replace("network p\n", "network p\n"), "two.net")
    a = compile_network(one, device="cuda", batch=2, seed=0)
    b = compile_network(two, device="cuda", batch=2, seed=0)
    assert isinstance(b, GroupedCudaNet)
    x, y = data(a)
    la, ga = a.loss_and_grads(x, y)
    lb, gb = b.loss_and_grads(x, y)
    assert abs(la - lb) <= 1e-6 * max(1.0, abs(la))
    for k in ga:
        assert_close(gb[k], ga[k], 1e-5, k)
    assert "a1           gpu 1  channels [2, 4)" in b.describe()
    shared = netdsl.loads("gpus 2\n" + NET, "s.net")
    assert unsupported(shared) == "layer a2: a shared prelu slope is not split over GPUs"


# ------------------------------------------------------------------------ options, errors

BAD = "network t\ninput image: 3x4x4\n{}\nfc out: 2\nloss cross_entropy\n"


@pytest.mark.parametrize("line, message", [
    ("prelu a1: slope 0.3", "unknown option 'slope' for prelu"),
    ("prelu a1: decay_mult -1", "'decay_mult' must be at least 0, got -1"),
    ("prelu a1: lr_mult -0.5", "'lr_mult' must be at least 0, got -0.5"),
    ("prelu a1: shared maybe", "'shared' expects on or off, found 'maybe'"),
    ("prelu a1: init bogus", "unknown initialiser 'bogus'"),
    ("prelu a1: relu", "unknown option 'relu' for prelu"),
    ("prelu a1(image, image)", "prelu takes one input, got 2"),
])  # fmt: skip
def test_option_errors_are_located(line, message):
    with pytest.raises(NetError) as info:
        netdsl.loads(BAD.format(line), "bad.net")
    assert info.value.message == message
    assert info.value.loc.line == 3


def test_golden_summary_rows(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    net = "tests/golden/nets/prelu.net"
    _check_golden("prelu.summary.txt", _cli_stdout(capsys, ["summary", net]))
    out = _cli_stdout(capsys, ["summary", "--json", net])
    _check_golden("prelu.summary.json", out)
    rows = {r["name"]: r for r in json.loads(out)["layers"]}
    assert [rows[n]["params"] for n in ("a1", "a2", "a3")] == [6, 10, 1]  # C, C, shared


def test_prelu_as_a_fused_activation_is_an_unknown_option_not_a_missing_feature():
    """prelu is a layer (its slopes are parameters), not a fused activation; the hint no
    longer says that netdsl lacks it (netdsl/foreign.py)."""
    with pytest.raises(NetError) as info:
        netdsl.loads(BAD.format("conv c1: 2 filters 3x3, prelu"), "bad.net")
    assert info.value.message == "unknown option 'prelu' for conv"
    assert info.value.hint == "did you mean 'relu'?"


def test_the_prelu_kernels_compile_for_a_real_gpu(tmp_path):
    """Every prelu kernel the simulator launched (per-channel and shared, with and without
    dx) compiles to PTX with NVVM, as tests/test_cuda.py checks for the other types."""
    import os
    import pickle

    from netdsl.ops import cudakit
    from tests.test_cuda import _nvvm_available

    if not cudakit.simulator() or not _nvvm_available():
        pytest.skip("needs the simulator to record and NVVM / NVRTC to compile")
    src = NET.replace("conv c1: 4 filters 3x3, pad 1\nprelu a1", "prelu a0\nconv c1: 4 filters 3x3")
    with cudakit.recording() as rec:
        gpu = compile_network(netdsl.loads(src, "p.net"), device="cuda", batch=2)
        gpu.step_grads(*data(gpu))
    rec = [r for r in rec if r[0] == "netdsl.ops.prelu"]
    assert {r[3] for r in rec} == {"prelu_forward", "prelu_backward_data",
                                   "prelu_backward_slopes"}  # fmt: skip
    path = tmp_path / "launches.pkl"
    path.write_bytes(pickle.dumps(rec))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "netdsl.backends.cuda_ptx", str(path)], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()[:-1]
    assert len(lines) >= 3 and all(line.startswith("ok") for line in lines), out.stdout
