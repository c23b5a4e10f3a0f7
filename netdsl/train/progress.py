"""A dependency-free training progress display.

On a terminal, a single live line per epoch is redrawn in place with ``\\r`` (at most
about ten times a second); when output goes to a pipe or a CI log, nothing is printed
during the epoch and one summary line is printed at its end::

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(total_batches=2, epoch=1, epochs=3, stream=out, is_tty=False)
    >>> bar.update(0, loss=0.5, acc=0.8, images_per_s=1000.0, lr=0.1)
    >>> bar.update(1, loss=0.4, acc=0.9, images_per_s=1000.0, lr=0.1)
    >>> line = bar.close({"loss": 0.45, "train_err": 0.15, "lr": 0.1, "seconds": 4.1})
    >>> out.getvalue()
    'epoch 1/3  loss 0.4500  train err 15.00%  lr 0.1  4.1s\\n'
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = [
    "ProgressBar",
    "format_count",
    "format_duration",
    "format_summary",
]


def format_duration(seconds: float) -> str:
    """A short human duration: ``4.1s``, ``1m05s``, ``2h03m``.

    >>> format_duration(4.12), format_duration(65), format_duration(7380)
    ('4.1s', '1m05s', '2h03m')
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_count(n: float) -> str:
    """An integer count with thousands separators: ``12,345``.

    >>> format_count(12345.6)
    '12,346'
    """
    if not math.isfinite(n):
        return "?"
    return f"{int(round(n)):,}"


def _fmt_number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_summary(epoch: int, epochs: int, summary: Mapping[str, Any]) -> str:
    """The end-of-epoch line, from a dict of results.

    Known keys, in this order: ``loss`` (or ``train_loss``), ``test_loss``,
    ``train_err``, ``test_err`` (fractions, shown as percent), ``lr``,
    ``images_per_s``, ``seconds``; other keys follow as ``name value``; missing ones
    are left out.

    >>> format_summary(3, 10, {"loss": 0.0412, "train_err": 0.0121, "test_err": 0.0095,
    ...                        "lr": 0.05, "images_per_s": 12345, "seconds": 4.1})
    'epoch 3/10  loss 0.0412  train err 1.21%  test err 0.95%  lr 0.05  12,345 img/s  4.1s'
    """
    parts = [f"epoch {epoch}/{epochs}"]
    s = dict(summary)
    loss = s.pop("loss", s.pop("train_loss", None))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if (v := s.pop("test_loss", None)) is not None:
        parts.append(f"test loss {v:.4f}")
    if (v := s.pop("train_err", None)) is not None:
        parts.append(f"train err {v:.2%}")
    if (v := s.pop("test_err", None)) is not None:
        parts.append(f"test err {v:.2%}")
    if (v := s.pop("lr", None)) is not None:
        parts.append(f"lr {v:g}")
    if (v := s.pop("images_per_s", None)) is not None:
        parts.append(f"{format_count(v)} img/s")
    seconds = s.pop("seconds", None)
    for key in ("epoch", "epochs"):
        s.pop(key, None)  # already at the front
    parts.extend(f"{k} {_fmt_number(v)}" for k, v in s.items())
    if seconds is not None:
        parts.append(format_duration(seconds))
    return "  ".join(parts)


class ProgressBar:
    """Progress of one epoch: a live ``\\r`` line on a TTY, one summary line otherwise.

    ``stream`` defaults to ``sys.stdout`` at construction; ``is_tty=None`` asks the
    stream. ``clock`` and ``min_interval`` (seconds between redraws) exist for tests.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(100, epoch=1, epochs=10, stream=out, is_tty=True, width=120)
    >>> bar.update(0, loss=2.3, acc=0.1, images_per_s=5000.0, lr=0.01)
    >>> out.getvalue().startswith("\\repoch 1/10 [")
    True
    """

    BAR_WIDTH = 20

    def __init__(
        self,
        total_batches: int,
        epoch: int,
        epochs: int,
        stream: TextIO | None = None,
        is_tty: bool | None = None,
        *,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ):
        self.total_batches = max(int(total_batches), 0)
        self.epoch = epoch
        self.epochs = epochs
        # resolved now, not as a default argument, so redirected stdout is honoured
        self.stream = stream if stream is not None else sys.stdout
        if is_tty is None:
            try:
                is_tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                is_tty = False
        self.is_tty = is_tty
        self.min_interval = min_interval
        self._clock = clock
        self._start = clock()
        self._last_draw: float | None = None
        self._drawn_len = 0
        self._closed = False
        if width is None and is_tty:
            width = shutil.get_terminal_size((80, 24)).columns
        # a line as wide as the terminal wraps, and \r then only rewinds the last row
        self.width = max((width or 0) - 1, 20) if width else None

    def update(
        self,
        batch_index: int,
        loss: float,
        acc: float | None = None,
        images_per_s: float | None = None,
        lr: float | None = None,
    ) -> None:
        """Report that batch ``batch_index`` (0-based) has finished.

        Redraws the live line on a TTY when ``min_interval`` has passed since the last
        redraw, and always for the first and the last batch. Does nothing otherwise.

        >>> import io
        >>> bar = ProgressBar(10, 1, 1, stream=io.StringIO(), is_tty=False)
        >>> bar.update(0, loss=1.0)
        """
        if not self.is_tty or self._closed:
            return
        now = self._clock()
        done = batch_index + 1
        last = done >= self.total_batches
        if self._last_draw is not None and not last and now - self._last_draw < self.min_interval:
            return  # throttled: redrawing faster than the eye reads only costs time
        self._last_draw = now
        self._draw(self._live_line(done, loss, acc, images_per_s, lr, now - self._start))

    def _live_line(
        self,
        done: int,
        loss: float,
        acc: float | None,
        images_per_s: float | None,
        lr: float | None,
        elapsed: float,
    ) -> str:
        total = self.total_batches
        frac = min(done / total, 1.0) if total else 1.0
        filled = int(frac * self.BAR_WIDTH)
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        parts = [f"epoch {self.epoch}/{self.epochs} [{bar}] batch {done}/{total}"]
        parts.append(f"loss {loss:.4f}")
        if acc is not None:
            parts.append(f"acc {acc:.2%}")
        if lr is not None:
            parts.append(f"lr {lr:g}")
        if images_per_s is not None:
            parts.append(f"{format_count(images_per_s)} img/s")
        eta = elapsed / done * max(total - done, 0) if done > 0 else math.nan
        parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def _draw(self, line: str) -> None:
        if self.width is not None:
            line = line[: self.width]
        # pad with spaces to wipe the tail of a longer previous line
        pad = " " * max(self._drawn_len - len(line), 0)
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._drawn_len = len(line)

    def close(self, summary: Mapping[str, Any] | None = None) -> str:
        """End the epoch: print and return its summary line (see :func:`format_summary`).

        ``seconds`` defaults to the time since the bar was created. On a TTY the
        summary replaces the live line. A second call prints nothing.

        >>> import io
        >>> bar = ProgressBar(1, 2, 5, stream=io.StringIO(), is_tty=False)
        >>> bar.close({"loss": 0.1, "seconds": 1.0})
        'epoch 2/5  loss 0.1000  1.0s'
        """
        summary = dict(summary or {})
        summary.setdefault("seconds", self._clock() - self._start)
        line = format_summary(self.epoch, self.epochs, summary)
        if self._closed:
            return line
        self._closed = True
        if self.is_tty:
            pad = " " * max(self._drawn_len - len(line), 0)
            self.stream.write("\r" + line + pad + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line
