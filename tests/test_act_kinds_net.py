"""The activation kinds elu and scaled_tanh in whole nets: fused into conv, fc, bn, subsample
and add (and, on CUDA, a pool taking over its producer's activation backward), the compiled
CPU plan against the float64 reference, CUDA (simulator) against the CPU plan, a few steps of
training; and a kind added as a module alone, end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, assert_net_matches_torch

import netdsl
from netdsl import reference
from netdsl.backends import compile_network
from tests.test_compiler import data

NET = """\
input image: 1x8x8
conv c1: 3 filters 3x3, pad 1, elu(alpha=0.5)
pool p1: max 2x2
subsample s1: 2x2, scaled_tanh
conv c2: 3 filters 1x1, scaled_tanh(A=1.5, S=0.75)
conv c3: 3 filters 1x1
add a1(c2, c3): elu
bn b1: scaled_tanh
fc f1: 5, elu(0.7)
fc out: 3
loss l: cross_entropy
"""


def nets(batch=2):
    net = netdsl.loads(NET, "kinds.net")
    return (compile_network(net, device="cpu", batch=batch, seed=0),
            compile_network(net, device="cuda", batch=batch, seed=0))  # fmt: skip


def test_attrs_and_report(tmp_path, capsys):
    from netdsl.cli import main

    net = netdsl.loads(NET, "kinds.net")
    acts = {lyr.name: lyr.attrs.get("activation") for lyr in net.layers}
    assert acts["c1"] == ("elu", 0.5)
    assert acts["s1"] == ("scaled_tanh", 1.7159, 2.0 / 3.0)
    assert acts["c2"] == ("scaled_tanh", 1.5, 0.75)
    assert acts["f1"] == ("elu", 0.7)
    (tmp_path / "kinds.net").write_text(NET)
    assert main(["summary", str(tmp_path / "kinds.net")]) == 0
    text = capsys.readouterr().out
    for column in ("conv+elu(0.5)", "subsample+scaled_tanh", "conv+scaled_tanh(A=1.5, S=0.75)",
                   "add+elu", "bn+scaled_tanh", "fc+elu(0.7)"):  # fmt: skip
        assert column in text, column


def test_cpu_matches_reference():
    cpu, _ = nets()
    x, y = data(cpu)
    loss, grads = cpu.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.loss_and_grads(cpu.net, cpu.params, x.astype(np.float64), y)
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    assert set(grads) == set(ref_grads)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_cpu_matches_pytorch():
    """The whole net against its PyTorch twin (each kind's `torch`: F.elu, A * tanh(S * x))."""

    cpu, _ = nets(batch=3)
    x, y = data(cpu)
    assert_net_matches_torch(cpu, x, y)


def test_cuda_matches_cpu():
    cpu, gpu = nets()
    r = {x.layer.name: x for x in gpu.runners}
    assert r["c1"].act_in_consumer  # p1's backward applies elu' through y
    x, y = data(cpu)
    l1, g1 = cpu.loss_and_grads(x, y)
    l2, g2 = gpu.loss_and_grads(x, y)
    assert abs(l1 - l2) <= 1e-4 * max(1.0, abs(l1)), (l1, l2)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert_close(g2[k], g1[k], 1e-4, k)
    assert_close(gpu.forward(x), cpu.forward(x), 1e-4, "eval forward")


def test_trains_on_cpu():
    cpu, _ = nets(batch=4)
    x, y = data(cpu)
    first = cpu.loss_and_grads(x, y)[0]
    for _ in range(30):
        loss, grads = cpu.loss_and_grads(x, y)
        cpu.set_params({k: v - 0.1 * grads[k] for k, v in cpu.params.items()})
    assert np.isfinite(loss) and loss < 0.8 * first, (first, loss)


KIND_MODULE = '''
"""softsign: x / (1 + |x|); softsign' = (1 - |y|)^2 (a kind for the test only)."""
import numpy as np
from netdsl.ops.activations._base import Kind
from netdsl.ops.jit import kernel


@kernel
def f(v, p0, p1):
    return v / (np.float32(1.0) + abs(v))


@kernel
def df(y, p0, p1):
    d = np.float32(1.0) - abs(y)
    return d * d


class Softsign(Kind):
    name = "softsign"
    f, df = f, df

    def ref_forward(self, x, values):
        return x / (1.0 + np.abs(x))

    def ref_backward(self, dy, y, values):
        return dy * (1.0 - np.abs(y)) ** 2


KIND = Softsign()
'''


def test_a_kind_is_its_module_alone(tmp_path):
    """A kind module put on the activations package's path (no other edit) is parsed, named in
    reports, and computed by the fused CPU kernels and CUDA epilogues as its reference says."""
    (tmp_path / "softsign.py").write_text(KIND_MODULE)
    script = textwrap.dedent(f"""
        import numpy as np
        import netdsl.ops.activations as kinds
        kinds.__path__.append({str(tmp_path)!r})
        import netdsl
        from netdsl import reference
        from netdsl.backends import compile_network
        from netdsl.ops.activation import ACT_CODE
        assert ACT_CODE["softsign"] == len(ACT_CODE) - 1 and ACT_CODE["linear"] == 4
        net = netdsl.loads("input image: 1x6x6\\nconv c1: 2 filters 3x3, softsign\\n"
                           "softsign s\\nfc f1: 3, softsign\\nloss l: cross_entropy\\n")
        assert net.layer("c1").attrs["activation"] == ("softsign", 0.0)
        cpu = compile_network(net, device="cpu", batch=2, seed=0)
        gpu = compile_network(net, device="cuda", batch=2, seed=0)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
        y = np.array([0, 2])
        l1, g1 = cpu.loss_and_grads(x, y)
        l2, g2 = gpu.loss_and_grads(x, y)
        lr, gr = reference.loss_and_grads(net, cpu.params, x.astype(np.float64), y)
        assert abs(l1 - lr) < 1e-4 and abs(l2 - l1) < 1e-4, (l1, l2, lr)
        for k in g1:
            assert np.max(np.abs(g1[k] - gr[k])) < 1e-4, k
            assert np.max(np.abs(g2[k] - g1[k])) < 1e-4, k
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("kind", ["elu", "scaled_tanh"])
def test_lint_squash_note(kind):
    text = f"input image: 1x6x6\nfc out: 3, {kind}\nloss l: cross_entropy\n"
    import importlib

    lint = importlib.import_module("netdsl.passes.lint")  # netdsl.passes.lint is also a function
    warnings = list(lint.squashed_scores(netdsl.loads(text)))
    if kind == "scaled_tanh":
        assert warnings and "(-A, A)" in warnings[0].hint
    else:
        assert not warnings  # elu is unbounded above: no squash note


def test_fused_kinds_compile_for_a_real_gpu(tmp_path):
    """The simulator runs kernels as Python: compile every kernel this net launched (elu and
    scaled_tanh fused into conv, fc, bn, subsample, add, and in a pool's backward) to PTX
    with NVVM, as tests/test_cuda.py does for the other nets (netdsl/backends/cuda_ptx.py)."""
    import os
    import pickle

    from netdsl.ops import cudakit
    from tests.test_cuda import _nvvm_available

    if not cudakit.simulator():
        pytest.skip("records launches in the simulator")
    if not _nvvm_available():
        pytest.skip("NVVM / NVRTC libraries not installed (pip install '.[ptx]')")
    with cudakit.recording() as rec:
        _, gpu = nets()
        x, y = data(gpu)
        gpu.step_grads(x, y)
        gpu.forward(x)
    path = tmp_path / "launches.pkl"
    path.write_bytes(pickle.dumps(rec))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "netdsl.backends.cuda_ptx", str(path),
                          "--per-family", "0"], env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    *lines, _ = out.stdout.splitlines()
    assert lines and all(line.startswith("ok") for line in lines), out.stdout
    assert any("conv.conv_forward" in line for line in lines)
