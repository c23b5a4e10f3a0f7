"""CUDA backend: the plan of netdsl/compiler.py on one GPU, every layer a numba-cuda kernel.

Everything a training run touches lives on the device from compilation to the end: the flat
parameter and gradient buffers (theta, grad), the optimizer state, batch-norm statistics,
every layer's output and output-gradient buffer and every kernel workspace, all allocated
once here. A training step uploads the batch (images, labels, and the dropout keep-masks,
which are drawn on the host so the random stream is the CPU's) and downloads three numbers:
the loss, the top-1 error count and the count of out-of-range labels.

Runners mirror the CPU ones (`*CPURunner` in netdsl/ops/<op>.py) one for one: `x`/`y` are
the input/output device buffers, `dx`/`dy` their gradients, `p`/`g` device views into
theta/grad. Each runner builds its op's CUDA launcher (the `*CUDA` class at the end of each
op's module) at compile time, so launch configurations are fixed once. Activations are
fused into the producing kernel's epilogue (conv, fc, subsample, bn, add); their backward
is one elementwise kernel into a scratch buffer, as on the CPU, except where a pool is the
layer's only reader: the pool's backward then multiplies by act'(y) as it writes
(`_fuse_pool_backward`), one pass fewer. The forward pool is not fused into the conv: its
windows straddle the conv's GEMM tiles (and overlap, in AlexNet), and the conv's output
must be stored for the backward anyway, so fusing would save only the pool's one read of
it.

Kernels queue on the default stream. Per-step uploads (batch, labels, keep-masks) and the
loss download go through pinned staging buffers used in turn (`Staging`), so none of them
makes the host wait: `start_step` returns once the step is queued and `finish_step` waits
for its three numbers. The trainer reads each loss one step late, so the host reads and
augments batch s+1 while the GPU computes step s. `sync()` waits explicitly (for timing).

Runners do their host work (uploads) in `prepare`, and only launch
kernels in `forward` / `backward`, so from the second step on the training step's launches
replay as one CUDA graph (netdsl/backends/cuda_graph.py).
"""

from __future__ import annotations

import numpy as np

from ..compiler import CompiledNet
from ..ir import Layer
from ..ops import add, batchnorm, concat, dropout, loss, lrn, maxout, registry, softmax
from ..ops.activation import ACT_CODE, ActCUDA
from .cuda_graph import StepGraph


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

    def __init__(self, layer: Layer, plan: CudaNet) -> None:
        self.layer = layer
        self.plan = plan
        self.x = [plan.out[n] for n in layer.inputs]  # (N, C, H, W) device arrays
        self.y = plan.out[layer.name]  # (N, C, H, W) device array
        self.p = plan.layer_params(layer.name)  # name -> device view into theta
        self.g = plan.layer_grads(layer.name)  # name -> device view into grad
        kind, slope = layer.attrs.get("activation") or ("linear", 0.0)
        self.act_code = ACT_CODE[kind]
        self.act_slope = float(slope)
        self.fused_act = kind != "linear"
        self.act_op = ActCUDA(self.y.size, kind, slope) if self.fused_act else None
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


class InputRunner(Runner):
    def forward(self, train):
        pass

    def backward(self):
        pass


class ConvRunner(Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        from ..ops.conv import ConvCUDA

        a = layer.attrs
        n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
        self.op = ConvCUDA(n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"], a["dilation"],
                           a["groups"], a["out_hw"], a["bias"], self.act_code, self.act_slope,
                           plan.masks.get(layer.name))  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)

    def backward(self):
        dz = self._act_backward()
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip


class FcRunner(Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        from ..ops.fc import FcCUDA

        c, h, w = layer.in_shapes[0]
        self.op = FcCUDA(plan.batch, c * h * w, layer.out_shape[0], layer.attrs["bias"],
                         self.act_code, self.act_slope)  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)

    def backward(self):
        dz = self._act_backward()
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip


class PoolRunner(Runner):
    takes_producer_act = True  # its backward can apply its producer's act' (below)

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.build()

    def build(self, act: str = "linear", slope: float = 0.0) -> None:
        """The pool's launcher; act: its producer's activation, whose backward it takes over
        (CudaNet._fuse_pool_backward)."""
        from ..ops.pool import PoolCUDA

        a = self.layer.attrs
        c, h, w = self.layer.in_shapes[0]
        self.op = PoolCUDA(self.plan.batch, c, h, w, a["mode"], a["kernel"], a["stride"],
                           a["pad_tl"], a["out_hw"], act, slope)  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.y)

    def backward(self):
        self.op.backward(self.dy, self.dx[0], self.x[0])


class SubsampleRunner(Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        from ..ops.subsample import SubsampleCUDA

        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = SubsampleCUDA(plan.batch, c, h, w, a["kernel"], a["stride"], a["pad_tl"],
                                a["out_hw"], self.act_code, self.act_slope)  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p["bias"], self.y)

    def backward(self):
        dz = self._act_backward()
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g["bias"])  # fmt: skip


class ActRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        # the layer IS the activation, not fused. The base builds an op only for a non-linear
        # one; a standalone `linear` is the identity: its kernel copies y = x and passes the
        # gradient through (act' = 1), as on the CPU.
        kind, slope = layer.attrs.get("activation") or ("linear", 0.0)
        self.op = self.act_op or ActCUDA(self.y.size, kind, slope)
        self.fused_act, self.act_op = False, None

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.dx[0].reshape(-1))


class MaxoutRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.out_shape
        self.op = maxout.MaxoutCUDA(plan.batch, c, h, w, layer.attrs["pieces"])
        self.idx = device_zeros(self.y.size, np.int32)  # (N*C*H*W,) winning piece

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1), self.idx)

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.idx, self.dx[0].reshape(-1))


class LrnRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.out_shape
        self.op = lrn.LrnCUDA(plan.batch, c, h, w, a["size"], a["k"], a["alpha"], a["beta"])
        self.scale = device_zeros(self.y.size)  # (N*C*H*W,) k + alpha * window sum

    def forward(self, train):
        self.op.forward(self.x[0].reshape(-1), self.y.reshape(-1), self.scale)

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.x[0].reshape(-1), self.y.reshape(-1),
                             self.scale, self.dx[0].reshape(-1))  # fmt: skip


class DropoutRunner(Runner):
    """The keep-mask is drawn on the host from the plan's generator (as on the CPU) and sent."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.p_drop = layer.attrs["p"]
        self.op = dropout.DropoutCUDA(self.y.size, self.p_drop)
        self.copy = add.AddCUDA(self.y.size)
        self.mask = np.ones(self.y.shape, np.uint8)  # (N, C, H, W) host copy, 1 = kept
        self.mask_d = _cuda().to_device(self.mask.reshape(-1))  # (N*C*H*W,) on the device
        self.staging = Staging(self.y.shape, np.uint8)

    def prepare(self, train):
        """A training step's keep-mask, drawn on the host and queued for upload (evaluation
        copies x through and needs none)."""
        if train and self.p_drop > 0:
            self.mask = self.staging.next()
            self.mask[...] = self.draw()
            upload(self.mask_d, self.mask.reshape(-1))

    def draw(self) -> np.ndarray:
        return dropout.make_mask(self.plan.rng, self.y.shape, self.p_drop)

    def forward(self, train):
        if train and self.p_drop > 0:
            self.op.forward(self.x[0].reshape(-1), self.mask_d, self.y.reshape(-1))
        else:
            self.copy.copy(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy.reshape(-1), self.mask_d, self.dx[0].reshape(-1))


class BnRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c, h, w = layer.out_shape
        self.op = batchnorm.BnCUDA(plan.batch, c, h * w, layer.attrs["eps"],
                                   layer.attrs["momentum"], self.act_code,
                                   self.act_slope)  # fmt: skip
        self.rm = plan.state[f"{layer.name}.running_mean"]  # (C,) device
        self.rv = plan.state[f"{layer.name}.running_var"]  # (C,) device
        self.no_dx = None  # (N*C*H*W,) allocated on first need

    def forward(self, train):
        x, y = self.x[0].reshape(-1), self.y.reshape(-1)
        if train:
            self.op.forward_train(x, self.p["weight"], self.p["bias"], y, self.rm, self.rv)
        else:
            self.op.forward_eval(x, self.p["weight"], self.p["bias"], self.rm, self.rv, y)

    def backward(self):
        dx = self.dx[0]
        if dx is None:
            if self.no_dx is None:
                self.no_dx = device_zeros(self.y.size)
            dx = self.no_dx
        self.op.backward(self.dy.reshape(-1), self.y.reshape(-1), self.x[0].reshape(-1),
                         self.p["weight"], dx.reshape(-1), self.g["weight"],
                         self.g["bias"])  # fmt: skip


class SoftmaxRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = softmax.SoftmaxCUDA(plan.batch, self.y.size // plan.batch)

    def forward(self, train):
        n = self.plan.batch
        self.op.forward(self.x[0].reshape(n, -1), self.y.reshape(n, -1))

    def backward(self):
        if self.dx[0] is not None:
            n = self.plan.batch
            self.op.backward(self.dy.reshape(n, -1), self.y.reshape(n, -1),
                             self.dx[0].reshape(n, -1))  # fmt: skip


class FlattenRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = add.AddCUDA(self.y.size)

    def forward(self, train):
        self.op.copy(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.copy(self.dy.reshape(-1), self.dx[0].reshape(-1))


class AddRunner(Runner):
    has_dz = True

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = add.AddCUDA(self.y.size, self.act_code, self.act_slope)

    def forward(self, train):
        self.op.forward([x.reshape(-1) for x in self.x], self.y.reshape(-1))

    def backward(self):
        dz = self._act_backward()
        for dx in self.dx:  # d(a + b)/da = 1: every input gets dz
            if dx is not None:
                self.op.copy(dz.reshape(-1), dx.reshape(-1))


class ConcatRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        _, h, w = layer.out_shape
        self.op = concat.ConcatCUDA(plan.batch, [s[0] for s in layer.in_shapes], h * w)

    def forward(self, train):
        self.op.forward([x.reshape(-1) for x in self.x], self.y.reshape(-1))

    def backward(self):
        self.op.backward(self.dy.reshape(-1), [None if d is None else d.reshape(-1)
                                               for d in self.dx])  # fmt: skip


class LossRunner(Runner):
    """Loss and its gradient in one pass; the plan uploads `labels` and reads `op.stats`."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n = plan.batch
        k = int(np.prod(layer.in_shapes[0]))
        self.op = loss.LossCUDA(layer.attrs["kind"], n, k)
        self.dz_own = device_zeros((n, k))  # (N, K) used when dx is not bound

    def forward(self, train):
        n = self.plan.batch
        dz = self.dz_own if self.dx[0] is None else self.dx[0].reshape(n, -1)
        self.op.forward_backward(self.x[0].reshape(n, -1), self.plan.labels_d, dz)

    def backward(self):
        pass  # the gradient was written by forward


def cuda_class(net) -> type:
    """CudaNet, or GroupedCudaNet for a net declaring `gpus N` (N > 1) that can be split."""
    if net.gpus <= 1:
        return CudaNet
    from ..ops.cudakit import say_once
    from .cuda_groups import GroupedCudaNet, unsupported

    reason = unsupported(net)
    if reason is None:
        return GroupedCudaNet
    say_once(f"gpus {net.gpus}: running on one GPU, unsplit ({reason})")
    return CudaNet


class CudaNet(CompiledNet):
    """A CompiledNet whose buffers and kernels are on a CUDA device (see the module doc).

    The public API is the CPU one: params, buffers, set_params, forward, step_grads,
    loss_and_grads and scores take and return NumPy arrays (copied to or from the device).
    theta, grad and state hold DEVICE arrays; netdsl.train.optimizer.Optimizer updates them
    on the device (one kernel), and checkpoints go through params / buffers.
    """

    backend_name = "CUDA"
    device_kind = "cuda"

    def runner_class(self, layer) -> type:
        return registry.of(layer).cuda_runner()

    def _allocate_common(self) -> None:
        """What every CUDA plan keeps on the device besides its layers' buffers."""
        cuda = _cuda()
        _simulator_speedup()
        n = self.batch
        self.theta = cuda.to_device(self.theta)  # (P,) initialised on the host, now on device
        self.grad = device_zeros(self.theta.size)  # (P,)
        self.state = {k: cuda.to_device(v) for k, v in self.state.items()}
        self.labels_d = device_zeros(n, np.int64)  # (N,)
        self._x_staging = Staging((n, *self.net.input.out_shape), np.float32)
        self._labels_staging = Staging(n, np.int64)
        self._stats_staging = Staging(3, np.float64)  # the loss kernel's stats come back here
        self._stats_ready = [cuda.event() for _ in self._stats_staging.slots]
        self._accumulators: dict[int, add.AddCUDA] = {}
        self.step_graph = StepGraph()  # the train step's launches, replayed as a CUDA graph
        self._replayed = False  # the last step was a graph replay

    def _allocate(self) -> None:
        self._allocate_common()
        super()._allocate()  # maps, and gradients sharing memory as on the CPU

    def _zeros(self, shape):
        return device_zeros(shape)

    def _bind(self) -> None:
        super()._bind()
        self._fuse_pool_backward()

    def _fuse_pool_backward(self) -> None:
        """A pool that is the only reader of a layer with a fused activation whose backward is
        a separate elementwise pass (conv / fc / subsample + relu, say; bn applies act' inside
        its own backward kernel) takes over that pass: it writes dz = dx * act'(y) straight
        into the producer's gradient buffer, and the producer skips the pass (read dy and y,
        write dz), its launch and its dz buffer."""
        producers = {r.layer.name: r for r in self.runners}
        for r in self.runners:
            if not getattr(r, "takes_producer_act", False):
                continue
            src = r.layer.inputs[0]
            p = producers.get(src)
            if (
                p is None
                or not p.fused_act
                or not p.has_dz
                or self.consumers[src] != [r.layer.name]
                or r.adds
                or r.dx[0] is None
                or r.dx[0] is not self.dout.get(src)
            ):
                continue
            kind, slope = p.layer.attrs["activation"]
            r.build(kind, slope)
            p.act_in_consumer = True
            p.dz = None  # its dz buffer is the pool's dx now

    # ---- host <-> device
    def _load_input(self, x: np.ndarray) -> int:
        x, n = self._checked_input(x)
        self._x_host = self._x_staging.next()
        self._x_host[:n] = x
        self._x_host[n:] = 0.0
        upload(self.out[self.net.input.name], self._x_host)
        return n

    def _prepare(self, train: bool) -> None:
        """The step's uploads besides the batch: labels, dropout masks."""
        self._upload_labels(train)
        for r in self.runners:
            r.prepare(train)

    def _upload_labels(self, train: bool) -> None:
        if train:
            host = self._labels_staging.next()
            host[...] = self.labels
            upload(self.labels_d, host)

    def _launch_forward(self, train: bool) -> None:
        super()._forward(train)

    def _forward(self, train: bool) -> None:
        self._prepare(train)
        self._launch_forward(train)

    def _launch_train(self) -> None:
        """Every launch of a training step, and nothing else (what a CUDA graph captures)."""
        self._launch_forward(True)
        self._backward()

    def _train_step(self) -> None:
        self._prepare(True)
        self._replayed = self.step_graph.run(self._launch_train)

    def accumulate_into(self, dst, scratch) -> None:
        """dst += scratch on the device (fan-out gradients)."""
        if dst.size not in self._accumulators:  # one launcher per size, built at first use
            self._accumulators[dst.size] = add.AddCUDA(dst.size)
        self._accumulators[dst.size].accumulate(dst.reshape(-1), scratch.reshape(-1))

    def sync(self) -> None:
        """Wait for every queued kernel (for timing)."""
        _cuda().synchronize()

    def forward(self, x: np.ndarray) -> np.ndarray:
        n = self._load_input(x)
        self._forward(train=False)
        last = self._output_layer()
        y = self.out[last.name].copy_to_host()[:n]
        return y.reshape(n, -1) if last.out_shape[1:] == (1, 1) else y

    def _queue_result(self, labels: np.ndarray):
        """Queue the download of the loss kernel's (loss, top-1 errors, bad labels) behind the
        step; the function returned waits for it."""
        host = self._stats_staging.next()
        ready = self._stats_ready[self._stats_staging.i]
        self.loss_runner.op.stats.copy_to_host(host, stream=_cuda().legacy_default_stream())
        ready.record()

        def result() -> tuple[float, int]:
            ready.synchronize()
            value, wrong, bad = host
            if bad:
                k = int(np.prod(self.loss_runner.layer.in_shapes[0]))
                raise ValueError(f"labels must lie in [0, {k}), got "
                                 f"{np.min(labels)}..{np.max(labels)}")  # fmt: skip
            return float(value), int(wrong)

        return result

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray):
        value = self.step_grads(x, labels)
        flat = self.grad.copy_to_host()
        return value, {s.key: self.param_view(s, flat).copy() for s in self.slots}

    def scores(self) -> np.ndarray:
        return self.out[self._output_layer().name].copy_to_host().reshape(self.batch, -1)

    # ---- parameters
    @property
    def params(self) -> dict[str, np.ndarray]:
        flat = self.theta.copy_to_host()
        return {s.key: self.param_view(s, flat).copy() for s in self.slots}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        return {k: v.copy_to_host() for k, v in self.state.items()}

    def set_params(self, params: dict[str, np.ndarray], strict: bool = True) -> None:
        # the CPU logic (checks, table masks) on host copies, then one upload of each buffer
        theta_d, state_d = self.theta, self.state
        self.theta = theta_d.copy_to_host()
        self.state = {k: v.copy_to_host() for k, v in state_d.items()}
        try:
            super().set_params(params, strict)
            theta_d.copy_to_device(self.theta)
            for k, v in state_d.items():
                v.copy_to_device(self.state[k])
        finally:
            self.theta, self.state = theta_d, state_d
