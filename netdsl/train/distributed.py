"""Data-parallel training over MPI ranks: a small Communicator abstraction.

``mpiexec -n 4 netdsl train FILE`` (or ``--distributed mpi``) runs one copy of the
trainer per rank. The training loop talks to the other ranks only through a
:class:`Communicator`:

* :class:`Communicator` is the single-process one: rank 0 of 1, every call a no-op;
* :class:`MPICommunicator` wraps ``mpi4py``'s ``COMM_WORLD`` (the optional ``mpi``
  extra: ``pip install 'netdsl[mpi]'``).

What crosses the wire (see docs/distributed.md):

* at the start, rank 0's flat ``theta``, the batch-norm running statistics and the
  optimizer state are broadcast (``Bcast``), so every rank starts from the same weights;
* every step, ONE in-place ``Allreduce`` (sum) over the flat gradient buffer, then a
  division by the world size: the loss kernels average over the LOCAL batch of
  ``batch/ranks`` images, so the mean of the ranks' gradients is the gradient of the
  mean loss over the global batch, the update one process with the whole batch makes;
* at the end of every epoch, the batch-norm running statistics are averaged over the
  ranks (each rank normalises its own share of the batch in training mode, as
  PyTorch's DistributedDataParallel does without SyncBatchNorm, so their running
  statistics drift apart slightly within an epoch), and the epoch's metrics (loss sum,
  error counts, images seen, test-set sums) are summed.

Every rank draws the same permutation of the training set from the shared seed and
takes the slice ``[r*b/W, (r+1)*b/W)`` of each global batch (:func:`shard_bounds`, the
arithmetic of ``data.iterate_batches(shard=...)``). Only rank 0 prints and writes
checkpoints and metrics.

A failure on one rank must never leave the others waiting in a collective:
:func:`abort_on_error` prints the failing rank's error and calls ``MPI_Abort``, which
stops every rank. Test hook: with ``NETDSL_TEST_FAIL_RANK=R`` in the environment,
rank ``R`` of a multi-rank run raises an error at its first gradient exchange (the
tests use it to check that a failure stops all ranks promptly); it is read only here.

On the CUDA backend, a device array (one with
``__cuda_array_interface__``) goes through a pinned host buffer (copy to host,
collective, copy back) unless ``--cuda-aware-mpi`` says the MPI library takes device
pointers, in which case the device buffer is handed to MPI directly.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import NetdslError

INSTALL_HINT = "pip install 'netdsl[mpi]'"
# environment variables through which launchers announce the world size
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
TEST_FAIL_VAR = "NETDSL_TEST_FAIL_RANK"


class DistributedError(NetdslError):
    """A distributed run asked for something it cannot do (a batch that does not split over
    the ranks, an unknown --distributed): a usage mistake, exit status 2."""

    exit_code = 2


class MPIUnavailable(DistributedError):
    """MPI cannot be used on this machine (no mpi4py, no MPI library, another MPI's
    launcher): a runtime problem of the environment, like a missing GPU, exit status 1."""

    exit_code = 1


class InjectedFailure(NetdslError):
    """The NETDSL_TEST_FAIL_RANK test hook fired."""


# ------------------------------------------------------------------ arithmetic


def shard_bounds(rank: int, world: int, n: int) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of ``n`` items that ``rank`` of ``world`` takes.

    The same cut as ``iterate_batches(shard=(rank, world))``:

    >>> [shard_bounds(r, 2, 8) for r in range(2)]
    [(0, 4), (4, 8)]
    >>> [shard_bounds(r, 3, 10) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad shard (rank={rank}, world={world})")
    return rank * n // world, (rank + 1) * n // world


def local_batch(batch: int, world: int) -> int:
    """Each rank's share of the global ``batch``; it must divide evenly.

    >>> local_batch(128, 4)
    32
    """
    if batch % world:
        lower = max(world, batch // world * world)
        raise DistributedError(
            f"batch {batch} does not split evenly over {world} ranks (each rank computes "
            f"batch/ranks images); use a multiple of {world}, e.g. --batch {lower} or "
            f"--batch {lower + world}, or another number of ranks"
        )
    return batch // world


def detect_world_size() -> int:
    """The world size a launcher announced, 1 when not launched by mpiexec.

    Reads mpi4py's COMM_WORLD only when mpi4py is already imported (``python -m
    mpi4py``); otherwise the launchers' environment variables, so that a plain run
    never loads MPI.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            return int(mpi.COMM_WORLD.Get_size())
        except Exception:  # a broken MPI reads as "not under MPI"
            pass
    for var in SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def find_mpiexec() -> str | None:
    """The ``mpiexec`` installed beside this Python (the mpich wheel's), else the one on PATH.

    The launcher must belong to the MPI library mpi4py loads: a foreign ``mpiexec``
    starts N independent one-rank worlds (``setup`` reports that).
    """
    import shutil
    import sysconfig

    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    for d in dirs:
        exe = os.path.join(d, "mpiexec")
        if d and os.access(exe, os.X_OK):
            return exe
    return shutil.which("mpiexec")


# ------------------------------------------------------------------ communicators


class Communicator:
    """One process: rank 0 of 1; every collective is a no-op (the identity)."""

    kind = "none"
    rank = 0
    size = 1

    def __init__(self) -> None:
        self.comm_seconds = 0.0  # time spent in the per-step gradient Allreduce
        self.allreduce_calls = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum_(self, buf: Any) -> Any:
        """Sum ``buf`` over the ranks, in place."""
        return buf

    def average_(self, grad: Any) -> Any:
        """Turn this rank's gradient into the mean over ranks, in place (one Allreduce)."""
        return grad

    def broadcast_(self, *bufs: Any, root: int = 0) -> None:
        """Overwrite each buffer with ``root``'s, in place."""

    def average_state_(self, state: dict[str, np.ndarray]) -> None:
        """Average float arrays (batch-norm running statistics) over the ranks, in place."""

    def reduce_sums(self, values: Sequence[float]) -> np.ndarray:
        """Sum a few numbers over the ranks (float64); every rank gets the result."""
        return np.asarray(values, np.float64)

    def gather_obj(self, obj: Any, root: int = 0) -> list[Any] | None:
        """A list of every rank's ``obj`` on ``root``, None elsewhere."""
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, code: int) -> None:
        """Stop every rank with exit status ``code``."""
        raise SystemExit(code)

    def describe(self) -> str:
        return "single process"

    @property
    def local_rank(self) -> int:
        """This rank's index among the ranks on the same machine (0 in one process)."""
        return 0

    def select_gpu(self) -> int | None:
        """One rank per GPU: use GPU ``local_rank % GPUs`` of this machine (CUDA runs)."""
        from numba import cuda

        gpus = len(cuda.gpus)
        if gpus == 0:
            return None
        index = self.local_rank % gpus
        cuda.select_device(index)
        return index


class MPICommunicator(Communicator):
    """``mpi4py``'s COMM_WORLD (or ``comm``); ``cuda_aware``: hand device buffers to MPI."""

    @property
    def local_rank(self) -> int:
        from mpi4py import MPI

        # the ranks sharing this machine's memory, in rank order
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, self.rank)
        try:
            return local.Get_rank()
        finally:
            local.Free()

    kind = "mpi"

    def __init__(self, comm: Any = None, cuda_aware: bool = False) -> None:
        super().__init__()
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        self.cuda_aware = cuda_aware
        self._pinned: dict[tuple[tuple[int, ...], str], np.ndarray] = {}
        fail = os.environ.get(TEST_FAIL_VAR, "")
        self._fail_here = self.size > 1 and fail.strip() == str(self.rank)

    def _sum(self, buf: Any) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, self.MPI.SUM)

    # ---- the per-step exchange
    def allreduce_sum_(self, buf: Any) -> Any:
        t0 = time.perf_counter()
        self._through_host(buf, self._sum)
        self.comm_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        return buf

    def average_(self, grad: Any) -> Any:
        if self._fail_here:
            raise InjectedFailure(
                f"test hook: rank {self.rank} fails at its first gradient exchange "
                f"({TEST_FAIL_VAR}={self.rank})"
            )
        if self.size == 1:
            return grad
        if _is_device_array(grad):
            return self._average_device(grad)
        self.allreduce_sum_(grad)
        grad /= grad.dtype.type(self.size)  # correctly rounded; exact for powers of two
        return grad

    # ---- the rest
    def broadcast_(self, *bufs: Any, root: int = 0) -> None:
        for buf in bufs:
            if getattr(buf, "size", 0):
                self._through_host(buf, lambda b: self.comm.Bcast(b, root=root))

    def average_state_(self, state: dict[str, np.ndarray]) -> None:
        if self.size == 1 or not state:
            return
        host = [v.copy_to_host() if _is_device_array(v) else v for v in state.values()]
        flat = np.concatenate([np.asarray(h, np.float64).ravel() for h in host])
        self._sum(flat)
        flat /= self.size
        i = 0
        for v in state.values():
            mean = flat[i : i + v.size].reshape(v.shape).astype(np.float32)
            if _is_device_array(v):
                v.copy_to_device(mean)
            else:
                v[...] = mean
            i += v.size

    def reduce_sums(self, values: Sequence[float]) -> np.ndarray:
        buf = np.array(values, np.float64)
        self._sum(buf)
        return buf

    def gather_obj(self, obj: Any, root: int = 0) -> list[Any] | None:
        return self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def describe(self) -> str:
        return f"MPI rank {self.rank} of {self.size}"

    # ---- device buffers (CUDA backend)
    def _direct(self, buf: Any) -> bool:
        """MPI takes this buffer's device pointer: --cuda-aware-mpi, and one device array (a
        grouped net's buffer sharded over several GPUs goes through the host)."""
        return self.cuda_aware and hasattr(buf, "__cuda_array_interface__")

    def _through_host(self, buf: Any, op) -> None:
        """Run the collective ``op`` on ``buf``; device arrays go through pinned memory."""
        if not _is_device_array(buf):
            op(buf)
            return
        from numba import cuda

        if self._direct(buf):
            cuda.synchronize()  # the kernels that wrote buf must finish before MPI reads it
            op(buf)
            return
        host = self._pinned_like(buf)
        buf.copy_to_host(host)
        op(host)
        buf.copy_to_device(host)

    def _average_device(self, grad: Any) -> Any:
        t0 = time.perf_counter()
        if self._direct(grad):
            self._through_host(grad, self._sum)
            _scale_device(grad, 1.0 / self.size)
        else:
            host = self._pinned_like(grad)
            grad.copy_to_host(host)
            self._sum(host)
            host /= host.dtype.type(self.size)
            grad.copy_to_device(host)
        self.comm_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        return grad

    def _pinned_like(self, buf: Any) -> np.ndarray:
        key = (tuple(buf.shape), np.dtype(buf.dtype).str)
        if key not in self._pinned:
            from numba import cuda

            self._pinned[key] = cuda.pinned_array(buf.shape, dtype=buf.dtype)
        return self._pinned[key]


def _is_device_array(buf: Any) -> bool:
    """A numba-cuda device array; the simulator's stand-ins have copy_to_host but no
    __cuda_array_interface__, and must take the same (host-copy) path."""
    if isinstance(buf, np.ndarray):
        return False
    return hasattr(buf, "__cuda_array_interface__") or hasattr(buf, "copy_to_host")


@functools.cache
def _scale_kernel():
    from numba import cuda

    @cuda.jit
    def scale(a, f):
        i = cuda.grid(1)
        if i < a.size:
            a[i] *= f

    return scale


def _scale_device(buf: Any, factor: float) -> None:
    flat = buf.reshape(buf.size)
    _scale_kernel()[(flat.size + 255) // 256, 256](flat, np.float32(factor))


# ------------------------------------------------------------------ set-up


def setup(mode: str | None = None, cuda_aware: bool = False) -> Communicator:
    """The communicator for ``--distributed MODE``: ``none``, ``mpi``, or None (auto).

    Auto picks MPI when a launcher announced more than one rank.
    """
    world = detect_world_size()
    if mode is None:
        mode = "mpi" if world > 1 else "none"
    if mode == "none":
        if world > 1:
            print(f"warning: launched as one of {world} MPI ranks with --distributed none: "
                  "every rank trains alone and writes the same output folder",
                  file=sys.stderr)  # fmt: skip
        return Communicator()
    if mode != "mpi":
        raise DistributedError(f"unknown --distributed '{mode}'; use none or mpi")
    try:
        from mpi4py import MPI  # noqa: F401
    except Exception as e:  # ImportError, or RuntimeError: no MPI library
        why = ("mpi4py is not installed" if isinstance(e, ImportError)
               else f"mpi4py cannot load an MPI library ({e})")  # fmt: skip
        where = (f"launched as one of {world} MPI ranks, but " if world > 1 else
                 "--distributed mpi needs mpi4py and an MPI library, but ")  # fmt: skip
        raise MPIUnavailable(
            f"{where}{why}; install both with: {INSTALL_HINT} "
            "(mpi4py and the mpich wheel, whose mpiexec launches the ranks)"
            + ("; or pass --distributed none to train every rank alone" if world > 1 else "")
        ) from None
    comm = MPICommunicator(cuda_aware=cuda_aware)
    if world > 1 and comm.size != world:
        lib = comm.MPI.Get_library_version().splitlines()[0].strip()
        raise MPIUnavailable(
            f"launched as one of {world} ranks, but MPI's COMM_WORLD has {comm.size}: the "
            f"mpiexec that started this run does not belong to the MPI library mpi4py uses "
            f"({lib}); start it with that library's mpiexec ({find_mpiexec() or 'mpiexec'})"
        )
    return comm


@contextmanager
def abort_on_error(comm: Communicator, debug: bool = False) -> Iterator[None]:
    """On a multi-rank run, turn any error on this rank into an ``MPI_Abort`` of all ranks.

    The error is printed first, each line prefixed ``[rank R/W]``; the exit status is
    the error's (a NetdslError's exit_code, 130 for Ctrl-C, 1 otherwise). A single
    process lets the error through, to be reported as usual.
    """
    if comm.size == 1:
        yield
        return
    try:
        yield
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        _stop(comm, e.code if isinstance(e.code, int) else 1, str(e.code))
    except KeyboardInterrupt:
        _stop(comm, 130, "interrupted")
    except NetdslError as e:
        text = e.render() + ("\n" + traceback.format_exc().rstrip() if debug else "")
        _stop(comm, e.exit_code, text)
    except BaseException:  # whatever it is, the other ranks must not hang
        _stop(comm, 1, traceback.format_exc().rstrip())


def _stop(comm: Communicator, code: int, text: str) -> None:
    tag = f"[rank {comm.rank}/{comm.size}] "
    lines = text.splitlines() or [""]
    lines.append(f"stopping all {comm.size} ranks (MPI_Abort, exit status {code})")
    try:
        sys.stdout.flush()
    except Exception:
        pass
    print("\n".join(tag + line for line in lines), file=sys.stderr, flush=True)
    comm.abort(code)
    raise SystemExit(code)  # not reached after MPI_Abort


class NullStream:
    """Where the output of ranks other than 0 goes."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
