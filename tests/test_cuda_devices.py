"""GPU groups on several physical devices (netdsl/backends/cuda_devices.py).

There is one (simulated) device here, so these tests give every logical GPU a device domain
of its own on it (GroupedCudaNet.separate_domains): the sharded parameters, the per-device
optimizer, the staged moves and the context switches all run, and a checker proves that no
kernel touches memory allocated under another domain's context -- the property that lets
the same code run on separate GPUs without peer access.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import netdsl
from netdsl.backends import compile_network, cuda_devices
from netdsl.backends.cuda_devices import Devices, ShardedBuffer
from netdsl.backends.cuda_groups import GroupedCudaNet
from netdsl.ops import cudakit
from netdsl.passes.placement import exchange_bytes
from netdsl.train.optimizer import Optimizer
from tests.test_compiler import data
from tests.test_cuda import GROUPED

cudakit.fast_simulator_barrier()

# The checker reads the simulator's arrays; on a real GPU (NETDSL_REAL_GPU=1) the rest runs
# there, with the peer copies and cross-device events for real (same device, separate domains).
simulated = pytest.mark.skipif(not cudakit.simulator(),
                               reason="the domain checker needs the simulator")  # fmt: skip


def test_device_mapping():
    assert Devices(2, 1).count == 1  # one GPU present: one domain, nothing switches
    d = Devices(4, 2)
    assert d.count == 2 and d.domain_of == [0, 1, 0, 1] and d.device_of == [0, 1]
    assert "GPUs 0,2 on device 0, GPUs 1,3 on device 1" == d.describe()
    d = Devices(2, 8)
    assert d.domain_of == [0, 1] and d.device_of == [0, 1]
    d = Devices(3, 1, separate=True)
    assert d.count == 3 and d.device_of == [0, 0, 0]


def test_sharded_buffer_round_trip_and_views():
    devs = Devices(2, 1, separate=True)
    host = np.arange(10, dtype=np.float32)
    buf = ShardedBuffer(host, [[(0, 3), (6, 8)], [(3, 6), (8, 10)]], devs)
    assert [s.size for s in buf.shards] == [5, 5]
    assert np.array_equal(buf.shards[1].copy_to_host(), [3, 4, 5, 8, 9])
    assert np.array_equal(buf.copy_to_host(), host)
    assert np.array_equal(buf.view(6, 8).copy_to_host(), [6, 7]) and buf.domain(7) == 0
    with pytest.raises(ValueError, match="crosses a shard boundary"):
        buf.view(2, 4)
    buf.copy_to_device(host * 2)
    out = np.empty(10, np.float32)
    buf.copy_to_host(out)  # into a given array, as MPI's pinned staging does
    assert np.array_equal(out, host * 2)
    with pytest.raises(ValueError, match="exactly once"):
        ShardedBuffer(host, [[(0, 5)], [(4, 10)]], devs)


@pytest.mark.parametrize("spec", [
    {"kind": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    {"kind": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
])  # fmt: skip
def test_sharded_optimizer_equals_flat(spec):
    """One kernel per device over its shard gives exactly the one-kernel flat update, with each
    slot's lr / decay multipliers, and state_arrays come back in the canonical layout."""
    net = netdsl.loads(GROUPED.replace("GPUS", "1"), "one.net")
    cn = compile_network(net, device="cpu", batch=2, seed=0)
    slots, size = cn.slots, cn.theta.size
    for s in slots[:3]:
        s.lr_mult, s.decay_mult = 2.0, 0.0  # multipliers must follow the shards
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(size).astype(np.float32)
    cut = [0, size // 3, size // 2, size]
    ranges = [[(cut[0], cut[1]), (cut[2], cut[3])], [(cut[1], cut[2])]]
    devs = Devices(2, 1, separate=True)
    flat_w, flat_opt = cuda.to_device(w0), Optimizer(spec, slots, size, "cuda")
    sh_w = ShardedBuffer(w0, ranges, devs)
    sh_opt = Optimizer(spec, slots, size, "cuda", like=sh_w)
    assert sh_opt._shards is not None and len(sh_opt._shards) == 2
    for _ in range(3):
        g = rng.standard_normal(size).astype(np.float32)
        flat_opt.step(flat_w, cuda.to_device(g), 0.01)
        sh_opt.step(sh_w, ShardedBuffer(g, ranges, devs), 0.01)
    assert np.array_equal(sh_w.copy_to_host(), flat_w.copy_to_host())
    a, b = flat_opt.state_arrays(), sh_opt.state_arrays()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def grouped_pair(monkeypatch, gpus=2, src=GROUPED):
    """The same grouped net compiled twice: logical GPUs on one device, and each in a device
    domain of its own."""
    net = netdsl.loads(src.replace("GPUS", str(gpus)), "two.net")
    one = compile_network(net, device="cuda", batch=2, seed=0)
    monkeypatch.setattr(GroupedCudaNet, "separate_domains", True)
    sep = compile_network(net, device="cuda", batch=2, seed=0)
    return one, sep


@pytest.mark.parametrize("gpus", [2, 3])
def test_separate_devices_equal_one_device(monkeypatch, capsys, gpus):
    """Split over separate devices, the loss, every gradient, the BN statistics and the eval
    output are bit-identical to the one-device plan, and the bytes staged between devices
    are exactly the placement model's."""
    monkeypatch.setattr(cudakit, "_SAID", set())  # messages are said once per process
    # with 3 GPUs c2's 2 groups do not divide: an ungrouped c2
    src = GROUPED if gpus == 2 else GROUPED.replace("pad 1, groups 2", "pad 1")
    one, sep = grouped_pair(monkeypatch, gpus, src)
    assert isinstance(sep, GroupedCudaNet) and sep.devices.count == gpus
    assert one.devices.count == 1 and not isinstance(one.theta, ShardedBuffer)
    assert isinstance(sep.theta, ShardedBuffer) and len(sep.theta.shards) == gpus
    err = capsys.readouterr().err
    assert "GPUs 1 on device 0" in err and "not a CUDA graph" in err
    assert sep.step_graph.mode == "off"
    x, y = data(one)
    l1, g1 = one.loss_and_grads(x, y)
    l2, g2 = sep.loss_and_grads(x, y)
    assert l1 == l2
    for k in g1:
        assert np.array_equal(g1[k], g2[k]), k
    for k, v in one.buffers.items():
        assert np.array_equal(sep.buffers[k], v), k
    assert sep.bytes_moved == one.bytes_moved == exchange_bytes(sep.net, 2) > 0
    assert np.array_equal(sep.forward(x), one.forward(x))
    staged = [m for shares in sep.shares for sh in shares for m in sh.moves if m.staged]
    assert staged and all(m.remote for m in staged)
    assert f"{gpus} flat shards, one per device" in sep.describe()


def test_separate_devices_train_like_one(monkeypatch):
    """Training steps through the Trainer's optimizer (sharded state, one kernel per device),
    set_params and params gather/scatter in the canonical layout: weights equal the
    one-device run after several updates."""
    one, sep = grouped_pair(monkeypatch)
    spec = {"kind": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
    opts = [Optimizer(spec, c.slots, c.theta.size, "cuda", like=c.theta) for c in (one, sep)]
    for step in range(2):
        x, y = data(one, seed=step)
        for c, opt in zip((one, sep), opts, strict=True):
            c.step_grads(x, y)
            opt.step(c.theta, c.grad, 0.05)
    p1, p2 = one.params, sep.params
    for k in p1:
        assert np.array_equal(p1[k], p2[k]), k
    for c in (one, sep):  # (a connection table's masked weights stay 0 in both)
        c.set_params({k: v + 1 for k, v in p1.items()})
    p1, p2 = one.params, sep.params
    for k in p1:
        assert np.array_equal(p1[k], p2[k]), k


class DomainChecker:
    """Tags every simulated device allocation with the domain current at allocation, and
    records each kernel launch that touches an array of another domain."""

    def __init__(self, monkeypatch) -> None:
        self.allocs: list[tuple[int, int, int]] = []  # (start, end, domain)
        self.keep: list = []  # every allocation stays alive, so no address is reused
        self.devices: list[Devices] = []
        self.violations: list[str] = []
        init = Devices.__init__

        def devices_init(inner, *a, **k):
            init(inner, *a, **k)
            self.devices.append(inner)

        monkeypatch.setattr(Devices, "__init__", devices_init)
        for name in ("to_device", "device_array"):
            monkeypatch.setattr(cuda, name, self._tagging(getattr(cuda, name)))
        run = cudakit.Launch.run

        def checked_run(launch, *args):
            here = self.current()
            for a in args:
                where = self.domain_of(a)
                if where is not None and where != here:
                    self.violations.append(f"{launch.name} in domain {here} on domain {where}")
            run(launch, *args)

        monkeypatch.setattr(cudakit.Launch, "run", checked_run)

    def current(self) -> int:
        return self.devices[-1].current if self.devices else 0

    def _tagging(self, alloc):
        def tagged(*a, **k):
            arr = alloc(*a, **k)
            self.keep.append(arr)
            start, size = self._span(arr)
            self.allocs.append((start, start + max(size, 1), self.current()))
            return arr

        return tagged

    @staticmethod
    def _span(arr) -> tuple[int, int]:
        ary = getattr(arr, "_ary", arr)
        return ary.__array_interface__["data"][0], ary.nbytes

    def domain_of(self, arr) -> int | None:
        if not hasattr(arr, "_ary"):
            return None  # a scalar
        start, _ = self._span(arr)
        for lo, hi, d in self.allocs:
            if lo <= start < hi:
                return d
        return None


def _train_with_checker(monkeypatch, checker) -> None:
    monkeypatch.setattr(GroupedCudaNet, "separate_domains", True)
    net = netdsl.loads(GROUPED.replace("GPUS", "2"), "two.net")
    cn = compile_network(net, device="cuda", batch=2, seed=0)
    spec = {"kind": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    opt = Optimizer(spec, cn.slots, cn.theta.size, "cuda", like=cn.theta)
    x, y = data(cn)
    cn.step_grads(x, y)
    opt.step(cn.theta, cn.grad, 0.01)
    cn.forward(x)
    assert len(checker.allocs) > 50


@simulated
def test_no_kernel_touches_another_devices_memory(monkeypatch):
    """Every launch of a training step, the optimizer and an eval pass reads and writes only
    arrays allocated under its own device's context (so separate GPUs need no peer access)."""
    checker = DomainChecker(monkeypatch)
    _train_with_checker(monkeypatch, checker)
    assert {d for _, _, d in checker.allocs} == {0, 1}
    assert checker.violations == []


@simulated
def test_domain_check_can_fail(monkeypatch):
    """The checker above catches a plan that forgets to switch devices for its shares."""
    import contextlib

    checker = DomainChecker(monkeypatch)
    monkeypatch.setattr(GroupedCudaNet, "_on", lambda self, gpu: contextlib.nullcontext())
    _train_with_checker(monkeypatch, checker)
    assert checker.violations


def test_staged_move_forward_and_backward():
    """A channel interval packed on one domain, copied, unpacked on the other; the gradient
    comes back added into the sender's buffer."""
    devs = Devices(2, 1, separate=True)
    n, c_src, c_dst, plane = 2, 5, 4, 3
    rng = np.random.default_rng(1)
    src = rng.standard_normal((n, c_src, plane)).astype(np.float32)
    dst = np.zeros((n, c_dst, plane), np.float32)
    move = cuda_devices.StagedMove(devs, n, plane, 0, c_src, 1, 1, c_dst, 2, 2)
    d_src, d_dst = cuda.to_device(src), cuda.to_device(dst)
    move.forward(d_src, d_dst)
    want = dst.copy()
    want[:, 2:4] = src[:, 1:3]
    assert np.array_equal(d_dst.copy_to_host(), want) and move.nbytes == n * 2 * plane * 4
    grad = rng.standard_normal((n, c_dst, plane)).astype(np.float32)
    d_grad, d_acc = cuda.to_device(grad), cuda.to_device(src)
    move.backward(d_grad, d_acc)
    want = src.copy()
    want[:, 1:3] += grad[:, 2:4]
    assert np.array_equal(d_acc.copy_to_host(), want)


def test_cli_training_on_separate_devices(monkeypatch, tmp_path, capsys):
    """`netdsl train` of a `gpus 2` net with each logical GPU on a device of its own: the
    checkpoint (weights, optimizer state, BN statistics, all gathered from their owners)
    equals the one-device run's, and resuming it scatters everything back: a resumed run
    equals an uninterrupted one bit for bit."""
    from netdsl.cli import main
    from netdsl.train.checkpoint import load_checkpoint
    from netdsl.train.trainer import fit_file
    from tests.test_cuda import tiny_files

    path, ds = tiny_files(tmp_path, "sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)")
    path.write_text(path.read_text().replace("network tiny", "network tiny\ngpus 2"))
    fit_file(path, data=ds, device="cuda", out=tmp_path / "one", quiet=True)
    monkeypatch.setattr(GroupedCudaNet, "separate_domains", True)
    monkeypatch.setattr(cudakit, "_SAID", set())
    fit_file(path, data=ds, device="cuda", out=tmp_path / "sep", quiet=True)
    assert "GPUs 0 on device 0, GPUs 1 on device 0" in capsys.readouterr().err
    fit_file(path, data=ds, device="cuda", epochs=1, out=tmp_path / "part", quiet=True)
    args = ["train", str(path), "--data", ds, "--out", str(tmp_path / "part"), "--quiet"]
    assert main([*args, "--device", "cuda", "--resume"]) == 0
    one = load_checkpoint(tmp_path / "one" / "checkpoint.npz")[0]
    for run in ("sep", "part"):
        got = load_checkpoint(tmp_path / run / "checkpoint.npz")[0]
        assert set(got) == set(one) and "optim.v" in one
        for k in one:
            assert np.array_equal(got[k], one[k]), (run, k)
