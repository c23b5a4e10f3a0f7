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

Streams. Kernels queue on the legacy default stream (the kernels' stream); the per-step
uploads (the batch, the labels, the dropout keep-masks) go on an upload stream of their own,
one per device, created non-blocking so that it never synchronises with the kernels' stream
(`Uploads` in netdsl/backends/cuda_runner.py). For step s+1:

1. the host fills pinned staging buffers (`Staging`, two used in turn) and queues each copy
   on the upload stream into a *landing* buffer on the device, slot (s+1) % 2 of two. First
   the upload stream waits for the event `landed` of that slot, recorded on the kernels'
   stream when step s-1 moved it out, so a copy never overwrites data not yet used;
2. after the last copy the upload stream records the event `copied`; the kernels' stream
   waits for it, copies each landing buffer into the buffer the kernels read (device to
   device: ~4 TB/s against PCIe's ~50 GB/s), and records `landed`;
3. then the step's launches (eagerly, or one CUDA-graph replay) and the loss download.

The trainer queues step s+1 before it reads step s's loss (`start_step` / `finish_step`),
so the batch crosses PCIe while step s's kernels run, and the host never waits for a copy.
The kernels only ever read buffers that the kernels' stream itself wrote, which is what
keeps the overlap free of races and lets a CUDA graph, captured with the fixed buffers,
replay unchanged. The price is one device-to-device copy per upload and two landing buffers
per uploaded buffer. The loss download goes through pinned staging buffers too: `finish_step`
waits for its three numbers only. `sync()` waits explicitly (for timing).

With `gpus N` the input is uploaded once per physical device, into one buffer that the
logical GPUs on that device share and read in place (netdsl/backends/cuda_groups.py).
For AlexNet at batch 128 the batch is 79 MB: about 1.6 ms over PCIe, now beside the step,
against about 40 us for its landing copy on the kernels' stream (estimates from the link's
and the memory's bandwidth, not measured here).

Numba's CUDA simulator runs every copy the moment it is queued, so tests/test_cuda_stream.py
checks the order of the copies, event records and waits the plan issues, and replays them
through a model of two streams that run apart (the copies as early as they may, or the
kernels), in which a missing wait gives the wrong losses.

Runners do their host work (uploads) in `prepare`, and only launch
kernels in `forward` / `backward`, so from the second step on the training step's launches
replay as one CUDA graph (netdsl/backends/cuda_graph.py).
"""

from __future__ import annotations

import numpy as np

from ..compiler import CompiledNet
from ..ops import activations, add, registry
from .cuda_graph import StepGraph
from .cuda_runner import (  # noqa: F401 - the runner base and helpers, as before
    Runner,
    Staging,
    Uploads,
    _cuda,
    _simulator_speedup,
    device_zeros,
    upload,
    uploading,
)


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
        self.uploads = [Uploads()]  # per device: the upload stream (domain 0's, in a group)
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
            if not getattr(r, "takes_producer_act", False):  # a pool
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
            act = p.layer.attrs["activation"]
            r.build(act[0], activations.kernel_params(act))
            p.act_in_consumer = True
            p.dz = None  # its dz buffer is the pool's dx now

    # ---- host <-> device
    def _load_input(self, x: np.ndarray) -> int:
        x, n = self._checked_input(x)
        self._x_host = self._x_staging.next()
        self._x_host[:n] = x
        self._x_host[n:] = 0.0
        self._upload_input(self._x_host)
        return n

    def _upload_input(self, host: np.ndarray) -> None:
        """Queue the batch's upload (once per device, in a group)."""
        self._put(self.out[self.net.input.name], host)

    def _put(self, dst, host: np.ndarray) -> None:
        """Queue dst <- host on the upload stream of the device whose context is current."""
        self.uploads[self._domain()].put(dst, host)

    def _domain(self) -> int:
        return 0

    def _prepare(self, train: bool) -> None:
        """The step's uploads besides the batch (labels, dropout masks), then every queued
        upload landed on the kernels' stream: what the step's launches read is in place."""
        self._upload_labels(train)
        with uploading(self._put):
            self._prepare_runners(train)
        self._land()

    def _prepare_runners(self, train: bool) -> None:
        for r in self.runners:
            r.prepare(train)

    def _land(self) -> None:
        self.uploads[0].land()

    def _upload_labels(self, train: bool) -> None:
        if train:
            host = self._labels_staging.next()
            host[...] = self.labels
            self._put(self.labels_d, host)

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
