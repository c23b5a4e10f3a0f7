"""A parallel data loader: raw images in, normalised float32 input batches out.

A batch is made from an *image source*: an ``np.ndarray`` or ``np.memmap`` of shape
``(N, C, H, W)`` (uint8, or float32 already on the [0, 1] scale), or any object with
``__len__``, ``.shape``, ``.dtype`` and ``__getitem__`` taking an int, a slice or a 1-D
int array and returning ``(n, C, H, W)`` images. :class:`Transform` reads the batch's
images, crops (random, centre, or the full fitted image for the ten views), flips, adds
PCA lighting and normalises, converting only the crop to float32.

:class:`Loader` runs that in worker processes that write each batch into a slot of one
``multiprocessing.shared_memory`` block (a ring of ``workers + 2`` slots; batches are
never pickled) several batches ahead, and hands them back in order. With
``workers=0`` it runs in the calling process, with the same result: every batch's
random crops, flips and lighting come from a generator seeded by (seed, epoch, batch),
drawn for the whole global batch and then cut to this rank's slice, so the batches are
the same for any number of workers and any number of MPI ranks.

A worker's error is raised in the calling process (a DataError naming the file when
reading the data failed); a worker that dies is noticed within a second; closing the
loader (also on Ctrl-C or an error) stops the workers and unlinks the shared memory.

>>> import numpy as np
>>> x = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
>>> t = Transform(mean=(0.0,), std=(1.0,), input_shape=(1, 2, 2), image_shape=(1, 4, 4))
>>> with Loader({"test": (x, t)}, batch=2, workers=0) as loader:
...     [b.shape for b in loader.run("test", [Job(np.arange(2))])]
[(2, 1, 2, 2)]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import traceback
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from .sources import SubsetSource, describe_source, take

# a generator per batch is seeded by (seed, AUGMENT_KEY, epoch, batch): the key keeps
# these streams apart from the run's other generators seeded by (seed, ...)
AUGMENT_KEY = 0x61756720
POLL_S = 0.5  # how often a waiting process looks whether its peer is still alive
JOIN_S = 2.0  # how long a closing loader waits for a worker before terminating it


class LoaderError(NetdslError):
    """A loader worker failed for a reason other than bad data (a bug, or it was killed)."""


# ------------------------------------------------------------------ image sources


def in_memory(source: Any) -> bool:
    """Whether a source is an ordinary array in memory (not a file read on demand)."""
    while isinstance(source, SubsetSource):
        source = source.parent
    return isinstance(source, np.ndarray) and not isinstance(source, np.memmap)


def default_workers(source: Any, ranks: int = 1) -> int:
    """Worker processes for a source: none for images in memory (normalising a batch
    of small images costs less than handing it between processes: see
    benchmarks/RESULTS.md), else the cores this process may use, less one for the
    training loop, divided by the MPI ranks (as if they all ran on this machine)."""
    if in_memory(source):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, cores // max(1, ranks) - 1)


# ------------------------------------------------------------------ transforms


@dataclass(frozen=True, eq=False)
class Job:
    """One batch to make: the source images ``idx`` (this rank's share of the batch).

    For random augmentation ``key`` is (epoch, batch number) and the random numbers
    are drawn for the ``total`` images of the global batch, of which this share
    starts at ``offset``. Without ``key`` the batch is an evaluation batch.
    """

    idx: np.ndarray
    key: tuple[int, int] | None = None
    offset: int = 0
    total: int = 0


@dataclass(frozen=True, eq=False)
class Transform:
    """How a source's images become the network's input (picklable, no state).

    ``mode`` is "train" (the ``augment`` list of the train section, in order written,
    then a centre crop if none cropped), "center" (centre crop) or "ten" (the whole
    fitted image, for the ten views). Images smaller than the input are zero-padded
    (LeNet's 32x32 field from MNIST's 28x28) after normalising, so padding is the mean.
    ``pca`` (eigval, eigvec) is of the normalised pixels, for ``lighting``.
    """

    mean: Sequence[float]
    std: Sequence[float]
    input_shape: tuple[int, int, int]  # (C, h, w) of the input layer
    image_shape: tuple[int, int, int]  # (C, H, W) of the source's images
    mode: str = "center"
    augment: tuple[dict[str, Any], ...] = ()
    pca: tuple[np.ndarray, np.ndarray] | None = None
    seed: int = 0

    # -- shapes
    @property
    def fitted_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an image after zero-padding it up to the input size."""
        c, h, w = self.input_shape
        _, ih, iw = self.image_shape
        return (c, max(h, ih), max(w, iw))

    @property
    def needs_fit(self) -> bool:
        return self.fitted_shape[1:] != tuple(self.image_shape[1:])

    @property
    def ten_views(self) -> bool:
        """Whether this evaluation transform delivers whole images for ten views."""
        return self.mode == "ten" and self.fitted_shape[1:] != tuple(self.input_shape[1:])

    def out_shape(self, n: int) -> tuple[int, ...]:
        """The shape of a batch of n images this transform makes."""
        return (n, *(self.fitted_shape if self.ten_views else self.input_shape))

    # -- the pieces
    def _coeffs(self) -> tuple[np.ndarray, np.ndarray, np.float32]:
        m = np.asarray(self.mean, np.float32).reshape(-1)
        s = np.asarray(self.std, np.float32).reshape(-1)
        c = self.image_shape[0]
        return np.resize(m, c), np.resize(s, c), np.float32(1 / 255)

    def normalise(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(x/255 - mean) / std`` per channel in float32 (no 1/255 for float images),
        the arithmetic of data.to_float, into ``out`` when given."""
        m, s, k = self._coeffs()
        if out is None:
            out = np.empty(x.shape, np.float32)
        np.copyto(out, x, casting="unsafe")
        if x.dtype == np.uint8:
            out *= k
        out -= m[:, None, None]
        out /= s[:, None, None]
        return out

    def fit(self, x: np.ndarray) -> np.ndarray:
        """Normalise a raw batch and zero-pad it to the input size (the whole image)."""
        x = self.normalise(x)
        if not self.needs_fit:
            return x
        _, H, W = self.fitted_shape
        ih, iw = x.shape[2:]
        top, left = (H - ih) // 2, (W - iw) // 2
        out = np.zeros((x.shape[0], x.shape[1], H, W), np.float32)
        out[:, :, top : top + ih, left : left + iw] = x
        return out

    def draw(self, key: tuple[int, int], total: int) -> list[Any]:
        """The random numbers of a global batch of ``total`` images: one entry per
        augmentation, in the order written."""
        rng = np.random.default_rng([self.seed, AUGMENT_KEY, *key])
        _, H, W = self.fitted_shape
        _, h, w = self.input_shape
        params: list[Any] = []
        for a in self.augment:
            if a["kind"] == "crop":
                pad = int(a["pad"])
                top = rng.integers(0, H + 2 * pad - h + 1, size=total)
                left = rng.integers(0, W + 2 * pad - w + 1, size=total)
                params.append((top, left))
                H, W = h, w
            elif a["kind"] == "flip":
                params.append(rng.random(total) < a["p"])
            elif a["kind"] == "lighting":
                params.append(rng.normal(0.0, a["std"], size=(total, self.image_shape[0])))
            else:
                raise ValueError(f"unknown augmentation {a['kind']!r}")
        return params

    # -- a batch
    def apply(self, raw: np.ndarray, job: Job, out: np.ndarray) -> None:
        """Make the batch of ``raw`` images (the source's ``job.idx``) into ``out``."""
        if self.mode != "train":
            self._eval(raw, out)
            return
        n = len(raw)
        params = self.draw(job.key, job.total) if job.key is not None and self.augment else []
        lo = job.offset
        if params and self._fused():
            self._crop_flip_light(raw, params, lo, out)
            return
        x: np.ndarray | None = None  # the float batch once made
        cropped = False
        _, h, w = self.input_shape
        for i, a in enumerate(self.augment):
            p = params[i]
            if a["kind"] == "crop":
                top, left = p[0][lo : lo + n], p[1][lo : lo + n]
                pad = int(a["pad"])
                if x is None and pad == 0 and not self.needs_fit:
                    # crop the raw images, then convert only the crops
                    _crop_into(raw, top, left, h, w, out, self)
                    x = out
                else:
                    if x is None:
                        x = self.fit(raw)
                    if pad:
                        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
                    _gather(x, top, left, h, w, out)
                    x = out
                cropped = True
            elif a["kind"] == "flip":
                if x is None:
                    x = self.fit(raw)
                flip = p[lo : lo + n]
                x[flip] = x[flip, :, :, ::-1]
            elif a["kind"] == "lighting":
                if x is None:
                    x = self.fit(raw)
                eigval, eigvec = self.pca
                alpha = p[lo : lo + n]
                delta = (alpha * np.asarray(eigval, np.float64)) @ np.asarray(eigvec).T
                x += delta[:, :, None, None]
        if not cropped:
            if x is None:
                self._center(raw, out)
            elif x is not out:
                np.copyto(out, _center_view(x, h, w))

    def _fused(self) -> bool:
        """Whether the augmentation is AlexNet's: a crop without padding of images at
        least the input's size first, then flip and lighting in any order."""
        kinds = [a["kind"] for a in self.augment]
        return (not self.needs_fit and kinds[0] == "crop" and int(self.augment[0]["pad"]) == 0
                and "crop" not in kinds[1:])  # fmt: skip

    def _crop_flip_light(self, raw: np.ndarray, params: list[Any], lo: int,
                         out: np.ndarray) -> None:  # fmt: skip
        """Crop, flip, light and normalise image by image while it is in the cache:
        ``crop * (k/std) + (lighting - mean/std)`` per channel, two passes over the crop
        (the arithmetic of normalise() then adding the lighting, up to rounding)."""
        n, (_, h, w) = len(raw), self.input_shape
        m, s, k = self._coeffs()
        scale = (k if raw.dtype == np.uint8 else np.float32(1)) / s
        shift = np.tile(-m / s, (n, 1)).astype(np.float64)
        flip = np.zeros(n, bool)
        top, left = params[0][0][lo : lo + n], params[0][1][lo : lo + n]
        for a, p in zip(self.augment[1:], params[1:], strict=True):
            if a["kind"] == "flip":
                flip = p[lo : lo + n]
            else:  # lighting
                eigval, eigvec = self.pca
                shift += (p[lo : lo + n] * np.asarray(eigval, np.float64)) @ np.asarray(eigvec).T
        shift = shift.astype(np.float32)
        for i in range(n):
            src = raw[i, :, top[i] : top[i] + h, left[i] : left[i] + w]
            if flip[i]:
                src = src[:, :, ::-1]
            for c in range(src.shape[0]):
                np.multiply(src[c], scale[c], out=out[i, c], dtype=np.float32)
                out[i, c] += shift[i, c]

    def _eval(self, raw: np.ndarray, out: np.ndarray) -> None:
        if self.ten_views:
            np.copyto(out, self.fit(raw))
        else:
            self._center(raw, out)

    def _center(self, raw: np.ndarray, out: np.ndarray) -> None:
        _, h, w = self.input_shape
        if self.needs_fit:
            np.copyto(out, _center_view(self.fit(raw), h, w))
        else:  # crop the raw images, convert only the crop
            self.normalise(_center_view(raw, h, w), out)


def _center_view(x: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, top : top + h, left : left + w]


def _crop_into(raw, top, left, h, w, out, t: Transform) -> None:
    for i in range(len(raw)):
        t.normalise(raw[i : i + 1, :, top[i] : top[i] + h, left[i] : left[i] + w], out[i : i + 1])


def _gather(x: np.ndarray, top, left, h: int, w: int, out: np.ndarray) -> None:
    for i in range(len(x)):
        out[i] = x[i, :, top[i] : top[i] + h, left[i] : left[i] + w]


def make_batch(source: Any, transform: Transform, job: Job, out: np.ndarray) -> None:
    """Read a job's images and make them into ``out``; reading errors become a DataError
    naming the source's file."""
    try:
        raw = take(source, job.idx)
    except (DataError, KeyboardInterrupt):
        raise
    except (OSError, ValueError, IndexError) as e:
        raise DataError(f"{describe_source(source)}: cannot read images: "
                        f"{type(e).__name__}: {e}") from e  # fmt: skip
    transform.apply(raw, job, out)


# ------------------------------------------------------------------ the loader

Stream = tuple[Any, Transform]  # an image source and how its batches are made


class Loader:
    """Makes batches of named streams (e.g. "train", "val", "test") ahead, in order.

    ``batch`` is the most images of one job. Use as a context manager (or call
    :meth:`close`); :meth:`run` yields each job's batch as a float32 array that stays
    valid until the next one is asked for.
    """

    def __init__(self, streams: dict[str, Stream], batch: int, workers: int = 0,
                 ahead: int = 2, start_method: str | None = None) -> None:  # fmt: skip
        if workers < 0:
            raise ValueError(f"workers must be at least 0, got {workers}")
        self.streams = dict(streams)
        self.batch, self.workers = int(batch), int(workers)
        self.slots = self.workers + max(1, ahead)
        self.slot_floats = max(int(np.prod(t.out_shape(self.batch))) for _, t in streams.values())
        methods = mp.get_all_start_methods()
        self.start_method = start_method or ("fork" if "fork" in methods else "spawn")
        self._pool: _Pool | None = None
        self._local: np.ndarray | None = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and free the shared memory (safe to call twice)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    def run(self, stream: str, jobs: Iterable[Job]) -> Iterator[np.ndarray]:
        """The batches of ``jobs`` from ``stream``, in order."""
        source, transform = self.streams[stream]
        if self.workers == 0:
            yield from self._run_here(source, transform, jobs)
            return
        if self._pool is None:
            self._pool = _Pool(self)
        pool = self._pool
        finished = False
        try:
            yield from pool.run(stream, transform, list(jobs))
            finished = True
        finally:
            if not finished:  # abandoned mid-way: in-flight batches would land in reused slots
                self.close()

    def _run_here(self, source, transform: Transform, jobs: Iterable[Job]):
        if self._local is None:
            self._local = np.empty(self.slot_floats, np.float32)
        for job in jobs:
            out = self._local[: int(np.prod(transform.out_shape(len(job.idx))))]
            out = out.reshape(transform.out_shape(len(job.idx)))
            make_batch(source, transform, job, out)
            yield out


class _Pool:
    """The worker processes, their queues and the shared-memory slots of a Loader."""

    def __init__(self, loader: Loader) -> None:
        from multiprocessing import shared_memory

        ctx = mp.get_context(loader.start_method)
        self.slot_bytes = loader.slot_floats * 4
        self.shm = shared_memory.SharedMemory(create=True, size=self.slot_bytes * loader.slots)
        self.slots = loader.slots
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        streams = {k: (_portable(s), t) for k, (s, t) in loader.streams.items()}
        self.procs = []
        try:
            for w in range(loader.workers):
                p = ctx.Process(target=_worker, name=f"netdsl-loader-{w}", daemon=True,
                                args=(w, streams, self.shm.name, self.slot_bytes, self.tasks,
                                      self.results, os.getpid()))  # fmt: skip
                p.start()
                self.procs.append(p)
        except BaseException:
            self.close()
            raise
        self.seq = 0  # jobs ever submitted: a job's number, unique over the pool's life
        # if the owner forgets close(), the interpreter's exit still frees everything
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.tasks,
                                           self.results, self.shm)  # fmt: skip

    def close(self) -> None:
        self._finalizer() if hasattr(self, "_finalizer") else _shutdown(
            self.procs, self.tasks, self.results, self.shm
        )

    def _slot(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        return np.ndarray((n,), np.float32, buffer=self.shm.buf,
                          offset=slot * self.slot_bytes).reshape(shape)  # fmt: skip

    def run(self, stream: str, transform: Transform, jobs: list[Job]):
        free = list(range(self.slots))
        first = self.seq
        self.seq += len(jobs)
        slot_of: dict[int, int] = {}
        done: set[int] = set()
        submitted = 0
        for k in range(len(jobs)):
            while free and submitted < len(jobs):
                slot_of[submitted] = slot = free.pop()
                self.tasks.put((first + submitted, slot, stream, jobs[submitted]))
                submitted += 1
            while k not in done:
                seq, err = self._next_result()
                if err is not None:
                    raise _remote_error(err, jobs, seq - first, stream)
                done.add(seq - first)
            done.discard(k)
            view = self._slot(slot_of[k], transform.out_shape(len(jobs[k].idx)))
            yield view
            del view
            free.append(slot_of.pop(k))

    def _next_result(self) -> tuple[int, Any]:
        while True:
            try:
                return self.results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    p = dead[0]
                    raise LoaderError(f"loader worker {p.name} died (exit code {p.exitcode}) "
                                      "while making batches; if the system ran out of memory, "
                                      "try fewer --workers") from None  # fmt: skip


def _shutdown(procs, tasks, results, shm) -> None:
    """Stop workers (a sentinel each, then terminate the late ones) and unlink the memory."""
    for _ in procs:
        try:
            tasks.put_nowait(None)
        except (ValueError, OSError, queue.Full):
            break
    for p in procs:
        p.join(JOIN_S)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(JOIN_S)
        if p.is_alive():
            p.kill()
            p.join()
    for q in (tasks, results):
        q.cancel_join_thread()  # never block the exit on data nobody will read
        q.close()
    try:
        shm.close()
    except BufferError:  # a batch view still held by the caller: unlink frees it at its end
        pass
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _remote_error(err: tuple[str, str, str], jobs: list[Job], k: int, stream: str) -> Exception:
    kind, message, tb = err
    if kind == "DataError":
        e: Exception = DataError(message)
    else:
        e = LoaderError(f"a loader worker failed making batch {k + 1} of the {stream} images: "
                        f"{message}")  # fmt: skip
    e.__cause__ = _RemoteTraceback(tb)
    return e


class _RemoteTraceback(Exception):
    """The worker's traceback, shown as the cause with --debug."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


# ------------------------------------------------------------------ the worker side


class _MemmapRef:
    """A memory-mapped array, pickled by file name (spawned workers map it again)."""

    def __init__(self, a: np.memmap) -> None:
        self.filename, self.offset = a.filename, int(a.offset)
        self.dtype, self.shape = a.dtype, a.shape
        self.order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"

    def open(self) -> np.memmap:
        return np.memmap(self.filename, self.dtype, "r", self.offset, self.shape, self.order)


def _portable(source: Any) -> Any:
    """A source that spawned workers can unpickle cheaply: a memory-mapped file mapped
    whole is passed by name (pickling an np.memmap would copy its data)."""
    if isinstance(source, SubsetSource):
        return SubsetSource(_portable(source.parent), source.start, source.stop)
    if (isinstance(source, np.memmap) and source.filename
            and not isinstance(source.base, np.ndarray)):  # fmt: skip
        return _MemmapRef(source)  # not a view of another memmap: its offset is its own
    return source


def _opened(source: Any) -> Any:
    if isinstance(source, _MemmapRef):
        return source.open()
    if isinstance(source, SubsetSource):
        return SubsetSource(_opened(source.parent), source.start, source.stop)
    return source


def _worker(wid: int, streams, shm_name: str, slot_bytes: int, tasks, results,
            parent: int) -> None:  # fmt: skip
    """A worker's loop: make each task's batch in its slot, answer (seq, error or None)."""
    from multiprocessing import shared_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # the parent owns the block; workers share its resource tracker (fork and spawn
    # alike), so attaching registers nothing new and only the parent unlinks it
    shm = shared_memory.SharedMemory(shm_name)
    sources = {k: (_opened(s), t) for k, (s, t) in streams.items()}
    try:
        while True:
            try:
                task = tasks.get(timeout=POLL_S)
            except queue.Empty:
                if os.getppid() != parent:  # the parent is gone: nobody will read
                    return
                continue
            if task is None:
                return
            seq, slot, stream, job = task
            source, transform = sources[stream]
            try:
                shape = transform.out_shape(len(job.idx))
                n = int(np.prod(shape))
                out = np.ndarray((n,), np.float32, buffer=shm.buf, offset=slot * slot_bytes)
                make_batch(source, transform, job, out.reshape(shape))
                del out
                results.put((seq, None))
            except Exception as e:  # reported to the parent, which raises it
                kind = "DataError" if isinstance(e, DataError) else type(e).__name__
                msg = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
                results.put((seq, (kind, msg, traceback.format_exc())))
    finally:
        results.cancel_join_thread()  # at shutdown nobody reads: never wait on the pipe
        shm.close()
