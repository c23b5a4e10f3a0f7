"""Training metrics as JSON Lines (``run_dir/metrics.jsonl``): one line per epoch.

One JSON object per line, flushed as it is written, so a crashed or killed run keeps
everything logged before it and ``tail -f`` shows progress::

    >>> with MetricsWriter("runs/mnist") as log:
    ...     log.write({"epoch": 1, "train_loss": 0.31, "train_err": 0.09, "test_err": 0.05})
    >>> read_metrics("runs/mnist/metrics.jsonl")[0]["epoch"]
    1

An epoch's line also holds the training curve within the epoch, in ``"steps"``
(StepLog): ``{"per_epoch": S, "every": k, "loss": [...], "err": [...], "lr": [...]}``,
the mean training loss, the training top-1 error and the last learning rate of each
run of k steps (the last run may be shorter). Plots of these records are in plot.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from netdsl.errors import DataError

__all__ = [
    "METRICS_FILE",
    "STEP_POINTS",
    "LogTee",
    "MetricsWriter",
    "StepLog",
    "read_metrics",
    "write_metrics",
]

METRICS_FILE = "metrics.jsonl"
# about this many points of the training curve per epoch: enough to draw a 1-epoch run,
# few enough that a line stays a few kilobytes however long the epoch
STEP_POINTS = 200


def json_default(value: Any) -> Any:
    """json.dumps' `default`: numpy scalars and arrays (a float32 loss) as plain numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class MetricsWriter:
    """Append one JSON object per line to ``run_dir/metrics.jsonl``.

    Opening an existing file appends (a resumed run continues its log). A final line
    cut short by a crash is dropped on open, so the file stays valid JSON Lines.

    >>> log = MetricsWriter("runs/demo")
    >>> log.write({"epoch": 1, "train_loss": 0.5})
    >>> log.close()
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_last_line(self.path)
            # kept open for the run; write() flushes after every record so a crash
            # loses at most the line being written
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise DataError(f"{self.path}: cannot open metrics log: {e.strerror or e}") from e

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and flush it to the OS.

        >>> MetricsWriter("runs/demo").write({"epoch": 2, "test_err": 0.01})
        """
        if self._file.closed:
            raise ValueError(f"{self.path}: metrics log is closed")
        line = _line(record)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as e:
            raise DataError(f"{self.path}: cannot write metrics: {e.strerror or e}") from e

    def close(self) -> None:
        """Close the file; further writes raise ValueError."""
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LogTee:
    """Gives every record to several logs (the metrics file first); closes them all.

    >>> with LogTee(MetricsWriter("runs/demo"), other_log) as log:  # doctest: +SKIP
    ...     log.write({"epoch": 1})
    """

    def __init__(self, *logs: Any):
        self.logs = logs

    def write(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` to each log in turn."""
        for log in self.logs:
            log.write(record)

    def close(self) -> None:
        """Close every log, even when one fails to close."""
        with contextlib.ExitStack() as stack:
            for log in self.logs:
                stack.callback(log.close)

    def __enter__(self) -> LogTee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), default=json_default, allow_nan=True)


def write_metrics(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Replace a metrics file with ``records``, atomically (a temporary file and a
    rename): a resumed run trims or completes its log with it.

    >>> write_metrics("runs/demo/metrics.jsonl", [{"epoch": 1}])
    """
    from ..files import write_atomic

    write_atomic(path, "".join(_line(r) + "\n" for r in records), what="metrics")


def _drop_partial_last_line(path: Path) -> None:
    """Truncate a trailing line without a newline (a write killed half-way)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in order.

    A final line without a newline (a write cut off by a crash) is ignored if it does
    not parse; any other bad line is a DataError naming ``file:line``.

    >>> [r["epoch"] for r in read_metrics("runs/demo/metrics.jsonl")]
    [1, 2]
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{os.fspath(path)}: cannot read metrics: {e}") from e
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # last piece, no newline after it: a torn write
                break
            raise DataError(f"{os.fspath(path)}:{number}: not valid JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise DataError(f"{os.fspath(path)}:{number}: expected a JSON object per line")
        records.append(record)
    return records


class StepLog:
    """The training curve within one epoch: the mean loss, the top-1 error and the
    learning rate over every ``every`` steps, for the epoch's ``"steps"`` field.

    Two additions per step, no I/O: the epoch's line carries the result, so the log
    stays one line per epoch and a resumed run restores it from the checkpoint's history.

    >>> log = StepLog(steps=4, every=2)
    >>> for loss, wrong in ((1.0, 3), (0.5, 1), (0.25, 1), (0.25, 0)):
    ...     log.add(loss, wrong, images=4, lr=0.1)
    >>> log.record()
    {'per_epoch': 4, 'every': 2, 'loss': [0.75, 0.25], 'err': [0.5, 0.125], 'lr': [0.1, 0.1]}
    """

    def __init__(self, steps: int, every: int | None = None):
        self.steps = steps
        self.every = every or max(1, -(-steps // STEP_POINTS))  # ceil: at most STEP_POINTS
        groups = -(-steps // self.every)
        # per group: sum of step losses, wrong answers, images, steps; the last lr
        self.sums = np.zeros((4, groups), np.float64)
        self.lrs = np.zeros(groups, np.float64)
        self.done = 0

    def add(self, loss: float, wrong: int, images: int, lr: float) -> None:
        """Count one step (its mean loss over the batch, its wrong answers, its images)."""
        g = min(self.done // self.every, len(self.lrs) - 1)
        self.sums[:, g] += (loss, wrong, images, 1)
        self.lrs[g] = lr
        self.done += 1

    def reduce(self, comm) -> None:
        """Add up the ranks' counts (each rank saw its share of every batch): one
        allreduce per epoch. A rank's step loss is its share's mean, so the ranks'
        losses are averaged."""
        if comm.size > 1:
            flat = comm.reduce_sums(list(self.sums.ravel()))
            self.sums = np.asarray(flat, np.float64).reshape(self.sums.shape)
            self.sums[0] /= comm.size
            self.sums[3] /= comm.size

    def record(self) -> dict[str, Any]:
        """The ``"steps"`` field of the epoch's line (6 significant digits)."""
        n = max(1, -(-self.done // self.every))
        loss, wrong, images, count = self.sums[:, :n]

        def six(a: np.ndarray) -> list[float]:
            return [float(f"{v:.6g}") for v in a]

        return {"per_epoch": self.steps, "every": self.every,
                "loss": six(loss / np.maximum(count, 1)),
                "err": six(wrong / np.maximum(images, 1)), "lr": six(self.lrs[:n])}  # fmt: skip
