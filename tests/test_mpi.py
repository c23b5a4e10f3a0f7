"""Data-parallel training over MPI (netdsl/train/distributed.py).

The tests marked ``mpi`` launch ``mpiexec -n 2 python -m netdsl train`` in a
subprocess (one Numba thread per rank) and need the ``mpi`` extra: ``pip install
'netdsl[mpi]'`` (mpi4py and the mpich wheel, whose ``mpiexec`` they use); without it
they are skipped. The others check the single-process communicator, the sharding
arithmetic and the "no mpi4py" message without MPI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.train import distributed
from netdsl.train.checkpoint import load_checkpoint
from netdsl.train.data import iterate_batches
from netdsl.train.distributed import (
    Communicator,
    DistributedError,
    detect_world_size,
    find_mpiexec,
    local_batch,
    shard_bounds,
)

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # seconds for one mpiexec run; a hang fails the test instead of CI

# No dropout and no batch norm: two ranks with batch 8 each then take exactly the steps
# one process takes with batch 16 (up to float32 summation order). `augment flip` runs
# through the path that augments the whole global batch on every rank.
TINY = """
network tiny
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
fc   f1: 12, relu
fc   out: 3
loss cross_entropy

train {
  data "train.npz,test.npz"
  batch 16
  epochs 2
  optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
  augment flip
  seed 3
}
"""


def _why_no_mpi() -> str | None:
    try:
        found = importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "mpi4py is not installed (pip install 'netdsl[mpi]')"
    if find_mpiexec() is None:
        return "no mpiexec found (pip install 'netdsl[mpi]' installs MPICH's)"
    return None


_NO_MPI = _why_no_mpi()
needs_mpi = pytest.mark.skipif(_NO_MPI is not None, reason=_NO_MPI or "")


def make_data(path: Path, n: int, seed: int) -> None:
    """Three classes: a bright bar at the top, middle or bottom, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0.0, 0.3, (n, 1, 8, 8))
    for i, c in enumerate(y):
        x[i, 0, 1 + 3 * c : 3 + 3 * c, :] += 2.0
    np.savez(path, x=x.astype(np.float32), y=y)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.net").write_text(TINY)
    make_data(tmp_path / "train.npz", n=96, seed=0)
    make_data(tmp_path / "test.npz", n=40, seed=1)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in distributed.SIZE_VARS + (distributed.TEST_FAIL_VAR,):
        env.pop(var, None)  # never inherit a launcher's world
    env.update(extra)
    return env


def train(tmp: Path, out: str, ranks: int = 0, *args: str, **env: str):
    """`netdsl train` on the tiny net; ranks=0: a plain process, else under mpiexec."""
    cmd = [sys.executable, "-m", "netdsl", "train", str(tmp / "tiny.net"),
           "--out", str(tmp / out), "--quiet", *args]  # fmt: skip
    if ranks:
        cmd = [find_mpiexec(), "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True,
                       timeout=TIMEOUT)  # fmt: skip
    return p, time.perf_counter() - t0


def params(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


# ---------------------------------------------------------------- without MPI


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [0, 1, 7, 16, 30])
def test_shard_bounds_cut_like_iterate_batches(world, n):
    cuts = [shard_bounds(r, world, n) for r in range(world)]
    assert cuts[0][0] == 0 and cuts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))  # contiguous
    if n:
        for r in range(world):
            rng = np.random.default_rng(0)
            (batch,) = iterate_batches(n, n, rng, shuffle=False, shard=(r, world))
            assert batch.tolist() == list(range(*cuts[r]))


def test_shard_bounds_rejects_bad_ranks():
    with pytest.raises(ValueError, match="bad shard"):
        shard_bounds(2, 2, 8)


def test_shards_of_a_global_batch_partition_it():
    # what every rank does with the shared permutation: its slice of each global batch
    order = np.random.default_rng(7).permutation(40)
    b, world = 8, 4
    for s in range(len(order) // b):
        glob = order[s * b : (s + 1) * b]
        parts = [glob[slice(*shard_bounds(r, world, b))] for r in range(world)]
        assert [len(p) for p in parts] == [local_batch(b, world)] * world
        assert np.concatenate(parts).tolist() == glob.tolist()


def test_local_batch_must_divide():
    assert local_batch(128, 4) == 32 and local_batch(7, 1) == 7
    with pytest.raises(DistributedError, match="batch 10 does not split evenly over 3 ranks"):
        local_batch(10, 3)
    assert DistributedError.exit_code == 2


def test_single_process_communicator_is_the_identity():
    comm = Communicator()
    assert (comm.rank, comm.size, comm.is_root, comm.kind) == (0, 1, True, "none")
    g = np.arange(5, dtype=np.float32)
    assert comm.average_(g) is g and g.tolist() == [0, 1, 2, 3, 4]
    assert comm.allreduce_sum_(g) is g and g.tolist() == [0, 1, 2, 3, 4]
    comm.broadcast_(g)
    state = {"bn.running_mean": np.ones(3, np.float32)}
    comm.average_state_(state)
    assert state["bn.running_mean"].tolist() == [1, 1, 1]
    assert comm.reduce_sums([1.5, 2, 3]).tolist() == [1.5, 2.0, 3.0]
    assert comm.gather_obj({"a": 1}) == [{"a": 1}]
    comm.barrier()
    with pytest.raises(SystemExit):
        comm.abort(3)


def test_world_size_from_launcher_variables(monkeypatch):
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    for var in distributed.SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert detect_world_size() == 1
    assert type(distributed.setup(None)) is Communicator  # auto, not under MPI
    monkeypatch.setenv("PMI_SIZE", "4")
    assert detect_world_size() == 4
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert detect_world_size() == 2


def test_distributed_mpi_without_mpi4py_says_how_to_install(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    rc = main(["train", str(tiny / "tiny.net"), "--distributed", "mpi", "--out", str(tiny / "r")])
    err = capsys.readouterr().err
    assert rc == 1  # the machine lacks MPI: a runtime problem, not a usage mistake
    assert "mpi4py is not installed" in err and "pip install 'netdsl[mpi]'" in err
    assert "Traceback" not in err
    assert not (tiny / "r").exists()


def test_distributed_mpi_without_mpi4py_from_the_shell(tiny):
    # the console path: exit status 1 (the machine lacks MPI) and one clear line, no traceback
    argv = ["train", str(tiny / "tiny.net"), "--distributed", "mpi"]
    code = ("import sys; sys.modules['mpi4py'] = None; from netdsl.cli import main; "
            f"sys.exit(main({argv!r}))")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=TIMEOUT)  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert "pip install 'netdsl[mpi]'" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- under mpiexec


@pytest.mark.mpi
@needs_mpi
def test_two_ranks_reach_the_weights_of_one_process(tiny):
    one, _ = train(tiny, "one")
    assert one.returncode == 0, one.stderr
    two, _ = train(tiny, "two", 2)  # auto-detected: launched as 2 ranks
    assert two.returncode == 0, two.stdout + two.stderr
    # only rank 0 prints and writes
    assert two.stdout.count("epoch 2/2") == 1, two.stdout
    assert two.stdout.count("done:") == 1
    a, b = params(tiny / "one" / "checkpoint.npz"), params(tiny / "two" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    m1 = [json.loads(s) for s in (tiny / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(s) for s in (tiny / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 2
    for r1, r2 in zip(m1, m2, strict=True):
        assert r2["ranks"] == 2 and r2["allreduce_s_per_step"] >= 0
        assert r1["train_err"] == r2["train_err"] and r1["test_err"] == r2["test_err"]
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)
        assert r1["test_loss"] == pytest.approx(r2["test_loss"], rel=1e-5)
    _, meta = load_checkpoint(tiny / "two" / "checkpoint.npz")
    assert meta["batch"] == 16 and len(meta["dropout_rngs"]) == 2


@pytest.mark.mpi
@needs_mpi
def test_resume_under_two_ranks_repeats_an_uninterrupted_run(tiny):
    net = tiny / "tiny.net"
    net.write_text(TINY.replace("fc   f1: 12, relu", "fc   f1: 12, relu\ndropout d1: 0.25"))
    whole, _ = train(tiny, "whole", 2, "--distributed", "mpi")
    assert whole.returncode == 0, whole.stderr
    half, _ = train(tiny, "split", 2, "--epochs", "1")
    assert half.returncode == 0, half.stderr
    rest, _ = train(tiny, "split", 2, "--resume")
    assert rest.returncode == 0, rest.stderr
    a, b = params(tiny / "whole" / "checkpoint.npz"), params(tiny / "split" / "checkpoint.npz")
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)


@pytest.mark.mpi
@needs_mpi
def test_a_failing_rank_stops_every_rank(tiny):
    p, seconds = train(tiny, "fail", 2, **{distributed.TEST_FAIL_VAR: "1"})
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert seconds < 60, f"took {seconds:.0f}s to stop"
    assert "[rank 1/2] error: test hook: rank 1 fails" in out
    assert "stopping all 2 ranks" in out
    assert not (tiny / "fail" / "checkpoint.npz").exists()  # rank 0 never finished an epoch


@pytest.mark.mpi
@needs_mpi
def test_a_batch_that_does_not_split_is_a_clear_error(tiny):
    p, _ = train(tiny, "three", 3)  # batch 16 over 3 ranks
    assert p.returncode == 2, p.stdout + p.stderr
    assert "batch 16 does not split evenly over 3 ranks" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.mpi
@needs_mpi
def test_a_foreign_launcher_is_reported_not_run_as_independent_ranks(tiny):
    # what a foreign mpiexec looks like: its size variable set, but a one-rank MPI world
    p, _ = train(tiny, "foreign", 0, PMI_SIZE="2")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "launched as one of 2 ranks, but MPI's COMM_WORLD has 1" in p.stderr
    assert not (tiny / "foreign").exists()


BN_NET = """
network tiny_bn
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1
bn   b1: relu
pool p1: max 2x2, stride 2
fc   out: 3
loss cross_entropy

train {
  data "train.npz,test.npz"
  batch 16
  epochs 1
  optimizer sgd(lr=0.1, momentum=0.9)
}
"""


@pytest.mark.mpi
@needs_mpi
def test_two_ranks_on_the_cuda_backend_match_two_ranks_on_the_cpu(tiny):
    """Gradients and batch-norm statistics held on the device go through the host copy
    path (the simulator's device arrays included) and give the CPU's weights."""
    (tiny / "tiny.net").write_text(BN_NET)
    cpu, _ = train(tiny, "cpu", 2)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    gpu, _ = train(tiny, "gpu", 2, "--device", "cuda", NUMBA_ENABLE_CUDASIM="1")
    assert gpu.returncode == 0, gpu.stdout + gpu.stderr
    a, _ = load_checkpoint(tiny / "cpu" / "checkpoint.npz")
    b, _ = load_checkpoint(tiny / "gpu" / "checkpoint.npz")
    for k in a:
        if k.startswith(("param.", "state.")):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
