"""A dependency-free training progress display.

On a terminal, a single live line per epoch is redrawn in place with ``\\r`` (at most
about ten times a second); when output goes to a pipe or a CI log, nothing is printed
during the epoch and one summary line is printed at its end. The live line uses the
words of the epoch line (``train err``), shows the epoch's and the whole run's ETA, and
fits the terminal's width by leaving out its least useful fields first::

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(total_batches=2, epoch=1, epochs=3, stream=out, is_tty=False)
    >>> bar.update(0, loss=0.5, err=0.2, images_per_s=1000.0, lr=0.1)
    >>> bar.update(1, loss=0.4, err=0.1, images_per_s=1000.0, lr=0.1)
    >>> line = bar.close({"loss": 0.45, "train_err": 0.15, "lr": 0.1, "seconds": 4.1})
    >>> out.getvalue()
    'epoch 1/3  loss 0.4500  train err 15.00%  lr 0.1  4.1s\\n'
"""

from __future__ import annotations

import math
import os
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
    "launcher_terminal",
    "terminal_columns",
]

# The processes that start MPI ranks: a rank's own output is a pipe to its launcher,
# which writes it to the user's terminal.
LAUNCHERS = ("mpiexec", "mpirun", "mpiexec.hydra", "mpiexec.gforker", "orterun", "prterun")
_MAX_ANCESTORS = 4  # rank -> proxy/daemon -> launcher, with room for one wrapper


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


def plural(n: int, word: str) -> str:
    """``n`` and the word, plural unless n is 1: ``1 epoch``, ``8 epochs``.

    >>> plural(1, "epoch"), plural(8, "epoch")
    ('1 epoch', '8 epochs')
    """
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _fmt_number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_summary(epoch: int, epochs: int, summary: Mapping[str, Any]) -> str:
    """The end-of-epoch line, from a dict of results.

    Known keys, in this order: ``loss`` (or ``train_loss``), ``val_loss``,
    ``test_loss``, ``train_err``, ``val_err``, ``test_err`` (fractions, shown as
    percent), ``lr``, ``images_per_s``, ``seconds``; other keys follow as ``name value``;
    missing ones are left out.

    >>> format_summary(3, 10, {"loss": 0.0412, "train_err": 0.0121, "test_err": 0.0095,
    ...                        "lr": 0.05, "images_per_s": 12345, "seconds": 4.1})
    'epoch 3/10  loss 0.0412  train err 1.21%  test err 0.95%  lr 0.05  12,345 img/s  4.1s'
    """
    parts = [f"epoch {epoch}/{epochs}"]
    s = dict(summary)
    loss = s.pop("loss", s.pop("train_loss", None))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    for key, label in (("val_loss", "val loss"), ("test_loss", "test loss")):
        if (v := s.pop(key, None)) is not None:
            parts.append(f"{label} {v:.4f}")
    errors = (("train_err", "train err"), ("val_err", "val err"), ("test_err", "test err"))
    for key, label in errors:
        if (v := s.pop(key, None)) is not None:
            parts.append(f"{label} {v:.2%}")
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
    stream. ``width`` fixes the line width (default: the terminal's, asked at every
    redraw so a resized window is followed). ``epoch_overhead`` is the time an epoch
    spends outside its steps (evaluation, checkpoint), for the whole run's ETA.
    ``clock`` and ``min_interval`` (seconds between redraws) exist for tests.

    The ETA's rate leaves out the first step, which on a first run also compiles
    the kernels.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(100, epoch=1, epochs=10, stream=out, is_tty=True, width=120)
    >>> bar.update(0, loss=2.3, err=0.9, images_per_s=5000.0, lr=0.01)
    >>> out.getvalue().startswith("\\repoch 1/10 [")
    True
    """

    BAR_WIDTH = 20
    SHORT_BAR = 10
    # what goes when the line is too wide, least useful first (the epoch number stays)
    DROP_ORDER = ("lr", "batch", "epoch_eta", "short_bar", "bar", "rate", "err", "loss")

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
        epoch_overhead: float = 0.0,
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
        self.epoch_overhead = max(float(epoch_overhead), 0.0)
        self._clock = clock
        self._start = clock()
        self._first: tuple[float, int] | None = None  # (time, batches done) at the 1st update
        self._last_draw: float | None = None
        self._drawn_len = 0
        self._closed = False
        self._fixed_width = width

    @property
    def width(self) -> int | None:
        """The longest line drawn: one less than the terminal (a full-width line wraps,
        and ``\\r`` then rewinds only its last row); None when not a TTY."""
        if not self.is_tty:
            return None
        cols = self._fixed_width
        if cols is None:
            cols = shutil.get_terminal_size((80, 24)).columns
        return max(cols - 1, 20)

    def update(
        self,
        batch_index: int,
        loss: float,
        acc: float | None = None,
        images_per_s: float | None = None,
        lr: float | None = None,
        *,
        err: float | None = None,
    ) -> None:
        """Report that batch ``batch_index`` (0-based) has finished.

        ``err`` is the training error so far (a fraction); ``acc`` (1 - err) is
        accepted too. Redraws the live line on a TTY when ``min_interval`` has passed
        since the last redraw, and always for the first and the last batch. Does
        nothing otherwise.

        >>> import io
        >>> bar = ProgressBar(10, 1, 1, stream=io.StringIO(), is_tty=False)
        >>> bar.update(0, loss=1.0)
        """
        if not self.is_tty or self._closed:
            return
        now = self._clock()
        done = batch_index + 1
        if self._first is None:
            self._first = (now, done)
        last = done >= self.total_batches
        if self._last_draw is not None and not last and now - self._last_draw < self.min_interval:
            return  # throttled: redrawing faster than the eye reads only costs time
        self._last_draw = now
        if err is None and acc is not None:
            err = 1.0 - acc
        self._draw(self._live_line(done, loss, err, images_per_s, lr, now))

    def _seconds_per_batch(self, done: int, now: float) -> float:
        """From the batches after the first (which may have compiled the kernels);
        unknown (NaN) while the first batch is all there is."""
        if self._first is not None and done > self._first[1]:
            return (now - self._first[0]) / (done - self._first[1])
        return (now - self._start) / done if done > 1 else math.nan

    def _live_line(
        self,
        done: int,
        loss: float,
        err: float | None,
        images_per_s: float | None,
        lr: float | None,
        now: float,
    ) -> str:
        total = self.total_batches
        per_batch = self._seconds_per_batch(done, now)
        eta = per_batch * max(total - done, 0)
        later = max(self.epochs - self.epoch, 0)  # whole epochs after this one
        run_eta = eta + later * (per_batch * total + self.epoch_overhead)
        fields = [("loss", f"loss {loss:.4f}")]
        if err is not None:
            fields.append(("err", f"train err {err:.2%}"))
        if lr is not None:
            fields.append(("lr", f"lr {lr:g}"))
        if images_per_s is not None:
            fields.append(("rate", f"{format_count(images_per_s)} img/s"))
        fields.append(("epoch_eta", f"ETA {format_duration(eta)}"))
        if later:
            fields.append(("run_eta", f"total ETA {format_duration(run_eta)}"))
        frac = min(done / total, 1.0) if total else 1.0
        width = self.width
        dropped: set[str] = set()
        line = self._compose(done, frac, fields, dropped)
        for key in self.DROP_ORDER:
            if width is None or len(line) <= width:
                break
            if key == "epoch_eta" and not later:
                continue  # the only ETA left: keep it
            dropped.add(key)
            line = self._compose(done, frac, fields, dropped)
        return line

    def _compose(self, done: int, frac: float, fields, dropped: set[str]) -> str:
        head = f"epoch {self.epoch}/{self.epochs}"
        if "bar" in dropped:
            head += f" {frac:.0%}"
        else:
            n = self.SHORT_BAR if "short_bar" in dropped else self.BAR_WIDTH
            filled = int(frac * n)
            head += " [" + "#" * filled + "-" * (n - filled) + "]"
        if "batch" not in dropped:
            head += f" batch {done}/{self.total_batches}"
        return "  ".join([head] + [text for key, text in fields if key not in dropped])

    def _draw(self, line: str) -> None:
        width = self.width
        if width is not None:
            line = line[:width]
        # pad with spaces to wipe the tail of a longer previous line
        pad = " " * max(self._drawn_len - len(line), 0)
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._drawn_len = len(line)

    def message(self, text: str) -> None:
        """Show ``text`` on the live line (a TTY only), until the next update replaces it.

        >>> import io
        >>> out = io.StringIO()
        >>> ProgressBar(5, 1, 1, stream=out, is_tty=True, width=80).message("compiling…")
        >>> out.getvalue()
        '\\rcompiling…'
        """
        if self.is_tty and not self._closed:
            self._draw(text)

    def print_line(self, text: str) -> None:
        """Print ``text`` as a line of its own; on a TTY it replaces the live line, which
        the next update draws again below it.

        >>> import io
        >>> out = io.StringIO()
        >>> ProgressBar(5, 1, 1, stream=out, is_tty=False).print_line("note")
        >>> out.getvalue()
        'note\\n'
        """
        if self.is_tty:
            pad = " " * max(self._drawn_len - len(text), 0)
            self.stream.write("\r" + text + pad + "\n")
            self._drawn_len = 0
            self._last_draw = None  # redraw the bar at the next update
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

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


# ------------------------------------------------------------------ under mpiexec


def launcher_terminal(pid: int | None = None, proc: str = "/proc") -> str | None:
    """The terminal an MPI launcher (``mpiexec``) writes to, when it writes to one.

    A rank's standard output is a pipe to its launcher, so the rank cannot ask its own
    stream; this walks up the process tree (Linux ``/proc``) to the first ``mpiexec``
    or ``mpirun`` and returns the terminal its standard output is (``/dev/pts/3``), or
    None: no launcher, its output goes to a file or a pipe, or no ``/proc``.
    """
    pid = os.getpid() if pid is None else pid
    for _ in range(_MAX_ANCESTORS):
        pid = _parent(proc, pid)
        if pid is None or pid <= 1:
            return None
        try:
            with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:
            return None
        if name in LAUNCHERS:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/1")
            except OSError:
                return None
            return target if target.startswith(("/dev/pts/", "/dev/tty")) else None
    return None


def _parent(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def terminal_columns(path: str) -> int | None:
    """The width of the terminal at ``path`` (e.g. launcher_terminal()'s), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        cols = os.get_terminal_size(fd).columns
    except OSError:
        return None
    finally:
        os.close(fd)
    return cols if cols > 0 else None  # 0: a terminal that never set its size
