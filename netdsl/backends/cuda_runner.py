"""The base of the CUDA runners (each op's `*CUDARunner`, in netdsl/ops/<op>.py) and the
device helpers they share: pinned staging buffers, the upload stream, zeroed arrays.

See netdsl/backends/cuda.py for what a runner does on the device, why uploads happen in
`prepare`, and how the upload stream (:class:`Uploads`) overlaps them with the kernels.
numba.cuda is imported on first use, never by importing this module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import numpy as np

from ..ir import Layer

# Where `upload` sends a copy while a plan queues its step's uploads (`uploading`): the plan's
# upload stream. A context variable, not an argument, because the runners that upload (dropout
# in netdsl/ops/) call `upload(dst, host)` and know nothing of streams.
_PUT: contextvars.ContextVar[Callable[[object, np.ndarray], None] | None] = contextvars.ContextVar(
    "netdsl_upload_put", default=None
)


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
    """Queue dst <- host (pinned) without waiting: on the plan's upload stream while the plan
    queues a step's uploads (`uploading`), else on the current device's default stream."""
    put = _PUT.get()
    if put is None:
        dst.copy_to_device(host, stream=_cuda().legacy_default_stream())
    else:
        put(dst, host)


@contextlib.contextmanager
def uploading(put: Callable[[object, np.ndarray], None]) -> Iterator[None]:
    """Within the block, `upload(dst, host)` calls put(dst, host) (a plan's Uploads.put)."""
    token = _PUT.set(put)
    try:
        yield
    finally:
        _PUT.reset(token)


def numba_simulator() -> bool:
    """numba.cuda really is the CUDA simulator. Not cudakit.simulator(): benchmarks/gpu_static.py
    and `compile --emit` make that say False, to build the GPU's tile configs in the simulator,
    whose event and stream API stays the simulator's."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def _event():
    """An event for ordering only (no timing: cheaper to record and wait on)."""
    return _cuda().event() if numba_simulator() else _cuda().event(timing=False)


def upload_stream():
    """A stream for uploads that does NOT synchronise with the legacy default stream (the
    kernels' stream): Numba's `cuda.stream()` creates a blocking one, whose copies would wait
    for every queued kernel and hold up every later one. The simulator's streams are
    synchronous, so there `cuda.stream()` serves."""
    from ..ops.cudakit import say_once

    cuda = _cuda()
    if numba_simulator():
        return cuda.stream()
    try:  # numba-cuda's own Context.create_stream, with the non-blocking flag
        from numba.cuda.cudadrv import driver as drv

        flags = drv.binding.CUstream_flags.CU_STREAM_NON_BLOCKING.value
        handle = drv.driver.cuStreamCreate(flags)
        deallocs = cuda.current_context().deallocations
        return drv.Stream(handle, finalizer=drv._stream_finalizer(deallocs, handle))
    except Exception as e:  # an older or newer numba-cuda: a blocking stream is still correct
        say_once(f"no non-blocking upload stream ({type(e).__name__}: {e}); uploads wait "
                 "for the queued kernels")  # fmt: skip
        return cuda.stream()


class Uploads:
    """One device's per-step uploads: copied on a stream of their own while the kernels of the
    step before run, then landed on the kernels' stream (see netdsl/backends/cuda.py).

    put(dst, host) queues host -> a landing buffer of dst's on the upload stream; land() makes
    the kernels' stream (the legacy default stream) wait for those copies and copy each
    landing buffer into its dst, device to device. Every dst has two landing buffers used in
    turn (one per step), so the copy of step s+1 never writes a buffer step s still reads,
    and the upload stream waits for the event recorded after the landing copies of step s-1
    before it writes the same buffers again. The host never waits.
    """

    def __init__(self, slots: int = 2) -> None:
        self.stream = upload_stream()
        self.copied = [_event() for _ in range(slots)]  # upload stream: slot's copies done
        self.landed = [_event() for _ in range(slots)]  # kernels' stream: slot read out
        self.slot = 0
        self.open = False  # a step's copies are being queued
        self.buffers: dict[int, tuple[object, list]] = {}  # id(dst) -> (dst, landing buffers)
        self.pending: list[tuple[object, object]] = []  # (dst, landing buffer) to land
        self.h2d = 0  # host-to-device copies queued so far

    def put(self, dst, host: np.ndarray) -> None:
        """Queue dst <- host (pinned) on the upload stream, into this step's landing buffer."""
        cuda = _cuda()
        if not self.open:  # the step's first copy: its slot must be free of step s-2's data
            self.slot = (self.slot + 1) % len(self.copied)
            self.landed[self.slot].wait(self.stream)
            self.open = True
        if id(dst) not in self.buffers:  # kept with dst, so the id stays dst's
            self.buffers[id(dst)] = (dst, [cuda.device_array(dst.shape, dst.dtype)
                                           for _ in self.copied])  # fmt: skip
        buf = self.buffers[id(dst)][1][self.slot]
        buf.copy_to_device(np.ascontiguousarray(host).reshape(dst.shape), stream=self.stream)
        self.pending.append((dst, buf))
        self.h2d += 1

    def land(self) -> None:
        """On the kernels' stream: wait for the step's copies, move them into place."""
        if not self.open:
            return
        compute = _cuda().legacy_default_stream()
        self.copied[self.slot].record(self.stream)
        self.copied[self.slot].wait(compute)
        for dst, buf in self.pending:
            dst.copy_to_device(buf, stream=compute)
        self.landed[self.slot].record(compute)
        self.pending.clear()
        self.open = False


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
