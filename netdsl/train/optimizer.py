"""The optimizer over the compiled net's flat parameter and gradient buffers.

On a CUDA net (device="cuda") theta and grad are device arrays: the optimizer state lives on
the device too and a step is one kernel launch (netdsl.ops.optim.OptimCUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops import optim


class Optimizer:
    """SGD (momentum, weight decay, Nesterov; Caffe's form) or Adam, with per-layer multipliers."""

    def __init__(self, spec: dict[str, Any], slots, size: int, device: str = "cpu") -> None:
        self.spec = spec
        self.kind = spec["kind"]
        self.device = device
        self.segments = optim.make_segments(
            [s.size for s in slots], [s.lr_mult for s in slots], [s.decay_mult for s in slots]
        )
        self.v = np.zeros(size, np.float32)  # (P,) velocity (SGD) or second moment (Adam)
        self.m = np.zeros(size if self.kind == "adam" else 0, np.float32)  # (P,) Adam's first
        self.t = 0  # steps taken
        self._gpu = None
        if device == "cuda":
            from numba import cuda

            self._gpu = optim.OptimCUDA(size, self.segments)
            self.v, self.m = cuda.to_device(self.v), cuda.to_device(self.m)

    def step(self, w: np.ndarray, g: np.ndarray, lr: float) -> None:
        """One update of w (P,) from g (P,) at learning rate lr."""
        s = self.spec
        self.t += 1
        if self._gpu is not None:  # w, g: device arrays
            if self.kind == "sgd":
                self._gpu.sgd(w, g, self.v, lr, s["momentum"], s["weight_decay"], s["nesterov"])
            else:
                self._gpu.adam(w, g, self.m, self.v, lr, s["beta1"], s["beta2"], s["eps"],
                               s["weight_decay"], self.t)  # fmt: skip
            return
        if self.kind == "sgd":
            optim.sgd_update(w, g, self.v, *self.segments, float(lr), float(s["momentum"]),
                             float(s["weight_decay"]), bool(s["nesterov"]))  # fmt: skip
        else:
            optim.adam_update(w, g, self.m, self.v, *self.segments, float(lr), float(s["beta1"]),
                              float(s["beta2"]), float(s["eps"]), float(s["weight_decay"]),
                              self.t)  # fmt: skip

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state as host arrays (copies from the device on CUDA)."""
        if self._gpu is not None:
            m = self.m.copy_to_host() if self.m.size else np.zeros(0, np.float32)
            return {"optim.v": self.v.copy_to_host(), "optim.m": m}
        return {"optim.v": self.v, "optim.m": self.m}

    def load_state(self, arrays: dict[str, np.ndarray], t: int) -> None:
        if self._gpu is not None:
            self.v.copy_to_device(np.ascontiguousarray(arrays["optim.v"], np.float32))
            if self.m.size:
                self.m.copy_to_device(np.ascontiguousarray(arrays["optim.m"], np.float32))
        else:
            self.v[...] = arrays["optim.v"]
            if self.m.size:
                self.m[...] = arrays["optim.m"]
        self.t = t
