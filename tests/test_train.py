"""Training: the loss falls, resume equals an uninterrupted run bit for bit, divergence
stops cleanly, and train / eval / predict work from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.train.checkpoint import load_checkpoint
from netdsl.train.trainer import TrainingDiverged, fit_file

TINY = """
network tiny
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
dropout d1: 0.25
fc   out: 3
loss cross_entropy

train {
  data "tiny.npz"
  batch 16
  epochs 3
  optimizer sgd(lr=0.1, momentum=0.9, weight_decay=5e-4)
  schedule step(step_size=2, gamma=0.5)
  augment flip
  seed 3
}
"""


def make_data(path: Path, n: int = 96, seed: int = 0) -> None:
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
    make_data(tmp_path / "tiny.npz")
    # a test split for eval: the same distribution, other draws
    make_data(tmp_path / "test.npz", n=48, seed=1)
    return tmp_path


def weights(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


def test_training_reduces_the_loss(tiny):
    r = fit_file(tiny / "tiny.net", data=f"{tiny}/tiny.npz,{tiny}/test.npz", epochs=4,
                 out=tiny / "run", quiet=True)  # fmt: skip
    lines = [json.loads(s) for s in (tiny / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert lines[-1]["train_loss"] < 0.5 * lines[0]["train_loss"]
    assert r["test_err"] < 0.2
    assert lines[2]["lr"] == pytest.approx(0.05)  # step schedule halves after 2 epochs


def test_resume_equals_uninterrupted_run(tiny):
    data = f"{tiny}/tiny.npz,{tiny}/test.npz"
    fit_file(tiny / "tiny.net", data=data, epochs=3, out=tiny / "full", quiet=True)
    fit_file(tiny / "tiny.net", data=data, epochs=1, out=tiny / "part", quiet=True)
    fit_file(tiny / "tiny.net", data=data, epochs=3, out=tiny / "part", quiet=True, resume=True)
    a, b = weights(tiny / "full" / "checkpoint.npz"), weights(tiny / "part" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k  # bit for bit
    lines = (tiny / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]


def test_divergence_stops_and_keeps_the_last_checkpoint(tiny):
    data = f"{tiny}/tiny.npz,{tiny}/test.npz"
    fit_file(tiny / "tiny.net", data=data, epochs=1, out=tiny / "run", quiet=True)
    before = weights(tiny / "run" / "checkpoint.npz")
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf).*epoch 2.*epoch 1"):
        fit_file(tiny / "tiny.net", data=data, epochs=2, lr=1e12, out=tiny / "run",
                 quiet=True, resume=True)  # fmt: skip
    after = weights(tiny / "run" / "checkpoint.npz")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_cli_train_eval_predict(tiny, capsys):
    data = f"{tiny}/tiny.npz,{tiny}/test.npz"
    out = tiny / "cli"
    assert main(["train", str(tiny / "tiny.net"), "--data", data, "--out", str(out),
                 "--epochs", "2", "--quiet"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "done: test accuracy" in text
    ck = str(out / "checkpoint.npz")
    assert main(["eval", str(tiny / "tiny.net"), ck, "--data", data]) == 0
    assert "top-1 error" in capsys.readouterr().out
    assert main(["predict", str(tiny / "tiny.net"), ck, str(tiny / "test.npz")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 48 and rows[0].startswith("0\t")


def test_cli_names_a_corrupt_checkpoint(tiny, capsys):
    bad = tiny / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(tiny / "tiny.net"), str(bad), "--data", f"{tiny}/test.npz"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_missing_dataset_is_a_clear_error(tiny, capsys):
    code = main(["train", str(tiny / "tiny.net"), "--data", str(tiny / "nope.npz"),
                 "--out", str(tiny / "x"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "nope.npz" in err and "Traceback" not in err


@pytest.mark.slow
def test_lenet5_learns_mnist_quickly(tmp_path):
    r = fit_file("nets/lenet5.net", epochs=1, limit=12800, out=tmp_path / "run", quiet=True)
    # 100 steps on 12,800 images: measured 5.7% test error; chance is 90%
    assert r["test_err"] < 0.10
