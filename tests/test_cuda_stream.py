"""The upload stream (netdsl/backends/cuda_runner.py `Uploads`): a step's batch, labels and
dropout keep-masks are copied on a stream of their own while the step before runs, and the
kernels' stream waits for them on an event; `gpus N` uploads the input once per device.

The simulator runs every copy and kernel at once, in program order, so these tests check what
it can: that results are bitwise those of the old default-stream path, how many copies go up,
and -- from a trace of the stream and event calls the plan makes -- that the order of copies,
records, waits and launches is the one that makes the overlap race-free on a real GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from numba import cuda

import netdsl
from netdsl.backends import compile_network
from netdsl.backends.cuda_graph import StepGraph
from netdsl.backends.cuda_groups import GroupedCudaNet
from netdsl.ops import cudakit
from netdsl.train.optimizer import Optimizer
from tests.test_compiler import data

cudakit.fast_simulator_barrier()

simulated = pytest.mark.skipif(not cudakit.simulator(),
                               reason="traces the simulator's copies and events")  # fmt: skip

TINY = """
network tiny
gpus GPUS
input image: 2x4x4
conv c1: 4 filters 3x3, pad 1, relu
dropout d1: 0.5
fc   out: 3
loss cross_entropy
"""


def plan(gpus: int = 1, graphs: str = "off", batch: int = 2):
    net = netdsl.loads(TINY.replace("GPUS", str(gpus)), "tiny.net")
    cn = compile_network(net, device="cuda", batch=batch, seed=0)
    cn.step_graph = StepGraph(graphs)
    return cn


def default_stream_path(cn) -> None:
    """Make `cn` upload as before the upload stream: every copy straight into its buffer on the
    default stream, nothing to land."""
    cn._put = lambda dst, host: dst.copy_to_device(host, stream=cuda.legacy_default_stream())
    cn._land = lambda: None


def train(cn, steps: int = 3) -> list[tuple[float, int]]:
    """The trainer's loop (netdsl/train/trainer.py): start step s, update, then read step s-1's
    loss; returns every step's (loss, top-1 errors)."""
    spec = {"kind": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
    opt = Optimizer(spec, cn.slots, cn.theta.size, "cuda", like=cn.theta)
    out = []
    for s in range(steps + 1):
        if s < steps:
            x, y = data(cn, seed=s)
            cn.start_step(x, y)
            opt.step(cn.theta, cn.grad, 0.05)
        if s > 0:
            out.append(cn.finish_step())
    return out


@pytest.mark.parametrize("gpus, graphs", [(1, "off"), (1, "replay"), (2, "off"), (2, "replay")])
def test_upload_stream_trains_bitwise_like_the_default_stream(gpus, graphs):
    """Steps in flight two at a time, new masks and batches each step, weights updated between:
    losses, errors, weights and the eval output are bit for bit the default-stream path's,
    with the step launched eagerly or replayed from its capture, on one column or two."""
    new, old = plan(gpus, graphs), plan(gpus, graphs)
    default_stream_path(old)
    assert isinstance(new, GroupedCudaNet) == (gpus > 1)
    got, want = train(new), train(old)
    assert got == want and len({loss for loss, _ in got}) == 3
    assert np.array_equal(new.theta.copy_to_host(), old.theta.copy_to_host())
    x, _ = data(new, seed=9)
    assert np.array_equal(new.forward(x), old.forward(x))
    assert new.step_graph.replays == (2 if graphs == "replay" else 0)
    assert sum(u.h2d for u in new.uploads) > 0  # the new path did the copying


def _count_uploads(monkeypatch, cn, steps: int = 2) -> tuple[dict[tuple, int], list]:
    """Host-to-device copies during `steps` training steps, by the copied array's shape, and
    the steps' results."""
    counts: dict[tuple, int] = {}
    fake = type(cuda.to_device(np.zeros(1)))  # the simulator's device array
    copy = fake.copy_to_device

    def counted(self, ary, stream=0):
        if not isinstance(ary, fake):  # from the host
            counts[tuple(ary.shape)] = counts.get(tuple(ary.shape), 0) + 1
        return copy(self, ary, stream)

    monkeypatch.setattr(fake, "copy_to_device", counted)
    results = train(cn, steps)
    monkeypatch.setattr(fake, "copy_to_device", copy)
    return counts, results


@simulated
def test_two_columns_on_one_gpu_upload_the_input_once(monkeypatch):
    """`gpus 2` on one (simulated) GPU: one host-to-device copy of the batch per step, into the
    input buffer both columns read in place; with each column a device of its own, one per
    device. The two placements train bit for bit alike."""
    x_shape = (2, 2, 4, 4)
    two = plan(2)
    assert two.devices.count == 1 and len(two.inputs) == 1
    assert two.outs["image", 0] is two.outs["image", 1] is two.inputs[0]
    counts, results = _count_uploads(monkeypatch, two)
    assert counts[x_shape] == 2  # two steps, one copy each (two columns used to copy twice)
    assert counts[(2,)] == 2  # the labels, for the loss on GPU 0
    assert "c1           gpu 1  channels [2, 4)  in place" in two.describe()

    monkeypatch.setattr(GroupedCudaNet, "separate_domains", True)
    apart = plan(2)
    assert apart.devices.count == 2 and apart.inputs[0] is not apart.inputs[1]
    counts, apart_results = _count_uploads(monkeypatch, apart)
    assert counts[x_shape] == 4  # once per device and step
    assert apart_results == results


class _Stream:
    """A named stand-in for a numba stream (the simulator's run everything at once anyway)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def synchronize(self) -> None:
        pass


class _Trace:
    """Records, in order, every copy, event record / wait / synchronize and kernel launch."""

    def __init__(self, monkeypatch) -> None:
        self.log: list[tuple] = []
        self.names: dict[int, str] = {}  # id(event) -> role, filled in after compiling
        compute, upload = _Stream("compute"), _Stream("upload")
        trace = self

        def stream_name(s) -> str:
            return "compute" if s in (0, None) else s.name

        class Event:
            def record(self, stream=0):
                trace.log.append(("record", trace.name(self), stream_name(stream)))

            def wait(self, stream=0):
                trace.log.append(("wait", trace.name(self), stream_name(stream)))

            def synchronize(self):
                trace.log.append(("sync", trace.name(self)))

        fake = type(cuda.to_device(np.zeros(1)))
        copy, run = fake.copy_to_device, cudakit.Launch.run

        def copy_to_device(dst, ary, stream=0):
            kind = "d2d" if isinstance(ary, fake) else "h2d"
            trace.log.append((kind, stream_name(stream), tuple(dst.shape)))
            return copy(dst, ary, stream)

        def launch(self, *args):
            trace.log.append(("launch", self.name))
            return run(self, *args)

        monkeypatch.setattr(cuda, "event", lambda *a, **k: Event())
        monkeypatch.setattr(cuda, "stream", lambda: upload)
        monkeypatch.setattr(cuda, "legacy_default_stream", lambda: compute)
        monkeypatch.setattr(fake, "copy_to_device", copy_to_device)
        monkeypatch.setattr(cudakit.Launch, "run", launch)

    def name(self, event) -> str:
        return self.names.get(id(event), "other")

    def find(self, entry: tuple, start: int = 0) -> int:
        return self.log.index(entry, start)


@simulated
@pytest.mark.parametrize("graphs", ["off", "replay"])
def test_the_next_batch_goes_up_while_the_step_runs(monkeypatch, graphs):
    """The trace of the trainer's loop (start s+1 before finishing s) shows, for every step:

    * its batch, labels and mask go up on the upload stream, never the kernels' stream, and
      the copy of step s+1 is issued before the host waits for step s's loss;
    * the upload stream first waits for the event that frees its landing buffers (recorded
      on the kernels' stream after the step two back landed them);
    * the kernels' stream waits on the event recorded after the copies, before it lands them
      (device-to-device) and before the step's first kernel.
    """
    t = _Trace(monkeypatch)
    cn = plan(1, graphs)
    up = cn.uploads[0]
    for i, (c, ld) in enumerate(zip(up.copied, up.landed, strict=True)):
        t.names[id(c)], t.names[id(ld)] = f"copied{i}", f"landed{i}"
    for i, e in enumerate(cn._stats_ready):
        t.names[id(e)] = f"result{i}"
    t.log.clear()
    train(cn, steps=4)
    log = t.log
    x_shape = (2, 2, 4, 4)
    h2d = [i for i, e in enumerate(log) if e[0] == "h2d"]
    assert h2d and all(log[i][1] == "upload" for i in h2d)  # nothing goes up on "compute"
    starts = [i for i in h2d if log[i][2] == x_shape]  # each step's batch copy
    results = [i for i, e in enumerate(log) if e[0] == "sync" and e[1].startswith("result")]
    assert len(starts) == len(results) == 4
    for s in range(3):
        assert starts[s + 1] < results[s]  # batch s+1 queued before step s's loss is awaited
    for s, i in enumerate(starts):
        slot = (s + 1) % 2
        end = starts[s + 1] if s + 1 < 4 else len(log)
        step = log[i:end]
        # the upload stream waited for the slot's landing buffers right before the copies
        assert log[i - 1] == ("wait", f"landed{slot}", "upload")
        rec = step.index(("record", f"copied{slot}", "upload"))
        wait = step.index(("wait", f"copied{slot}", "compute"))
        lands = [j for j, e in enumerate(step) if e[0] == "d2d"]
        first = next(j for j, e in enumerate(step) if e[0] == "launch")
        freed = step.index(("record", f"landed{slot}", "compute"))
        assert rec < wait < min(lands) and max(lands) < freed < first
        assert {e[1] for e in step[:rec] if e[0] == "h2d"} == {"upload"}
        assert len(lands) == 3 and {step[j][1] for j in lands} == {"compute"}  # x, labels, mask
        assert not [e for e in step[rec:] if e[0] == "h2d"]  # all of the step's copies before


class _TwoStreams:
    """The simulator with streams that run apart, as on a GPU: kernel launches, event records
    and copies given a stream are queued on that stream ("compute": the legacy default stream;
    "upload": the plan's upload stream); a wait blocks its stream until the event's record point
    has run on the other; host synchronisation (event.synchronize, a copy without a stream,
    cuda.synchronize) runs what it waits for. `eager` names the stream that runs at once; the
    other runs only when waited for. Any ordering the plan forgets then shows up as stale or
    overwritten data, hence as different losses."""

    def __init__(self, monkeypatch, eager: str) -> None:
        from collections import deque

        self.queues = {"compute": deque(), "upload": deque()}
        self.eager, self.done, self.busy, self.count = eager, set(), set(), 0
        fake = type(cuda.to_device(np.zeros(1)))
        to_device, to_host, run = fake.copy_to_device, fake.copy_to_host, cudakit.Launch.run
        compute, upload, model = _Stream("compute"), _Stream("upload"), self

        def on(stream) -> str | None:  # None: no stream given, a synchronous copy
            return None if stream in (0, None) else stream.name

        class Event:
            mark = None

            def record(self, stream=0):
                model.count += 1
                self.mark = model.count
                model.enqueue(on(stream) or "compute", ("mark", self.mark))

            def wait(self, stream=0):
                if self.mark is not None:
                    model.enqueue(on(stream) or "compute", ("wait", self.mark))

            def synchronize(self):
                if self.mark is not None:
                    model.run_until(self.mark)

        def copy_to_device(dst, ary, stream=0):
            if on(stream) is None:
                model.advance("compute")  # a synchronous copy follows the queued work
                return to_device(dst, ary)
            model.enqueue(on(stream), ("op", lambda: to_device(dst, ary)))

        def copy_to_host(src, ary=None, stream=0):
            if on(stream) is None:
                model.advance("compute")
                return to_host(src, ary)
            model.enqueue(on(stream), ("op", lambda: to_host(src, ary)))
            return ary

        def launch(self, *args):
            model.enqueue("compute", ("op", lambda: run(self, *args)))

        monkeypatch.setattr(cuda, "event", lambda *a, **k: Event())
        monkeypatch.setattr(cuda, "stream", lambda: upload)
        monkeypatch.setattr(cuda, "legacy_default_stream", lambda: compute)
        monkeypatch.setattr(cuda, "synchronize", lambda: [model.advance(s) for s in model.queues])
        monkeypatch.setattr(fake, "copy_to_device", copy_to_device)
        monkeypatch.setattr(fake, "copy_to_host", copy_to_host)
        monkeypatch.setattr(cudakit.Launch, "run", launch)

    def enqueue(self, stream: str, op: tuple) -> None:
        self.queues[stream].append(op)
        self.advance(self.eager)

    def advance(self, stream: str, until: int | None = None) -> None:
        """Run `stream` to its end (or until record point `until` has run); a wait for the
        other stream runs that one just far enough."""
        if stream in self.busy:  # each waits for the other
            raise AssertionError(f"deadlock: {stream} is waiting already")
        self.busy.add(stream)
        try:
            q = self.queues[stream]
            while q and (until is None or until not in self.done):
                kind, x = q[0]
                if kind == "wait" and x not in self.done:
                    self.advance("upload" if stream == "compute" else "compute", until=x)
                    if x not in self.done:  # the record point is queued nowhere: a plan error
                        raise AssertionError(f"{stream} waits for an event never reached")
                q.popleft()
                if kind == "op":
                    x()
                elif kind == "mark":
                    self.done.add(x)
        finally:
            self.busy.discard(stream)

    def run_until(self, mark: int) -> None:
        for name, q in self.queues.items():
            if ("mark", mark) in q:
                self.advance(name, until=mark)


def naive_uploads(cn) -> None:
    """What the landing buffers prevent: copies on the upload stream straight into the
    buffers the kernels read, ordered by events, but not against the step still reading."""
    up = cn.uploads[0]

    def put(dst, host):
        dst.copy_to_device(host, stream=up.stream)

    def land():
        up.copied[0].record(up.stream)
        up.copied[0].wait(cuda.legacy_default_stream())

    cn._put, cn._land = put, land


@simulated
@pytest.mark.parametrize("eager", ["upload", "compute"])
@pytest.mark.parametrize("gpus", [1, 2])
def test_no_race_when_the_streams_run_apart(monkeypatch, eager, gpus):
    """With the two streams running apart -- the copies as early as they may (the step before
    still queued), or the kernels as early as they may (the copies held back until waited
    for) -- the trainer's loop gives the losses, errors and weights of the plain synchronous
    run: every step reads exactly its own batch, labels and masks."""
    ref = plan(gpus)
    want = train(ref, steps=4)
    _TwoStreams(monkeypatch, eager)
    cn = plan(gpus, "replay")
    assert train(cn, steps=4) == want
    assert np.array_equal(cn.theta.copy_to_host(), ref.theta.copy_to_host())


@simulated
def test_the_stream_model_catches_a_race(monkeypatch):
    """The check above can fail: copying the next batch straight into the input buffer while
    the step before is still queued hands that step the wrong images."""
    want = train(plan(1), steps=3)
    _TwoStreams(monkeypatch, "upload")
    cn = plan(1)
    naive_uploads(cn)
    got = train(cn, steps=3)
    assert got[0] != want[0]  # step 0 ran on batch 1


# ------------------------------------------------------------------------ benchmarks/gpu_check.sh


@pytest.mark.skipif(cudakit.real_gpu_requested(), reason="not a GPU test")
def test_gpu_check_script_runs_its_documented_steps(tmp_path):
    """The real-GPU script's steps are the ones its header documents, it refuses bad usage, and
    its control flow works here: a dry run with no time left runs the setup, skips every
    other step, says so in its summary and exits non-zero (a skipped check is no pass). The
    whole dry run (`bash benchmarks/gpu_check.sh --dry-run`, 2-3 minutes) is too slow for
    the suite."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    script = Path("benchmarks/gpu_check.sh")
    text = script.read_text()
    documented = re.findall(r"^#\s+\d\.\s+(\w+)\s", text, re.M)
    assert documented == ["setup", "tests", "train", "lenet5", "alexnet"]
    assert set(re.findall(r"run_step ([a-z]\w*) ", text)) == set(documented[1:])
    assert "/.gpu/" in Path(".gitignore").read_text().splitlines()  # where the wheels go
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    env = dict(os.environ, GPU_CHECK_BUDGET="1", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert out.returncode == 1, out.stdout + out.stderr
    assert summary.startswith("setup: ok"), summary
    for step in ("tests", "train", "lenet5"):
        assert f"{step}: SKIPPED (no time left)" in summary
    assert summary in out.stdout and (tmp_path / "out" / "gpu_check.log").exists()
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what the device tool brings back
