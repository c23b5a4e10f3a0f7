"""Learning-rate schedules: constant, step, multistep, exponential, poly, cosine, plateau.

Epoch-wise schedules change the rate at epoch boundaries; poly and cosine decay
smoothly per step. `plateau` is AlexNet's rule: divide the rate by 10 (factor 0.1)
when the validation error has not improved for `patience` epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Schedule:
    """lr(epoch, progress) for a schedule spec from the train section."""

    spec: dict[str, Any]
    base_lr: float
    epochs: int
    # plateau state, checkpointed with the run
    state: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state.setdefault("scale", 1.0)
        self.state.setdefault("best", math.inf)
        self.state.setdefault("bad_epochs", 0)

    def lr(self, epoch: int, progress: float = 0.0) -> float:
        """The rate for 0-based `epoch`, `progress` in [0, 1) through that epoch."""
        s, lr0 = self.spec, self.base_lr
        kind = s["kind"]
        if kind == "constant":
            return lr0
        if kind == "step":
            return lr0 * s["gamma"] ** (epoch // s["step_size"])
        if kind == "multistep":
            return lr0 * s["gamma"] ** sum(1 for m in s["milestones"] if epoch >= m)
        if kind == "exponential":
            return lr0 * s["gamma"] ** epoch
        t = min(1.0, (epoch + progress) / max(1, self.epochs))
        if kind == "poly":
            return lr0 * (1.0 - t) ** s["power"]
        if kind == "cosine":
            return s["min_lr"] + (lr0 - s["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * t))
        if kind == "plateau":
            return max(s["min_lr"], lr0 * self.state["scale"])
        raise ValueError(f"unknown schedule {kind}")

    def observe(self, val_error: float) -> bool:
        """Feed an epoch's validation error; True when a plateau schedule cut the rate."""
        if self.spec["kind"] != "plateau":
            return False
        st = self.state
        if val_error < st["best"] - self.spec["threshold"]:
            st["best"], st["bad_epochs"] = val_error, 0
            return False
        st["bad_epochs"] += 1
        if st["bad_epochs"] >= self.spec["patience"]:
            st["scale"] *= self.spec["factor"]
            st["bad_epochs"] = 0
            return True
        return False
