"""The optimizer over the compiled net's flat parameter and gradient buffers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops import optim


class Optimizer:
    """SGD (momentum, weight decay, Nesterov; Caffe's form) or Adam, with per-layer multipliers."""

    def __init__(self, spec: dict[str, Any], slots, size: int) -> None:
        self.spec = spec
        self.kind = spec["kind"]
        self.segments = optim.make_segments(
            [s.size for s in slots], [s.lr_mult for s in slots], [s.decay_mult for s in slots]
        )
        self.v = np.zeros(size, np.float32)  # (P,) velocity (SGD) or second moment (Adam)
        self.m = np.zeros(size if self.kind == "adam" else 0, np.float32)  # (P,) Adam's first
        self.t = 0  # steps taken

    def step(self, w: np.ndarray, g: np.ndarray, lr: float) -> None:
        """One update of w (P,) from g (P,) at learning rate lr."""
        s = self.spec
        self.t += 1
        if self.kind == "sgd":
            optim.sgd_update(w, g, self.v, *self.segments, float(lr), float(s["momentum"]),
                             float(s["weight_decay"]), bool(s["nesterov"]))  # fmt: skip
        else:
            optim.adam_update(w, g, self.m, self.v, *self.segments, float(lr), float(s["beta1"]),
                              float(s["beta2"]), float(s["eps"]), float(s["weight_decay"]),
                              self.t)  # fmt: skip

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"optim.v": self.v, "optim.m": self.m}

    def load_state(self, arrays: dict[str, np.ndarray], t: int) -> None:
        self.v[...] = arrays["optim.v"]
        if self.m.size:
            self.m[...] = arrays["optim.m"]
        self.t = t
