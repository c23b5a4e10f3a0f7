"""Start-up of training: a warm start compiles nothing, train imports no optional heavyweights,
and the chunked initialisation draws the very values the one-shot one did.

The start-up tests run `netdsl train` twice in fresh processes with the same Numba and
netdsl kernel caches (NUMBA_CACHE_DIR, NETDSL_CACHE_DIR in a temporary folder): the first
must compile (else the counter below proves nothing), the second must load every kernel
from the caches. No assertion is on time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from netdsl.init import sample, sample_into

ROOT = Path(__file__).resolve().parent.parent

# conv (fused relu) -> max pool -> standalone activation -> fc -> loss: the kernel families
# of a small CNN, the generated activation module among them
TINY_NET = """\
network tiny
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
act  a1: tanh
fc   f1: 3
loss cross_entropy

train {
  batch 4
  epochs 1
  optimizer sgd(lr=0.01, momentum=0.9)
}
"""

# Runs `netdsl train` in this process, then reports what Numba compiled and loaded, which
# generated kernel modules were written or reused, and which optional packages got imported.
CHILD = textwrap.dedent("""\
    import gc, json, sys
    from netdsl.cli import main
    status = main(sys.argv[1:])
    from numba.core.dispatcher import Dispatcher
    from netdsl.ops import codegen
    misses, hits, conv_misses = [], 0, []
    for d in gc.get_objects():
        if isinstance(d, Dispatcher):
            misses += [d.py_func.__qualname__] * sum(d.stats.cache_misses.values())
            hits += sum(d.stats.cache_hits.values())
            if d.py_func.__module__ == "netdsl.ops.conv_cpu":
                conv_misses += [d.py_func.__qualname__] * sum(d.stats.cache_misses.values())
    heavy = sorted(m for m in ("torch", "matplotlib", "tensorboardX", "onnx", "onnxruntime",
                               "mpi4py", "PIL") if m in sys.modules)
    print(json.dumps({"status": status, "misses": misses, "hits": hits, "heavy": heavy,
                      "conv_misses": sorted(conv_misses),
                      "kernel_sources": [how for _, _, how in codegen.EVENTS]}))
""")


def run_child(cmd: list[str], caches: Path, ahead: str | None = None,
              helpers: int | None = None) -> dict:  # fmt: skip
    """Run a child process with its Numba and netdsl caches in `caches`, one worker thread,
    NETDSL_COMPILE_AHEAD set to `ahead` (None: unset, as a user runs it: compile ahead where
    it helps) and NETDSL_COMPILE_HELPERS to `helpers` (None: unset, one a core idle besides
    the process's); returns the JSON report it prints last."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(caches / "numba"),
               NETDSL_CACHE_DIR=str(caches / "netdsl"), NUMBA_NUM_THREADS="1")  # fmt: skip
    for name in ("NETDSL_DEBUG", "NETDSL_COMPILE_AHEAD", "NETDSL_COMPILE_HELPERS"):
        env.pop(name, None)
    if ahead is not None:
        env["NETDSL_COMPILE_AHEAD"] = ahead
    if helpers is not None:
        env["NETDSL_COMPILE_HELPERS"] = str(helpers)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_train(tmp_path: Path, out: str) -> dict:
    cmd = [sys.executable, "-c", CHILD, "train", str(tmp_path / "tiny.net"), "--data",
           str(tmp_path / "tiny.npz"), "--validate", "4", "--out", str(tmp_path / out),
           "--quiet"]  # fmt: skip
    # no compile-ahead helper: the tests below count what THIS process compiled (on an idle
    # machine a helper would compile the backward kernels, found here as cache hits)
    return run_child(cmd, tmp_path, ahead="0")


@pytest.fixture(scope="module")
def two_starts(tmp_path_factory) -> tuple[dict, dict]:
    """(cold, warm): the reports of two `netdsl train` processes sharing empty caches."""
    tmp = tmp_path_factory.mktemp("coldstart")
    (tmp / "tiny.net").write_text(TINY_NET)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 1, 8, 8)).astype(np.uint8)
    np.savez(tmp / "tiny.npz", x=x, y=rng.integers(0, 3, 12))
    return run_train(tmp, "run1"), run_train(tmp, "run2")


def test_cold_start_compiles(two_starts):
    cold, _ = two_starts
    assert cold["status"] == 0
    assert cold["misses"], "an empty cache compiled nothing: the miss counter is broken"
    assert "generated" in cold["kernel_sources"]


def test_warm_start_compiles_nothing(two_starts):
    _, warm = two_starts
    assert warm["status"] == 0
    assert warm["misses"] == [], f"compiled again on a warm start: {warm['misses']}"
    assert warm["hits"] > 0
    assert warm["kernel_sources"] and set(warm["kernel_sources"]) == {"reused"}


def test_max_pooling_compiles_only_max_pooling_code(two_starts):
    """pool.py's CPU kernels are one per mode and window kind: the tiny net's 2x2 stride-2
    max pool on an even map compiles its own kernel, none of average pooling's, nor the 3x3
    whole-window or edge code (all of it cost LeNet-5 over 2 s of its cold start)."""
    cold, _ = two_starts
    pool_misses = {m for m in cold["misses"] if "_planes" in m or "_whole" in m}
    assert pool_misses == {"_max2_tiled_planes", "_max_backward_planes"}, pool_misses


def test_convolution_compiles_only_its_path_and_one_gemm(two_starts):
    """conv_cpu's kernels are one per data path (direct / wide / gather, picked in Python):
    the tiny net's 3x3 pad-1 conv (the wide layout) compiles the wide kernels alone, and
    gemm once (one signature: a literal True / False at a call site compiled it per value;
    a kernel with every path cost LeNet-5 2 s more of its cold start)."""
    cold, _ = two_starts
    assert cold["conv_misses"] == [
        "add_col_wide", "backward_wide", "fill_col_wide", "forward_wide", "gemm"
    ], cold["conv_misses"]  # fmt: skip


def test_train_imports_no_optional_packages(two_starts):
    for report in two_starts:
        assert report["heavy"] == [], f"netdsl train imported {report['heavy']}"


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "gaussian", "std": 0.01, "mean": 0.0},
        {"kind": "gaussian", "std": 0.3, "mean": -0.5},
        {"kind": "he"},
        {"kind": "uniform", "scale": 0.2},
        {"kind": "xavier"},
        {"kind": "constant", "value": 1.5},
    ],
)
@pytest.mark.parametrize("shape", [(1,), (7, 3), (4, 5, 3, 3)])
def test_chunked_init_draws_the_same_values(spec, shape):
    """sample_into, chunk by chunk, gives sample()'s float32 values bit for bit and leaves
    the generator where sample() leaves it (the next tensor's values stay the same too)."""
    one_shot, chunked = np.empty(shape, np.float32), np.empty(shape, np.float32)
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    one_shot[...] = sample(spec, shape, 27.0, 36.0, r1)
    sample_into(chunked, spec, 27.0, 36.0, r2, chunk=4)
    assert one_shot.tobytes() == chunked.tobytes()
    assert r1.random() == r2.random()


# ---- compile ahead (netdsl/compile_ahead.py): a forked helper fills the cache with the
# backward kernels. Each case is a fresh process with fresh caches; the first steps' losses
# must be bit for bit those of compiling everything in-process, whatever becomes of the helper.

AHEAD_CHILD = textwrap.dedent("""\
    import gc, json, os, sys
    import numpy as np
    case, net_path = sys.argv[1], sys.argv[2]
    if case == "cannot_save":  # the helper's cache writes fail, as on a read-only folder
        from numba.core import caching
        parent, real = os.getpid(), caching.IndexDataCacheFile._save_data
        def save_data(self, name, data):
            if os.getpid() != parent:
                raise PermissionError(13, "read-only", name)
            return real(self, name, data)
        caching.IndexDataCacheFile._save_data = save_data
    import netdsl
    from netdsl.train.optimizer import Optimizer
    cnet = netdsl.compile(net_path, device="cpu", batch=4, seed=0)
    if case == "killed":  # the helper dies before it could finish
        cnet.ahead.kill()
    if case == "plain":  # the helper's backward all in the cache before the first step
        cnet.ahead.join()
    # "nowait": the first step does not wait for the helper, as netdsl train runs
    opt = Optimizer(dict(cnet.net.train["optimizer"]), cnet.slots, cnet.grad.size)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    losses = []
    for _ in range(3):
        losses.append(repr(cnet.step_grads(x, y)))
        opt.step(cnet.theta, cnet.grad, 0.01)
    from numba.core.dispatcher import Dispatcher
    misses = hits = 0
    for d in gc.get_objects():
        if isinstance(d, Dispatcher):
            misses += sum(d.stats.cache_misses.values())
            hits += sum(d.stats.cache_hits.values())
    a = cnet.ahead
    from netdsl.compile_ahead import _helper_calls, _parent_order_calls
    calls = [sum(p != "forward" for p, _ in f(cnet))
             for f in (_helper_calls, _parent_order_calls)]  # before the forward phase
    print(json.dumps({"losses": losses, "reason": a.reason, "backward_done": a.backward_done,
                      "exit": a.exit, "misses": misses, "hits": hits, "calls": calls,
                      "taken": [h.taken for h in a.helpers],
                      "exits": [h.exit for h in a.helpers]}))
""")


def run_ahead(tmp: Path, case: str, setting: str | None, caches: str,
              helpers: int | None = None) -> dict:  # fmt: skip
    """One process compiling the tiny net and taking three steps; `setting`: the value of
    NETDSL_COMPILE_AHEAD (None: unset); `caches`: the folder of its Numba and netdsl caches;
    `helpers`: NETDSL_COMPILE_HELPERS."""
    return run_child([sys.executable, "-c", AHEAD_CHILD, case, str(tmp / "tiny.net")],
                     tmp / caches, setting, helpers)  # fmt: skip


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> tuple[Path, dict]:
    """The reference: everything compiled in this process (NETDSL_COMPILE_AHEAD=0)."""
    tmp = tmp_path_factory.mktemp("ahead")
    (tmp / "tiny.net").write_text(TINY_NET)
    ref = run_ahead(tmp, "plain", "0", "off")
    assert ref["reason"].startswith("off") and ref["misses"] > 0
    return tmp, ref


FORKS = sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) >= 2
needs_fork = pytest.mark.skipif(not FORKS, reason="compile ahead forks on Linux, 2+ cores")


@needs_fork
def test_compile_ahead_same_losses_and_a_warm_start_forks_nothing(in_process):
    tmp, ref = in_process
    cold = run_ahead(tmp, "plain", "1", "shared")  # "1": a fork even on a loaded machine
    assert cold["reason"] == "forked" and cold["backward_done"], cold
    assert cold["hits"] > 0, "the helper left nothing in the cache that this process used"
    assert cold["losses"] == ref["losses"]
    warm = run_ahead(tmp, "plain", None, "shared")  # as a user runs it, load or not
    assert warm["reason"] == "warm (compiled before)", warm
    assert warm["misses"] == 0 and warm["losses"] == ref["losses"]


@needs_fork
@pytest.mark.parametrize("case", ["plain", "nowait"])
def test_several_helpers_share_the_calls_and_compute_the_same(in_process, case):
    """Three helpers (as a machine with four idle cores forks): the first goes through the
    parent's needs about reversed, the other two share the parent's order, each call before
    the forward phase going to exactly one of them (the queue pipe); the losses are those
    of compiling everything in-process, whether the first step waits for them or not."""
    tmp, ref = in_process
    r = run_ahead(tmp, case, "1", f"three_{case}", helpers=3)
    assert r["reason"] == "forked" and len(r["exits"]) == 3, r
    assert r["losses"] == ref["losses"]
    if case == "plain":  # all three said their share: the shares add up to every call
        first, rest = r["calls"]
        assert r["backward_done"] and r["taken"] == [first, *r["taken"][1:]], r
        assert sum(r["taken"][1:]) == rest and min(r["taken"][1:]) > 0, r
        assert r["hits"] > 0, "the helpers left nothing in the cache that this process used"
    assert all(e is not None for e in r["exits"]), "a helper outlived the first step"


def test_one_helper_for_each_idle_core(monkeypatch):
    """_helper_count: a helper for each core idle besides the process's own (the lesser of
    the load average and the tasks running now counts as busy), at least one, at most
    MAX_HELPERS, no more than the memory fits; NETDSL_COMPILE_HELPERS overrides."""
    from netdsl import compile_ahead

    monkeypatch.delenv("NETDSL_COMPILE_HELPERS", raising=False)
    count = compile_ahead._helper_count
    monkeypatch.setattr(compile_ahead, "_fits", lambda cnet: None)  # memory unknown
    monkeypatch.setattr(compile_ahead, "_cores", lambda: 2)
    assert count(None, "0.10 0.20 0.30 1/80 123") == 1
    assert count(None, "1.60 1.70 2.00 3/80 123") == 1  # busy: still one (_busy decides)
    monkeypatch.setattr(compile_ahead, "_cores", lambda: 4)
    assert count(None, "0.05 0.20 0.30 1/80 123") == 3
    assert count(None, "1.20 1.00 1.00 2/80 123") == 2  # one other task running
    assert count(None, "2.50 1.00 1.00 1/80 123") == 3  # the average lags: nothing runs now
    monkeypatch.setattr(compile_ahead, "_cores", lambda: 64)
    assert count(None, "0.00 0.00 0.00 1/80 123") == compile_ahead.MAX_HELPERS
    assert count(None, "garbage") == compile_ahead.MAX_HELPERS  # unreadable: all idle
    monkeypatch.setattr(compile_ahead, "_fits", lambda cnet: 2)
    assert count(None, "0.00 0.00 0.00 1/80 123") == 2
    monkeypatch.setattr(compile_ahead, "_fits", lambda cnet: 0)  # _start said why already
    assert count(None, "0.00 0.00 0.00 1/80 123") == 1
    monkeypatch.setenv("NETDSL_COMPILE_HELPERS", "5")
    assert count(None, "0.00 0.00 0.00 1/80 123") == 5
    monkeypatch.setenv("NETDSL_COMPILE_HELPERS", "99")
    assert count(None, "0.00 0.00 0.00 1/80 123") == compile_ahead.MAX_HELPERS


@needs_fork
def test_first_step_that_does_not_wait_for_the_helper_computes_the_same(in_process):
    """The first backward goes on without waiting for the helper (kernels it compiled load,
    one it is compiling is waited for, the rest compile here): the same losses."""
    tmp, ref = in_process
    r = run_ahead(tmp, "nowait", "1", "nowait")
    assert r["reason"] == "forked", r
    assert r["losses"] == ref["losses"]


@needs_fork
@pytest.mark.parametrize("case", ["killed", "cannot_save"])
def test_compile_ahead_falls_back_to_compiling_here(in_process, case):
    """A helper killed at once, or one whose cache writes all fail: this process compiles
    what it needs and computes the same losses."""
    tmp, ref = in_process
    r = run_ahead(tmp, case, "1", case)
    assert r["reason"] == "forked", r
    assert r["losses"] == ref["losses"]
    assert r["misses"] > 0
    if case == "killed":
        assert r["exit"] == -9 and not r["backward_done"]
    else:  # nothing landed in the cache: every kernel compiled here
        assert r["hits"] == 0, r


def test_no_helper_where_its_copied_pages_would_not_fit():
    """The child's copy-on-write pages can reach the plan's size: no fork unless twice that
    fits into the memory available (read from /proc/meminfo)."""
    import types

    from netdsl import compile_ahead

    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo on this platform")

    def plan(nbytes):
        return types.SimpleNamespace(plan_bytes=lambda: {"outputs": nbytes},
                                     theta=np.zeros(4, np.float32))  # fmt: skip

    assert compile_ahead._short_of_memory(plan(1 << 20)) is None
    why = compile_ahead._short_of_memory(plan(1 << 60))
    assert why is not None and why.startswith("short of memory")


# Two processes that need the same kernel at the same moment (the parent's forward and the
# helper's backward both call conv_cpu's fill_col and gemm): with lock_compiles one compiles
# it and the other loads its code from the cache, whoever comes first.
LOCK_CHILD = textwrap.dedent("""\
    import json, os, sys
    import numpy as np
    from netdsl import compile_ahead
    from netdsl.ops import pool
    if sys.argv[1] == "locked":
        compile_ahead.lock_numba_cache()
        compile_ahead.lock_compiles()
    kernel = pool._max_backward_planes
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid:
        os.write(go_w, b"go")  # both call the kernel now
    else:
        os.read(go_r, 2)
    dy, arg = np.ones((1, 1, 1), np.float32), np.zeros((1, 1, 1), np.int32)
    dx = np.zeros((1, 2, 2), np.float32)
    kernel(0, 1, dy, arg, dx)
    stats = kernel.dispatcher.stats
    me = {"misses": sum(stats.cache_misses.values()), "hits": sum(stats.cache_hits.values()),
          "dx": dx.ravel().tolist()}
    if pid == 0:
        os.write(out_w, json.dumps(me).encode())
        os._exit(0)
    os.close(out_w)
    other = json.loads(os.read(out_r, 4096))
    os.waitpid(pid, 0)
    print(json.dumps([me, other]))
""")


@needs_fork
def test_two_processes_compile_a_kernel_once(tmp_path):
    """lock_compiles: of two processes calling one uncompiled kernel at once, exactly one
    compiles it (a cache miss) and the other loads it (a hit); both compute the same."""
    procs = run_child([sys.executable, "-c", LOCK_CHILD, "locked"], tmp_path / "caches")
    assert sorted(p["misses"] for p in procs) == [0, 1], procs
    assert sorted(p["hits"] for p in procs) == [0, 1], procs
    assert procs[0]["dx"] == procs[1]["dx"] == [1.0, 0.0, 0.0, 0.0]


def test_compile_lock_waits_then_goes_on(tmp_path):
    """_file_lock reports the seconds it waited; flock is per open file, so a second open
    waits even in the same process (lock_compiles tracks what it holds for that), and after
    its limit it goes on unlocked (a duplicate compile is only slower than a hang)."""
    from netdsl import compile_ahead

    path = str(tmp_path / "f.nbi.lock")
    with compile_ahead._file_lock(path) as waited:
        assert 0.0 <= waited < 1.0
        with compile_ahead._file_lock(path, limit=0.2) as again:  # another open: it waits
            assert again >= 0.2


def test_helper_backward_order():
    """First layer first, each runner that shares code with forward kernels after the next
    one that does not (the parent's forward compiles that code first)."""
    import types

    from netdsl.compile_ahead import backward_order

    def runner(name, shares):
        return types.SimpleNamespace(name=name, shares_forward_kernels=shares)

    names = [("c1", True), ("n1", False), ("p1", False), ("c2", True), ("c3", True),
             ("p3", False), ("fc", False), ("c9", True)]  # fmt: skip
    order = backward_order([runner(n, s) for n, s in names])
    assert [r.name for r in order] == ["n1", "c1", "p1", "p3", "c2", "c3", "fc", "c9"]


def test_helper_puts_off_what_the_parent_is_compiling(monkeypatch):
    """_run_all: a call that met a function being compiled elsewhere (Busy counted by
    lock_compiles) is tried again after the next one that went through; what is still put
    off at the end is run waiting (skip_busy off)."""
    from numba.core import dispatcher

    from netdsl import compile_ahead

    def patch(self, sig):  # stands in for lock_compiles' patched Dispatcher.compile
        raise AssertionError("not called")

    patch.busy, patch.skip_busy = 0, False
    monkeypatch.setattr(dispatcher.Dispatcher, "compile", patch)
    log, tries = [], {"a": 2, "b": 0, "c": 0, "d": 9}  # busy that many times while skipping

    def call(name):
        def run():
            if patch.skip_busy and tries[name] > 0:
                tries[name] -= 1
                patch.busy += 1
                raise compile_ahead.Busy(name)
            log.append((name, patch.skip_busy))

        return run

    compile_ahead._run_all([call(n) for n in "abcd"])
    assert log == [("b", True), ("c", True), ("a", True), ("d", False)]
    assert not patch.skip_busy


def test_compile_lock_busy_raises_instead_of_waiting(tmp_path):
    from netdsl import compile_ahead

    path = str(tmp_path / "g.nbi.lock")
    with compile_ahead._file_lock(path):
        with pytest.raises(compile_ahead.Busy):
            with compile_ahead._file_lock(path, busy=True):
                pass
    with compile_ahead._file_lock(path, busy=True) as waited:  # free: taken at once
        assert waited < 1.0


@pytest.mark.parametrize("name", ["lenet5", "lenet5-1998", "alexnet"])
def test_parameters_drawn_in_a_thread_are_the_same(name):
    """A CPU plan draws its parameters in a thread (InitInThread) while the first forward
    starts: theta (which waits for all of them) holds init_params' values bit for bit, for
    a connection-table net too (masks) and the 61 M of AlexNet; the forward waits for each
    layer's parameters, so its first output is the same as from a fully drawn theta."""
    import netdsl
    from netdsl.backends import compile_network
    from netdsl.init import init_params

    net = netdsl.load(str(ROOT / "nets" / f"{name}.net"))
    cnet = compile_network(net, batch=1, seed=3)
    expected = np.zeros_like(cnet._theta)
    init_params(net, cnet.slots, expected, np.random.default_rng(3), cnet.masks)
    if name == "lenet5":  # the forward waits layer by layer, then theta is complete
        x = np.random.default_rng(0).standard_normal((1, *net.input.out_shape))
        first = cnet.forward(x.astype(np.float32))
        assert cnet._init is None
        assert np.array_equal(first, cnet.forward(x.astype(np.float32)))
    assert cnet.theta.tobytes() == expected.tobytes()
    assert cnet._init is None


def test_parameter_thread_hands_its_error_to_the_waiter():
    """An error while drawing (here a spec no initialiser knows) is raised where a layer's
    parameters are waited for, not lost in the thread."""
    import types

    from netdsl.init import InitInThread

    net = types.SimpleNamespace(
        train={"init": {"weight": {"kind": "nope"}, "bias": {"kind": "nope"}}},
        layer=lambda name: (_ for _ in ()).throw(ValueError("no layer " + name)),
    )
    slot = types.SimpleNamespace(layer="f", key="f.weight", shape=(2,), offset=0, size=2)
    init = InitInThread(net, [slot], np.zeros(2, np.float32), np.random.default_rng(0), {})
    with pytest.raises(ValueError, match="no layer f"):
        init.wait_for("f")


def test_optimizer_state_touched_in_a_thread_steps_the_same(monkeypatch):
    """From TOUCH_MIN_PARAMS on, a thread touches the optimizer state's pages (writing zeros
    over zeros); every use of the state waits for it: the state starts at zero and a step
    gives the bits of a step without the thread."""
    import types

    from netdsl.train import optimizer as optmod

    size = optmod.TOUCH_MIN_PARAMS + 5
    slots = [types.SimpleNamespace(size=size, lr_mult=1.0, decay_mult=1.0)]
    spec = {"kind": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(size).astype(np.float32)
    g = rng.standard_normal(size).astype(np.float32)
    touched = optmod.Optimizer(spec, slots, size)
    assert touched._touching is not None
    monkeypatch.setattr(optmod, "TOUCH_MIN_PARAMS", size + 1)
    plain = optmod.Optimizer(spec, slots, size)
    assert plain._touching is None
    w1, w2 = w0.copy(), w0.copy()
    for _ in range(2):
        touched.step(w1, g, 0.01)
        plain.step(w2, g, 0.01)
    assert touched._touching is None
    assert w1.tobytes() == w2.tobytes() and touched.v.tobytes() == plain.v.tobytes()


def test_helper_takes_the_last_convolution_family_forward():
    """_late_family: the first runner of the last kernel family among the runners whose
    backward shares code with forward kernels (AlexNet: conv3, the first 3x3 Winograd
    layer), none where that family is the first runner's (the parent compiles it first)."""
    import types

    from netdsl.compile_ahead import _late_family

    class Gemm:
        wino = None

    class Wino5:
        wino = 5

    class Wino3:
        wino = 3.0

    def conv(name, op):
        return types.SimpleNamespace(name=name, shares_forward_kernels=True, op=op)

    pool = types.SimpleNamespace(name="p", shares_forward_kernels=False)
    alex = [conv("c1", Gemm()), pool, conv("c2", Wino5()), conv("c3", Wino3()),
            conv("c4", Wino3()), pool]  # fmt: skip
    assert [r.name for r in _late_family(alex)] == ["c3"]
    assert _late_family([conv("c1", Gemm()), pool, conv("c2", Gemm())]) == []
    assert _late_family([pool]) == []


def test_winograd_families_share_their_chunk_loops_and_gemm_kernels(monkeypatch):
    """The Winograd families' chunk loops (conv_rows, wgrad_rows) are Python: as Numba kernels
    each linked and optimised again every transform it called (AlexNet: 3.6 s of its cold
    compile). Their GEMM passes are winograd_cpu's conv_planes and wgrad_planes, one compiled
    signature for F(2x2, 3x3), F(2x2, 5x5) and F(4x4, 3x3) alike (FLIP is an argument)."""
    from numba.core.dispatcher import Dispatcher

    from netdsl.ops import conv, winograd5_cpu, winograd43_cpu, winograd_cpu

    for mod in (winograd_cpu, winograd5_cpu, winograd43_cpu):
        for name in ("conv_rows", "wgrad_rows"):
            assert not isinstance(getattr(mod, name), Dispatcher), f"{mod.__name__}.{name}"
    for mod in (winograd5_cpu, winograd43_cpu):
        assert mod.conv_planes is winograd_cpu.conv_planes
        assert mod.wgrad_planes is winograd_cpu.wgrad_planes
    monkeypatch.setenv("NETDSL_CONV_ALGO", "winograd")
    monkeypatch.setattr(conv, "num_threads", lambda: 1)
    rng = np.random.default_rng(0)
    for k, tile, family in ((3, "2", "Winograd"), (5, "2", "Winograd5"), (3, "4", "Winograd43")):
        monkeypatch.setenv("NETDSL_WINO_TILE", tile)
        p = k // 2
        layer = conv.ConvCPU(2, 4, 8, 8, 4, k, k, (1, 1), (p, p), (1, 1), 1, (8, 8), True)
        assert type(layer.wino).__name__ == family
        x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
        w = rng.standard_normal((4, 4, k, k)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        dy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
        y, dx, dw, db = (np.empty_like(a) for a in (dy, x, w, b))
        layer.forward(x, w, b, y)
        layer.backward(dy, x, w, dx, dw, db)
    assert len(winograd_cpu.conv_planes.signatures) == 1, winograd_cpu.conv_planes.signatures
    assert len(winograd_cpu.wgrad_planes.signatures) == 1, winograd_cpu.wgrad_planes.signatures


def test_busy_needs_the_load_average_and_the_tasks_running_now(monkeypatch):
    """The helper is kept off only when the 1-minute load average AND the tasks runnable now
    leave no idle core: the average lags, so a start right after another job must still
    fork on an idle machine."""
    from netdsl import compile_ahead

    monkeypatch.setattr(compile_ahead, "_cores", lambda: 2)
    busy = compile_ahead._busy
    assert busy("0.20 0.50 0.70 1/80 123") is None  # idle
    assert busy("1.90 1.70 2.20 1/80 123") is None  # lagging average, nothing else running
    assert busy("0.40 0.60 0.90 3/80 123") is None  # a burst now, idle on average
    why = busy("1.90 1.70 2.20 3/80 123")  # both: two other tasks on two cores
    assert why is not None and "no idle core" in why and "2 other tasks" in why
    assert busy("1.40 1.70 2.20 2/80 123") is None  # one other task: a core is idle
    assert busy("garbage") is None  # unreadable: no opinion (the other checks apply)


# a 5x5 and a 3x3 layer forced through Winograd: F(2x2, 5x5) and (28 px) F(4x4, 3x3), whose
# kernels call plane helpers (winograd_cpu.bind_plane_helpers)
WINO_NET = """\
network wbind
input image: 2x28x28
conv c1: 4 filters 5x5, pad 2, relu
conv c2: 4 filters 3x3, pad 1
fc   f1: 3
loss cross_entropy

train {
  batch 2
  epochs 1
  optimizer sgd(lr=0.001, momentum=0.9)
}
"""

STEPS_CHILD = textwrap.dedent("""\
    import hashlib, json, sys
    import numpy as np
    import netdsl
    from netdsl.train.optimizer import Optimizer
    cnet = netdsl.compile(sys.argv[1], device="cpu", batch=2, seed=0)
    opt = Optimizer(dict(cnet.net.train["optimizer"]), cnet.slots, cnet.grad.size)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 28, 28)).astype(np.float32)
    y = np.array([0, 2])
    losses = []
    for _ in range(3):
        losses.append(repr(cnet.step_grads(x, y)))
        opt.step(cnet.theta, cnet.grad, 0.001)
    from netdsl.ops import jit
    print(json.dumps({"losses": losses, "llvm_tuned": jit._llvm_tuned,
                      "theta": hashlib.sha256(cnet.theta.tobytes()).hexdigest()}))
""")


def test_winograd_plane_helpers_give_cold_and_warm_starts_the_same_bits(tmp_path, monkeypatch):
    """A kernel loaded from Numba's cache bound its plane-helper calls to its own copy of the
    helper, a freshly compiled one to the helper's own code, and the two rounded apart: one
    seed's cold and warm starts of cifar10 differed from its first 5x5 Winograd layer on.
    Both starts, and one with the compile-ahead helper, must give the same bits."""
    monkeypatch.setenv("NETDSL_CONV_ALGO", "winograd")
    (tmp_path / "w.net").write_text(WINO_NET)
    cmd = [sys.executable, "-c", STEPS_CHILD, str(tmp_path / "w.net")]
    cold = run_child(cmd, tmp_path / "a", ahead="0")
    warm = run_child(cmd, tmp_path / "a", ahead="0")
    ahead = run_child(cmd, tmp_path / "b", ahead="1")
    assert len(set(cold["losses"])) == 3  # it trained
    assert warm == cold
    assert ahead == cold


@pytest.mark.parametrize("algo", ["winograd", "gemm"])
def test_compiled_without_loop_strength_reduction_the_same_bits(tmp_path, monkeypatch, algo):
    """netdsl compiles its CPU kernels without LLVM's loop strength reduction (jit.tune_llvm:
    a sixth less compiling); the pass only rewrites integer address arithmetic, so the
    kernels compute the same bits as with it (NETDSL_LLVM_LSR=1), each from its own cache:
    the Winograd families and the im2col path, forward, backward and update."""
    monkeypatch.setenv("NETDSL_CONV_ALGO", algo)
    (tmp_path / "w.net").write_text(WINO_NET)
    cmd = [sys.executable, "-c", STEPS_CHILD, str(tmp_path / "w.net")]
    without = run_child(cmd, tmp_path / "without", ahead="0")
    monkeypatch.setenv("NETDSL_LLVM_LSR", "1")
    kept = run_child(cmd, tmp_path / "kept", ahead="0")
    assert len(set(without["losses"])) == 3  # it trained
    assert without["llvm_tuned"] and kept["llvm_tuned"]
    assert (without["losses"], without["theta"]) == (kept["losses"], kept["theta"])


def test_a_net_compiled_before_draws_its_parameters_before_binding(tmp_path, monkeypatch):
    """Where no helper will be forked (here: the net was compiled before, the early marker
    that the first step wrote says so), the plan starts drawing before it binds its runners
    (no_helper); the values are init_params' bit for bit, and another batch is another net."""
    import netdsl
    from netdsl import compile_ahead, compiler
    from netdsl.backends import compile_network
    from netdsl.init import init_params

    monkeypatch.setenv("NETDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NETDSL_COMPILE_AHEAD", "1")
    monkeypatch.setattr(compile_ahead, "_unsafe", lambda: None)  # pytest may run threads
    monkeypatch.setattr(compile_ahead, "_short_of_memory", lambda cnet: "no fork (test)")
    drawing_at_bind = []
    bind = compiler.CompiledNet._bind

    def spy(self):
        drawing_at_bind.append(self._init is not None)
        bind(self)

    monkeypatch.setattr(compiler.CompiledNet, "_bind", spy)
    net = netdsl.loads(TINY_NET)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    first = compile_network(net, batch=4, seed=3)
    assert first.ahead.reason == "no fork (test)"  # decided after binding, as before
    first.step_grads(x, y)  # the first step marks the plan and the net warm
    again = compile_network(net, batch=4, seed=3)
    assert again.ahead.reason == "warm (compiled before)"
    other = compile_network(net, batch=2, seed=3)
    assert other.ahead.reason == "no fork (test)"
    assert drawing_at_bind == [False, True, False]
    expected = np.zeros_like(again._theta)
    init_params(net, again.slots, expected, np.random.default_rng(3), again.masks)
    assert again.theta.tobytes() == expected.tobytes()
    assert again.step_grads(x, y) == compile_network(net, batch=4, seed=3).step_grads(x, y)
