"""GPU groups on CUDA: `gpus G` runs every layer split by channels over G logical GPUs.

This executes the placement model of netdsl/passes/placement.py (AlexNet's two columns):

* logical GPU g owns output channels [ceil(g*C/G), ceil((g+1)*C/G)) of every split layer and
  keeps only those maps (and their gradients) in buffers of its own, (N, C_g, H, W);
* the input is loaded on every logical GPU: uploaded once per physical device into one
  buffer that the logical GPUs there share, read in place where a share takes all of it;
  the loss and a softmax run on GPU 0, whole;
* each layer's share on GPU g is an ordinary single-device runner (netdsl/backends/cuda.py)
  on a sliced layer: a conv or fc keeps filter rows [lo, hi) (a contiguous view of theta and
  grad), a grouped conv whose groups are a multiple of G keeps groups/G groups and reads only
  its own maps, bn / subsample keep their channels' parameters and statistics;
* where a layer reads channels another GPU owns (an ungrouped conv, fc, a connection table,
  LRN's halo, maxout or concat across a boundary, the loss), exactly the channel intervals
  placement._needed names are gathered into a buffer on the reading GPU, and in the backward
  pass their gradients are added back into the owners' gradient buffers. Every such move from
  another GPU's buffer is counted: `bytes_moved` after a training step equals
  placement.exchange_bytes(net, batch) (maps forward + their gradients backward).

What is NOT split (the plan falls back to one device, with a message): `flatten`, and a conv
whose groups are neither 1 nor a multiple of G.

Physical placement (netdsl/backends/cuda_devices.py): logical GPU g runs on physical device
g % D, D = min(G, GPUs present), and says so once. With D > 1 every share's buffers and
kernels live on its own device, theta / grad / the optimizer state / batch-norm statistics
are sharded by owner (one flat shard and one optimizer kernel per device), moves between
devices are staged through a peer copy, and the step is not captured as a CUDA graph (one
graph cannot span devices). With one device the parameters stay one flat buffer and the
optimizer one kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import Layer, Network
from ..ops import concat, registry
from ..ops.cudakit import say_once
from ..ops.dropout import DropoutCUDARunner
from ..passes.placement import _needed, _own
from . import cuda as single
from .cuda import CudaNet, device_zeros
from .cuda_devices import Devices, ShardedBuffer, StagedMove, rows
from .cuda_graph import StepGraph


def unsupported(net: Network) -> str | None:
    """Why `net` cannot run split over its GPUs here, or None."""
    for lyr in net.layers:
        reason = registry.of(lyr).unsplittable(lyr, net.gpus)
        if reason is not None:
            return reason
    return None


class _SubPlan:
    """The slice of a plan one share's runner reads (see single.Runner.__init__)."""

    def __init__(self, parent: GroupedCudaNet) -> None:
        self.batch = parent.batch
        self.rng = parent.rng
        self.labels_d = parent.labels_d
        self.out: dict[str, object] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.state: dict[str, object] = {}
        self.params: dict[str, dict] = {}
        self.grads: dict[str, dict] = {}
        self.parent = parent

    def layer_params(self, name: str) -> dict:
        return self.params.get(name, {})

    def layer_grads(self, name: str) -> dict:
        return self.grads.get(name, {})


class SliceDropoutRunner(DropoutCUDARunner):
    """Dropout on channels [lo, hi): the slice of ONE mask drawn for the whole layer, so G
    logical GPUs drop exactly the units one GPU would."""

    share: tuple[str, int, int]  # (the whole layer's name, lo, hi)

    def draw(self) -> np.ndarray:
        full, lo, hi = self.share
        return self.plan.parent.dropout_mask(full, self.p_drop)[:, lo:hi]


class Move:
    """One channel interval moved between two buffers (a gather forward, its scatter backward)."""

    def __init__(self, n, plane, src, c_src, s0, c_dst, d0, nch, remote, from_input, into,
                 staged=None):  # fmt: skip
        self.staged = staged  # a StagedMove between devices, or None: a kernel on one device
        if staged is None:
            self.fwd = concat.ChannelMoveCUDA(n, c_src, s0, c_dst, d0, nch, plane)
            self.bwd = concat.ChannelMoveCUDA(n, c_dst, d0, c_src, s0, nch, plane)
        self.src = src  # (layer name, gpu): whose out / dout buffer
        self.remote = remote  # crosses GPUs: counted
        self.from_input = from_input  # the net's input: no gradient goes back
        self.into = into  # (gather buffer, its gradient), or None: the share's gin / dgin
        self.nbytes = n * nch * plane * 4


class Share:
    """Layer `layer` on logical GPU g: its runner, input gathers and gradient scatters."""

    def __init__(self, layer: Layer, g: int, lo: int, hi: int) -> None:
        self.layer, self.g, self.lo, self.hi = layer, g, lo, hi
        self.runner = None  # single-device runner of the sliced layer (None: concat)
        self.moves: list[Move] = []  # into the gather buffer `gin`
        self.gin = None  # (N, hull, H, W) gathered input, or None (aliased)
        self.dgin = None  # its gradient
        self.alias: tuple[str, int] | None = None  # the producer buffer read in place
        self.dscratch = None  # dx of an aliased input before it is added to the producer's
        self.hull = (0, 0)
        self.own_y = None  # LRN: the own channels of the hull output are copied out
        self.dxs: list = []  # add: each input's gradient buffer (scratch or gather gradient)
        self.aliases: list = []  # add: (producer, scratch) of inputs read in place


class GroupedCudaNet(CudaNet):
    """A CudaNet whose layers run split over `net.gpus` logical GPUs (see the module doc)."""

    separate_domains = False  # tests: every logical GPU a device domain of its own

    def _allocate(self) -> None:
        from numba import cuda

        g, n = self.net.gpus, self.batch
        self.gpus = g
        self.physical = len(cuda.gpus)
        self.devices = dev = Devices(g, self.physical, separate=self.separate_domains)
        with dev.on(0):
            self._allocate_common()
        for d in range(1, dev.count):  # an upload stream (and its events) per device
            with dev.on(d):
                self.uploads.append(single.Uploads())
        if dev.count == 1:
            say_once(f"gpus {g}: the {g} logical GPUs share physical GPU 0 ({self.physical} "
                     "present); maps and gradients still move between them only where the "
                     "placement model says, and are counted")  # fmt: skip
        else:
            share = "" if dev.count == g else f" ({g} logical GPUs share {dev.count} devices)"
            say_once(
                f"gpus {g}: {dev.describe()}{share}; maps move between devices only "
                "where the placement model says; the step is not a CUDA graph"
            )
            self.step_graph = StepGraph(mode="off")  # one graph cannot span devices
        self.bytes_moved = 0  # between logical GPUs since the last step began (or reset)
        self._masks: dict[str, np.ndarray] = {}
        # per (layer, gpu): output and output-gradient buffers of the channels it owns
        self.own: dict[tuple[str, int], tuple[int, int]] = {}
        self.outs: dict[tuple[str, int], object] = {}
        self.douts: dict[tuple[str, int], object] = {}
        # the input: one buffer per device, which that device's logical GPUs share (read only)
        self.inputs = []
        for d in range(dev.count):
            with dev.on(d):
                self.inputs.append(device_zeros((n, *self.net.input.out_shape)))
        for lyr in self.net.layers:
            c = lyr.out_shape[0]
            lt = registry.of(lyr)
            for gpu in range(g):
                if lt.source:
                    lo, hi = 0, c  # replicated
                elif lt.gathered:
                    lo, hi = (0, c) if gpu == 0 else (0, 0)  # gathered on GPU 0
                else:
                    lo, hi = _own(gpu, c, g)
                self.own[lyr.name, gpu] = (lo, hi)
                if lyr is self.net.input:
                    self.outs[lyr.name, gpu] = self.inputs[dev.of_gpu(gpu)]
                elif hi > lo:
                    shape = (n, hi - lo, *lyr.out_shape[1:])
                    with dev.on(dev.of_gpu(gpu)):
                        self.outs[lyr.name, gpu] = device_zeros(shape)
                        if not lt.source:
                            self.douts[lyr.name, gpu] = device_zeros(shape)
        self.out = {self.net.input.name: self.outs[self.net.input.name, 0]}
        self.dout = {}
        if dev.count > 1:
            self._shard()

    def _shard(self) -> None:
        """Split theta, grad and the batch-norm statistics by owner over the devices."""
        dev = self.devices
        ranges: list[list[tuple[int, int]]] = [[] for _ in range(dev.count)]
        for s in self.slots:
            row = s.size // s.shape[0]
            for gpu in range(self.gpus):
                lo, hi = self.own[s.layer, gpu]
                ranges[dev.of_gpu(gpu)].append((s.offset + lo * row, s.offset + hi * row))
        ranges = [sorted(r) for r in ranges]
        self.theta = ShardedBuffer(self.theta.copy_to_host(), ranges, dev)
        self.grad = ShardedBuffer(np.zeros(self.theta.size, np.float32), ranges, dev)
        for lyr in self.net.layers:
            for k, v in self.state.items():
                if k.startswith(f"{lyr.name}."):
                    per = [[] for _ in range(dev.count)]
                    for gpu in range(self.gpus):
                        per[dev.of_gpu(gpu)].append(self.own[lyr.name, gpu])
                    self.state[k] = ShardedBuffer(v.copy_to_host(), [sorted(r) for r in per],
                                                  dev)  # fmt: skip

    # ---- building the shares
    def _holder(self, src: str, c: int, gpu: int) -> tuple[int, int, int]:
        """(gpu, first channel, channels) of the buffer that holds channel c of `src`, seen
        from `gpu`: its own copy for the replicated input, else the owner's."""
        prod = self.net.layer(src)
        if registry.of(prod).source:
            return gpu, 0, prod.out_shape[0]
        for h in range(self.gpus):
            lo, hi = self.own[src, h]
            if lo <= c < hi:
                return h, lo, hi - lo
        raise AssertionError((src, c))

    def _intervals(self, lyr: Layer, gpu: int, lo: int, hi: int) -> list[list[tuple[int, int]]]:
        """Per input, the channel intervals (in that input's channels) the share reads."""
        lt = registry.of(lyr)
        if lt.split_mode == "elementwise":
            return [[(lo, hi)] for _ in lyr.inputs]
        if lt.gathered:
            return [[(0, s[0])] for s in lyr.in_shapes]
        need = _needed(lyr, gpu, self.gpus)
        per: list[list[tuple[int, int]]] = []
        off = 0
        for shape in lyr.in_shapes:
            c = shape[0]
            per.append([(max(a, off) - off, min(b, off + c) - off)
                        for a, b in need if min(b, off + c) > max(a, off)])  # fmt: skip
            off += c
        return per

    def _bind(self) -> None:
        n, g = self.batch, self.gpus
        self.shares: list[list[Share]] = []
        for lyr in self.net.layers:
            shares = []
            if not registry.of(lyr).source:
                for gpu in range(g):
                    lo, hi = self.own[lyr.name, gpu]
                    if hi > lo:
                        with self.devices.on(self.devices.of_gpu(gpu)):
                            shares.append(self._share(lyr, gpu, lo, hi, n))
            self.shares.append(shares)
        self.runners = [s.runner for shares in self.shares for s in shares if s.runner]
        last = self.net.layers[-1]
        self.loss_runner = self.shares[-1][0].runner if registry.of(last).is_loss else None

    def _share(self, lyr: Layer, gpu: int, lo: int, hi: int, n: int) -> Share:
        sh = Share(lyr, gpu, lo, hi)
        sub = _SubPlan(self)
        per_input = self._intervals(lyr, gpu, lo, hi)
        cin = lyr.in_shapes[0][0]
        plane = lyr.in_shapes[0][1] * lyr.in_shapes[0][2]
        lt = registry.of(lyr)
        # the hull of input channels the sliced layer takes
        if lt.split_mode in ("gather", "elementwise"):
            hull = (lo, hi)  # (over the concatenated inputs, for a gather)
        elif lt.gathered:
            hull = (0, cin)
        else:
            hull = lt.split_hull(lyr, cin, per_input[0])
        sh.hull = hull
        x_names = []
        if lt.split_mode == "elementwise":
            for j, src in enumerate(lyr.inputs):  # each input's own channels, in place
                x_names.append(self._alias_or_gather(sh, sub, j, src, [(lo, hi)], hull, n, plane))
        elif lt.split_mode == "gather":
            sh.gin = self.outs[lyr.name, gpu]  # gathered straight into the output
            sh.dgin = self.douts[lyr.name, gpu]
            off = 0
            for src, shape, ivs in zip(lyr.inputs, lyr.in_shapes, per_input, strict=True):
                for a, b in ivs:
                    self._add_moves(sh, src, a, b, off + a - hull[0], hull[1] - hull[0], n, plane)
                off += shape[0]
            return sh
        else:
            x_names.append(self._alias_or_gather(sh, sub, 0, lyr.inputs[0], per_input[0], hull,
                                                 n, plane))  # fmt: skip
        # the sliced layer
        attrs = lt.split_attrs(dict(lyr.attrs), self.gpus)
        in_shape = (hull[1] - hull[0], *lyr.in_shapes[0][1:])
        out_c = hi - lo
        if lt.split_over_hull:
            out_c = hull[1] - hull[0]  # computed over the hull, own channels copied out
        name = f"{lyr.name}@{gpu}"
        sub_layer = dataclasses.replace(lyr, name=name, inputs=x_names,
                                        in_shapes=[in_shape] * len(x_names),
                                        out_shape=(out_c, *lyr.out_shape[1:]))  # fmt: skip
        sub_layer.attrs = attrs
        if lt.split_over_hull:
            sub.out[name] = device_zeros((n, out_c, *lyr.out_shape[1:]))
            sh.own_y = concat.ChannelMoveCUDA(n, out_c, lo - hull[0], hi - lo, 0, hi - lo,
                                              plane)  # fmt: skip
            sh.hull_dy = device_zeros((n, out_c, *lyr.out_shape[1:]))
            sh.own_dy = concat.ChannelMoveCUDA(n, hi - lo, 0, out_c, lo - hull[0], hi - lo, plane)
        else:
            sub.out[name] = self.outs[lyr.name, gpu]
        self._slice_params(lyr, sub, name, lo, hi)
        cls = lt.cuda_share_runner()
        r = cls(sub_layer, sub)
        r.share = (lyr.name, lo, hi)
        r.adds = []
        if lt.split_over_hull:
            r.dy = sh.hull_dy
        else:
            r.dy = self.douts[lyr.name, gpu]
        if lt.split_mode == "elementwise":
            r.dx = list(sh.dxs)
        else:
            r.dx = [sh.dgin if sh.gin is not None else sh.dscratch]
        if all(registry.of(self.net.layer(s)).source for s in lyr.inputs):
            r.dx = [None for _ in x_names]
        sh.runner = r
        return sh

    def _alias_or_gather(self, sh, sub, j, src, ivs, hull, n, plane) -> str:
        """Bind input j of the share: the producer's own buffer in place when it holds exactly
        the hull, else a gather buffer filled by moves. Returns the sub-plan's input name."""
        name = f"{src}->{sh.layer.name}@{sh.g}.{j}"
        lo, hi = self.own.get((src, sh.g), (0, 0))
        prod = self.net.layer(src)
        plt = registry.of(prod)
        elementwise = registry.of(sh.layer).split_mode == "elementwise"
        whole = (0, prod.out_shape[0])
        if (
            plt.source
            and not elementwise
            and len(ivs) == 1
            and tuple(ivs[0]) == tuple(hull) == whole
        ):
            # the whole input, which this GPU's device holds and no kernel writes: read it in
            # place (as one GPU does), with no copy and no gradient
            sub.out[name] = self.outs[src, sh.g]
            return name
        if not plt.source and not plt.gathered and (lo, hi) == hull and len(ivs) == 1:
            sub.out[name] = self.outs[src, sh.g]
            scratch = device_zeros(sub.out[name].shape)
            if elementwise:
                sh.dxs.append(scratch)
                sh.aliases.append((src, scratch))
            else:
                sh.alias = (src, sh.g)
                sh.dscratch = scratch
            return name
        shape = (n, hull[1] - hull[0], *prod.out_shape[1:])
        gin, dgin = device_zeros(shape), device_zeros(shape)
        sub.out[name] = gin
        for a, b in ivs:
            self._add_moves(sh, src, a, b, a - hull[0], hull[1] - hull[0], n, plane,
                            into=(gin, dgin))  # fmt: skip
        if elementwise:
            sh.dxs.append(dgin)
        else:
            sh.gin, sh.dgin = gin, dgin
        return name

    def _add_moves(self, sh, src, a, b, d0, c_dst, n, plane, into=None) -> None:
        """Moves of channels [a, b) of `src` into channel d0.. of the gather buffer."""
        from_input = registry.of(self.net.layer(src)).source
        c = a
        while c < b:
            h, h_lo, h_c = self._holder(src, c, sh.g)
            end = min(b, h_lo + h_c)
            dom, own_dom = self.devices.of_gpu(h), self.devices.of_gpu(sh.g)
            staged = None
            if dom != own_dom:  # another device: pack, peer copy, unpack
                staged = StagedMove(self.devices, n, plane, dom, h_c, c - h_lo, own_dom, c_dst,
                                    d0 + (c - a), end - c)  # fmt: skip
            m = Move(n, plane, (src, h), h_c, c - h_lo, c_dst, d0 + (c - a), end - c,
                     remote=h != sh.g, from_input=from_input, into=into,
                     staged=staged)  # fmt: skip
            sh.moves.append(m)
            c = end

    def _slice_params(self, lyr: Layer, sub: _SubPlan, name: str, lo: int, hi: int) -> None:
        """Views of rows [lo, hi) of every per-output-channel parameter, state and mask."""
        params, grads = {}, {}
        for s in self.slots:
            if s.layer != lyr.name:
                continue
            row = s.size // s.shape[0]
            pname = s.key.split(".")[-1]
            a, b = s.offset + lo * row, s.offset + hi * row
            shape = (hi - lo, *s.shape[1:])
            params[pname] = rows(self.theta, a, b).reshape(shape)
            grads[pname] = rows(self.grad, a, b).reshape(shape)
        sub.params[name], sub.grads[name] = params, grads
        for k, v in self.state.items():
            if k.startswith(f"{lyr.name}."):
                sub.state[f"{name}.{k.split('.')[-1]}"] = rows(v, lo, hi)
        if lyr.name in self.masks:
            sub.masks[name] = self.masks[lyr.name][lo:hi]

    # ---- running
    def dropout_mask(self, layer: str, p: float) -> np.ndarray:
        """The keep-mask of a whole dropout layer for this forward pass (drawn once)."""
        if layer not in self._masks:
            from ..ops import dropout

            shape = (self.batch, *self.net.layer(layer).out_shape)
            self._masks[layer] = dropout.make_mask(self.rng, shape, p)
        return self._masks[layer]

    def _on(self, gpu: int):
        """The device context of logical GPU `gpu` (nothing to switch on one device)."""
        return self.devices.on(self.devices.of_gpu(gpu))

    def _upload_input(self, host: np.ndarray) -> None:
        """Load the input on every GPU: once per device, into the one input buffer that the
        device's logical GPUs share."""
        for d, buf in enumerate(self.inputs):
            with self.devices.on(d):
                self._put(buf, host)

    def _domain(self) -> int:
        return self.devices.current

    def _land(self) -> None:
        for d, uploads in enumerate(self.uploads):
            with self.devices.on(d):
                uploads.land()

    def _move(self, m: Move, sh: Share, backward: bool) -> None:
        gin, dgin = m.into if m.into is not None else (sh.gin, sh.dgin)
        if backward:
            if m.from_input:
                return  # the input needs no gradient
            if m.staged is not None:
                m.staged.backward(dgin, self.douts[m.src])
            else:
                m.bwd.add(dgin, self.douts[m.src])
        elif m.staged is not None:
            m.staged.forward(self.outs[m.src], gin)
        else:
            m.fwd.copy(self.outs[m.src], gin)
        if m.remote:
            self.bytes_moved += m.nbytes

    def _prepare_runners(self, train: bool) -> None:
        self._masks = {}  # each dropout layer's mask is drawn anew (once for all its shares)
        for shares in self.shares:
            for sh in shares:
                if sh.runner is not None:
                    with self._on(sh.g):
                        sh.runner.prepare(train)

    def _launch_forward(self, train: bool) -> None:
        last = self.net.layers[-1] if self.loss_runner is not None else None
        for lyr, shares in zip(self.net.layers, self.shares, strict=True):
            if not train and lyr is last:
                break  # evaluation stops before the loss
            for sh in shares:
                with self._on(sh.g):
                    for m in sh.moves:
                        self._move(m, sh, backward=False)
                    if sh.runner is not None:
                        sh.runner.forward(train)
                    if sh.own_y is not None:
                        sh.own_y.copy(sh.runner.y, self.outs[lyr.name, sh.g])

    def _backward(self) -> None:
        for (_, gpu), buf in self.douts.items():  # every consumer adds its share of the gradient
            with self._on(gpu):
                concat.fill_cuda(buf.reshape(-1), 0.0)
        for lyr, shares in zip(reversed(self.net.layers), reversed(self.shares), strict=True):
            for sh in shares:
                with self._on(sh.g):
                    self._backward_share(lyr, sh)

    def _backward_share(self, lyr: Layer, sh: Share) -> None:
        r = sh.runner
        if r is not None:
            if sh.own_y is not None:  # LRN: dy of the own channels (the halo stays zero)
                sh.own_dy.copy(self.douts[lyr.name, sh.g], sh.hull_dy)
            r.backward()
            if r.dx and r.dx[0] is None:
                return
        if sh.alias is not None:
            self.accumulate_into(self.douts[sh.alias], sh.dscratch)
        for src, scratch in sh.aliases:
            self.accumulate_into(self.douts[src, sh.g], scratch)
        for m in sh.moves:
            self._move(m, sh, backward=True)

    def _train_step(self) -> None:
        self.bytes_moved = 0
        super()._train_step()
        if self._replayed:  # a graph replay calls no _move: the count is the eager step's
            self.bytes_moved = self._step_bytes
        else:
            self._step_bytes = self.bytes_moved

    def _gather_output(self) -> np.ndarray:
        """The last layer before the loss, whole, on the host: (N, C, H, W)."""
        last = self._output_layer()
        parts = []
        for gpu in range(self.gpus):
            if (last.name, gpu) in self.outs:
                with self._on(gpu):
                    parts.append(self.outs[last.name, gpu].copy_to_host())
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def sync(self) -> None:
        self.devices.sync()

    def forward(self, x: np.ndarray) -> np.ndarray:
        n = self._load_input(x)
        self._forward(train=False)
        y = self._gather_output()[:n]
        return y.reshape(n, -1) if self._output_layer().out_shape[1:] == (1, 1) else y

    def scores(self) -> np.ndarray:
        return self._gather_output().reshape(self.batch, -1)

    def describe(self) -> str:
        from ..compiler import parameter_text  # the plan module imports this one

        where = ("in one flat buffer" if self.devices.count == 1 else
                 f"in {self.devices.count} flat shards, one per device")  # fmt: skip
        lines = [f"plan for {self.net.name}: device cuda, {self.gpus} logical GPUs on "
                 f"{self.devices.count} device(s) ({self.devices.describe()}), batch "
                 f"{self.batch}, {parameter_text(self.net, self.theta.size, where)}"]  # fmt: skip
        for lyr, shares in zip(self.net.layers, self.shares, strict=True):
            for sh in shares:
                moved = sum(m.nbytes for m in sh.moves if m.remote)
                how = "in place" if sh.gin is None else f"gathers {sh.hull[1] - sh.hull[0]} ch"
                lines.append(f"  {lyr.name:12} gpu {sh.g}  channels [{sh.lo}, {sh.hi})  {how}"
                             + (f", {moved:,} B from other GPUs" if moved else ""))  # fmt: skip
        return "\n".join(lines)
