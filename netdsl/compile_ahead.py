"""Compile ahead: forked helpers compile the kernels this process needs later, meanwhile.

A cold start (empty Numba cache) is almost all compiling, and Numba compiles under one lock
per process, so a second thread cannot help; a second process can, through the on-disk
cache: every CPU kernel is ``cache=True`` in a real file (netdsl.ops and the generated
modules of netdsl.ops.codegen), keyed by source and argument types.

So once a CPU plan is bound, the process forks (the child shares the plan for free: the
same runners, buffers and kernel signatures). The child calls the plan's kernels in about
the reverse of the order the parent needs them (the optimizer's update, the backward first
layer first, then the forward last layer first: see _compile_in_child); each kernel it calls
is compiled (or found) and saved into the cache; its numbers are thrown away. The parent
meanwhile draws the weights (a thread), loads data and compiles its first forward, then runs
its first backward without waiting for the child: what the child compiled loads from the
cache, a kernel the child is compiling is waited for (lock_compiles), the rest the parent
compiles itself (and the child, coming to it, loads it). So the parent never sits idle
while the child works on something it does not need yet (the join this replaced left
LeNet-5's parent 0.6-0.8 s idle). It ends the child after that backward.

Where more cores are idle, more helpers are forked, one a core (at most MAX_HELPERS; see
_helper_count). The first goes about the parent's reverse order as above; the others share
the parent's own order from its second layer on (_parent_order_calls), so that the kernels
it reaches next are compiled, or being compiled, by the time it gets there. Each call goes
to the first helper free to take it: a queue pipe of call indices that the helpers of one
order read (_queue). A second-order helper that meets a kernel the first one compiled loads
it from the cache; neither compiles what another process is compiling (lock_compiles).

Safe by construction, and never needed for correctness:
- The parent computes every number itself; a kernel the child did not leave in the cache
  (it died, was killed, could not write, ran past the time limit) is compiled in-process.
- Numba saves a cache entry as read index, add entry, write index, write data, unlocked:
  two processes saving different signatures of one function could both name their data
  ``<fn>.1.nbc`` and leave an index entry pointing at the other's code. lock_numba_cache()
  makes that step one critical section per cache folder (flock), data before index.
- Both processes need some kernels (conv_cpu's fill_col_wide / fill_col_gather and gemm
  are compiled into the forward and the backward kernels alike, and each process may come
  to any kernel first): each compile of a cached function holds an flock on a lock file
  beside its index, so the second process to need it waits for the first and loads its
  code from the cache instead of compiling it again (LeNet-5: the im2col kernel, 0.5-0.8 s
  of the helper's CPU). The helper does not wait: it puts that layer off (Busy) and comes
  back to it after the next one.
- Forking is only done where it is safe and useful: Linux, two or more cores and one of them
  idle (by the 1-minute load average and the tasks runnable now, see _busy), twice the
  memory the child may copy available, this process single-threaded (no thread can hold a
  lock across the fork; no MPI), a writable Numba cache, and a plan not seen warm before (a
  marker in the netdsl cache folder, written after the first backward), so a warm start
  forks nothing.

``NETDSL_COMPILE_AHEAD=0`` turns it off; ``=1`` forks on a busy machine too (still only where
it is safe, and never for a plan marked warm). ``NETDSL_COMPILE_HELPERS=N`` forks N helpers
whatever the cores (at most MAX_HELPERS).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The parent stops waiting for the child after this long (a hung child costs at most this)
# and compiles what is left itself.
JOIN_LIMIT_S = 300.0
# At most this many helpers (one per idle core): AlexNet's cold start compiles ~30 kernels,
# the largest ~1 s of CPU, so more would mostly wait; each may copy the plan's pages.
MAX_HELPERS = 7


@dataclass
class Helper:
    """One forked helper process, as the parent sees it."""

    pid: int
    pipe: int | None  # read end of the pipe it writes to (None once closed)
    said: bytes = b""  # what it wrote so far
    ended: bool = False  # end of file on its pipe: it exited or died
    update_done: bool = False  # it said the optimizer's update is compiled
    backward_done: bool = False  # it said its share of the backward is through
    cpu_s: float | None = None  # its CPU seconds then
    wait_s: float = 0.0  # how long it waited for other processes' compiles
    put_off: int = 0  # compiles it put off: another process was compiling the function
    taken: int = 0  # the calls it had taken then (_helper_calls: the update, late, backward)
    exit: int | None = None  # its exit status once reaped (negative: killed by a signal)

    def hear(self) -> None:
        """Parse what it said: "update", then "<CPU s> <lock wait s> <compiles put off>
        <calls taken>"."""
        *lines, _ = self.said.split(b"\n")  # complete lines only
        for line in lines:
            if line == b"update":
                self.update_done = True
            elif not self.backward_done:
                with contextlib.suppress(ValueError):
                    cpu, wait, busy, taken = line.split()
                    self.cpu_s, self.wait_s = float(cpu), float(wait)
                    self.put_off, self.taken = int(busy), int(taken)
                    self.backward_done = True


@dataclass
class Ahead:
    """The helper processes of one plan, as the parent sees them."""

    reason: str  # why there is none, or "forked"
    helpers: list[Helper] = field(default_factory=list)
    waited_s: float = 0.0  # how long the parent's first backward waited for them
    # CPU seconds, to tell what a start costs on idle cores whatever the load now: this
    # process's at the fork and when it began to wait
    cpu_at_fork: float = 0.0
    cpu_at_join: float = 0.0
    parent_wait_s: float = 0.0  # how long this process waited for the helpers' compiles
    marker: Path | None = field(default=None, repr=False)  # the plan's warm marker
    early: Path | None = field(default=None, repr=False)  # the net's (no_helper reads it)

    @property
    def pid(self) -> int | None:
        """The first helper's process id (None: no helper, see reason)."""
        return self.helpers[0].pid if self.helpers else None

    @property
    def backward_done(self) -> bool:
        """Every helper said its share of the backward is through (else one died or ran out
        of time first)."""
        return bool(self.helpers) and all(h.backward_done for h in self.helpers)

    @property
    def update_done(self) -> bool:
        """A helper said the optimizer's update is compiled."""
        return any(h.update_done for h in self.helpers)

    @property
    def exit(self) -> int | None:
        """The first helper's exit status once ended (negative: killed by a signal)."""
        return self.helpers[0].exit if self.helpers else None

    @property
    def child_cpu_s(self) -> float | None:
        """The helpers' CPU seconds when their backward was through (None: none said so)."""
        said = [h.cpu_s for h in self.helpers if h.cpu_s is not None]
        return sum(said) if said else None

    @property
    def child_wait_s(self) -> float:
        """How long the helpers waited for other processes' compiles, summed."""
        return sum(h.wait_s for h in self.helpers)

    @property
    def child_put_off(self) -> int:
        return sum(h.put_off for h in self.helpers)

    def poll(self, limit: float = 0.0) -> None:
        """Read what the helpers have said so far, waiting at most `limit` s for the next
        word of one whose backward is not through yet (see Helper.hear). End of file: it
        exited or died."""
        import select

        live = {h.pipe: h for h in self.helpers if h.pipe is not None and not h.ended}
        try:
            while live:
                ready, _, _ = select.select(list(live), [], [], limit)
                if not ready:
                    break
                for fd in ready:
                    chunk = os.read(fd, 256)
                    if chunk:
                        live[fd].said += chunk
                    else:
                        live.pop(fd).ended = True
                limit = 0.0
        except (OSError, ValueError):
            pass
        for h in self.helpers:
            h.hear()

    def join(self, limit: float = JOIN_LIMIT_S) -> None:
        """Wait until every helper has compiled its share of the backward (or died, or
        `limit` s passed), then end them. The first training step does not call this (it
        never waits idle for a helper: see end_after_backward); tests and tools that want
        the helpers' whole work in the cache do."""
        if not self.helpers or all(h.exit is not None for h in self.helpers):
            return
        self.cpu_at_join = time.process_time()
        t0 = time.perf_counter()
        while not all(h.backward_done or h.ended for h in self.helpers):
            left = limit - (time.perf_counter() - t0)
            if left <= 0:
                break
            self.poll(left)
        self.waited_s = time.perf_counter() - t0
        self.parent_wait_s = compile_wait_s()
        self.kill()

    def end_after_backward(self) -> None:
        """End the helpers once this process's first backward is through. This process did
        not wait for them: each kernel a helper had compiled, it loaded from the cache; one
        a helper was compiling, it waited for (lock_compiles: parent_wait_s); the rest it
        compiled itself. What the helpers say by now is recorded (poll), then they end."""
        if not self.helpers or all(h.exit is not None for h in self.helpers):
            return
        self.cpu_at_join = time.process_time()
        self.poll()
        self.parent_wait_s = compile_wait_s()
        self.kill()

    def idle_cores_estimate(self, cpu_now: float) -> float | None:
        """The seconds this process would have needed up to `cpu_now` (its process_time at
        the end of the first step) with an idle core for it and for each helper: its CPU
        time plus the time it waited for the helpers' compile locks (it waits for nothing
        else; the helpers work on the other cores meanwhile). Those waits are wall time,
        which load inflates: the estimate errs long. None where no helper was forked."""
        if not self.helpers:
            return None
        return cpu_now + self.parent_wait_s

    def kill(self) -> None:
        """End the helpers now (each leaves at most Numba's uniquely named temporary files)."""
        for h in self.helpers:
            if h.pipe is not None:
                with contextlib.suppress(OSError):
                    os.close(h.pipe)
                h.pipe = None
            if h.exit is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, 9)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(h.pid, 0)
                h.exit = os.waitstatus_to_exitcode(status)
            if h.exit is None:
                h.exit = -9

    def mark_warm(self) -> None:
        """Record that this plan's kernels are in the cache (the next start forks nothing,
        and draws its parameters before binding: no_helper)."""
        for marker in (self.marker, self.early):
            if marker is None or marker.exists():
                continue
            with contextlib.suppress(OSError):
                marker.parent.mkdir(parents=True, exist_ok=True)
                tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
                tmp.write_text("warm\n")
                os.replace(tmp, marker)


def start(cnet: Any) -> Ahead:
    """Fork the helper for a bound CPU plan, if that is safe and useful (see the module doc);
    never raises: whatever goes wrong here only means compiling in this process."""
    try:
        return _start(cnet)
    except Exception as e:
        return Ahead(f"not started: {type(e).__name__}: {e}")


def no_helper(cnet: Any) -> Ahead | None:
    """Before a CPU plan is bound: an Ahead saying why no helper will be forked for it, or
    None where one may be (start decides, once the plan is bound). Where none will be, the
    plan draws its parameters at once, before binding (a thread: nothing may be forked after
    that). Warm here means this net, at this batch, under the same code, versions, cache
    folders and settings, was compiled before (_early_marker); never raises."""
    try:
        if os.environ.get("NETDSL_COMPILE_AHEAD", "") == "0":
            return Ahead("off (NETDSL_COMPILE_AHEAD=0)")
        early = _early_marker(cnet)
        why_not = _unsafe()
        if why_not is not None:
            return Ahead(why_not, early=early)
        if early is not None and early.exists():
            return Ahead("warm (compiled before)")
    except Exception:  # start decides after the binding, as before
        pass
    return None


def _early_marker(cnet: Any) -> Path | None:
    """The file saying this net was compiled before at this batch (mark_warm writes it with
    the plan's marker): what the plan will be is known from these before binding it (the
    code, the versions, the cache folders, the net's layers with their shapes and
    attributes, the batch, the settings that choose kernels or threads, the cores). Kept on
    the plan: no_helper and, where it let a helper be forked, _start both ask for it."""
    known = getattr(cnet, "_early_marker", ())
    if known:
        return known[0]
    path = _early_marker_path(cnet)
    with contextlib.suppress(AttributeError):  # a plan that takes no attributes: ask again
        cnet._early_marker = (path,)
    return path


def _early_marker_path(cnet: Any) -> Path | None:
    try:
        from .ops import codegen

        settings = sorted((k, v) for k, v in os.environ.items()
                          if k.startswith(("NETDSL_", "NUMBA_", "OMP_", "OPENBLAS_")))  # fmt: skip
        parts = [codegen.code_version(), _installed(), sys.version,
                 sys.executable, str(codegen.cache_folder()), str(cnet.batch),
                 str(os.cpu_count()), repr(settings), repr(cnet.net.layers)]  # fmt: skip
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
        return codegen.cache_folder() / "warm" / f"net_{digest}"
    except Exception:
        return None


def _installed() -> str:
    """The plan's own code (netdsl's modules outside netdsl.ops, which code_version covers)
    and Numba's version, by their files' sizes and modification times: cheaper than reading
    them, and numba is not imported yet (binding the plan does that)."""
    import importlib.util

    root = Path(__file__).parent
    files = sorted(root.glob("*.py")) + sorted((root / "backends").glob("*.py"))
    spec = importlib.util.find_spec("numba")
    if spec is not None and spec.origin:
        files.append(Path(spec.origin).parent / "_version.py")
    return repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def _start(cnet: Any) -> Ahead:
    setting = os.environ.get("NETDSL_COMPILE_AHEAD", "")
    if setting == "0":
        return Ahead("off (NETDSL_COMPILE_AHEAD=0)")
    marker = _warm_marker(cnet)
    why_not = _unsafe()
    if why_not is None and marker is not None and marker.exists():
        why_not = "warm (compiled before)"
    if why_not is None and setting != "1":
        why_not = _busy()
    if why_not is None:
        why_not = _cache_unwritable()
    if why_not is None:
        why_not = _short_of_memory(cnet)
    early = _early_marker(cnet)
    if why_not is not None:
        return Ahead(why_not, marker=marker, early=early)
    lock_numba_cache()
    lock_compiles()
    sys.stdout.flush()
    sys.stderr.flush()
    n = _helper_count(cnet)
    # The first helper goes through _helper_calls (the parent's needs about reversed); where
    # there are more, they go through _parent_order_calls (the parent's needs in order, past
    # its first layer), each call to the first of them free to take it (the queue)
    orders = [(calls, _queue(len(calls))) for calls in
              ([_helper_calls(cnet)] + ([_parent_order_calls(cnet)] if n > 1 else []))]  # fmt: skip
    ahead = Ahead("forked", marker=marker, early=early, cpu_at_fork=time.process_time())
    for i in range(n):
        calls, queue = orders[min(i, len(orders) - 1)]
        done_r, done_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no more processes: those forked so far do the work
            os.close(done_r)
            os.close(done_w)
            break
        if pid == 0:  # a helper: compile, and leave without running the parent's exit handlers
            code = 1
            try:
                os.close(done_r)
                for h in ahead.helpers:  # the pipes of the helpers forked before this one
                    os.close(h.pipe)
                _quiet()
                _compile_in_child(calls, queue, done_w)
                code = 0
            finally:
                os._exit(code)
        os.close(done_w)
        ahead.helpers.append(Helper(pid, done_r))
    for _, queue in orders:
        os.close(queue)
    if not ahead.helpers:
        return Ahead("not started: fork failed", marker=marker, early=early)
    return ahead


def _unsafe() -> str | None:
    """Why forking here would be unsafe or useless, or None."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return "not on Linux"
    if _cores() < 2:
        return "one core"
    if threading.active_count() > 1:
        return "other threads running"
    if "mpi4py.MPI" in sys.modules:
        return "MPI"
    # Numba's own thread pool may be set up (numba.get_num_threads() does that) but has run
    # nothing: netdsl's CPU kernels use plain threads (netdsl.ops.conv.Workers), no prange.
    return None


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _busy(loadavg: str | None = None) -> str | None:
    """Why no core is idle for the helper, or None. `loadavg`: /proc/loadavg's text (read
    when None). Busy only when both the 1-minute load average and the tasks runnable right
    now (its fourth field, this process included) leave no idle core: the average alone
    lags a minute behind, so a start right after another job (a benchmark's previous
    process, a test run) read "busy" on an idle machine and compiled on one core (LeNet-5
    4.8 s instead of 2.8); the snapshot alone would miss a loaded machine's processes that
    happen to wait at that instant."""
    got = _load(loadavg)
    if got is None:
        return None
    load, others = got
    cores = _cores()
    if load > cores - 0.5 and others > cores - 1:  # a helper would only add CPU time
        return (f"no idle core (load average {load:.2f}, {others} other tasks running, "
                f"on {cores} cores)")  # fmt: skip
    return None


def _load(loadavg: str | None = None) -> tuple[float, int] | None:
    """(the 1-minute load average, the tasks runnable now besides this process) from
    /proc/loadavg's text (`loadavg`, read when None), or None where unreadable."""
    try:
        if loadavg is None:
            with open("/proc/loadavg") as f:
                loadavg = f.read()
        fields = loadavg.split()
        return float(fields[0]), int(fields[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return None


def _short_of_memory(cnet: Any) -> str | None:
    """Why a helper's copied pages might not fit, or None. A helper writes the plan's
    activations, gradients and the parameters' update: copy-on-write turns those pages into
    its own, up to about the plan's bytes plus three copies of the parameters (VGG-16 at
    batch 4: ~2.5 GiB). Fork only where that fits twice into the memory still available."""
    if _fits(cnet) == 0:
        need, avail = _memory(cnet)
        return f"short of memory ({need / 2**20:.0f} MiB to copy, {avail / 2**20:.0f} available)"
    return None


def _fits(cnet: Any) -> int | None:
    """How many helpers' copied pages fit twice into the memory available (None: unknown)."""
    got = _memory(cnet)
    return None if got is None else got[1] // (2 * max(1, got[0]))


def _memory(cnet: Any) -> tuple[int, int] | None:
    """(the bytes a helper may copy, the bytes available), or None where unknown."""
    try:
        need = sum(cnet.plan_bytes().values()) + 3 * cnet.theta.nbytes
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return need, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, AttributeError, TypeError):
        return None  # unknown: the load and safety checks still apply


def _cache_unwritable() -> str | None:
    """None if Numba would save netdsl's kernels to a folder this process can write."""
    from numba.core.caching import FunctionCache

    from .ops import jit

    try:  # the folder Numba picks for a netdsl.ops kernel (the same locators, same order)
        path = FunctionCache(jit.probe).cache_path
    except Exception as e:  # no usable locator: Numba itself refuses to cache
        return f"no Numba cache ({e})"
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return None if os.access(probe, os.W_OK) else f"Numba cache {path} not writable"


def _warm_marker(cnet: Any) -> Path | None:
    """The file saying this plan (its runners, shapes, batch, the code and Numba versions,
    the cache folders) has been compiled before."""
    try:
        import numba

        from .ops import codegen

        parts = [codegen.code_version(), numba.__version__, sys.version, sys.executable,
                 os.environ.get("NUMBA_CACHE_DIR", ""), str(codegen.cache_folder()),
                 str(cnet.batch), cnet.describe()]  # fmt: skip
        for r in cnet.runners:
            parts.append(
                f"{type(r).__module__}.{type(r).__qualname__}:{sorted(r.layer.attrs.items())!r}"
            )
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
        return codegen.cache_folder() / "warm" / f"plan_{digest}"
    except Exception:  # no marker: every start counts as cold (forks when safe)
        return None


def _quiet() -> None:
    """The child prints nothing (unless NETDSL_DEBUG): its output would only confuse."""
    if os.environ.get("NETDSL_DEBUG"):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _helper_calls(cnet: Any) -> list[tuple[str, Any]]:
    """The calls the helpers make, (phase, call), in about the reverse of the order the
    parent needs them, so that they meet it in the middle with little waiting: the parent
    does not wait for a helper (it compiles what it finds neither compiled nor being
    compiled: lock_compiles), so whatever a helper compiles that the parent reaches late
    saves the parent that compile, and the parent's own work is never delayed.

    1. "update": the optimizer's update `netdsl train` runs (the parent needs it last),
       compiled by a call on one-element views of the buffers (the same argument types; the
       kernel rejects the segments past the end before it writes anything: no pass over
       VGG-16's 138 M parameters and no first touch of a full-size state).
    2. "late": the forward of the first layer of the last convolution family
       (_late_family), where the parent's forward compiling is the longer share (AlexNet).
    3. "backward": the backward, first layer first (the parent's runs last layer first). A
       layer whose backward calls code its forward calls too (a convolution's im2col and
       GEMM wrapper) goes after the next layer that does not: the parent's forward compiles
       that shared code first thing, and a helper would otherwise wait for it (LeNet-5's
       first convolution: 0.3 s).
    4. "forward": until the parent ends the helpers, the forward from the last layer back.
    A call that fails in a helper (say, on buffers no forward filled) is skipped: the parent
    compiles what it needs."""
    calls: list[tuple[str, Any]] = [("update", lambda: _update(cnet))]
    calls += [("late", lambda r=r: r.forward(True)) for r in _late_family(cnet.runners)]
    calls += [("backward", lambda r=r: _backward(cnet, r)) for r in backward_order(cnet.runners)]
    calls += [("forward", lambda r=r: r.forward(True)) for r in reversed(cnet.runners)]
    return calls


def _update(cnet: Any) -> None:
    from .train.optimizer import Optimizer

    opt = Optimizer(dict(cnet.net.train["optimizer"]), cnet.slots, 1)
    opt.step(cnet.theta[:1], cnet.grad[:1], float(cnet.net.train["optimizer"]["lr"]))


def _backward(cnet: Any, r: Any) -> None:
    r.backward()
    for scratch, dst in r.adds:
        cnet.accumulate_into(dst, scratch)


def _parent_order_calls(cnet: Any) -> list[tuple[str, Any]]:
    """The calls of the second and further helpers (phases as _helper_calls'): the forward
    from the parent's second layer on ("late": the parent compiles its first layer itself
    and reaches the next ones later), then the backward in the parent's order (last layer
    first), then the update. With the first helper going about the other way, the helpers
    compile ahead of the parent at both ends of its first step."""
    calls = [("late", lambda r=r: r.forward(True)) for r in cnet.runners[1:]]
    calls += [("backward", lambda r=r: _backward(cnet, r)) for r in reversed(cnet.runners)]
    return calls + [("forward", lambda: _update(cnet))]


def _queue(n: int) -> int:
    """A pipe holding the records 0 .. n-1 (4 bytes each), its read end. Read by several
    helpers, a read of 4 bytes takes one whole record (the pipe's lock serialises readers),
    so each call goes to the first helper free to take it. Written in full and closed before
    any fork: a helper that finds it empty reads end of file, and has had its whole share."""
    queue_r, queue_w = os.pipe()
    os.set_blocking(queue_w, False)
    records = b"".join(i.to_bytes(4, "little") for i in range(n))
    try:  # 4 KiB at a time (atomic): a pipe that holds fewer queues the first calls only
        for at in range(0, len(records), 4096):
            os.write(queue_w, records[at : at + 4096])
    except OSError:
        pass
    finally:
        os.close(queue_w)
    return queue_r


class _Share:
    """A helper's share of the calls: the next one no helper has taken yet (its index, read
    from the queue pipe all the helpers share), phase after phase."""

    def __init__(self, calls: list[tuple[str, Any]], queue: int) -> None:
        self.calls, self.queue = calls, queue
        self._next: int | None = None  # read, not yet handed out (the next phase's first)
        self.taken = 0  # calls handed out so far

    def _peek(self) -> int:
        if self._next is None:
            try:
                record = os.read(self.queue, 4)
            except OSError:
                record = b""
            self._next = int.from_bytes(record, "little") if len(record) == 4 else -1
        return self._next

    def phase(self, *names: str):
        """Yield this helper's calls of phases `names`, up to the first call of another."""
        while True:
            i = self._peek()
            if i < 0 or i >= len(self.calls) or self.calls[i][0] not in names:
                return
            self._next = None
            self.taken += 1
            yield self.calls[i][1]


def _compile_in_child(calls: list[tuple[str, Any]], queue: int, done: int) -> None:
    """A helper: make its share of `calls` (_helper_calls: each call goes to the first
    helper free to take it, through the `queue` pipe), say "update" on `done` once it made
    the update, and "<CPU s> <lock wait s> <compiles put off> <calls taken>" once no
    backward call is left to take. What it put off (another process was compiling a
    function the call needs) it makes after its next call that went through, or at the end,
    waiting."""
    share = _Share(calls, queue)
    for update in share.phase("update"):
        with contextlib.suppress(Exception):
            update()
        os.write(done, b"update\n")
    later = _run_all(share.phase("late", "backward"), wait=False)
    from numba.core import dispatcher

    # a child's CPU time starts at 0
    busy = getattr(dispatcher.Dispatcher.compile, "busy", 0)
    said = f"{time.process_time():.3f} {compile_wait_s():.3f} {busy} {share.taken}\n"
    os.write(done, said.encode())
    _run_all(itertools.chain(later, share.phase("forward")))


def _helper_count(cnet: Any, loadavg: str | None = None) -> int:
    """How many helpers to fork: one for each core that is idle besides this process's (by
    the load average and the tasks running now, the lesser: see _busy), at most
    MAX_HELPERS, as many as the memory they may copy fits twice (_short_of_memory), and at
    least one. ``NETDSL_COMPILE_HELPERS=N`` asks for N (still at most MAX_HELPERS).
    `loadavg`: /proc/loadavg's text (read when None)."""
    asked = os.environ.get("NETDSL_COMPILE_HELPERS", "")
    if asked.strip().isdigit() and int(asked) > 0:
        return min(int(asked), MAX_HELPERS)
    got = _load(loadavg)
    busy = 0.0 if got is None else min(got)
    n = int(_cores() - max(0.0, busy)) - 1
    fit = _fits(cnet)
    if fit is not None:
        n = min(n, fit)
    return max(1, min(n, MAX_HELPERS))


def _run_all(calls: Iterable, wait: bool = True) -> list:
    """Call each of `calls` (a runner's pass), errors ignored. One that needs a function the
    parent is compiling right now is put off (lock_compiles raises Busy instead of waiting)
    and tried again after the next call that goes through, and at the end waiting (`wait`)
    or not: then the calls still put off are returned, for the next list. The helper does
    other work meanwhile, where waiting cost AlexNet's helper 0.5-0.9 s."""
    from numba.core import dispatcher

    patch = dispatcher.Dispatcher.compile

    def attempt(call, skip: bool) -> bool:  # False: put off (met a function being compiled)
        before = getattr(patch, "busy", 0)
        patch.skip_busy = skip and hasattr(patch, "busy")
        try:
            call()
        except Exception:
            pass
        finally:
            patch.skip_busy = False
        return getattr(patch, "busy", 0) == before

    later: list = []
    for call in calls:
        if not attempt(call, True):
            later.append(call)
            continue
        if later:  # one went through: try the oldest put-off call again
            first = later.pop(0)
            if not attempt(first, True):
                later.append(first)
    if not wait:
        return later
    for call in later:
        attempt(call, False)
    return []


def _family(runner: Any) -> tuple:
    """What tells a runner's forward kernels apart: its class, its op's class and the op's
    Winograd pass if any (ConvCPU.wino: AlexNet's conv2 is F(2x2,5x5), conv3-5 F(2x2,3x3))."""
    op = getattr(runner, "op", None)
    return (type(runner), type(op), type(getattr(op, "wino", None)))


def _late_family(runners: list) -> list:
    """[the first runner of the last kernel family among the runners sharing code with the
    backward], or [] where that is the first such runner (the parent compiles it first
    thing): the last big stretch of the parent's forward compiling (AlexNet: the 3x3
    Winograd forward of conv3-5, 2.7 s), which the helper takes right after the update."""
    shared = [r for r in runners if _shares_forward_code(r)]
    firsts: dict = {}
    for r in shared:
        firsts.setdefault(_family(r), r)
    last = list(firsts.values())[-1] if firsts else None
    return [last] if last is not None and last is not shared[0] else []


def backward_order(runners: list) -> list:
    """The order the helper runs the backward of `runners` (forward order) in: first layer
    first, each runner whose backward shares code with forward kernels moved after the next
    runner that does not (see _compile_in_child)."""
    order, held = [], []
    for r in runners:
        if _shares_forward_code(r):
            held.append(r)
        else:
            order.append(r)
            order += held
            held = []
    return order + held


def _shares_forward_code(runner: Any) -> bool:
    """Whether this runner's backward kernels call code that forward kernels call too (a
    runner class says so: the convolution's im2col and GEMM wrapper)."""
    return bool(getattr(runner, "shares_forward_kernels", False))


def lock_compiles() -> None:
    """Make a compile of a cached Numba function one critical section between processes: an
    flock on ``<index>.lock`` beside the function's cache index, taken inside Numba's
    compiler lock (so one thread per process holds or wants such a lock; call graphs have
    no cycles, so two processes cannot deadlock). The process that waited finds the other's
    code in the cache. The waits add up in compile_wait_s(). Idempotent; patches
    numba.core.dispatcher.Dispatcher.compile in place."""
    from numba.core import dispatcher, sigutils
    from numba.core.compiler_lock import global_compiler_lock

    cls = dispatcher.Dispatcher
    if getattr(cls, "_netdsl_compile_locked", False):
        return
    numba_compile = cls.compile

    def compile(self, sig):  # noqa: A001 - Numba's method name
        index = getattr(getattr(self, "_cache", None), "_cache_file", None)
        index = getattr(index, "_index_path", None)  # None: not cached (nothing to share)
        if index is None or tuple(sigutils.normalize_signature(sig)[0]) in self.overloads:
            return numba_compile(self, sig)
        with global_compiler_lock:
            if index in compile.held:  # this process holds it already (a nested compile)
                return numba_compile(self, sig)
            try:
                lock = _file_lock(index + ".lock", busy=compile.skip_busy)
                waited = lock.__enter__()
            except Busy:
                compile.busy += 1
                raise
            try:
                compile.wait_s += waited
                if waited > 0.001:
                    name = getattr(self.py_func, "__qualname__", "?")
                    compile.waits[name] = compile.waits.get(name, 0.0) + waited
                compile.held.add(index)
                return numba_compile(self, sig)
            finally:
                compile.held.discard(index)
                lock.__exit__(None, None, None)

    # on the function: state of this patch, not of the module
    compile.wait_s = 0.0
    compile.waits = {}  # kernel name -> seconds waited for another process's compile of it
    compile.held = set()  # the lock files this process holds (flock is per open file)
    compile.skip_busy = False  # the helper sets it: raise Busy rather than wait
    compile.busy = 0  # how many times Busy was raised
    cls.compile = compile
    cls._netdsl_compile_locked = True


class Busy(Exception):
    """Another process is compiling this function (lock_compiles in the helper, which then
    does other work first and comes back to it)."""


def compile_waits() -> dict[str, float]:
    """{kernel: seconds} this process waited for other processes' compiles of each."""
    from numba.core import dispatcher

    return dict(getattr(dispatcher.Dispatcher.compile, "waits", {}))


def compile_wait_s() -> float:
    """Seconds this process has waited for other processes' compiles (lock_compiles)."""
    from numba.core import dispatcher

    return float(getattr(dispatcher.Dispatcher.compile, "wait_s", 0.0))


@contextlib.contextmanager
def _file_lock(path: str, limit: float = JOIN_LIMIT_S, busy: bool = False):
    """An exclusive flock on `path` (created), yielding the seconds waited for it; after
    `limit` seconds, or where no lock can be had, it goes on unlocked (a duplicate compile
    is only slower). `busy`: raise Busy instead of waiting when another holds it."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield 0.0
        return
    t0 = time.perf_counter()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if busy:
                    raise Busy(path) from None
                if time.perf_counter() - t0 > limit:
                    break
                time.sleep(0.005)
            except OSError:
                break
        yield time.perf_counter() - t0
    finally:
        os.close(fd)  # releases the lock


def lock_numba_cache() -> None:
    """Make Numba's cache saves safe between processes: one flock per cache folder around
    the read-modify-write of a function's index, the data file written before the index
    names it. Idempotent; patches numba.core.caching.IndexDataCacheFile.save in place."""
    from numba.core import caching

    cls = caching.IndexDataCacheFile
    if getattr(cls, "_netdsl_locked", False):
        return

    def save(self, key, data) -> None:
        with _folder_lock(self._cache_path):
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                used = set(overloads.values())
                name = next(n for n in map(self._data_name, itertools.count(1)) if n not in used)
            self._save_data(name, data)  # before the index: an entry never names a missing file
            if overloads.get(key) != name:
                overloads[key] = name
                self._save_index(overloads)

    cls.save = save
    cls._netdsl_locked = True


@contextlib.contextmanager
def _folder_lock(path: str):
    """An exclusive flock on a folder (released by the kernel if the holder dies)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here: save as Numba does
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
