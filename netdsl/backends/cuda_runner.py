"""The base of the CUDA runners (each op's `*CUDARunner`, in netdsl/ops/<op>.py) and the
device helpers they share: pinned staging buffers, uploads without waiting, zeroed arrays.

See netdsl/backends/cuda.py for what a runner does on the device and why uploads happen in
`prepare`. numba.cuda is imported on first use, never by importing this module.
"""

from __future__ import annotations

import numpy as np

from ..ir import Layer


def _cuda():
    from numba import cuda

    return cuda


def _simulator_speedup() -> None:
    """Under Numba's CUDA simulator, swap its polling barrier for a real one (same semantics,
    several times faster; netdsl.ops.cudakit.fast_simulator_barrier)."""
    from ..ops.cudakit import fast_simulator_barrier, simulator

    if simulator():
        fast_simulator_barrier()


class Staging:
    """Pinned host buffers for one upload (or download), used in turn.

    A copy queued from one slot may still be waiting behind the running step while the host
    fills the next: with start_step / finish_step at most one step runs unfinished, so two
    slots never collide. Copies from pinned memory are asynchronous (from pageable memory a
    copy waits for the device first), which is what lets the next batch's host work overlap
    the current step's kernels.
    """

    def __init__(self, shape, dtype, slots: int = 2) -> None:
        self.slots = [_cuda().pinned_array(shape, dtype) for _ in range(slots)]
        self.i = 0

    def next(self) -> np.ndarray:
        self.i = (self.i + 1) % len(self.slots)
        return self.slots[self.i]


def upload(dst, host: np.ndarray) -> None:
    """Queue dst <- host (pinned) on the current device's default stream, without waiting."""
    dst.copy_to_device(host, stream=_cuda().legacy_default_stream())


def device_zeros(shape, dtype=np.float32):
    """A zero-filled device array (device_array leaves memory uninitialised)."""
    return _cuda().to_device(np.zeros(shape, dtype))


class Runner:
    """Base runner: device buffers and views, the fused activation's backward."""

    def __init__(self, layer: Layer, plan) -> None:
        self.layer = layer
        self.plan = plan
        self.x = [plan.out[n] for n in layer.inputs]  # (N, C, H, W) device arrays
        self.y = plan.out[layer.name]  # (N, C, H, W) device array
        self.p = plan.layer_params(layer.name)  # name -> device view into theta
        self.g = plan.layer_grads(layer.name)  # name -> device view into grad
        from ..ops import activations
        from ..ops.activation import ACT_CODE, ActCUDA  # whose module defines a runner on this

        act = layer.attrs.get("activation") or ("linear", 0.0)
        kind, values = act[0], activations.params_of(act)
        self.act_code = ACT_CODE[kind]
        self.act_params = activations.kernel_params(act)  # (p0, p1) floats
        self.fused_act = kind != "linear"
        self.act_op = ActCUDA(self.y.size, kind, values) if self.fused_act else None
        self.dz = device_zeros(self.y.shape) if self.fused_act and self.has_dz else None

    has_dz = False  # runners whose backward needs dz = dy * act'(y) in a buffer of its own
    dx: list
    dy: object

    def prepare(self, train: bool) -> None:
        """Host work before the step's launches (uploads); forward and backward only launch,
        so that a step can be captured as a CUDA graph (netdsl/backends/cuda_graph.py)."""

    def forward(self, train: bool) -> None:
        raise NotImplementedError

    def backward(self) -> None:
        raise NotImplementedError

    act_in_consumer = False  # the only reader (a pool) returns dy already through act'

    def _act_backward(self):
        """The gradient before the fused activation (into self.dz), or dy itself."""
        if not self.fused_act or self.act_in_consumer:
            return self.dy
        self.act_op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.dz.reshape(-1))
        return self.dz


class LinearMapRunner(Runner):
    """A layer whose launcher `op` computes y = act(W x + b) and, backward, dx, dW and db from
    dz (conv, fc): the runner only binds the plan's buffers to it."""

    has_dz = True
    op: object  # set by the subclass: ConvCUDA or FcCUDA

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)

    def backward(self):
        dz = self._act_backward()
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip


class SourceRunner(Runner):
    """The network's input: the plan uploads its output buffer; nothing to launch."""

    def forward(self, train):
        pass

    def backward(self):
        pass
