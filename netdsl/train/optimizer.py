"""The optimizer over the compiled net's flat parameter and gradient buffers.

On a CUDA net (device="cuda") theta and grad are device arrays: the optimizer state lives on
the device too and a step is one kernel launch (netdsl.ops.optim.OptimCUDA). A grouped net
spread over several devices shards theta and grad by owner
(netdsl.backends.cuda_devices.ShardedBuffer): pass it as `like` and the state is sharded the
same way, one kernel per device. SGD and Adam are elementwise, so the result is the same.
On the CPU an update of at least optim.PARALLEL_MIN_PARAMS parameters runs on the layers'
thread count (NUMBA_NUM_THREADS), each thread on a fixed slice: the same bits as one thread.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from .. import buffers
from ..background import WaitsFirst
from ..ops import optim


class Optimizer:
    """SGD (momentum, weight decay, Nesterov; Caffe's form) or Adam, with per-layer multipliers."""

    def __init__(self, spec: dict[str, Any], slots, size: int, device: str = "cpu",
                 like: Any = None) -> None:  # fmt: skip
        """`like`: the net's theta; when it is sharded over devices, so is the state."""
        self.spec = spec
        self.kind = spec["kind"]
        self.device = device
        self.segments = optim.make_segments(
            [s.size for s in slots], [s.lr_mult for s in slots], [s.decay_mult for s in slots]
        )
        self._touching = None  # the thread touching the state's pages (_touch_in_thread)
        # (P,) velocity (SGD) or second moment (Adam); Adam's first; huge pages when large
        self.v = buffers.zeros(size)
        self.m = buffers.zeros(size if self.kind == "adam" else 0)
        self.t = 0  # steps taken
        self._gpu = None
        self._shards = None  # per device: (domain, OptimCUDA over that device's shard)
        self._workers, self._slices = None, []  # CPU: threads, each one's slice of segments
        if device == "cpu" and size >= TOUCH_MIN_PARAMS:
            self._touching = _touch_in_thread([self._v, self._m])
        if device == "cpu" and size >= optim.PARALLEL_MIN_PARAMS:
            from ..ops.conv import Workers, num_threads

            nt = num_threads()
            if nt > 1:
                self._workers = Workers(nt)
                self._slices = optim.split_segments(self.segments, size, nt)
        if device == "cuda" and hasattr(like, "shards"):
            self.v = like.zeros_like()
            if self.kind == "adam":
                self.m = like.zeros_like()
            self._shards = []
            for d, ranges in enumerate(like.ranges):
                if ranges:
                    with like.devices.on(d):
                        op = optim.OptimCUDA(like.shards[d].size,
                                             _shard_segments(slots, ranges))  # fmt: skip
                    self._shards.append((d, op))
            self._devices = like.devices
        elif device == "cuda":
            from numba import cuda

            self._gpu = optim.OptimCUDA(size, self.segments)
            self.v, self.m = cuda.to_device(self.v), cuda.to_device(self.m)

    # The state, once its pages are touched (every use, reading or writing, waits for that).
    v = WaitsFirst("_touched", "_touching")
    m = WaitsFirst("_touched", "_touching")

    def _touched(self) -> None:
        """Wait for the thread touching the state's pages (it only writes zeros over zeros:
        no one may write the state before it is through)."""
        thread, self._touching = self._touching, None
        if thread is not None:
            thread.join()

    def step(self, w: np.ndarray, g: np.ndarray, lr: float) -> None:
        """One update of w (P,) from g (P,) at learning rate lr."""
        self.t += 1
        if self._shards is not None:  # w, g: ShardedBuffers, one kernel per device
            for d, op in self._shards:
                with self._devices.on(d):
                    m = self.m.shards[d] if self.kind == "adam" else None
                    self._gpu_step(op, w.shards[d], g.shards[d], m, self.v.shards[d], lr)
            return
        if self._gpu is not None:  # w, g: device arrays
            self._gpu_step(self._gpu, w, g, self.m, self.v, lr)
            return
        s = self.spec
        # Threads take fixed slices of the buffers (see optim.split_segments): elementwise, so
        # the same bits as one call, whatever the thread count.
        threaded = self._workers is not None and w.size == self.v.size
        parts = self._slices if threaded else [self.segments]
        if self.kind == "sgd":
            hyper = (float(lr), float(s["momentum"]), float(s["weight_decay"]),
                     bool(s["nesterov"]))  # fmt: skip
            jobs = [(w, g, self.v, *seg, *hyper) for seg in parts]
            fn = optim.sgd_update
        else:
            hyper = (float(lr), float(s["beta1"]), float(s["beta2"]), float(s["eps"]),
                     float(s["weight_decay"]), self.t)  # fmt: skip
            jobs = [(w, g, self.m, self.v, *seg, *hyper) for seg in parts]
            fn = optim.adam_update
        if threaded:
            self._workers.run(fn, jobs)
        else:
            fn(*jobs[0])

    def _gpu_step(self, op: optim.OptimCUDA, w, g, m, v, lr: float) -> None:
        s = self.spec
        if self.kind == "sgd":
            op.sgd(w, g, v, lr, s["momentum"], s["weight_decay"], s["nesterov"])
        else:
            op.adam(w, g, m, v, lr, s["beta1"], s["beta2"], s["eps"], s["weight_decay"], self.t)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state as host arrays (copies from the device on CUDA)."""
        if self._gpu is not None or self._shards is not None:
            m = self.m.copy_to_host() if self.m.size else np.zeros(0, np.float32)
            return {"optim.v": self.v.copy_to_host(), "optim.m": m}
        return {"optim.v": self.v, "optim.m": self.m}

    def load_state(self, arrays: dict[str, np.ndarray], t: int) -> None:
        if self._gpu is not None or self._shards is not None:
            self.v.copy_to_device(np.ascontiguousarray(arrays["optim.v"], np.float32))
            if self.m.size:
                self.m.copy_to_device(np.ascontiguousarray(arrays["optim.m"], np.float32))
        else:
            self.v[...] = arrays["optim.v"]
            if self.m.size:
                self.m[...] = arrays["optim.m"]
        self.t = t


# A zeroed buffer's first touch costs a page fault per page (or huge page): AlexNet's 244 MB
# of SGD velocity took 0.4-0.5 s of its first update here, against 0.06 s for a later one.
# From this size on, a thread touches the state's pages while the first step's forward and
# backward run (the first update waits for it, as every other use of the state does).
TOUCH_MIN_PARAMS = 1 << 22


def _touch_in_thread(arrays: list[np.ndarray]):
    """A started thread writing 0.0 into one element per 4 KiB page of each (zeroed,
    float32, contiguous) array: the values stay zero, the pages become resident."""
    import threading

    def touch() -> None:
        for a in arrays:
            flat = a.reshape(-1)
            for lo in range(0, flat.size, 1 << 22):  # 16 MiB at a time (NumPy drops the GIL)
                flat[lo : lo + (1 << 22) : 1024] = 0.0

    thread = threading.Thread(target=touch, name="netdsl-touch", daemon=True)
    thread.start()
    return thread


def _shard_segments(slots, ranges) -> optim.Segments:
    """Segments of a shard made of the canonical `ranges`, back to back: one per piece of a
    range inside one slot, with that slot's multipliers."""
    starts = [s.offset for s in slots]
    sizes, lr, decay = [], [], []
    for a, b in ranges:
        i = bisect.bisect_right(starts, a) - 1
        while a < b:
            s = slots[i]
            end = min(b, s.offset + s.size)
            sizes.append(end - a)
            lr.append(s.lr_mult)
            decay.append(s.decay_mult)
            a, i = end, i + 1
    return optim.make_segments(sizes, lr, decay)
