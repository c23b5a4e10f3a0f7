"""Physical devices for GPU groups: where each logical GPU runs, and what crosses between them.

A *domain* is one physical device's share of a grouped plan: the buffers allocated, and the
kernels launched, while its context is current. Logical GPU g runs in domain g % D, where D
is min(logical GPUs, physical GPUs); with one physical GPU there is one domain and nothing
here costs anything (no context switches, one flat parameter buffer).

With D > 1:

* :class:`Devices` makes a domain's context current (``with devices.on(d)``) around every
  allocation and launch of that domain, so a kernel only ever touches its own device's
  memory (no peer access is needed);
* :class:`ShardedBuffer` holds a flat buffer (theta, grad, the optimizer state, a batch-norm
  statistic) as one device array per domain: the rows of the canonical layout that domain's
  logical GPUs own, back to back. Host copies gather from (and scatter to) the owners, so
  parameters, checkpoints and gradients read exactly as with one device;
* :class:`StagedMove` moves a channel interval between domains: packed into a contiguous
  buffer by a kernel on the sender, copied device to device (cuMemcpyPeerAsync) after the
  receiver's stream waits on the sender's event, unpacked by a kernel on the receiver.

Tests run all of this under Numba's CUDA simulator with every logical GPU in a domain of its
own on the one simulated device (``Devices(..., separate=True)``), and check that no kernel
reads or writes another domain's memory (tests/test_cuda_devices.py).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from ..ops import concat


def _cuda():
    from numba import cuda

    return cuda


class Devices:
    """The domains of a grouped plan: logical GPU -> domain -> physical device."""

    def __init__(self, gpus: int, physical: int, separate: bool = False) -> None:
        if separate:  # tests: a domain per logical GPU, all on device 0
            self.domain_of = list(range(gpus))
            self.device_of = [0] * gpus
        else:
            count = max(1, min(gpus, physical))
            self.domain_of = [g % count for g in range(gpus)]
            self.device_of = list(range(count))
        self.count = len(self.device_of)
        self.current = 0  # the domain whose context is current (0 at top level: device 0)

    @contextlib.contextmanager
    def on(self, domain: int) -> Iterator[None]:
        """Make `domain`'s device context current inside the block (nothing with one domain)."""
        if self.count == 1:
            yield
            return
        prev, self.current = self.current, domain
        try:
            with _cuda().gpus[self.device_of[domain]]:
                yield
        finally:
            self.current = prev

    def of_gpu(self, gpu: int) -> int:
        """The domain logical GPU `gpu` runs in."""
        return self.domain_of[gpu]

    def sync(self) -> None:
        """Wait for every domain's queued work."""
        for d in range(self.count):
            with self.on(d):
                _cuda().synchronize()

    def describe(self) -> str:
        if self.count == 1:
            return "one device"
        groups = [[g for g, d in enumerate(self.domain_of) if d == dom]
                  for dom in range(self.count)]  # fmt: skip
        return ", ".join(f"GPUs {','.join(map(str, gs))} on device {self.device_of[dom]}"
                         for dom, gs in enumerate(groups))  # fmt: skip


class ShardedBuffer:
    """A flat float32 buffer split over domains (see the module doc).

    ranges[d]: the [a, b) intervals of the canonical layout that domain d holds, in order;
    together they cover [0, size) exactly once. shards[d]: that domain's device array.
    The host-side API is a device array's: size, shape, dtype, copy_to_host, copy_to_device.
    """

    def __init__(self, host: np.ndarray, ranges: Sequence[Sequence[tuple[int, int]]],
                 devices: Devices) -> None:  # fmt: skip
        flat = np.ascontiguousarray(host, np.float32).reshape(-1)
        self.shape, self.size, self.dtype = host.shape, flat.size, np.dtype(np.float32)
        self.devices = devices
        self.ranges = [[(int(a), int(b)) for a, b in rs if b > a] for rs in ranges]
        covered = np.zeros(self.size, np.int8)
        for rs in self.ranges:
            for a, b in rs:
                covered[a:b] += 1
        if not np.all(covered == 1):
            raise ValueError("shard ranges must cover the buffer exactly once")
        # where each range starts inside its shard, for views and copies
        self._starts = sorted((a, b, d, off) for d, rs in enumerate(self.ranges)
                              for a, b, off in _with_offsets(rs))  # fmt: skip
        self._keys = [s[0] for s in self._starts]
        self.shards = []
        for d, rs in enumerate(self.ranges):
            with devices.on(d):
                part = np.concatenate([flat[a:b] for a, b in rs]) if rs else np.zeros(0, np.float32)
                self.shards.append(_cuda().to_device(part))

    def zeros_like(self) -> ShardedBuffer:
        """A buffer of zeros with the same split (the optimizer's state)."""
        return ShardedBuffer(np.zeros(self.shape, np.float32), self.ranges, self.devices)

    def view(self, a: int, b: int):
        """The device view of canonical elements [a, b), which must lie in one range."""
        i = bisect.bisect_right(self._keys, a) - 1
        lo, hi, d, off = self._starts[i]
        if not lo <= a <= b <= hi:
            raise ValueError(f"[{a}, {b}) crosses a shard boundary")
        return self.shards[d][off + a - lo : off + b - lo]

    def domain(self, a: int) -> int:
        """The domain that holds canonical element a."""
        return self._starts[bisect.bisect_right(self._keys, a) - 1][2]

    def copy_to_host(self, ary: np.ndarray | None = None) -> np.ndarray:
        """The whole buffer in the canonical layout, gathered from every domain."""
        out = np.empty(self.shape, np.float32) if ary is None else ary
        flat = out.reshape(-1)
        for d, rs in enumerate(self.ranges):
            with self.devices.on(d):
                part = self.shards[d].copy_to_host()
            for a, b, off in _with_offsets(rs):
                flat[a:b] = part[off : off + b - a]
        return out

    def copy_to_device(self, ary: np.ndarray) -> None:
        """Scatter a canonical host array to its owners."""
        flat = np.ascontiguousarray(ary, np.float32).reshape(-1)
        if flat.size != self.size:
            raise ValueError(f"expected {self.size} elements, got {flat.size}")
        for d, rs in enumerate(self.ranges):
            if rs:
                with self.devices.on(d):
                    self.shards[d].copy_to_device(np.concatenate([flat[a:b] for a, b in rs]))


def _with_offsets(ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    off = 0
    for a, b in ranges:
        yield a, b, off
        off += b - a


def _event():
    """An event to order work across devices (no timing: cheaper to record and wait on)."""
    from .cuda_runner import _event as ordering_event

    return ordering_event()


def rows(buf, a: int, b: int):
    """Elements [a, b) of a flat device buffer, sharded or not."""
    return buf.view(a, b) if isinstance(buf, ShardedBuffer) else buf[a:b]


class StagedMove:
    """Channels [s0, s0+nch) of a (N, c_src, H, W) buffer in domain `src` to channels
    [d0, d0+nch) of a (N, c_dst, H, W) buffer in domain `dst` (forward), and the gradient
    added back the other way (backward), through one contiguous stage buffer per side."""

    def __init__(self, devices: Devices, n: int, plane: int, src: int, c_src: int, s0: int,
                 dst: int, c_dst: int, d0: int, nch: int) -> None:  # fmt: skip
        from .cuda import device_zeros

        self.devices, self.src, self.dst = devices, src, dst
        self.nbytes = n * nch * plane * 4
        self.copy = _peer_copier(devices, self.nbytes)
        with devices.on(src):
            self.pack_src = concat.ChannelMoveCUDA(n, c_src, s0, nch, 0, nch, plane)
            self.unpack_src = concat.ChannelMoveCUDA(n, nch, 0, c_src, s0, nch, plane)
            self.stage_src = device_zeros(n * nch * plane)
            self.ready_src = _event()
        with devices.on(dst):
            self.pack_dst = concat.ChannelMoveCUDA(n, c_dst, d0, nch, 0, nch, plane)
            self.unpack_dst = concat.ChannelMoveCUDA(n, nch, 0, c_dst, d0, nch, plane)
            self.stage_dst = device_zeros(n * nch * plane)
            self.ready_dst = _event()

    def forward(self, x_src, x_dst) -> None:
        """x_dst's channels = x_src's channels."""
        with self.devices.on(self.src):
            self.pack_src.copy(x_src, self.stage_src)
            self.ready_src.record()
        with self.devices.on(self.dst):
            self._transfer(self.stage_dst, self.dst, self.stage_src, self.src, self.ready_src)
            self.unpack_dst.copy(self.stage_dst, x_dst)

    def backward(self, dx_dst, dx_src) -> None:
        """dx_src's channels += dx_dst's channels."""
        with self.devices.on(self.dst):
            self.pack_dst.copy(dx_dst, self.stage_dst)
            self.ready_dst.record()
        with self.devices.on(self.src):
            self._transfer(self.stage_src, self.src, self.stage_dst, self.dst, self.ready_dst)
            self.unpack_src.add(self.stage_src, dx_src)

    def _transfer(self, to, to_domain: int, frm, frm_domain: int, ready) -> None:
        """Copy `frm` (in frm_domain) into `to` on the current (to_domain's) default stream,
        after the sender's queued work up to `ready`."""
        ready.wait()  # the receiver's stream waits for the sender's pack kernel
        self.copy(to, to_domain, frm, frm_domain)


def _peer_copier(devices: Devices, nbytes: int):
    """copy(to, to_domain, frm, frm_domain): `nbytes` from one domain's array to another's,
    queued on the current default stream (cuMemcpyPeerAsync; a plain copy in the simulator).
    The contexts are looked up once here, not on every step."""
    from ..ops.cudakit import simulator

    if simulator():
        return lambda to, _to_domain, frm, _frm_domain: to.copy_to_device(frm)
    from numba.cuda.cudadrv.driver import device_pointer, driver

    cuda = _cuda()
    ctx = [cuda.gpus[d].get_primary_context().handle for d in devices.device_of]

    def copy(to, to_domain: int, frm, frm_domain: int) -> None:
        driver.cuMemcpyPeerAsync(device_pointer(to), ctx[to_domain], device_pointer(frm),
                                 ctx[frm_domain], nbytes, 0)  # fmt: skip

    return copy
