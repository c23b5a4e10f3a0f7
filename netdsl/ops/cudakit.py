"""Shared pieces of the CUDA kernels: launch configurations, the launch wrapper, the simulator.

Every op module keeps its CUDA kernels in a section at its end, built by a factory
``_cuda_kernels(*cfg)`` on first use, so importing an op never imports numba (``netdsl check``
stays numba-free). The factories are decorated ``@generated("<op>")`` (netdsl/ops/codegen.py):
their body is emitted as a module per configuration, with the kernels at module level and
``cache=True``, so Numba's on-disk cache serves them to the next process. The body binds
``cuda`` by ``from numba import cuda`` as a module global, never a closure variable: Numba's
CUDA simulator swaps the ``cuda`` module in a kernel's *globals* for its per-launch fake.

:class:`Launch` is a kernel with its launch configuration fixed when a runner is built
(nothing is computed per call). It can also record the argument types of every launch
(:func:`recording`), which lets ``netdsl.backends.cuda_check`` compile every kernel the
simulator ran to PTX for a real GPU, on a machine without one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

THREADS = 256  # threads per block of the 1-D (elementwise) kernels
MAX_BLOCKS = 4096  # 1-D kernels loop grid-stride beyond this many blocks
# The simulator runs every CUDA thread as a Python thread (~50 us each to start), so the
# elementwise kernels use few threads there; their grid-stride loops make the result the same.
SIM_THREADS, SIM_MAX_BLOCKS = 32, 2

_RECORD: list[tuple] | None = None  # launches recorded by `recording()`
_CAPTURE: Callable[[Launch, tuple], None] | None = None  # receives launches in `capturing()`


def simulator() -> bool:
    """True when numba.cuda is the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def grid_1d(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n elements."""
    threads, cap = (SIM_THREADS, SIM_MAX_BLOCKS) if simulator() else (THREADS, MAX_BLOCKS)
    return max(1, min(cap, -(-n // threads))), threads


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Launch:
    """A kernel of a factory with its launch configuration: call it with the arguments.

    factory(*cfg) returns a namespace of kernels (memoised per cfg); `name` picks one. Keeping
    the factory, its configuration and the name (not just the kernel) is what lets a recorded
    launch be rebuilt and compiled in another process (cuda_ptx, benchmarks/gpu_static.py)
    and `netdsl compile --emit` name the generated module a layer uses.
    """

    def __init__(self, factory: Callable[..., Any], name: str, grid, block, cfg: tuple = ()):
        self.factory, self.name, self.cfg = factory, name, tuple(cfg)
        self.grid, self.block = grid, block
        self.kernel = getattr(factory(*cfg), name)
        # The simulator's kernel[grid, block] configures the kernel object itself (and returns
        # it), so a configuration kept there would be overwritten by the next runner's.
        self.configured = None if simulator() else self.kernel[grid, block]

    def __call__(self, *args: Any) -> None:
        if _RECORD is not None:
            _RECORD.append((self.factory.__module__, self.factory.__name__, self.cfg, self.name,
                            tuple(_describe(a) for a in args)))  # fmt: skip
        if _CAPTURE is not None:  # a step being captured: the launch goes into the graph
            _CAPTURE(self, args)
            return
        self.run(*args)

    def run(self, *args: Any) -> None:
        """Launch now on the default stream (what a call does outside a capture)."""
        if self.configured is None:
            self.kernel[self.grid, self.block](*args)
        else:
            self.configured(*args)


def _describe(arg: Any) -> tuple:
    """A picklable description of a kernel argument's Numba type."""
    import numba
    import numpy as np

    ary = getattr(arg, "_ary", arg)  # the simulator's FakeCUDAArray wraps a NumPy array
    if hasattr(ary, "__cuda_array_interface__") and not isinstance(ary, np.ndarray):
        ty = numba.typeof(arg)  # a real device array
        return ("array", np.dtype(ary.dtype).str, ty.ndim, ty.layout)
    if isinstance(ary, np.ndarray):
        ty = numba.typeof(ary)
        return ("array", ary.dtype.str, ty.ndim, ty.layout)
    return ("scalar", str(numba.typeof(arg)))


@contextlib.contextmanager
def recording() -> Iterator[list[tuple]]:
    """Record (module, factory, cfg, kernel, argument types) of every launch in the block."""
    global _RECORD
    old, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = old


@contextlib.contextmanager
def capturing(sink: Callable[[Launch, tuple], None]) -> Iterator[None]:
    """Within the block, every Launch call goes to sink(launch, args) instead of running.

    netdsl.backends.cuda_graph uses this to put a training step's kernels into a CUDA graph
    (or, under the simulator, into a list it replays). Anything else the block does on the
    device (a copy, an allocation) is NOT captured: the code captured must be launches only.
    """
    global _CAPTURE
    old, _CAPTURE = _CAPTURE, sink
    try:
        yield
    finally:
        _CAPTURE = old


def tag_runners(runners, where: list) -> None:
    """Wrap each runner's forward and backward so that, while one runs, where[-1] is its
    (layer name, phase): which layer made each launch that `capturing()` hands a sink
    (`netdsl compile --emit`, benchmarks/gpu_static.py)."""
    for r in runners:
        for phase in ("forward", "backward"):
            run = getattr(r, phase)

            def tagged(*args, run=run, tag=(r.layer.name, phase)):
                where.append(tag)
                try:
                    return run(*args)
                finally:
                    where.pop()

            setattr(r, phase, tagged)


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """Print `netdsl: message` on standard error, the first time it is said in this process."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"netdsl: {message}", file=sys.stderr)


def real_gpu_requested() -> bool:
    """NETDSL_REAL_GPU=1: tests run on a real GPU instead of the simulator."""
    return os.environ.get("NETDSL_REAL_GPU", "") not in ("", "0")


def fast_simulator_barrier() -> bool:
    """Give Numba's CUDA simulator a real barrier (see below); False if it can't (no change).

    The simulator runs each CUDA thread of a block as a Python thread, and its BlockManager
    busy-polls every thread until all reach syncthreads(); under the GIL the polling takes
    most of the time (~70% in a tiled GEMM with a barrier per K-slice). This swaps in one
    threading.Barrier per block (the same semantics) and joins the threads at the end: the
    CUDA tests and `gpu_vs_torch.py --dry-run` run 2-3x faster. It patches only the
    simulator's classes in this process, and only if they still look as expected.
    """
    try:
        from numba.cuda.simulator import kernel as sim
    except ImportError:  # not the simulator
        return False
    if getattr(sim.BlockManager, "_netdsl_barrier", False):
        return True
    if not (hasattr(sim, "BlockThread") and hasattr(sim.BlockManager, "run")):
        return False

    def syncthreads(self):
        if self.abort:
            raise RuntimeError("abort flag set on syncthreads call")
        try:
            self._manager.barrier.wait()
        except threading.BrokenBarrierError:  # another thread of the block raised
            raise RuntimeError("abort flag set on syncthreads clear") from None

    def run(self, grid_point, *args):
        count = 1
        for d in self._block_dim:
            count *= d
        self.barrier = threading.Barrier(count)

        def target():
            try:
                self._f(*args)
            except BaseException:
                self.barrier.abort()  # release the threads waiting at a barrier
                raise

        threads = [sim.BlockThread(target, self, grid_point, p, self._debug)
                   for p in sim.np.ndindex(*self._block_dim)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    sim.BlockThread.syncthreads = syncthreads
    sim.BlockManager.run = run
    sim.BlockManager._netdsl_barrier = True
    return True


# ---------------------------------------------------------------------------------------------
# The GEMM tiles of conv and fc (their kernels are generated by netdsl.ops.gemm_cuda)
# ---------------------------------------------------------------------------------------------

cuda = None  # numba.cuda, bound by the reducers below


def pick_tile(rows: int, cols: int) -> tuple[int, int, int, int, int]:
    """The tile config for a GEMM whose output is rows x cols (M x N)."""
    from netdsl.ops import gemm_cuda

    return gemm_cuda.pick(rows, cols, simulator())


# ---------------------------------------------------------------------------------------------
# Reductions within a warp and within a block.
#
# On a GPU a warp sums its 32 lanes with a butterfly of register shuffles (shfl_xor_sync with
# lane masks 16, 8, 4, 2, 1): no shared memory, no barrier, and every lane ends with the same
# bits (at each step a lane and its partner add the same two numbers, and IEEE addition
# commutes). A block then needs one shared-memory step: each warp's lane 0 stores its sum,
# and every warp reduces those `threads/32` partial sums the same way.
#
# Numba's simulator has no shuffles: there the warp step is a tree in shared memory whose
# pairs (lane l with lane l + s, s = 16, 8, 4, 2, 1) are exactly the butterfly's for lane 0,
# so it gives the same bits as the GPU. The block step is the same code on both. The
# fallback synchronises the whole block, so every thread of the block must call these
# helpers the same number of times (the kernels using them are written that way; so is the
# GPU path's block step). tests/test_cuda_reduce.py runs the shuffle path too, in the
# simulator with shuffles emulated lane by lane.
# ---------------------------------------------------------------------------------------------

WARP = 32
FULL_MASK = 0xFFFFFFFF  # all 32 lanes take part in a shuffle


def use_shuffles() -> bool:
    """Whether kernels built now should use warp shuffles: on a GPU, not in the simulator."""
    return not simulator()


def row_threads() -> int:
    """Threads per block of the warp-per-row kernels (loss, softmax): 8 rows per block on a
    GPU, one in the simulator (each simulated thread is a Python thread)."""
    return SIM_THREADS if simulator() else THREADS


@functools.cache
def warp_reducer(shuffles: bool):
    """Device functions (warp_sum, warp_max)(v, buf, t): v reduced over the 32 lanes of thread
    t's warp, returned to every lane. buf: a shared float64 array with an entry per thread of
    the block (only the fallback uses it); t: the thread's index in the block."""
    global cuda
    from numba import cuda

    if shuffles:

        @cuda.jit(device=True, inline="always")
        def warp_sum(v, buf, t):
            v += cuda.shfl_xor_sync(FULL_MASK, v, 16)  # written out: five shuffles, no loop
            v += cuda.shfl_xor_sync(FULL_MASK, v, 8)
            v += cuda.shfl_xor_sync(FULL_MASK, v, 4)
            v += cuda.shfl_xor_sync(FULL_MASK, v, 2)
            v += cuda.shfl_xor_sync(FULL_MASK, v, 1)
            return v

        @cuda.jit(device=True, inline="always")
        def warp_max(v, buf, t):
            v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, 16))
            v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, 8))
            v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, 4))
            v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, 2))
            v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, 1))
            return v

        return warp_sum, warp_max

    @cuda.jit(device=True)
    def warp_sum(v, buf, t):
        lane = t % WARP
        cuda.syncthreads()  # the slots' previous readers are done
        buf[t] = v
        s = WARP // 2
        while s > 0:
            cuda.syncthreads()
            if lane < s:
                buf[t] += buf[t + s]  # lane l + s's partial joins lane l's, as in the butterfly
            s //= 2
        cuda.syncthreads()
        v = buf[t - lane]
        cuda.syncthreads()  # everyone has read before the slots are reused
        return v

    @cuda.jit(device=True)
    def warp_max(v, buf, t):
        lane = t % WARP
        cuda.syncthreads()
        buf[t] = v
        s = WARP // 2
        while s > 0:
            cuda.syncthreads()
            if lane < s:
                buf[t] = max(buf[t], buf[t + s])
            s //= 2
        cuda.syncthreads()
        v = buf[t - lane]
        cuda.syncthreads()
        return v

    return warp_sum, warp_max


@functools.cache
def block_summer(threads: int, shuffles: bool):
    """Device function block_total(v, buf, t): the sum of every thread's v over a block of
    `threads` (a multiple of 32), returned to every thread, in a fixed order (deterministic).
    buf: a shared float64 array of `threads` entries (the GPU path uses threads/32 of them),
    reusable as soon as the call returns."""
    global cuda
    from numba import cuda

    warp_sum, _ = warp_reducer(shuffles)
    warps = threads // WARP
    if threads % WARP:
        raise ValueError(f"block_summer: {threads} threads is not a whole number of warps")

    @cuda.jit(device=True)
    def block_total(v, buf, t):
        w = warp_sum(v, buf, t)
        if warps == 1:
            return w
        lane = t % WARP
        if lane == 0:
            buf[t // WARP] = w
        cuda.syncthreads()
        total = warp_sum(buf[lane] if lane < warps else 0.0, buf, t)  # every warp, same bits
        cuda.syncthreads()  # everyone has read buf before it is written again
        return total

    return block_total


def block_reducer(threads: int):
    """Device function block_sum(buf, t): the sum of buf[0:threads], a shared float64 array in
    which each thread t of the block has written its partial sum, returned to every thread
    (warp shuffles and one shared step on a GPU, see block_summer; `threads` a multiple of
    32). buf may be written again afterwards."""
    return _block_reducer(threads, use_shuffles())  # cached per path, not only per size


@functools.cache
def _block_reducer(threads: int, shuffles: bool):
    global cuda
    from numba import cuda

    block_total = block_summer(threads, shuffles)

    @cuda.jit(device=True)
    def block_sum(buf, t):
        v = buf[t]
        cuda.syncthreads()  # every thread has its value before block_total reuses the slots
        return block_total(v, buf, t)

    return block_sum
