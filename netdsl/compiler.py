"""Lower a checked Network to an execution plan and run it: forward, backward, update.

The plan, in order:
  1. lay out every trainable tensor in ONE flat float32 buffer (and its gradient in
     another), so the optimizer update is one kernel over one array;
  2. allocate every layer's output and output-gradient buffer once, for a fixed batch
     (on the CPU a standalone activation that alone reads its producer is folded into
     it: the two share both buffers, _activation_folds);
  3. decide where each backward writes its input gradient: straight into the
     producer's gradient buffer when the producer has one consumer, else into a
     scratch buffer that is then added (residual fan-out; all scratch buffers are views
     of one array, as only one layer's are in use at a time);
  4. bind a runner per layer, the one its layer type names for this backend (the CPU's
     here; netdsl/backends/cuda.py's CudaNet subclass keeps every buffer on the GPU).
The plan imports no backend: netdsl.backends.compile_network picks the class for a device.
`NETDSL_DEBUG=1` prints the plan.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import buffers
from .background import WaitsFirst
from .errors import NetError
from .init import InitInThread, init_params
from .ir import Network
from .ops import registry


@dataclass
class Slot:
    """Where one parameter tensor lives in the flat buffers."""

    key: str  # "<layer>.weight"
    layer: str
    shape: tuple[int, ...]
    offset: int
    size: int
    lr_mult: float
    decay_mult: float


class CompiledNet:
    """A network compiled for a device and a batch size.

    >>> net = netdsl.compile("nets/lenet5.net", device="cpu", batch=64, seed=0)
    >>> y = net.forward(x)                           # (N, 10) scores, eval mode
    >>> loss, grads = net.loss_and_grads(x, labels)  # train mode

    ``netdsl.backends.compile_network(net, device="cuda")`` (or "auto" with a GPU present)
    builds the CUDA subclass, netdsl.backends.cuda.CudaNet, with the same API.
    """

    backend_name = "CPU"
    device_kind = "cpu"  # the device this class runs on (CudaNet: "cuda")
    fold_activations = True  # fold standalone activations into their producers (CPU only)

    def __init__(self, net: Network, device: str = "cpu", batch: int | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        if device != self.device_kind:  # "auto" and the choice of class: compile_network
            raise ValueError(
                f"{type(self).__name__} runs on {self.device_kind}, not {device!r}: "
                f"use netdsl.backends.compile_network(net, device={device!r})"
            )
        self.net = net
        self.device = device
        self.batch = int(batch or net.train["batch"])
        self.seed = seed
        self.rng = np.random.default_rng(seed)  # dropout masks
        self.labels = np.zeros(self.batch, np.int64)
        self._pending: list = []  # results of queued training steps (start_step)
        self._init: InitInThread | None = None  # the parameters' drawing while under way
        self._layout()
        self.masks = _table_masks(net)
        ahead_first = self.device_kind == "cpu"  # CudaNet's _allocate uploads the weights
        if not ahead_first:
            init_params(net, self.slots, self.theta, np.random.default_rng(seed), self.masks)
        # CPU: the drawing goes on in a thread while this one binds, loads or compiles kernels
        # (AlexNet: 61 M draws, 0.65 s); the forward waits for each layer's parameters, theta
        # and runners for all of them. It starts after the fork of the compile-ahead helper
        # (no thread may run across a fork), or before the binding (0.1-0.3 s sooner: the op
        # modules' imports, numba's among them) where no helper will be forked
        draw_now = ahead_first and self._no_helper_first()
        if draw_now:
            self._draw_params()
        self._allocate()
        self._bind()
        if not draw_now:
            self._start_compile_ahead()
        if ahead_first and not draw_now:
            self._draw_params()
        if os.environ.get("NETDSL_DEBUG"):
            print(self.describe(), file=sys.stderr)

    # ---- compile ahead (netdsl/compile_ahead.py): a cold CPU start compiles on the idle cores
    def _start_compile_ahead(self) -> None:
        """Fork the helpers that compile kernels ahead into the cache (CPU plans)."""
        self.ahead = None  # compile_ahead.Ahead: what became of the helper (tests read it)
        self._ahead_pending = False  # the first training step has yet to end it
        if self.device_kind == "cpu":
            import weakref

            from .compile_ahead import start

            self.ahead = start(self)
            self._ahead_pending = True
            weakref.finalize(self, self.ahead.kill)  # never outlive the plan (eval-only use)

    def _no_helper_first(self) -> bool:
        """Before the binding: True where no helper will be forked (compile_ahead.no_helper:
        turned off, unsafe, or this net compiled before); self.ahead then says why."""
        from .compile_ahead import no_helper

        self.ahead = no_helper(self)
        self._ahead_pending = self.ahead is not None  # the first step marks the net warm
        return self.ahead is not None

    def _draw_params(self) -> None:
        """Start drawing the parameters in a thread (the runners hold views of theta)."""
        self._init = InitInThread(self.net, self.slots, self._theta,
                                  np.random.default_rng(self.seed), self.masks)  # fmt: skip

    # ---- the parameters, drawn in a thread on the CPU (InitInThread)
    # theta (P,): every trainable parameter in one flat buffer; runners: the layers' runners in
    # forward order. Both are read only once all parameters are drawn.
    theta = WaitsFirst("_wait_init", "_init")
    runners = WaitsFirst("_wait_init", "_init")

    def _wait_init(self, layer: str | None = None) -> None:
        """Wait until `layer`'s parameters (None: all) are drawn."""
        init = self._init
        if init is not None and init.wait_for(layer):
            self._init = None  # all drawn: nothing to wait for any more

    # ---- planning
    def _layout(self) -> None:
        slots, offset = [], 0
        for layer in self.net.layers:
            for pname, shape in layer.params.items():
                size = int(np.prod(shape))
                lr, decay = registry.of(layer).param_mults(layer, pname)
                slots.append(Slot(f"{layer.name}.{pname}", layer.name, shape, offset, size,
                                  float(lr), float(decay)))  # fmt: skip
                offset += size
        self.slots = slots
        self.theta = buffers.zeros(offset)  # (P,) every trainable parameter (huge pages)
        self.grad = buffers.zeros(offset)  # (P,) their gradients
        self.state = {}
        for layer in self.net.layers:
            for sname, shape in layer.state.items():
                init = registry.of(layer).state_init(sname)
                self.state[f"{layer.name}.{sname}"] = np.full(shape, init, np.float32)

    def _allocate(self) -> None:
        n = self.batch
        consumers: dict[str, list[str]] = {lyr.name: [] for lyr in self.net.layers}
        for lyr in self.net.layers:
            for src in lyr.inputs:
                consumers[src].append(lyr.name)
        self.consumers = consumers
        self.folded = self._activation_folds()
        self.out = {}
        for lyr in self.net.layers:  # a folded activation's output is its producer's
            src = self.folded.get(lyr.name)
            self.out[lyr.name] = self.out[src] if src else self._zeros((n, *lyr.out_shape))
        # gradient of each layer's output (the input layer needs none), sharing memory
        # between gradients whose lifetimes in the backward pass do not overlap
        self.dout = gradient_buffers(self.net, consumers, n, self._zeros, self.folded)

    def _activation_folds(self) -> dict[str, str]:
        """{activation layer: producer} for each standalone activation (`relu r1`) whose
        producer it alone reads, when the producer's type takes a fused activation and has
        none: the producer's runner applies it (its forward's epilogue, its backward's first
        step), the activation layer's runner does nothing, and the two share one output and
        one gradient buffer. One pass over the map and one buffer fewer each way.

        On the CPU only (a CUDA plan's runners pick kernels per layer). The producer's output
        is then the activated map: `layer_output(producer)` returns what the activation
        layer would.
        """
        if self.device_kind != "cpu" or not self.fold_activations:
            return {}
        from .ops.activation import ActCPURunner

        folds = {}
        for lyr in self.net.layers:
            lt = registry.of(lyr)
            if lt.source or lt.is_loss or not issubclass(lt.cpu_runner(), ActCPURunner):
                continue
            if len(lyr.inputs) != 1 or not self.consumers[lyr.name]:
                continue  # a dead end keeps its own zero gradient
            src = lyr.inputs[0]
            plt = registry.of(self.net.layer(src))
            p_act = self.net.layer(src).attrs.get("activation") or ("linear",)
            # a type whose language takes `, relu`, or whose CPU runner applies one (pool)
            takes = "activation" in plt.schema.opts or getattr(plt.cpu_runner(), "takes_act", 0)
            if (
                self.consumers[src] == [lyr.name]
                and not plt.source
                and not issubclass(plt.cpu_runner(), ActCPURunner)
                and takes
                and p_act[0] == "linear"
            ):
                folds[lyr.name] = src
        return folds

    def _zeros(self, shape) -> np.ndarray:
        """A zeroed float32 buffer of this backend's memory (device arrays on CUDA)."""
        return _host_zeros(shape)

    def runner_class(self, layer) -> type:
        """The runner of `layer` on this backend (each layer type names its own)."""
        return registry.of(layer).cpu_runner()

    def _bind(self) -> None:
        runners = []  # the drawing may be under way: self.runners would wait for it
        pending = {name: len(c) for name, c in self.consumers.items()}
        self.accumulate: list[tuple[int, np.ndarray, np.ndarray]] = []  # (runner, scratch, dst)
        # backward runs in reverse: the LAST consumer of a producer writes first, directly
        written: dict[str, bool] = {}
        order = list(self.net.layers)
        plans: dict[str, list[Any]] = {}
        fanout: dict[str, list[tuple[int, str]]] = {}  # layer -> (its input index, producer)
        for lyr in reversed(order):
            dxs, adds = [], []
            for i, src in enumerate(lyr.inputs):
                if registry.of(self.net.layer(src)).source:  # no gradient for the input
                    dxs.append(None)
                elif not written.get(src):
                    dxs.append(self.dout[src])
                    written[src] = True
                else:
                    dxs.append(None)  # a scratch buffer, placed below
                    fanout.setdefault(lyr.name, []).append((i, src))
            plans[lyr.name] = [dxs, adds]
        self._place_fanout_scratch(fanout, plans)
        del pending
        from .backends.cpu import FoldedRunner  # a plain Runner subclass (no kernels)

        into = {src: act for act, src in self.folded.items()}  # producer -> its activation
        for lyr in order:
            try:
                cls = self.runner_class(lyr)
            except NotImplementedError:
                raise NetError(f"layer type {lyr.type} has no {self.backend_name} kernel",
                               lyr.loc) from None  # fmt: skip
            if lyr.name in self.folded:
                cls = FoldedRunner
            elif lyr.name in into:  # the producer runs with the activation it absorbed
                act = self.net.layer(into[lyr.name]).attrs["activation"]
                lyr = dataclasses.replace(lyr, attrs={**lyr.attrs, "activation": act})
            r = cls(lyr, self)
            r.dx, r.adds = plans[lyr.name]
            r.dy = self.dout.get(lyr.name)
            if not self.consumers[lyr.name]:  # a dead end: its dy must stay zero
                r.act_grad_in_place = False
            runners.append(r)
        self.runners = runners
        self.loss_runner = runners[-1] if registry.of(order[-1]).is_loss else None

    def _place_fanout_scratch(self, fanout: dict[str, list[tuple[int, str]]],
                              plans: dict[str, list[Any]]) -> None:  # fmt: skip
        """Give each fan-out gradient a scratch view into ONE flat array.

        A scratch is written by its layer's backward and added into the producer's gradient
        right after it (`adds`), so only one layer's scratches are ever in use: every layer's
        can start at offset 0 (several inputs of one layer lie side by side).
        """
        if not fanout:
            return
        sizes = {name: sum(self.dout[src].size for _, src in items)
                 for name, items in fanout.items()}  # fmt: skip
        flat = self._zeros(max(sizes.values()))
        for name, items in fanout.items():
            dxs, adds = plans[name]
            offset = 0
            for i, src in items:
                dst = self.dout[src]
                scratch = flat[offset : offset + dst.size].reshape(dst.shape)
                offset += dst.size
                dxs[i] = scratch
                adds.append((scratch, dst))

    # ---- views
    def layer_params(self, layer: str) -> dict[str, np.ndarray]:
        """name -> a view of `layer`'s parameters in theta, for its runner: the values are
        there once the layer's parameters are drawn (the forward waits for that)."""
        return {s.key.split(".")[-1]: self.param_view(s, self._theta)
                for s in self.slots if s.layer == layer}  # fmt: skip

    def layer_grads(self, layer: str) -> dict[str, np.ndarray]:
        return {s.key.split(".")[-1]: self.param_view(s, self.grad)
                for s in self.slots if s.layer == layer}  # fmt: skip

    @staticmethod
    def param_view(s: Slot, flat: np.ndarray) -> np.ndarray:
        return flat[s.offset : s.offset + s.size].reshape(s.shape)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """name -> a copy of the parameter (PyTorch layouts: conv (O, C/g, kh, kw), fc (O, F))."""
        return {s.key: self.param_view(s, self.theta).copy() for s in self.slots}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state (batch-norm running statistics), copies."""
        return {k: v.copy() for k, v in self.state.items()}

    def set_params(self, params: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load parameters (and optionally BN running stats) by name, checking shapes."""
        known = {s.key: s for s in self.slots}
        for key, value in params.items():
            value = np.asarray(value)
            if key in known:
                s = known[key]
                if tuple(value.shape) != s.shape:
                    raise ValueError(f"{key}: expected shape {s.shape}, got {value.shape}")
                self.param_view(s, self.theta)[...] = value
                if s.layer in self.masks and key.endswith(".weight"):
                    self.param_view(s, self.theta)[...] *= self.masks[s.layer]
            elif key in self.state:
                self.state[key][...] = value
            elif strict:
                raise KeyError(f"unknown parameter {key!r}")
        if strict:
            missing = set(known) - set(params)
            if missing:
                raise KeyError(f"missing parameters: {sorted(missing)}")

    # ---- running
    def _checked_input(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """x as float32 (N, C, H, W) with N <= the compiled batch, and N."""
        x = np.asarray(x, np.float32)
        shape = self.net.input.out_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"input must be (N, {', '.join(map(str, shape))}), got {x.shape}")
        n = x.shape[0]
        if n > self.batch:
            raise ValueError(f"batch of {n} is larger than the compiled batch {self.batch}")
        return x, n

    def _load_input(self, x: np.ndarray) -> int:
        x, n = self._checked_input(x)
        buf = self.out[self.net.input.name]
        buf[:n] = x
        if n < self.batch:
            buf[n:] = 0.0
        return n

    def _prepare(self, train: bool) -> None:
        """Host work a backend does before a pass's launches (nothing on the CPU, which
        draws dropout masks as it runs)."""

    def _forward(self, train: bool) -> None:
        for r in self._runners:
            if not train and r is self.loss_runner:  # evaluation stops before the loss
                break
            if self._init is not None:  # the first forward: this layer's parameters drawn?
                self._wait_init(r.layer.name)
            r.forward(train)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode output of the last layer before the loss: (N, K) for vectors."""
        n = self._load_input(x)
        self._forward(train=False)
        last = self._output_layer()
        y = self.out[last.name][:n]
        return y.reshape(n, -1).copy() if last.out_shape[1:] == (1, 1) else y.copy()

    def layer_output(self, layer: str, n: int | None = None) -> np.ndarray:
        """A host copy of `layer`'s output from the last forward pass: (n, C, H, W), the
        first n images of the batch (all by default). netdsl show maps/neighbours read it.
        A layer whose standalone activation is folded into it (self.folded) holds the
        activated map, as a layer with a fused activation does."""
        buf = self.out[layer]
        host = buf.copy_to_host() if hasattr(buf, "copy_to_host") else buf  # a GPU buffer
        return np.array(host[: self.batch if n is None else n])

    def _output_layer(self):
        layers = self.net.layers
        return layers[-2] if registry.of(layers[-1]).is_loss else layers[-1]

    def step_grads(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Forward and backward in train mode on a full batch; gradients land in self.grad."""
        self.start_step(x, labels)
        return self.finish_step()[0]

    def start_step(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Queue a training step on a full batch (step_grads without waiting for its loss).

        On a GPU this returns once the step is launched: the host can prepare the next batch
        while it runs (netdsl.train.trainer does). Each start_step is answered by one
        finish_step, in order; at most two steps may be queued unfinished.
        """
        if self.loss_runner is None:
            raise NetError(
                "the network has no loss layer, so it cannot be trained",
                self.net.layers[-1].loc,
                "end the network with: loss cross_entropy",
            )
        if len(self._pending) >= 2:  # a GPU stages each step's data in one of two buffers
            raise RuntimeError("two training steps are already queued: call finish_step first")
        n = self._load_input(x)
        if n != self.batch:
            raise ValueError(f"training needs full batches of {self.batch}, got {n}")
        self.labels[:] = labels
        self._train_step()
        self._pending.append(self._queue_result(np.array(labels)))

    def finish_step(self) -> tuple[float, int]:
        """(loss, top-1 errors) of the oldest step start_step queued, waiting for it."""
        return self._pending.pop(0)()

    def _queue_result(self, labels: np.ndarray):
        """A function giving the step's (loss, top-1 errors); the CPU has them already."""
        result = (float(self.loss_runner.value), self.top1_errors(labels))
        return lambda: result

    def _train_step(self) -> None:
        """Forward in train mode and backward over the loaded batch (a backend may replay it)."""
        self._forward(train=True)
        # the first backward does not wait for the helper: what it compiled loads from the
        # cache, what it is compiling is waited for kernel by kernel, the rest compiles here
        self._backward()
        if self._ahead_pending:
            self._ahead_pending = False
            self.ahead.end_after_backward()
            self.ahead.mark_warm()

    def _backward(self) -> None:
        for r in reversed(self._runners):
            r.backward()
            for scratch, dst in r.adds:
                self.accumulate_into(dst, scratch)

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray):
        """(loss, {name: gradient}) on one batch in train mode (dropout on, BN batch stats)."""
        value = self.step_grads(x, labels)
        grads = {s.key: self.param_view(s, self.grad).copy() for s in self.slots}
        return value, grads

    def scores(self) -> np.ndarray:
        """The class scores of the last forward pass, (N, K)."""
        return self.out[self._output_layer().name].reshape(self.batch, -1)

    def top1_errors(self, labels: np.ndarray) -> int:
        """Top-1 errors of the last training step's scores against its labels (N,)."""
        from .ops.loss import topk_errors

        return topk_errors(self.scores(), labels, 1)

    def sync(self) -> None:
        """Wait until the device has finished queued work (the CPU runs synchronously)."""

    def accumulate_into(self, dst: np.ndarray, scratch: np.ndarray) -> None:
        """dst += scratch: one fan-out gradient into the producer's (step_grads does this)."""
        dst += scratch

    def plan_bytes(self) -> dict[str, int]:
        """Bytes of the plan's buffers, each array counted once however many views it has:
        outputs (shared by a folded activation and its producer), output gradients (sharing
        arrays whose lifetimes do not overlap) and the fan-out gradients' scratch."""

        def owner(b):  # the array a view lives in (device arrays: themselves)
            base = getattr(b, "base", None)
            return b if base is None else owner(base)

        def total(bufs) -> int:
            return sum(o.nbytes for o in {id(owner(b)): owner(b) for b in bufs}.values())

        scratch = [s for r in self.runners for s, _ in r.adds]
        return {"outputs": total(self.out.values()), "gradients": total(self.dout.values()),
                "scratch": total(scratch)}  # fmt: skip

    def describe(self) -> str:
        """The plan as text (NETDSL_DEBUG prints it)."""
        lines = [f"plan for {self.net.name}: device {self.device}, batch {self.batch}, "
                 f"{parameter_text(self.net, self.theta.size, 'in one flat buffer')}"]  # fmt: skip
        for r in self.runners:
            lyr = r.layer
            dx = ["-" if d is None else ("acc" if any(d is s for s, _ in r.adds) else "direct")
                  for d in r.dx]  # fmt: skip
            lines.append(f"  {lyr.name:18} {type(r).__name__:16} out {tuple(r.y.shape)} "
                         f"dx {dx}")  # fmt: skip
        for act, src in self.folded.items():
            lines.append(f"  {act} is folded into {src} (one output, one gradient buffer)")
        nbytes = sum(self.plan_bytes().values())
        lines.append(f"  activation + gradient buffers: {nbytes / 2**20:.2f} MiB")
        return "\n".join(lines)


def parameter_text(net: Network, stored: int, where: str) -> str:
    """The trainable parameters as `summary` counts them, and what the plan stores if more.

    A conv with a connection table keeps its weight dense, (O, C, kh, kw), its unused links
    held at zero; the reports count only the links. So LeNet-1998's plan stores 61,750
    values for the 60,850 parameters its summary reports; the text says which is which.
    """
    used = sum(lyr.n_params for lyr in net.layers)
    if stored == used:
        return f"{used:,} parameters {where}"
    tables = [lyr.name for lyr in net.layers
              if registry.of(lyr).channel_table(lyr) is not None]  # fmt: skip
    if not tables or stored < used:  # no table explains it: say only the two numbers
        return f"{used:,} parameters ({stored:,} stored {where})"
    whose = (f"the connection table of {tables[0]} is" if len(tables) == 1
             else f"the connection tables of {', '.join(tables)} are")  # fmt: skip
    return (
        f"{used:,} parameters ({stored:,} stored {where}: {whose} stored dense, "
        f"{stored - used:,} weights held at zero)"
    )


def _host_zeros(shape) -> np.ndarray:
    return buffers.zeros(shape)  # from 2 MiB on huge pages (netdsl/buffers.py)


def gradient_buffers(net: Network, consumers: dict[str, list[str]], batch: int,
                     zeros=_host_zeros, folded: dict[str, str] | None = None,
                     ) -> dict[str, np.ndarray]:  # fmt: skip
    """Output-gradient buffers, (N, C, H, W) views into as few flat arrays as lifetimes allow.

    The backward pass visits layers in reverse. dout[L] is first written when the first of
    L's consumers (in that reverse order) runs its backward, and last read by L's own
    backward; two gradients whose intervals do not overlap can share memory (zeros(shape)
    allocates: host or device arrays). Every backward
    kernel overwrites its outputs, so a reused buffer needs no clearing. A layer nobody
    consumes (a dead end) keeps a private zero buffer: its backward must see dy = 0.
    `folded` ({activation layer: producer}, CompiledNet._activation_folds): the producer
    reads the activation layer's gradient, so the two share one buffer, live until the
    producer's backward.
    """
    folded = folded or {}
    free: list[np.ndarray] = []  # flat float32 arrays not in use at this point
    dout: dict[str, np.ndarray] = {}
    arena: dict[str, np.ndarray] = {}  # layer -> the flat array its view lives in

    def take(name: str) -> None:
        shape = (batch, *net.layer(name).out_shape)
        size = int(np.prod(shape))
        fits = [b for b in free if b.size >= size]
        flat = min(fits, key=lambda b: b.size) if fits else zeros(size)
        if fits:
            del free[next(i for i, b in enumerate(free) if b is flat)]
        arena[name] = flat
        dout[name] = flat[:size].reshape(shape)

    for lyr in reversed(net.layers):
        if registry.of(lyr).source:
            continue
        if lyr.name not in dout:  # nothing writes it: a dead end, or the loss itself
            dout[lyr.name] = zeros((batch, *lyr.out_shape))
        if lyr.name in folded:  # the producer's backward reads this very buffer
            src = folded[lyr.name]
            dout[src] = dout[lyr.name]
            if lyr.name in arena:
                arena[src] = arena.pop(lyr.name)
            continue
        for src in lyr.inputs:  # this backward writes them: their lifetimes start here
            if src not in dout and not registry.of(net.layer(src)).source:
                take(src)
        if lyr.name in arena:  # this backward was the last reader of dout[lyr]
            free.append(arena.pop(lyr.name))
    return dout


def _table_masks(net: Network) -> dict[str, np.ndarray]:
    """(O, C, 1, 1) 0/1 masks of the weights of layers with a connection table."""
    masks = {}
    for lyr in net.layers:
        table = registry.of(lyr).channel_table(lyr)
        if table is not None:
            o, c = lyr.out_shape[0], lyr.in_shapes[0][0]
            m = np.zeros((o, c, 1, 1), np.float32)
            for i, row in enumerate(table):
                m[i, row] = 1.0
            masks[lyr.name] = m
    return masks
