"""``netdsl plot``: a run's curves (or several runs' overlaid) as a figure for a report.

Three panels share the epoch axis (integer ticks): the loss, the top-1 (and top-5)
error in percent, and the learning rate (log scale when it spans a decade or more).
Each epoch's line of metrics.jsonl gives a point (marked); its ``"steps"`` field (the
curve within the epoch, metrics.StepLog) gives the training loss, error and learning
rate every few steps as a thin line, so a 1-epoch run is a curve, not three dots.

One run: one colour per data split (train, validation, test), the same in every
panel. Several runs: one colour per run and one line style per split, the legend
naming both. The title names the run(s) and the network, from each folder's run.json.

run_series gives the numbers each curve is drawn from, for checking; plot_runs draws
them. Needs matplotlib (the optional ``plot`` extra), imported only when drawing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .metrics import METRICS_FILE, read_metrics
from .paths import show_path
from .runinfo import read_run_info

__all__ = [
    "Run",
    "Series",
    "load_run",
    "load_runs",
    "make_figure",
    "plot_metrics",
    "plot_runs",
    "run_series",
]

PANELS = ("loss", "error", "lr")
SPLITS = {"train": "train", "val": "validation", "test": "test"}
SPLIT_COLOURS = {"train": "C0", "val": "C1", "test": "C2"}  # one run: colour = split
SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}  # several runs: style = split
LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "mse"}
MARK_EPOCHS = 40  # epoch points are marked up to this many epochs
# the first steps (loss ~ln(classes), error ~90%) may lie far above the rest of the run:
# the loss and error axes are scaled to the points after this share of the run when the
# first ones would squash the rest (as TensorBoard ignores outliers in its scaling)
START_SHARE = 0.05


@dataclass
class Run:
    """A run folder's epoch records and what its run.json says about it."""

    folder: Path
    label: str  # the run's name in titles and legends: the folder's name
    records: list[dict[str, Any]]  # metrics.jsonl's lines that have an epoch, in order
    network: str | None = None
    net_file: str | None = None
    data: str | None = None
    loss: str | None = None  # "cross_entropy" or "mse"


@dataclass
class Series:
    """One curve: what it is, which panel it is in, and its points."""

    run: str  # the run's label
    key: str  # the metrics field: "train_loss", "val_err", "lr"; "steps.loss" within epochs
    name: str  # legend text: "train loss", "validation error (%)"
    panel: str  # "loss", "error" or "lr"
    split: str | None  # "train", "val", "test"; None for the learning rate
    per_step: bool  # from the epochs' "steps" fields (a line), else one point per epoch
    x: list[float] = field(default_factory=list)  # in epochs
    y: list[float] = field(default_factory=list)  # errors in percent


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_run(folder: str | os.PathLike, label: str | None = None) -> Run:
    """Read a run folder: its metrics.jsonl (required, with at least one epoch's line)
    and its run.json (optional: the title then names only the folder).

    Raises DataError naming the folder or file when there is nothing to plot.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "no such run folder"
        raise DataError(f"{show_path(folder)}: {problem}; give the folder a training run wrote "
                        "(its --out)")  # fmt: skip
    path = folder / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{show_path(folder)}: no {METRICS_FILE} here; a run writes it at the "
                        "end of each epoch")  # fmt: skip
    return _run_of(path, label or folder.resolve().name or str(folder))


def _run_of(path: Path, label: str) -> Run:
    records = [r for r in read_metrics(path) if _is_number(r.get("epoch"))]
    if not records:
        raise DataError(f"{show_path(path)}: no records with an 'epoch' to plot (the run has "
                        "not finished an epoch yet?)")  # fmt: skip
    info = read_run_info(path.parent) or {}
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    net_file = info.get("net_file")

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) and v else None

    return Run(path.parent, label, records, network=text(info.get("network")),
               net_file=Path(net_file).name if text(net_file) else None,
               data=text(data.get("name")), loss=text(info.get("loss")))  # fmt: skip


def _split_and_kind(key: str) -> tuple[str, str] | None:
    """("val", "err") of "val_err", ("test", "top5_err") of "test_top5_err"; None for
    fields that are not a split's loss or error (lr, seconds, images_per_s, ...)."""
    split, _, kind = key.partition("_")
    if split in SPLITS and kind in ("loss", "err", "top5_err"):
        return split, kind
    return None


def _name(split: str, kind: str) -> str:
    what = {"loss": "loss", "err": "error (%)", "top5_err": "top-5 error (%)"}[kind]
    return f"{SPLITS[split]} {what}"


def run_series(run: Run) -> list[Series]:
    """Every curve of a run, in drawing order: per epoch the loss and error of each split
    and the learning rate, and within epochs the training loss, error and learning rate.
    Errors are in percent; x is in epochs: epoch E's evaluation at x = E, its training
    loss and error (means over the epoch) at x = E - 0.5, a point within the epoch at
    the end of the steps it averages."""
    out: dict[str, Series] = {}
    for r in run.records:
        epoch = float(r["epoch"])
        for key, value in r.items():
            if not _is_number(value):
                continue
            if key == "lr":
                s = out.setdefault(key, Series(run.label, key, "learning rate", "lr", None,
                                               False))  # fmt: skip
            elif (sk := _split_and_kind(key)) is not None:
                split, kind = sk
                panel = "loss" if kind == "loss" else "error"
                s = out.setdefault(key, Series(run.label, key, _name(split, kind), panel, split,
                                               False))  # fmt: skip
                value = value if kind == "loss" else 100.0 * value
            else:
                continue
            # a training figure is the mean over its epoch: drawn at the epoch's middle
            s.x.append(epoch - 0.5 if s.split == "train" else epoch)
            s.y.append(float(value))
    steps = _step_series(run)
    if any(s.key == "steps.lr" for s in steps):
        out.pop("lr", None)  # the epoch's last rate, joined by straight lines, would mislead
    order = sorted(out.values(), key=lambda s: (PANELS.index(s.panel), list(SPLITS).index(
        s.split) if s.split else 0, s.key))  # fmt: skip
    return steps + order


def _step_series(run: Run) -> list[Series]:
    """The curves within epochs, from each epoch line's "steps" field (lines without
    one, or with a malformed one, add nothing)."""
    made = [Series(run.label, "steps.loss", "train loss", "loss", "train", True),
            Series(run.label, "steps.err", "train error (%)", "error", "train", True),
            Series(run.label, "steps.lr", "learning rate", "lr", None, True)]  # fmt: skip
    for r in run.records:
        st = r.get("steps")
        if not isinstance(st, dict):
            continue
        per, every = st.get("per_epoch"), st.get("every")
        if not (isinstance(per, int) and isinstance(every, int) and per > 0 and every > 0):
            continue
        start = float(r["epoch"]) - 1.0
        for s, scale in zip(made, (1.0, 100.0, 1.0), strict=True):
            values = st.get(s.key.split(".")[1])
            if not isinstance(values, list):
                continue
            for i, v in enumerate(values):
                if _is_number(v):
                    s.x.append(start + min((i + 1) * every, per) / per)
                    s.y.append(float(v) * scale)
    return [s for s in made if s.x]


def _labels(folders: Sequence[Path]) -> list[str]:
    """Each run's name: its folder's name, or more of its path where two names agree."""
    names = [f.resolve().name or str(f) for f in folders]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(str(f)) for f in folders]


def _title(runs: Sequence[Run]) -> str:
    def net(r: Run) -> str:
        parts = [p for p in (r.network, f"({r.net_file})" if r.net_file else None) if p]
        return " ".join(parts)

    if len(runs) == 1:
        r = runs[0]
        epochs = int(max(x["epoch"] for x in r.records))
        bits = [f"run {r.label}"]
        if net(r):
            bits.append(f"network {net(r)}")
        if r.data:
            bits.append(f"data {r.data}")
        bits.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
        return ", ".join(bits)
    nets = {net(r) for r in runs if net(r)}
    head = f"{len(runs)} runs"
    if len(nets) == 1:
        head += f" of network {nets.pop()}"
    return f"{head}: {', '.join(r.label for r in runs)}"


def _loss_label(runs: Sequence[Run]) -> str:
    kinds = {LOSS_NAMES.get(r.loss or "") for r in runs}
    return f"loss ({kinds.pop()})" if len(kinds) == 1 and None not in kinds else "loss"


def plot_runs(folders: Sequence[str | os.PathLike], png_path: str | os.PathLike,
              dpi: int = 100) -> list[Series]:  # fmt: skip
    """Draw the runs in ``folders`` into one figure (loss, error, learning rate) and write
    it to ``png_path`` (atomically; the format is the file's extension). Returns the
    curves drawn. Needs matplotlib (``pip install 'netdsl[plot]'``).

    >>> plot_runs(["runs/lenet5"], "runs/lenet5/metrics.png")  # doctest: +SKIP
    """
    fig, drawn = make_figure(load_runs(folders))
    _save(fig, Path(png_path), dpi)
    return drawn


def load_runs(folders: Sequence[str | os.PathLike]) -> list[Run]:
    """load_run of each folder, each named by its folder's name (more of its path when
    two names agree)."""
    folders = [Path(f) for f in folders]
    return [load_run(f, label) for f, label in zip(folders, _labels(folders), strict=True)]


def plot_metrics(jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> list[Series]:
    """Plot one metrics file (run.json read from its folder when there) into an image.

    >>> plot_metrics("runs/mnist/metrics.jsonl", "runs/mnist/curves.png")  # doctest: +SKIP
    """
    path = Path(jsonl_path)
    fig, drawn = make_figure([_run_of(path, path.parent.resolve().name or "run")])
    _save(fig, Path(png_path), 100)
    return drawn


def _matplotlib():
    try:
        # Figure + Agg canvas, not pyplot: no global figure state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError(
            "plotting metrics needs matplotlib; install it with: pip install 'netdsl[plot]'"
        ) from e
    return FigureCanvasAgg, Figure, Line2D, MaxNLocator


def make_figure(runs: Sequence[Run]) -> tuple[Any, list[Series]]:
    """The figure of ``runs`` (a matplotlib Figure with an Agg canvas: three axes, loss,
    error and learning rate, in that order) and the curves drawn in it."""
    FigureCanvasAgg, Figure, Line2D, MaxNLocator = _matplotlib()
    several = len(runs) > 1
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = dict(zip(PANELS, fig.subplots(1, 3), strict=True))
    drawn: list[Series] = []
    for i, run in enumerate(runs):
        marks = max(float(r["epoch"]) for r in run.records) <= MARK_EPOCHS
        for s in run_series(run):
            ax = axes[s.panel]
            colour = f"C{i % 10}" if several else SPLIT_COLOURS.get(s.split or "", "C3")
            style = SPLIT_STYLES.get(s.split or "", "-") if several else "-"
            if s.key.endswith("top5_err"):
                style = "-." if several else "--"
            if s.panel == "lr" and s.per_step:  # the rate itself, not a noisy estimate
                ax.plot(s.x, s.y, color=colour, lw=1.5, label=None if several else s.name)
            elif s.per_step:
                label = None if several else f"{s.name}, within epochs"
                ax.plot(s.x, s.y, color=colour, lw=0.8, alpha=0.45, label=label)
            else:
                label = None if several else s.name
                # a lone point (the test set evaluated once, after the last epoch) is
                # marked however many epochs there are, or it would not show
                mark = "o" if marks or len(s.x) == 1 else None
                ax.plot(s.x, s.y, color=colour, ls=style, lw=1.8, label=label, marker=mark,
                        ms=4)  # fmt: skip
            drawn.append(s)
    lr_values = [v for s in drawn if s.panel == "lr" for v in s.y if v > 0]
    if lr_values and max(lr_values) >= 10 * min(lr_values):
        axes["lr"].set_yscale("log")
    top = max(float(r["epoch"]) for run in runs for r in run.records)
    for panel in ("loss", "error"):
        _scale_past_the_start(axes[panel], [s for s in drawn if s.panel == panel], top)
    if not several and (per := _steps_per_epoch(runs[0])):
        for ax in axes.values():
            step_axis = ax.secondary_xaxis("top", functions=(lambda e, p=per: e * p,
                                                             lambda t, p=per: t / p))  # fmt: skip
            step_axis.set_xlabel("training step", fontsize="small")
            step_axis.tick_params(labelsize="small")
    top5 = any("top5" in s.key for s in drawn)
    labels = {"loss": _loss_label(runs), "error": "error (%)" if top5 else "top-1 error (%)",
              "lr": "learning rate"}  # fmt: skip
    for panel, ax in axes.items():
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[panel])
        ax.set_xlim(0, top * 1.04)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if not several and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        if not ax.has_data():
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")  # fmt: skip
    if several:
        handles = [Line2D([], [], color=f"C{i % 10}", lw=2, label=r.label)
                   for i, r in enumerate(runs)]  # fmt: skip
        splits = [k for k in SPLITS if any(s.split == k and not s.per_step for s in drawn)]
        handles += [Line2D([], [], color="0.3", ls=SPLIT_STYLES[k], lw=1.8, label=SPLITS[k])
                    for k in splits]  # fmt: skip
        if any("top5" in s.key for s in drawn):
            handles.append(Line2D([], [], color="0.3", ls="-.", lw=1.8, label="top-5 error"))
        if any(s.per_step for s in drawn):
            handles.append(Line2D([], [], color="0.3", lw=0.8, alpha=0.45,
                                  label="train, within epochs"))  # fmt: skip
        fig.legend(handles=handles, loc="outside right center", fontsize="small",
                   title="run / split")  # fmt: skip
    fig.suptitle(_title(runs))
    return fig, drawn


def _steps_per_epoch(run: Run) -> int | None:
    """The run's steps per epoch, when its lines record one (and all the same one)."""
    found = {r["steps"].get("per_epoch") for r in run.records if isinstance(r.get("steps"), dict)}
    if len(found) == 1 and isinstance(p := found.pop(), int) and p > 0:
        return p
    return None


def _scale_past_the_start(ax, series: Sequence[Series], top: float) -> None:
    """Scale the y axis to the points after the run's first START_SHARE when the first
    steps would otherwise squash the rest into the bottom of the panel; a note names
    the highest point left above."""
    ys = [y for s in series for y in s.y]
    later = [y for s in series for x, y in zip(s.x, s.y, strict=True)
             if not s.per_step or x >= START_SHARE * top]  # fmt: skip
    if not ys or not later:
        return
    low, high, high_later = min(0.0, min(ys)), max(ys), max(later)
    span = high_later - low
    if span > 0 and high - low > 1.5 * span:
        ax.set_ylim(low - 0.03 * span, high_later + 0.12 * span)
        ax.annotate(
            f"first steps up to {high:.3g} (above)",
            xy=(0.01, 0.985),
            xycoords="axes fraction",
            ha="left",
            va="top",
            fontsize="small",
            color="0.35",
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )


def _save(fig, path: Path, dpi: int) -> None:
    """Write the figure whole or not at all (netdsl.files): never a partial image."""
    from ..files import atomic_output

    fmt = path.suffix.lower().lstrip(".") or "png"
    with atomic_output(path, what="plot") as f:
        fig.savefig(f, dpi=dpi, format=fmt)
