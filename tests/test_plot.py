"""`netdsl plot`: the curves drawn are the run's numbers, and the figure reads well.

A real (tiny) run gives the metrics.jsonl; the figure's data (plot.run_series) is
checked against that file line by line, and the picture itself for its size, for not
being blank, for integer epoch ticks, for the learning-rate panel and for the legend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.train.metrics import StepLog, read_metrics
from netdsl.train.plot import load_run, load_runs, make_figure, plot_runs, run_series
from netdsl.train.trainer import fit_file
from tests.test_train import TINY, make_data


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished runs of the tiny net: 'long' (3 epochs) and 'short' (1 epoch)."""
    d = tmp_path_factory.mktemp("plot")
    (d / "tiny.net").write_text(TINY)
    make_data(d / "tiny.npz")
    make_data(d / "test.npz", n=48, seed=1)
    data = f"{d}/tiny.npz,{d}/test.npz"
    fit_file(d / "tiny.net", data=data, epochs=3, out=d / "long", quiet=True)
    fit_file(d / "tiny.net", data=data, epochs=1, out=d / "short", quiet=True, lr=0.05)
    fit_file(d / "tiny.net", data=data, epochs=2, out=d / "held", quiet=True, validate=32)
    return d


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------ the curve within an epoch


def test_step_log_averages_each_run_of_steps():
    log = StepLog(steps=5, every=2)  # groups of steps 1-2, 3-4 and 5
    for loss, wrong, lr in ((1.0, 4, 0.3), (3.0, 2, 0.2), (0.5, 1, 0.1), (0.25, 0, 0.1),
                            (2.0, 8, 0.05)):  # fmt: skip
        log.add(loss, wrong, images=8, lr=lr)
    assert log.record() == {"per_epoch": 5, "every": 2, "loss": [2.0, 0.375, 2.0],
                            "err": [0.375, 0.0625, 1.0], "lr": [0.2, 0.1, 0.05]}  # fmt: skip
    assert StepLog(steps=1000).every == 5  # at most STEP_POINTS (200) points an epoch
    assert StepLog(steps=7).every == 1


def test_each_epoch_line_holds_its_curve_and_it_agrees_with_the_epoch(runs):
    for r in read_metrics(runs / "long" / "metrics.jsonl"):
        st = r["steps"]
        assert st["per_epoch"] == 6 and st["every"] == 1  # 96 images, batch 16
        assert len(st["loss"]) == len(st["err"]) == len(st["lr"]) == 6
        # the epoch's training loss is the mean of its steps' losses, its error theirs
        assert np.mean(st["loss"]) == pytest.approx(r["train_loss"], rel=1e-5)
        assert np.mean(st["err"]) == pytest.approx(r["train_err"], abs=1e-6)
        assert st["lr"][-1] == pytest.approx(r["lr"], rel=1e-6)
    result = json.loads((runs / "long" / "result.json").read_text())
    assert "steps" not in result and result["epoch"] == 3  # the summary stays a summary


# ------------------------------------------------------------ the data behind the curves


def series_of(run: Path) -> dict[str, object]:
    return {s.key: s for s in run_series(load_run(run))}


def test_every_curve_is_the_runs_numbers(runs):
    records = read_metrics(runs / "long" / "metrics.jsonl")
    s = series_of(runs / "long")
    assert set(s) == {"train_loss", "train_err", "test_loss", "test_err", "test_top5_err",
                      "steps.loss", "steps.err", "steps.lr"}  # fmt: skip
    # evaluations at the end of each epoch, training figures (epoch means) mid-epoch
    assert s["test_loss"].x == [1.0, 2.0, 3.0]
    assert s["test_loss"].y == [r["test_loss"] for r in records]
    assert s["test_err"].y == pytest.approx([100 * r["test_err"] for r in records])
    assert s["train_loss"].x == [0.5, 1.5, 2.5]
    assert s["train_err"].y == pytest.approx([100 * r["train_err"] for r in records])
    # within epochs: every step (every = 1), at the end of the step, the run's values
    assert s["steps.loss"].x == pytest.approx([e + k / 6 for e in range(3) for k in range(1, 7)])
    assert s["steps.loss"].y == [v for r in records for v in r["steps"]["loss"]]
    assert s["steps.lr"].y == [v for r in records for v in r["steps"]["lr"]]
    names = {k: v.name for k, v in s.items()}
    assert names["test_err"] == "test error (%)" and names["train_loss"] == "train loss"
    assert names["test_top5_err"] == "test top-5 error (%)"
    assert {v.panel for v in s.values()} == {"loss", "error", "lr"}


def test_validation_is_named_and_an_old_log_without_steps_still_plots(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    lines = [{"epoch": e, "train_loss": 1 / e, "train_err": 0.3 / e, "val_loss": 1.2 / e,
              "val_err": 0.4 / e, "lr": 0.1 * 0.1 ** (e // 3)} for e in range(1, 7)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    s = series_of(run)
    assert s["val_err"].name == "validation error (%)"
    assert s["lr"].x == [1, 2, 3, 4, 5, 6] and s["lr"].y == [r["lr"] for r in lines]
    assert not any(v.per_step for v in s.values())
    pytest.importorskip("matplotlib")
    fig, _ = make_figure(load_runs([run]))
    assert fig.axes[2].get_yscale() == "log"  # 0.1 to 0.001: two decades


# ------------------------------------------------------------ the picture


def png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_a_picture(path: Path) -> None:
    px = png_pixels(path)
    assert px.shape == (460, 1500, 3)  # 15 x 4.6 inches at 100 dpi
    ink = (px < 200).any(axis=2).mean()  # share of pixels that are not near-white
    assert 0.02 < ink < 0.5, ink
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 50  # curves in colours, text


def test_one_run_is_a_figure_with_integer_epochs_and_a_learning_rate_panel(runs, capsys):
    pytest.importorskip("matplotlib")
    code, _, err = cli(capsys, "plot", runs / "long")
    assert code == 0 and err == f"wrote {runs / 'long' / 'metrics.png'}\n"
    assert_a_picture(runs / "long" / "metrics.png")
    fig, drawn = make_figure(load_runs([runs / "long"]))
    loss, error, lr = fig.axes[:3]
    assert [ax.get_ylabel() for ax in (loss, error, lr)] == [
        "loss (cross-entropy)", "error (%)", "learning rate"]  # fmt: skip
    for ax in (loss, error, lr):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlabel() == "epoch"
    assert lr.get_lines() and lr.get_yscale() == "linear"  # a step schedule: 0.1 to 0.05
    title = fig.get_suptitle()
    assert "run long" in title and "network tiny (tiny.net)" in title and "3 epochs" in title
    legend = [t.get_text() for t in error.get_legend().get_texts()]
    assert "test error (%)" in legend and "train error (%), within epochs" in legend
    # one colour per split, the same in every panel
    colours = {}
    for ax in (loss, error):
        for line in ax.get_lines():
            split = line.get_label().split(" ")[0]
            colours.setdefault(split, set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()) and len(colours) == 2, colours


def test_a_one_epoch_run_draws_its_steps_and_marks_its_points(runs):
    pytest.importorskip("matplotlib")
    fig, drawn = make_figure(load_runs([runs / "short"]))
    steps = [s for s in drawn if s.key == "steps.loss"]
    assert len(steps) == 1 and len(steps[0].x) == 6
    epoch_lines = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o"]
    assert epoch_lines, "the epoch's points are marked"
    assert fig.axes[0].get_xlim()[1] > 1  # epoch 1 is inside the axes, not on its edge


def test_several_runs_are_overlaid_one_colour_per_run(runs, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "both.png"
    code, _, err = cli(capsys, "plot", runs / "long", runs / "short", "-o", out)
    assert code == 0 and err == f"wrote {out}\n"
    assert_a_picture(out)
    fig, drawn = make_figure(load_runs([runs / "long", runs / "short"]))
    assert {s.run for s in drawn} == {"long", "short"}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["long", "short"] and "test" in legend and "train" in legend
    by_run = {}
    for line in fig.axes[0].get_lines():
        by_run.setdefault(line.get_color(), []).append(line.get_linestyle())
    assert len(by_run) == 2  # a colour per run
    assert all({"-", ":"} <= set(styles) for styles in by_run.values())  # train, test
    assert "2 runs of network tiny" in fig.get_suptitle()


# ------------------------------------------------------------ errors


def test_several_runs_need_an_output_file(runs, capsys):
    code, out, err = cli(capsys, "plot", runs / "long", runs / "short")
    assert code == 2 and out == "" and "give -o OUT.png" in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "no records with an 'epoch' to plot"),
     ('{"epoch": 1}\n{"epoch": 2, "train_lo\n', "metrics.jsonl:2: not valid JSON"),
     ("[1, 2]\n", "metrics.jsonl:1: expected a JSON object per line")],
)  # fmt: skip
def test_an_empty_or_corrupt_log_is_named(tmp_path, capsys, text, problem):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
    code, out, err = cli(capsys, "plot", run)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {run / 'metrics.jsonl'}") and problem in err
    assert not (run / "metrics.png").exists()
    with pytest.raises(DataError, match=problem.replace("(", r"\(")):
        plot_runs([run], tmp_path / "x.png")


def test_a_folder_without_a_log_is_named_even_among_several(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "plot", runs / "long", tmp_path / "empty", "-o", tmp_path / "x.png")
    assert code == 1 and err.startswith(f"error: {tmp_path / 'empty'}: no metrics.jsonl here")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_extra_is_named(runs, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = cli(capsys, "plot", runs / "long", "-o", tmp_path / "x.png")
    assert code == 1 and out == ""
    assert "pip install 'netdsl[plot]'" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_validation_curves_and_the_test_set_evaluated_once_at_the_end(runs, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr("netdsl.train.plot.MARK_EPOCHS", 1)  # as for a long run: no marks
    s = series_of(runs / "held")
    assert s["val_err"].name == "validation error (%)" and s["val_err"].x == [1.0, 2.0]
    assert s["test_err"].x == [2.0]  # the test set once, after the last epoch
    fig, _ = make_figure(load_runs([runs / "held"]))
    lone = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "test error (%)"]
    assert len(lone) == 1 and lone[0].get_marker() == "o"  # a single point is marked
    val = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "validation error (%)"]
    assert val[0].get_marker() in ("None", None, "")  # a curve of several points is not
    assert (
        lone[0].get_color()
        != next(
            ln for ln in fig.axes[1].get_lines() if ln.get_label() == "validation error (%)"
        ).get_color()
    )
