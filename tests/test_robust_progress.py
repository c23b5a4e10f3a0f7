"""Issue 11, progress as a Keras, Caffe or Darknet user expects it: the live line fits
any width by leaving out its least useful fields, speaks the epoch line's words, shows
the whole run's ETA without the compile time, says when kernels are being compiled, and
is drawn by rank 0 under mpiexec on a terminal."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.train import trainer as trainer_mod
from netdsl.train.progress import ProgressBar, format_summary, launcher_terminal

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def live(out: io.StringIO) -> str:
    """The live line as last drawn."""
    return out.getvalue().split("\r")[-1].rstrip()


def draw(width: int | None, epoch: int = 3, epochs: int = 10, overhead: float = 0.0) -> str:
    """A bar 100 batches into a 469-batch epoch: a 16 s first step, then 0.1 s a step."""
    out, clock = io.StringIO(), Clock()
    kw = {"epoch_overhead": overhead} if overhead else {}
    bar = ProgressBar(469, epoch, epochs, stream=out, is_tty=True, clock=clock, width=width, **kw)
    clock.t = 16.0
    bar.update(0, loss=2.3, acc=0.1, images_per_s=12345.0, lr=0.01)
    clock.t = 16.0 + 99 * 0.1
    bar.update(99, loss=0.1234, acc=1 - 0.0321, images_per_s=12345.0, lr=0.01)
    return live(out)


# ------------------------------------------------------------ width


@pytest.mark.parametrize("width", [30, 40, 60, 80, 100, 120, 160, 200])
def test_the_live_line_fits_any_width_and_keeps_the_essentials(width):
    line = draw(width)
    assert len(line) <= width - 1  # a full-width line would wrap
    assert line.startswith("epoch 3/10 ")
    assert re.search(r"ETA \d", line)  # the time left is never cut off


def test_at_80_columns_speed_and_eta_survive():
    line = draw(80)
    assert "12,345 img/s" in line and "total ETA" in line and "train err 3.21%" in line


def test_fields_go_least_useful_first():
    wide, narrower = draw(200), draw(100)
    for part in ("lr 0.01", "batch 100/469", "[####", "12,345 img/s", "total ETA"):
        assert part in wide
    assert "lr 0.01" not in narrower and "batch 100/469" not in narrower
    assert "12,345 img/s" in narrower and "total ETA" in narrower


def test_the_terminal_width_is_read_at_each_redraw(monkeypatch):
    cols = {"n": 200}
    monkeypatch.setattr(shutil, "get_terminal_size",
                        lambda fallback=(80, 24): os.terminal_size((cols["n"], 24)))  # fmt: skip
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(10, 1, 2, stream=out, is_tty=True, clock=clock, min_interval=0)
    bar.update(0, loss=0.5, err=0.5, images_per_s=1e4, lr=0.1)
    assert "lr 0.1" in live(out)
    cols["n"] = 50  # the window was made narrower
    clock.t = 1.0
    bar.update(1, loss=0.5, err=0.5, images_per_s=1e4, lr=0.1)
    assert len(live(out)) <= 49


# ------------------------------------------------------------ words and ETA


def test_the_live_line_says_train_err_like_the_epoch_line():
    line = draw(200)
    assert "train err 3.21%" in line and "acc" not in line
    out = io.StringIO()
    ProgressBar(1, 1, 1, stream=out, is_tty=True, width=200).update(0, loss=1.0, err=0.25)
    assert "train err 25.00%" in out.getvalue()


def test_eta_leaves_out_the_first_step_and_covers_the_whole_run():
    line = draw(200, epoch=3, epochs=10, overhead=2.0)
    # 0.1 s a step (not 16 s): 369 steps left = 36.9 s; then 7 epochs of 46.9 + 2 s
    assert "ETA 36.9s" in line
    assert f"total ETA {(36.9 + 7 * (46.9 + 2.0)) // 60:.0f}m" in line
    last = draw(200, epoch=10, epochs=10)
    assert "ETA 36.9s" in last and "total" not in last


def test_no_eta_from_the_first_step_alone():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(100, 1, 5, stream=out, is_tty=True, clock=clock, width=200)
    clock.t = 17.0  # the first step compiled the kernels
    bar.update(0, loss=2.3)
    assert "ETA ?" in live(out) and "1m" not in live(out)


def test_validation_error_is_shown_as_percent_in_the_epoch_line():
    line = format_summary(2, 3, {"loss": 0.5, "train_err": 0.1, "val_err": 0.0625,
                                 "images_per_s": 1000, "seconds": 1.0})  # fmt: skip
    assert line == "epoch 2/3  loss 0.5000  train err 10.00%  val err 6.25%  1,000 img/s  1.0s"


# ------------------------------------------------------------ compiling


TINY = """
network tiny
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
fc   out: 3
loss cross_entropy

train {
  data "tiny.npz,tiny.npz"
  batch 16
  epochs 2
  optimizer sgd(lr=0.1)
}
"""


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.net").write_text(TINY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.normal(size=(48, 1, 8, 8)).astype(np.float32),
             y=rng.integers(0, 3, 48))  # fmt: skip
    return tmp_path


def test_a_first_run_says_it_is_compiling_kernels(tiny, monkeypatch):
    monkeypatch.setattr(trainer_mod, "COMPILE_NOTE_S", 0.0)  # every first step "compiles"
    out = Tty()
    trainer_mod.fit_file(tiny / "tiny.net", out=tiny / "run", stream=out)
    text = out.getvalue()
    note = text.index("compiling kernels for tiny (cached after the first run)")
    done = text.index("compiled the kernels for tiny in ")
    assert note < done < text.index("epoch 1/2  loss")  # said before, timed after
    assert text.count("compiled the kernels") == 1  # the first step of the process only


def test_a_log_gets_the_compile_time_only_and_quiet_nothing(tiny, monkeypatch):
    monkeypatch.setattr(trainer_mod, "COMPILE_NOTE_S", 0.0)
    out = io.StringIO()
    trainer_mod.fit_file(tiny / "tiny.net", out=tiny / "run", stream=out, epochs=1)
    assert "\r" not in out.getvalue() and "compiling kernels" not in out.getvalue()
    assert "compiled the kernels for tiny in " in out.getvalue()
    out = io.StringIO()
    trainer_mod.fit_file(tiny / "tiny.net", out=tiny / "run2", stream=out, epochs=1, quiet=True)
    assert "compiled" not in out.getvalue()


# ------------------------------------------------------------ under mpiexec


def fake_proc(root: Path, chain: list[tuple[int, str, str]]) -> None:
    """A /proc holding processes (pid, name, stdout) each the parent of the one before."""
    for i, (pid, name, stdout) in enumerate(chain):
        ppid = chain[i + 1][0] if i + 1 < len(chain) else 1
        d = root / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "comm").write_text(name + "\n")
        (d / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1\n")
        os.symlink(stdout, d / "fd" / "1")


def test_rank_0_finds_the_terminal_of_its_launcher(tmp_path):
    fake_proc(tmp_path, [(40, "python", "pipe:[7]"), (30, "hydra_pmi_proxy", "pipe:[5]"),
                         (20, "mpiexec", "/dev/pts/4"), (10, "bash", "/dev/pts/4")])  # fmt: skip
    assert launcher_terminal(40, proc=str(tmp_path)) == "/dev/pts/4"


@pytest.mark.parametrize("chain", [
    # mpiexec ... > log: the shell above it still has the terminal; the launcher has not
    [(40, "python", "pipe:[7]"), (30, "hydra_pmi_proxy", "pipe:[5]"),
     (20, "mpiexec", "/home/u/log.txt"), (10, "bash", "/dev/pts/4")],
    # not under a launcher at all
    [(40, "python", "pipe:[7]"), (30, "bash", "/dev/pts/4")],
])  # fmt: skip
def test_no_terminal_when_the_launcher_writes_elsewhere(tmp_path, chain):
    fake_proc(tmp_path, chain)
    assert launcher_terminal(40, proc=str(tmp_path)) is None


class TwoRanks:
    """Rank 0 of 2, as the Trainer sees it at construction."""

    kind, rank, size, is_root, comm_seconds = "mpi", 0, 2, True, 0.0


def test_rank_0_draws_the_bar_when_mpiexec_is_on_a_terminal(tiny, monkeypatch):
    from netdsl import load
    from netdsl.backends import compile_network

    net = load(tiny / "tiny.net")
    cnet = compile_network(net, batch=8)
    data = trainer_mod.prepare_data(net)
    monkeypatch.setattr(trainer_mod, "launcher_terminal", lambda: "/dev/pts/4")
    t = trainer_mod.Trainer(cnet, data, tiny / "r", 1, stream=io.StringIO(), comm=TwoRanks())
    assert t.is_tty is True and t.terminal == "/dev/pts/4"
    quiet = trainer_mod.Trainer(cnet, data, tiny / "r", 1, stream=io.StringIO(), quiet=True,
                                comm=TwoRanks())  # fmt: skip
    assert quiet.is_tty is False


def _mpi_missing() -> str | None:
    from netdsl.train.distributed import find_mpiexec

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    if find_mpiexec() is None or shutil.which("script") is None:
        return "needs mpiexec and script(1) for a pseudo-terminal"
    if not os.path.isdir("/proc/self/fd"):
        return "needs Linux /proc"
    return None


@pytest.mark.mpi
@pytest.mark.skipif(_mpi_missing() is not None, reason=_mpi_missing() or "")
def test_mpiexec_on_a_terminal_shows_the_live_bar(tiny):
    from netdsl.train import distributed
    from netdsl.train.distributed import find_mpiexec

    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in distributed.SIZE_VARS:
        env.pop(var, None)
    cmd = (f"{find_mpiexec()} -n 2 {sys.executable} -m netdsl train {tiny / 'tiny.net'} "
           f"--out {tiny / 'run'}")  # fmt: skip
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=REPO, env=env,
                       capture_output=True, timeout=120)  # fmt: skip
    out = p.stdout.decode("utf-8", "replace")  # bytes: text mode would turn \r into \n
    assert p.returncode == 0, out + p.stderr.decode("utf-8", "replace")
    assert re.search(r"\repoch 1/2 .*loss \d", out), out  # the live line, redrawn
    assert out.count("done:") == 1
