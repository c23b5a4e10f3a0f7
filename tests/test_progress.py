"""Progress display (TTY and non-TTY), its formatting helpers, and the metrics log."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train.metrics import MetricsWriter, read_metrics
from netdsl.train.plot import plot_metrics
from netdsl.train.progress import (
    ProgressBar,
    format_count,
    format_duration,
    format_summary,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run_epoch(bar: ProgressBar, clock: FakeClock, batches: int, step: float) -> None:
    for j in range(batches):
        clock.t += step
        bar.update(j, loss=1.0 / (j + 1), acc=0.5, images_per_s=12345.0, lr=0.05)


# ----------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.0s"), (4.12, "4.1s"), (59.94, "59.9s"), (65, "1m05s"), (3599, "59m59s"),
     (7380, "2h03m"), (float("nan"), "?"), (-1, "?")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_count() -> None:
    assert format_count(12345) == "12,345"
    assert format_count(999.6) == "1,000"
    assert format_count(1234567.0) == "1,234,567"


def test_format_summary_example_line() -> None:
    line = format_summary(
        3,
        10,
        {
            "loss": 0.0412,
            "train_err": 0.0121,
            "test_err": 0.0095,
            "lr": 0.05,
            "images_per_s": 12345,
            "seconds": 4.1,
        },
    )
    assert line == (
        "epoch 3/10  loss 0.0412  train err 1.21%  test err 0.95%  lr 0.05  12,345 img/s  4.1s"
    )
    assert format_summary(1, 2, {"train_loss": 0.5, "top5_err": 0.123456, "epoch": 1}) == (
        "epoch 1/2  loss 0.5000  top5_err 0.1235"
    )


# ------------------------------------------------------------------- ProgressBar


def test_non_tty_prints_exactly_one_line_per_epoch() -> None:
    out = io.StringIO()
    clock = FakeClock()
    for epoch in (1, 2, 3):
        bar = ProgressBar(50, epoch, 3, stream=out, is_tty=False, clock=clock)
        run_epoch(bar, clock, 50, step=0.05)
        bar.close({"loss": 0.1, "train_err": 0.02, "lr": 0.05})
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and text.endswith("\n")
    assert lines[0] == "epoch 1/3  loss 0.1000  train err 2.00%  lr 0.05  2.5s"
    assert [ln.split("  ")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_stream_isatty_is_consulted() -> None:
    assert ProgressBar(1, 1, 1, stream=io.StringIO()).is_tty is False

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ProgressBar(1, 1, 1, stream=Tty(), width=80).is_tty is True


def test_tty_updates_in_place_and_throttles() -> None:
    out = io.StringIO()
    clock = FakeClock()
    bar = ProgressBar(100, 2, 5, stream=out, is_tty=True, clock=clock, width=200)
    run_epoch(bar, clock, 100, step=0.01)  # 1 s of batches at 100 batches/s
    live = out.getvalue()
    draws = live.count("\r")
    # first batch, then every 0.1 s, and always the last batch: about 11 redraws
    assert 9 <= draws <= 13
    assert "\n" not in live
    last = live.split("\r")[-1]
    assert last.startswith("epoch 2/5 [####################] batch 100/100")
    # the epoch line's words ("train err", not "acc"; issue 11)
    for part in ("loss 0.0100", "train err 50.00%", "lr 0.05", "12,345 img/s", "ETA 0.0s"):
        assert part in last
    line = bar.close({"loss": 0.02, "test_err": 0.01})
    text = out.getvalue()
    assert text.endswith("\r" + line + " " * (len(last) - len(line)) + "\n")
    assert text.count("\n") == 1
    assert line == "epoch 2/5  loss 0.0200  test err 1.00%  1.0s"


def test_tty_shows_eta_and_progress_mid_epoch() -> None:
    out = io.StringIO()
    clock = FakeClock()
    bar = ProgressBar(10, 1, 1, stream=out, is_tty=True, clock=clock, width=200)
    clock.t += 2.0
    bar.update(1, loss=0.5)  # 2 of 10 batches took 2 s -> 8 s to go
    line = out.getvalue()
    assert line.startswith("\repoch 1/1 [####----------------] batch 2/10  loss 0.5000")
    assert line.endswith("ETA 8.0s")


def test_tty_line_fits_the_terminal_width() -> None:
    # issue 11: fields are left out to fit (tests/test_robust_progress.py), never cut
    out = io.StringIO()
    bar = ProgressBar(10, 1, 1, stream=out, is_tty=True, width=40)
    bar.update(0, loss=0.5, acc=0.5, images_per_s=1e6, lr=0.1)
    line = out.getvalue()
    assert len(line) <= 1 + 39 and line.startswith("\repoch 1/1") and "ETA" in line


def test_close_twice_prints_once() -> None:
    out = io.StringIO()
    bar = ProgressBar(1, 1, 1, stream=out, is_tty=False)
    bar.close({"loss": 1.0, "seconds": 1.0})
    bar.close({"loss": 1.0, "seconds": 1.0})
    bar.update(0, loss=1.0)
    assert out.getvalue() == "epoch 1/1  loss 1.0000  1.0s\n"


def test_default_stream_is_stdout_at_construction(capsys: pytest.CaptureFixture[str]) -> None:
    ProgressBar(1, 1, 1, is_tty=False).close({"seconds": 0.5})
    assert capsys.readouterr().out == "epoch 1/1  0.5s\n"


# ----------------------------------------------------------------------- metrics


def test_metrics_writer_appends_jsonl(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    with MetricsWriter(run) as log:
        log.write({"epoch": 1, "train_loss": np.float32(0.5), "test_err": 0.1})
        # flushed per line: readable while the writer is still open
        assert read_metrics(run / "metrics.jsonl") == [
            {"epoch": 1, "train_loss": 0.5, "test_err": 0.1}
        ]
    with MetricsWriter(run) as log:  # a resumed run appends
        log.write({"epoch": 2, "train_loss": float("nan")})
    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] != records[1]["train_loss"]  # NaN survives
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(ln), dict) for ln in lines)
    with pytest.raises(ValueError, match="closed"):
        log.write({"epoch": 3})


def test_torn_last_line_is_ignored_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo')
    assert read_metrics(path) == [{"epoch": 1}]
    with MetricsWriter(tmp_path) as log:
        log.write({"epoch": 2})
    assert read_metrics(path) == [{"epoch": 1}, {"epoch": 2}]


def test_read_metrics_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"metrics.jsonl:1: expected a JSON object"):
        read_metrics(path)
    with pytest.raises(DataError, match="missing.jsonl: cannot read metrics"):
        read_metrics(tmp_path / "missing.jsonl")


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 0.5}\n')
    with pytest.raises(ImportError, match=r"pip install 'netdsl\[plot\]'"):
        plot_metrics(path, tmp_path / "curves.png")


def test_plot_metrics_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(tmp_path) as log:
        log.write({"step": 10, "train_loss": 2.0})  # a per-step record: not plotted
        for epoch in range(1, 4):
            log.write(
                {"epoch": epoch, "train_loss": 1 / epoch, "train_err": 0.3 / epoch,
                 "test_err": 0.2 / epoch}
            )  # fmt: skip
    png = tmp_path / "curves.png"
    plot_metrics(path, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1}\n')
    with pytest.raises(DataError, match="empty.jsonl: no records with an 'epoch'"):
        plot_metrics(empty, png)
