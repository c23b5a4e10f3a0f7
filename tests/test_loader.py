"""The data loader (netdsl/train/loader.py): the same batches for any number of workers
(and of MPI ranks), in order, errors raised by name and never a hang, nothing left behind
(shared memory, processes) on close or Ctrl-C, resume, and a trainer that never reads
the whole training set at once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train import trainer as trainer_mod
from netdsl.train.checkpoint import load_checkpoint
from netdsl.train.data import Dataset
from netdsl.train.loader import Job, Loader, LoaderError, Transform, make_batch
from netdsl.train.trainer import fit_file

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 60  # a loader that hangs fails the test instead of the suite

AUG = (
    {"kind": "crop", "size": 24, "pad": 0},
    {"kind": "flip", "p": 0.5},
    {"kind": "lighting", "std": 0.1},
)


@contextmanager
def deadline(seconds: int = LIMIT_S):
    """Fail (TimeoutError) instead of hanging."""

    def fire(*_):
        raise TimeoutError(f"no answer within {seconds} s: the loader hangs")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def images(n: int = 48, c: int = 3, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


def transform(mode: str = "train", c: int = 3, size: int = 28, aug=AUG) -> Transform:
    pca = (np.array([0.3, 0.1, 0.05])[:c], np.eye(c))
    return Transform(mean=(0.5,) * c, std=(0.25,) * c, input_shape=(c, 24, 24),
                     image_shape=(c, size, size), mode=mode, augment=aug, pca=pca,
                     seed=7)  # fmt: skip


def jobs(n: int = 48, batch: int = 8, epoch: int = 0) -> list[Job]:
    order = np.random.default_rng(epoch).permutation(n)
    return [Job(order[s * batch : (s + 1) * batch], (epoch, s), 0, batch)
            for s in range(n // batch)]  # fmt: skip


def collect(loader: Loader, stream: str, js: list[Job]) -> list[np.ndarray]:
    with deadline():
        return [b.copy() for b in loader.run(stream, js)]


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


class SlowSource:
    """An image source that takes longer for some batches, so workers finish out of order."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.shape, self.dtype = x, x.shape, x.dtype

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx):
        time.sleep(0.05 if int(np.min(idx)) % 2 else 0.0)
        return self.x[idx]


class BadSource(SlowSource):
    """Fails on image 13, as a corrupt file of an image folder would."""

    path = "/data/imagenet/train"

    def __getitem__(self, idx):
        if 13 in np.atleast_1d(idx):
            raise DataError("/data/imagenet/train/n01440764/bad.JPEG: cannot decode: truncated")
        return self.x[idx]


class Greedy(SlowSource):
    """Refuses to read more than a few batches' images at once (a store too big for memory)."""

    def __getitem__(self, idx):
        n = len(range(*idx.indices(len(self)))) if isinstance(idx, slice) else np.size(idx)
        if n > 64:
            raise AssertionError(f"read {n} images at once: the whole set was materialised")
        return self.x[idx]


# ------------------------------------------------------------------ the same batches


def test_the_same_batches_for_0_1_and_2_workers_in_order():
    x = SlowSource(images())
    js = jobs()
    expected = []
    for j in js:  # each batch made alone, straight from its job
        out = np.empty(transform().out_shape(len(j.idx)), np.float32)
        make_batch(x.x, transform(), j, out)
        expected.append(out)
    for workers in (0, 1, 2):
        with Loader({"train": (x, transform())}, batch=8, workers=workers) as loader:
            got = collect(loader, "train", js)
            again = collect(loader, "train", js)  # the pool serves a second epoch too
        assert len(got) == len(js)
        for a, b, c in zip(expected, got, again, strict=True):
            assert np.array_equal(a, b) and np.array_equal(a, c), workers
    # the batches differ between batches and epochs: the randomness is per batch
    assert not np.array_equal(expected[0], collect(Loader({"t": (x.x, transform())}, 8), "t",
                                                   jobs(epoch=1))[0])  # fmt: skip


def test_spawned_workers_and_a_memmap_give_the_same_batches(tmp_path):
    x = images()
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with Loader({"train": (x, transform())}, batch=8) as here:
        expected = collect(here, "train", jobs())
    with Loader({"train": (mm, transform())}, batch=8, workers=2, start_method="spawn") as there:
        got = collect(there, "train", jobs())
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_the_transform_matches_the_augment_functions():
    """A crop, flip and lighting batch equals today's normalise-then-augment arithmetic."""
    from netdsl.train import augment
    from netdsl.train.data import to_float

    x = images(8)
    t = transform()
    out = np.empty(t.out_shape(8), np.float32)
    j = Job(np.arange(8), (3, 5), 0, 8)
    make_batch(x, t, j, out)
    (top, left), flip, alpha = t.draw((3, 5), 8)
    ref = to_float(x, t.mean, t.std)
    ref = np.stack([ref[i, :, top[i] : top[i] + 24, left[i] : left[i] + 24] for i in range(8)])
    ref[flip] = ref[flip, :, :, ::-1]
    ref = ref + ((alpha * t.pca[0]) @ t.pca[1].T)[:, :, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # evaluation: centre crop, and whole images for the ten views
    centre = np.empty(transform("center").out_shape(8), np.float32)
    make_batch(x, transform("center"), Job(np.arange(8)), centre)
    assert np.array_equal(centre, augment.center_crop(to_float(x, t.mean, t.std), 24))
    assert transform("ten").out_shape(8) == (8, 3, 28, 28)


def test_each_mpi_rank_makes_its_share_of_the_single_process_batch():
    x, t = images(), transform()
    idx = np.random.default_rng(0).permutation(48)[:16]
    whole = np.empty(t.out_shape(16), np.float32)
    make_batch(x, t, Job(idx, (2, 1), 0, 16), whole)
    ranks = 4
    shares = []
    for r in range(ranks):
        lo, hi = r * 16 // ranks, (r + 1) * 16 // ranks
        out = np.empty(t.out_shape(hi - lo), np.float32)
        make_batch(x, t, Job(idx[lo:hi], (2, 1), lo, 16), out)
        shares.append(out)
    assert np.array_equal(np.concatenate(shares), whole)


# ------------------------------------------------------------------ errors and shutdown


def test_a_worker_error_is_raised_by_name_and_leaves_nothing_behind():
    before = shm_segments()
    x = BadSource(images())
    js = [Job(np.arange(s * 8, (s + 1) * 8), (0, s), 0, 8) for s in range(6)]
    for workers in (0, 2):
        loader = Loader({"train": (x, transform())}, batch=8, workers=workers)
        with pytest.raises(DataError, match=r"bad\.JPEG: cannot decode"), deadline():
            collect(loader, "train", js)
        loader.close()
    assert not mp.active_children()
    assert shm_segments() <= before


def test_a_reading_error_names_the_file(tmp_path):
    np.save(tmp_path / "x.npy", images(16))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    js = [Job(np.array([3, 99]))]  # beyond the end of the file
    for workers in (0, 1):
        with Loader({"test": (mm, transform("center"))}, batch=8, workers=workers) as loader:
            with pytest.raises(DataError, match=r"x\.npy: cannot read images"), deadline():
                collect(loader, "test", js)


def test_a_killed_worker_is_an_error_not_a_hang():
    x = SlowSource(images())
    with Loader({"train": (x, transform())}, batch=8, workers=1) as loader:
        batches = loader.run("train", jobs())
        with deadline():
            next(batches)
            os.kill(loader._pool.procs[0].pid, signal.SIGKILL)
            with pytest.raises(LoaderError, match="died"):
                for _ in batches:
                    pass
    assert not mp.active_children()


def test_close_and_an_abandoned_epoch_free_the_workers_and_the_shared_memory():
    before = shm_segments()
    loader = Loader({"train": (SlowSource(images()), transform())}, batch=8, workers=2)
    batches = loader.run("train", jobs())
    with deadline():
        next(batches)
        assert len(shm_segments() - before) == 1 and len(mp.active_children()) == 2
        batches.close()  # the consumer stops mid-epoch (an exception in the training step)
    assert not mp.active_children() and shm_segments() <= before
    with deadline():  # and it starts again on the next use
        assert len(collect(loader, "train", jobs())) == 6
    loader.close()
    loader.close()
    assert not mp.active_children() and shm_segments() <= before


CTRL_C = """
import sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from netdsl.train.loader import Job, Loader, Transform

class Slow:
    def __init__(self, x):
        self.x, self.shape, self.dtype = x, x.shape, x.dtype
    def __len__(self):
        return len(self.x)
    def __getitem__(self, idx):
        time.sleep(0.2)
        return self.x[idx]

if __name__ == "__main__":
    x = Slow(np.zeros((400, 1, 8, 8), np.uint8))
    t = Transform((0.0,), (1.0,), (1, 8, 8), (1, 8, 8))
    jobs = [Job(np.arange(i, i + 4)) for i in range(0, 400, 4)]
    with Loader({{"t": (x, t)}}, batch=4, workers=2, start_method={method!r}) as loader:
        for i, b in enumerate(loader.run("t", jobs)):
            if i == 0:
                pids = [p.pid for p in loader._pool.procs]
                print(loader._pool.shm.name, *pids, flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_stops_at_once_and_leaves_nothing_behind(tmp_path, method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C.format(repo=str(REPO), method=method))
    # its own process group, as a shell gives a command: Ctrl-C reaches every process
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        name, *pids = p.stdout.readline().split()
        assert Path("/dev/shm", name).exists()
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=LIMIT_S)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    assert "Error" not in err.replace("KeyboardInterrupt", "")  # no worker tracebacks
    time.sleep(0.5)  # the resource tracker's own exit
    assert not Path("/dev/shm", name).exists()
    for pid in map(int, pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ------------------------------------------------------------------ the trainer

AUGMENTED = """
network tiny
input image: 3x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
fc   out: 3
loss cross_entropy

train {
  data "train.npz,test.npz"
  batch 16
  epochs 2
  optimizer sgd(lr=0.05, momentum=0.9)
  augment crop(8, pad=2), flip, lighting(0.1)
  normalize mean=0.5, std=0.25
  test_crops 10
  seed 3
}
"""


def make_data(path: Path, n: int, seed: int) -> None:
    """Three classes: a bright bar at the top, middle or bottom, in uint8."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 90, (n, 3, 10, 10))
    for i, c in enumerate(y):
        x[i, :, 1 + 3 * c : 3 + 3 * c, :] += 160
    np.savez(path, x=x.astype(np.uint8), y=y)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.net").write_text(AUGMENTED)
    make_data(tmp_path / "train.npz", 64, 0)
    make_data(tmp_path / "test.npz", 24, 1)
    return tmp_path


def params(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


def test_resume_and_any_number_of_workers_train_the_same_weights(tiny):
    net = tiny / "tiny.net"
    fit_file(net, out=tiny / "full", quiet=True, workers=2)
    fit_file(net, out=tiny / "part", quiet=True, epochs=1, workers=0)
    fit_file(net, out=tiny / "part", quiet=True, resume=True, workers=1)
    a, b = params(tiny / "full" / "checkpoint.npz"), params(tiny / "part" / "checkpoint.npz")
    for k in a:
        assert np.array_equal(a[k], b[k]), k  # bit for bit
    full = [json.loads(s) for s in (tiny / "full" / "metrics.jsonl").read_text().splitlines()]
    part = [json.loads(s) for s in (tiny / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_loss"] for r in full] == [r["test_loss"] for r in part]
    assert not mp.active_children()


def test_the_trainer_never_reads_the_whole_training_set(tiny, monkeypatch):
    x = np.load(tiny / "train.npz")["x"]
    y = np.load(tiny / "train.npz")["y"]
    store = Greedy(np.concatenate([x] * 4))  # 256 images, read at most 64 at a time

    def load(spec, base_dir=None):
        ds = Dataset(store, np.concatenate([y] * 4), x[:24], y[:24], 3, "greedy")
        ds.known_fingerprint = "blake2b:greedy"  # a store's own: no hashing of every image
        return ds

    monkeypatch.setattr(trainer_mod, "load_dataset", load)
    net = tiny / "tiny.net"
    net.write_text(net.read_text().replace(", lighting(0.1)", ""))  # no PCA pass
    for workers in (0, 2):
        r = fit_file(net, out=tiny / f"w{workers}", quiet=True, epochs=1, workers=workers,
                     validate=32)  # fmt: skip
        assert np.isfinite(r["train_loss"])
    from netdsl import load

    data = trainer_mod.prepare_data(load(net))
    with pytest.raises(AssertionError, match="materialised"):  # the check can fail
        _ = data.train.x


def test_eval_and_train_take_workers_from_the_command_line(tiny, capsys):
    from netdsl.cli import main

    run = tiny / "run"
    assert main(["train", str(tiny / "tiny.net"), "--out", str(run), "--epochs", "1",
                 "--quiet", "--workers", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    ck = str(run / "checkpoint.npz")
    assert main(["eval", str(tiny / "tiny.net"), ck, "--workers", "2"]) == 0
    two = capsys.readouterr().out
    assert main(["eval", str(tiny / "tiny.net"), ck, "--workers", "0"]) == 0
    assert capsys.readouterr().out == two and "test: 24 images" in two
    with pytest.raises(SystemExit) as e:
        main(["train", str(tiny / "tiny.net"), "--workers", "-1"])
    assert e.value.code == 2 and "--workers" in capsys.readouterr().err


def test_the_streaming_pca_equals_the_whole_set_pca(tiny):
    from netdsl import load
    from netdsl.train import augment

    data = trainer_mod.prepare_data(load(tiny / "tiny.net"))
    expected = augment.pca_of_pixels(data.train.x)  # today's: over the normalised set
    for a, b in zip(data.pca, expected, strict=True):
        assert np.array_equal(a, b)


def test_two_mpi_ranks_with_workers_train_as_one_process(tiny):
    """Each rank's workers make only its share of each global batch (crop, flip, lighting
    drawn for the whole batch): 2 ranks with a worker each reach one process's weights."""
    pytest.importorskip("mpi4py")
    from netdsl.train.distributed import SIZE_VARS, find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install 'netdsl[mpi]')")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in SIZE_VARS:
        env.pop(var, None)
    cmd = [sys.executable, "-m", "netdsl", "train", str(tiny / "tiny.net"), "--quiet"]
    one = subprocess.run([*cmd, "--out", str(tiny / "one"), "--workers", "0"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=LIMIT_S * 2)  # fmt: skip
    two = subprocess.run([mpiexec, "-n", "2", *cmd, "--out", str(tiny / "two"), "--workers",
                          "1"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=LIMIT_S * 2)  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = params(tiny / "one" / "checkpoint.npz"), params(tiny / "two" / "checkpoint.npz")
    for k in a:  # up to float32 summation order
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_ctrl_c_in_netdsl_train_with_workers_exits_130_and_leaves_nothing(tiny):
    before = shm_segments()
    cmd = [sys.executable, "-m", "netdsl", "train", str(tiny / "tiny.net"), "--out",
           str(tiny / "run"), "--quiet", "--workers", "2", "--epochs", "100000"]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    try:
        assert p.stdout.readline().startswith("epoch 1/")  # the workers are running
        workers = [c.pid for c in _children(p.pid)]
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=LIMIT_S)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "Traceback" not in err
    time.sleep(0.5)
    assert shm_segments() <= before
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


class _Child:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def _children(pid: int) -> list[_Child]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [_Child(int(c)) for c in path.read_text().split()] if path.exists() else []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
