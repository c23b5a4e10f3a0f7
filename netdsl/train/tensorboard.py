"""``netdsl train --tensorboard``: the run's metrics and first-layer filters for TensorBoard.

A TensorBoardLogger is one more log of the trainer (trainer.Trainer.loggers): it gets
every line metrics.jsonl gets and writes the same numbers as TensorBoard scalars,

* ``epoch/<key>`` for each number of an epoch's line (train_loss, test_err, lr, ...),
  at step = the epoch;
* ``step/train_loss``, ``step/train_err``, ``step/lr`` for the curve within the epoch
  (the line's ``"steps"``), at step = the training step counted from the run's start;

and, once per epoch, ``filters/<layer>``: the first conv layer's kernels tiled into one
image (filters_image: the layout of `netdsl show filters`). The writer is tensorboardX,
the optional ``tensorboard`` extra; it is imported only here, and only rank 0 of an MPI
run writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from .paths import check_output_dir, show_path

__all__ = ["EVENTS_GLOB", "TensorBoardLogger", "check_board_dir", "filters_image", "first_conv"]

EVENTS_GLOB = "events.out.tfevents.*"  # the event files a TensorBoard writer names
TILE_PIXELS = 32  # kernels are enlarged (nearest neighbour) to about this size on screen


def _summary_writer() -> type:
    """tensorboardX's SummaryWriter, or a NetdslError (exit 1) naming the extra."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        why = "is not installed" if isinstance(e, ModuleNotFoundError) else f"cannot load ({e})"
        raise NetdslError(f"--tensorboard needs tensorboardX, which {why}; install it with: "
                          "pip install 'netdsl[tensorboard]'") from None  # fmt: skip
    return SummaryWriter


def check_board_dir(path: str | os.PathLike, resume: bool = False,
                    overwrite: bool = False) -> None:  # fmt: skip
    """Check, before any training, that a run can log to ``path``: tensorboardX can be
    imported, ``path`` can be a folder, and a new run does not mix its events with
    another run's (a resumed run continues them; ``overwrite`` replaces them)."""
    _summary_writer()
    path = check_output_dir(path)
    old = sorted(path.glob(EVENTS_GLOB)) if path.is_dir() else []
    if old and not resume and not overwrite:
        raise DataError(f"{show_path(path)}: holds another run's TensorBoard events "
                        f"({old[0].name}{' and more' if len(old) > 1 else ''}); pass "
                        "--overwrite to replace them, or give another folder with "
                        "--tensorboard DIR")  # fmt: skip


def first_conv(cnet) -> tuple[str, np.ndarray] | None:
    """(layer name, host copy of its weight (O, C/groups, kh, kw)) of the net's first layer
    with kernels to show (a 4-D weight, as `netdsl show filters` picks them), None when it
    has none. Copies that one parameter only, from the GPU too."""
    slots = {s.key: s for s in cnet.slots}
    for layer in cnet.net.layers:
        slot = slots.get(f"{layer.name}.weight")
        if slot is not None and len(slot.shape) == 4:
            flat = cnet.theta[slot.offset : slot.offset + slot.size]
            host = flat.copy_to_host() if hasattr(flat, "copy_to_host") else np.array(flat)
            return layer.name, host.reshape(slot.shape)
    return None


def filters_image(weight: np.ndarray) -> np.ndarray:
    """The kernels tiled as `netdsl show filters` tiles them (netdsl/show/grid.py: one
    rescaling for the layer, RGB tiles for 3 input channels), each pixel enlarged so a
    kernel is about TILE_PIXELS wide on screen."""
    from ..show.grid import filter_grid

    k = max(1, TILE_PIXELS // max(weight.shape[2:]))
    return filter_grid(weight).repeat(k, axis=0).repeat(k, axis=1)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class TensorBoardLogger:
    """Writes each metrics line (and the first conv layer's filters) to TensorBoard event
    files in ``logdir``; with ``overwrite`` the event files already there go first."""

    def __init__(self, logdir: str | os.PathLike, cnet, overwrite: bool = False):
        writer_class = _summary_writer()
        self.logdir = Path(logdir)
        if overwrite:
            for old in self.logdir.glob(EVENTS_GLOB):
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{show_path(self.logdir)}: cannot create the TensorBoard folder: "
                            f"{e.strerror or e}") from None  # fmt: skip
        self.cnet = cnet
        # the writer names its file by the second and the host: a run resumed within the
        # same second would replace the first file, so each writer adds its own suffix
        self.writer = writer_class(logdir=str(self.logdir),
                                   filename_suffix=f".{secrets.token_hex(4)}")  # fmt: skip

    def write(self, record: Mapping[str, Any]) -> None:
        """Log one metrics line: its numbers, its curve within the epoch, the filters."""
        epoch = record.get("epoch")
        if not _is_number(epoch):
            return
        epoch = int(epoch)
        w = self.writer
        for key, value in record.items():
            if key != "epoch" and _is_number(value):
                w.add_scalar(f"epoch/{key}", value, epoch)
        steps = record.get("steps")
        if isinstance(steps, Mapping) and _is_number(steps.get("per_epoch")):
            start = (epoch - 1) * int(steps["per_epoch"])
            every = int(steps.get("every") or 1)
            for key, tag in (("loss", "train_loss"), ("err", "train_err"), ("lr", "lr")):
                for i, value in enumerate(steps.get(key) or []):
                    if _is_number(value):
                        step = start + min((i + 1) * every, int(steps["per_epoch"]))
                        w.add_scalar(f"step/{tag}", value, step)
        if self.cnet is not None and (conv := first_conv(self.cnet)) is not None:
            name, weight = conv
            grid = filters_image(weight)
            w.add_image(f"filters/{name}", grid.astype(np.float32), epoch,
                        dataformats="HWC" if grid.ndim == 3 else "HW")  # fmt: skip
        w.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
