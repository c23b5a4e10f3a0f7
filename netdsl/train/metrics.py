"""Training metrics as JSON Lines (``run_dir/metrics.jsonl``), and a plot of them.

One JSON object per line, flushed as it is written, so a crashed or killed run keeps
everything logged before it and ``tail -f`` shows progress::

    >>> with MetricsWriter("runs/mnist") as log:
    ...     log.write({"epoch": 1, "train_loss": 0.31, "train_err": 0.09, "test_err": 0.05})
    >>> read_metrics("runs/mnist/metrics.jsonl")[0]["epoch"]
    1

Plotting needs matplotlib, the optional ``plot`` extra.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from netdsl.errors import DataError

__all__ = ["METRICS_FILE", "MetricsWriter", "plot_metrics", "read_metrics", "write_metrics"]

METRICS_FILE = "metrics.jsonl"


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


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), default=json_default, allow_nan=True)


def write_metrics(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Replace a metrics file with ``records``, atomically (a temporary file and a
    rename): a resumed run trims or completes its log with it.

    >>> write_metrics("runs/demo/metrics.jsonl", [{"epoch": 1}])
    """
    path = Path(path)
    text = "".join(_line(r) + "\n" for r in records)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DataError(f"{path}: cannot write metrics: {e.strerror or e}") from e


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


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _loss_label(run_json: Path) -> str:
    """ "loss (mse)" when the run's run.json names its loss, else "loss"."""
    try:
        kind = json.loads(run_json.read_text(encoding="utf-8")).get("loss")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return "loss"
    names = {"cross_entropy": "cross-entropy", "mse": "mse"}
    return f"loss ({names[kind]})" if kind in names else "loss"


def plot_metrics(jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Plot loss curves and error curves against epoch into a PNG.

    Uses the records that have an ``"epoch"``; every numeric field whose name
    contains ``loss`` goes in the left panel, every one containing ``err`` in the right
    (as percent). The loss axis names the run's loss (cross-entropy or mse) when the
    run folder's ``run.json`` records it. Needs matplotlib (``pip install 'netdsl[plot]'``).

    >>> plot_metrics("runs/mnist/metrics.jsonl", "runs/mnist/curves.png")  # doctest: +SKIP
    """
    try:
        # Figure + Agg canvas, not pyplot: no global figure state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plotting metrics needs matplotlib; install it with: pip install 'netdsl[plot]'"
        ) from e
    records = [r for r in read_metrics(jsonl_path) if _is_number(r.get("epoch"))]
    if not records:
        raise DataError(f"{os.fspath(jsonl_path)}: no records with an 'epoch' to plot")
    keys = sorted({k for r in records for k, v in r.items() if _is_number(v)} - {"epoch"})
    loss_keys = [k for k in keys if "loss" in k]
    err_keys = [k for k in keys if "err" in k]

    fig = Figure(figsize=(10, 4), tight_layout=True)
    FigureCanvasAgg(fig)
    loss_label = _loss_label(Path(jsonl_path).parent / "run.json")
    panels = ((fig.add_subplot(1, 2, 1), loss_keys, loss_label, 1.0),)
    panels += ((fig.add_subplot(1, 2, 2), err_keys, "error (%)", 100.0),)
    for ax, names, label, scale in panels:
        for name in names:
            pts = [(r["epoch"], r[name] * scale) for r in records if _is_number(r.get(name))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if names:
            ax.legend()
    try:
        fig.savefig(os.fspath(png_path), dpi=100)
    except OSError as e:
        raise DataError(f"{os.fspath(png_path)}: cannot write plot: {e.strerror or e}") from e
