"""Issue 11, "runs that are silently wrong": a run folder belongs to one run, runs record
their data (resume and eval use it and refuse other data), the declared loss is reported,
validation and test are told apart, divergence never saves or names a bad checkpoint,
NaN data and NaN weights are refused, and a resumed run's folder equals an uninterrupted
run's after a crash at any point of an epoch's end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.train import trainer as trainer_mod
from netdsl.train.checkpoint import load_checkpoint, save_checkpoint
from netdsl.train.trainer import Trainer, TrainingDiverged, fit_file
from tests import test_train
from tests.test_train import make_data

# test_train's tiny net, with a test split and the loss left open (LOSS)
TINY = test_train.TINY.replace("loss cross_entropy", "loss LOSS").replace(
    'data "tiny.npz"', 'data "tiny.npz,test.npz"'
)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.net").write_text(TINY.replace("LOSS", "cross_entropy"))
    make_data(tmp_path / "tiny.npz")
    make_data(tmp_path / "test.npz", n=48, seed=1)
    make_data(tmp_path / "other.npz", seed=7)  # another training set of the same shape
    return tmp_path


def data_of(tiny: Path, train: str = "tiny") -> str:
    return f"{tiny}/{train}.npz,{tiny}/test.npz"


def records(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


def without_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in recs]


def weights(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------ a folder, one run


def test_a_new_run_refuses_a_folder_holding_another_run(tiny, capsys):
    run = tiny / "run"
    code, _, _ = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--epochs", "2", "--quiet")
    assert code == 0
    before_metrics = (run / "metrics.jsonl").read_bytes()
    before_ck = (run / "checkpoint.npz").read_bytes()
    # refused before any data is read: the missing data set is not what it reports
    code, out, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--quiet",
                         "--data", tiny / "missing.npz")  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert f"{run}: holds another run" in err
    assert "--resume" in err and "--overwrite" in err and "missing.npz" not in err
    # nothing of the old run changed: no second epoch 1 appended, no checkpoint replaced
    assert (run / "metrics.jsonl").read_bytes() == before_metrics
    assert (run / "checkpoint.npz").read_bytes() == before_ck
    # the library call has the same default
    with pytest.raises(DataError, match="holds another run"):
        fit_file(tiny / "tiny.net", out=run, quiet=True)


def test_a_half_written_run_counts_as_a_run(tiny):
    run = tiny / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # crashed before its checkpoint
    with pytest.raises(DataError, match=r"holds another run \(metrics.jsonl\)"):
        fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    with pytest.raises(DataError, match="no checkpoint to resume from .*--overwrite"):
        fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1, resume=True)
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1, overwrite=True)
    assert [r["epoch"] for r in records(run)] == [1]


def test_a_folder_of_other_files_is_usable(tiny):
    run = tiny / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    assert (run / "notes.txt").read_text() == "mine"
    assert [r["epoch"] for r in records(run)] == [1]


def test_overwrite_replaces_the_runs_files_only(tiny, capsys):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=3)
    (run / "notes.txt").write_text("mine")
    (run / ".checkpoint.npz.abc123.tmp").write_bytes(b"half a checkpoint")
    code, out, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--epochs", "1",
                         "--overwrite")  # fmt: skip
    assert code == 0, err
    assert "--overwrite: removed checkpoint.npz" in out
    assert [r["epoch"] for r in records(run)] == [1]  # the new run's log alone
    assert load_checkpoint(run / "checkpoint.npz")[1]["epoch"] == 1
    assert (run / "notes.txt").read_text() == "mine"
    assert not list(run.glob(".checkpoint.npz.*.tmp"))


def test_resume_and_overwrite_exclude_each_other(tiny, capsys):
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", tiny / "run", "--resume",
                       "--overwrite")  # fmt: skip
    assert code == 2 and "--resume" in err and "--overwrite" in err and "Traceback" not in err


def test_resume_without_a_checkpoint_is_refused_early(tiny, capsys):
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", tiny / "none", "--resume",
                       "--data", tiny / "missing.npz")  # fmt: skip
    assert code == 1 and "no checkpoint to resume from" in err and "missing.npz" not in err
    assert not (tiny / "none").exists()


@pytest.mark.parametrize("case", ["file", "under_file", "cannot_create"])
def test_an_unusable_output_path_is_named_before_any_work(tiny, capsys, case):
    (tiny / "afile").write_text("x")
    out = {"file": tiny / "afile", "under_file": tiny / "afile" / "run",
           "cannot_create": Path("/proc/netdsl-no-such-folder/run")}[case]  # fmt: skip
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", out, "--quiet",
                       "--data", tiny / "missing.npz")  # fmt: skip
    assert code == 1 and "Traceback" not in err, err
    assert str(out) in err and "missing.npz" not in err
    assert (tiny / "afile").read_text() == "x"


# ------------------------------------------------------------ runs record their data


def test_checkpoint_and_run_json_record_the_data(tiny):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1, seed=5, limit=80)
    _, meta = load_checkpoint(run / "checkpoint.npz")
    rec = meta["data"]
    assert rec["spec"] == f"{tiny}/tiny.npz,{tiny}/test.npz"  # resolved: absolute paths
    assert rec["fingerprint"].startswith("blake2b:") and rec["classes"] == 3
    assert rec["normalize"] == {"mean": [0.0], "std": [1.0]} and rec["limit"] == 80
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == rec and info["seed"] == 5 and info["loss"] == "cross_entropy"
    assert info["net_file"] == str(tiny / "tiny.net") and len(info["net_sha256"]) == 64
    for key in ("netdsl", "started", "command", "batch", "epochs"):
        assert key in info
    # another training set of the same shape has another fingerprint
    fit_file(tiny / "tiny.net", out=tiny / "run2", quiet=True, epochs=1,
             data=data_of(tiny, "other"))  # fmt: skip
    other = load_checkpoint(tiny / "run2" / "checkpoint.npz")[1]["data"]
    assert other["fingerprint"] != rec["fingerprint"]


def test_resume_without_data_continues_on_the_recorded_data(tiny):
    # the file names tiny.npz; the run was started on other.npz with --data and a limit
    other = data_of(tiny, "other")
    fit_file(tiny / "tiny.net", out=tiny / "whole", quiet=True, data=other, limit=64, epochs=3)
    fit_file(tiny / "tiny.net", out=tiny / "part", quiet=True, data=other, limit=64, epochs=1)
    fit_file(tiny / "tiny.net", out=tiny / "part", quiet=True, epochs=3, resume=True)
    assert same_weights(tiny / "whole" / "checkpoint.npz", tiny / "part" / "checkpoint.npz")


def test_resume_refuses_other_data_unless_allowed(tiny, capsys):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--resume", "--quiet",
                       "--epochs", "2", "--data", data_of(tiny, "other"))  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert f"{run / 'checkpoint.npz'}: the run was trained on other data" in err
    assert "images and labels differ" in err and "--allow-other-data" in err
    assert load_checkpoint(run / "checkpoint.npz")[1]["epoch"] == 1  # nothing trained
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--resume", "--quiet",
                       "--epochs", "2", "--data", data_of(tiny, "other"),
                       "--allow-other-data")  # fmt: skip
    assert code == 0 and "warning:" in err and "images and labels differ" in err
    info = json.loads((run / "run.json").read_text())
    assert info["resumed"][0]["data"]["spec"].startswith(f"{tiny}/other.npz")


def test_changed_normalisation_or_limit_is_other_data(tiny):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    with pytest.raises(DataError, match="--limit differs: recorded none, now 48"):
        fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=2, resume=True, limit=48)
    net = tiny / "tiny.net"
    net.write_text(net.read_text().replace("  seed 3", "  seed 3\n  normalize mean=0.5, std=0.5"))
    with pytest.raises(DataError, match="normalisation differs: recorded mean=0 std=1, now "
                                        "mean=0.5 std=0.5"):  # fmt: skip
        fit_file(net, out=run, quiet=True, epochs=2, resume=True)


def test_moved_data_is_the_same_data(tiny):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    moved = tiny / "moved"
    moved.mkdir()
    for name in ("tiny.npz", "test.npz"):
        shutil.copy(tiny / name, moved / name)
    r = fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=2, resume=True,
                 data=data_of(moved))  # fmt: skip
    assert r["epoch"] == 2


def test_eval_uses_the_recorded_data_and_refuses_other(tiny, capsys):
    run = tiny / "run"
    (tiny / "test2.npz").write_bytes((tiny / "test.npz").read_bytes())
    make_data(tiny / "test.npz", n=40, seed=9)  # the file's default test set changes later
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1,
             data=f"{tiny}/tiny.npz,{tiny}/test2.npz")  # fmt: skip
    ck = run / "checkpoint.npz"
    code, out, err = cli(capsys, "eval", tiny / "tiny.net", ck)  # no --data: the recorded data
    assert code == 0 and "test: 48 images" in out and "warning" not in err
    code, out, err = cli(capsys, "eval", tiny / "tiny.net", ck, "--data", data_of(tiny))
    assert code == 1 and "trained on other data" in err and "--allow-other-data" in err
    assert out == ""
    code, out, err = cli(capsys, "eval", tiny / "tiny.net", ck, "--data", data_of(tiny),
                         "--allow-other-data")  # fmt: skip
    assert code == 0 and "test: 40 images" in out and "warning:" in err


def test_an_old_checkpoint_without_a_data_record_still_loads_with_a_warning(tiny, capsys):
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    del meta["data"]
    old = tiny / "old.npz"
    save_checkpoint(old, arrays, meta)
    code, out, err = cli(capsys, "eval", tiny / "tiny.net", old)
    assert code == 0 and "test: 48 images" in out
    assert f"warning: {old} records no data set" in err and "cannot verify" in err


# ------------------------------------------------------------ the declared loss


def test_mse_nets_report_mse_everywhere(tiny, capsys):
    net = tiny / "tiny.net"
    net.write_text(TINY.replace("LOSS", "mse"))
    run = tiny / "run"
    code, out, err = cli(capsys, "train", net, "--out", run, "--epochs", "1", "--quiet")
    assert code == 0, err
    assert "done: test accuracy" in out and "(mse " in out and "cross-entropy" not in out
    # the logged test loss is the training loss's formula on the test set, not cross-entropy
    from netdsl import load
    from netdsl.backends import compile_network
    from netdsl.ops.loss import ref_mse
    from netdsl.train.trainer import load_weights, prepare_data

    cnet = compile_network(load(net), batch=16)
    load_weights(cnet, load_checkpoint(run / "checkpoint.npz")[0], "ck")
    test = prepare_data(cnet.net).test
    expected = np.mean([ref_mse(cnet.forward(test.x[i : i + 16]), test.y[i : i + 16])[0]
                        for i in range(0, 48, 16)])  # fmt: skip
    logged = records(run)[-1]["test_loss"]
    assert logged == pytest.approx(expected, rel=1e-5)
    code, out, _ = cli(capsys, "eval", net, run / "checkpoint.npz")
    assert code == 0 and f"mse loss {expected:.4f}" in out
    assert json.loads((run / "run.json").read_text())["loss"] == "mse"


# ------------------------------------------------------------ validation and test


def test_a_single_npz_trains_with_validate_from_the_command_line(tiny, capsys):
    run = tiny / "run"
    code, out, err = cli(capsys, "train", tiny / "tiny.net", "--data", tiny / "tiny.npz",
                         "--validate", "16", "--out", run, "--epochs", "2", "--quiet")  # fmt: skip
    assert code == 0, err
    assert re.search(r"^epoch 2/2 .* val err \d+\.\d\d%", out, re.M)
    assert "validation accuracy" in out and "test accuracy" not in out
    last = records(run)[-1]
    assert {"val_loss", "val_err"} <= last.keys() and "test_err" not in last
    # without --validate the same data is a clear error that names the flag
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--data", tiny / "tiny.npz",
                       "--out", tiny / "r2", "--quiet")  # fmt: skip
    assert code == 1 and "--validate N" in err


def test_validation_and_test_are_both_reported_and_labelled(tiny, capsys):
    run = tiny / "run"
    code, out, err = cli(capsys, "train", tiny / "tiny.net", "--validate", "16", "--out", run,
                         "--epochs", "2", "--quiet")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    # the validation error in percent, like the others; never a bare fraction after img/s
    assert all("val err " in ln and "%" in ln.split("val err ")[1].split()[0]
               for ln in epoch_lines)  # fmt: skip
    assert all("val_err" not in ln for ln in epoch_lines)
    assert "test err" in epoch_lines[-1] and "test err" not in epoch_lines[0]
    recs = records(run)
    assert "test_err" not in recs[0] and {"val_err", "test_err", "test_loss"} <= recs[-1].keys()
    done = next(ln for ln in lines if ln.startswith("done:"))
    va, te = 100 * (1 - recs[-1]["val_err"]), 100 * (1 - recs[-1]["test_err"])
    assert done.startswith(f"done: validation accuracy {va:.2f}%")
    assert f"test accuracy {te:.2f}%" in done
    code, out, _ = cli(capsys, "eval", tiny / "tiny.net", run / "checkpoint.npz")
    assert code == 0
    assert out.startswith("validation: 16 images") and "\ntest: 48 images" in out


# ------------------------------------------------------------ divergence


def _trainer(tiny: Path, out: Path, lr: float) -> Trainer:
    from netdsl import load
    from netdsl.backends import compile_network

    net = load(tiny / "tiny.net")
    cnet = compile_network(net, batch=16, seed=3)
    return Trainer(cnet, trainer_mod.prepare_data(net), out, epochs=2, lr=lr, quiet=True)


def test_divergence_never_names_an_earlier_runs_checkpoint(tiny):
    out = tiny / "run"
    fit_file(tiny / "tiny.net", out=out, quiet=True, epochs=1)  # an earlier run's checkpoint
    with pytest.raises(TrainingDiverged) as e:
        _trainer(tiny, out, lr=1e12).fit()
    assert "no checkpoint" in str(e.value) and str(out / "checkpoint.npz") not in str(e.value)


def test_a_nan_evaluation_is_not_saved_as_a_good_checkpoint(tiny, monkeypatch, capsys):
    real = trainer_mod.evaluate
    calls = []

    def evaluate(*args, **kw):
        r = real(*args, **kw)
        calls.append(1)
        return dict(r, loss=float("nan")) if len(calls) == 2 else r

    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    run = tiny / "run"
    code, out, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--quiet")
    assert code == 3 and "Traceback" not in err
    assert "test loss (cross-entropy) became nan after epoch 2" in err
    assert "not saved" in err and f"{run / 'checkpoint.npz'} (epoch 1)" in err
    assert load_checkpoint(run / "checkpoint.npz")[1]["epoch"] == 1
    assert [r["epoch"] for r in records(run)] == [1]


def test_non_finite_weights_are_never_saved(tiny, monkeypatch, capsys):
    real = trainer_mod.evaluate
    calls = []

    def evaluate(cnet, *args, **kw):
        calls.append(1)
        if len(calls) == 2:  # weights gone bad where the evaluation does not show it
            cnet.theta[:3] = np.nan
        return (
            real(cnet, *args, **kw)
            if len(calls) != 2
            else {"loss": 0.5, "top1_error": 0.1, "top5_error": 0.0}
        )

    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    run = tiny / "run"
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--quiet")
    assert code == 3 and "weights became NaN or infinite in epoch 2" in err
    assert load_checkpoint(run / "checkpoint.npz")[1]["epoch"] == 1


def test_nan_in_the_data_is_a_data_error_not_a_learning_rate(tiny, capsys):
    x = np.load(tiny / "tiny.npz")["x"].copy()
    y = np.load(tiny / "tiny.npz")["y"]
    x[5, 0, 2, 2] = np.nan
    x[9, 0, 0, :3] = np.inf
    np.savez(tiny / "nan.npz", x=x, y=y)
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--data", data_of(tiny, "nan"),
                       "--out", tiny / "run", "--quiet")  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert f"{tiny / 'nan.npz'}: x holds 1 NaN value and 3 infinite values" in err
    assert "first in image 5" in err and "learning rate" not in err
    # made infinite by the normalisation: said so
    net = tiny / "tiny.net"
    norm = "  seed 3\n  normalize mean=-1e15, std=1e-30"
    net.write_text(net.read_text().replace("  seed 3", norm))
    code, _, err = cli(capsys, "train", net, "--out", tiny / "run2", "--quiet")
    assert code == 1 and "after normalize" in err


def test_eval_of_nan_weights_is_an_error(tiny, capsys):
    fit_file(tiny / "tiny.net", out=tiny / "run", quiet=True, epochs=1)
    arrays, meta = load_checkpoint(tiny / "run" / "checkpoint.npz")
    arrays = {k: np.full_like(v, np.nan) if k.startswith("param.") else v
              for k, v in arrays.items()}  # fmt: skip
    bad = tiny / "nan.npz"
    save_checkpoint(bad, arrays, meta)
    capsys.readouterr()
    code, out, err = cli(capsys, "eval", tiny / "tiny.net", bad)
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"{bad}: the weights are NaN or infinite (" in err and "diverged run" in err
    code, out, err = cli(capsys, "predict", tiny / "tiny.net", bad, tiny / "test.npz")
    assert code == 1 and out == "" and "NaN or infinite" in err


# ------------------------------------------------------------ crash consistency


def _uninterrupted(tiny: Path, epochs: int = 3) -> list[dict]:
    fit_file(tiny / "tiny.net", out=tiny / "whole", quiet=True, epochs=epochs)
    return records(tiny / "whole")


def test_a_crash_between_the_metrics_line_and_the_checkpoint(tiny, monkeypatch):
    expected = _uninterrupted(tiny)
    real_save = Trainer.save

    def save(self, *a, **kw):
        if self.epoch == 2:  # killed after epoch 2's metrics line, before its checkpoint
            raise KeyboardInterrupt
        return real_save(self, *a, **kw)

    monkeypatch.setattr(Trainer, "save", save)
    with pytest.raises(KeyboardInterrupt):
        fit_file(tiny / "tiny.net", out=tiny / "part", quiet=True, epochs=3)
    monkeypatch.setattr(Trainer, "save", real_save)
    fit_file(tiny / "tiny.net", out=tiny / "part", quiet=True, epochs=3, resume=True)
    assert without_times(records(tiny / "part")) == without_times(expected)
    assert same_weights(tiny / "whole" / "checkpoint.npz", tiny / "part" / "checkpoint.npz")


def test_a_lost_metrics_line_comes_back_from_the_checkpoint(tiny):
    expected = _uninterrupted(tiny)
    run = tiny / "part"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=2)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0])  # checkpoint of epoch 2, log of epoch 1
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=3, resume=True)
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]
    assert without_times(records(run)) == without_times(expected)


def test_lines_after_the_checkpoint_are_dropped_on_resume(tiny):
    expected = _uninterrupted(tiny)
    run = tiny / "part"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    ck1 = (run / "checkpoint.npz").read_bytes()
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=2, resume=True)
    (run / "checkpoint.npz").write_bytes(ck1)  # epoch 2's line written, its checkpoint lost
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=3, resume=True)
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]
    assert without_times(records(run)) == without_times(expected)


@pytest.mark.parametrize(("field", "bad"), [("optim_t", "seven"), ("epoch", None),
                                             ("rng", [1, 2]), ("schedule", 3)])  # fmt: skip
def test_resume_of_a_checkpoint_with_a_bad_field_names_the_file_and_field(tiny, capsys, field,
                                                                          bad):  # fmt: skip
    run = tiny / "run"
    fit_file(tiny / "tiny.net", out=run, quiet=True, epochs=1)
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    if bad is None:
        del meta[field]
    else:
        meta[field] = bad
    save_checkpoint(run / "checkpoint.npz", arrays, meta)
    code, _, err = cli(capsys, "train", tiny / "tiny.net", "--out", run, "--resume", "--quiet")
    assert code == 1 and "Traceback" not in err, err
    assert str(run / "checkpoint.npz") in err and field in err
