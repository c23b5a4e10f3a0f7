"""Training-step time of netdsl on the CPU against idiomatic PyTorch, same net and batch.

The competitor is benchmarks/torch_nets.py: each net written by hand as a PyTorch user
would (tests/test_torch_nets.py checks each gives netdsl's forward from netdsl's weights),
trained with torch.optim.SGD at the file's settings. A step is forward + backward + SGD
update on one random batch of the net's input shape (fixed seed, random labels).

Every measurement is its own process, the engines alternating (netdsl first on even runs,
PyTorch first on odd ones), with the same number of threads (netdsl: NUMBA_NUM_THREADS and
one BLAS thread, as `netdsl train` runs; PyTorch: torch.set_num_threads and OMP/MKL).
Reported per engine: the median step time (median over a run's steps, then over runs), the
images/s ratio netdsl / PyTorch, peak RSS (getrusage in the child), and the time from
launching the process to the end of its first step, cold (netdsl: empty caches, Numba's
NUMBA_CACHE_DIR and netdsl's generated-kernel NETDSL_CACHE_DIR, so every kernel is generated
and compiled; PyTorch: its first process here, import included) and warm (the median of the
later runs), each as wall time and as the process's CPU time (getrusage: user + system, the
interpreter's start included), which other load inflates much less than the wall time.

--startup measures only that: `--runs` rounds per net of a cold netdsl process (fresh empty
caches), a warm one (the caches it left) and a PyTorch process, each stopping after its first
step; medians of wall and CPU time. A cold netdsl start compiles on the idle cores (forked
helpers, one an idle core, on two cores one, compile the backward kernels,
netdsl/compile_ahead.py): its CPU column counts this process only, "+ helper" the helpers'
CPU, and "2 idle cores" what the start would take with an idle core for each process (two
with one helper), from this process's CPU plus the time it waited for the helpers'
compiles: the figure to compare while the machine is loaded. The processes never compile
one kernel twice: the second to need it waits for the first (a file lock) and loads it; those
waits are wall time and count in the estimate as they are, so under load it errs long.
--in-process adds per round a cold start with the helper off (NETDSL_COMPILE_AHEAD=0), the
"before".

Runs are not comparable while other programs use the CPU (they hurt the two engines
unequally: PyTorch's spinning OpenMP threads suffer most), so before each run the CPU's
busy share is measured for a second from /proc/stat (and /proc/loadavg read): a run that
starts with more than --max-busy cores busy is flagged, left out of the medians while
unflagged runs exist, and the table says so.

    python benchmarks/cpu_vs_torch.py --nets lenet5                # 2 threads, 3 runs
    python benchmarks/cpu_vs_torch.py --nets all --runs 3          # the issue 15 table
    python benchmarks/cpu_vs_torch.py --nets cifar10 --batch 64 --steps 20 --json out.json
    python benchmarks/cpu_vs_torch.py --startup --nets lenet5 alexnet --runs 3  # first step
    python benchmarks/cpu_vs_torch.py --startup --in-process --nets lenet5 --runs 3
    python benchmarks/cpu_vs_torch.py --combine r1.json r2.json r3.json  # 3 invocations
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the batch sizes of issue 15's table
BATCH = {"lenet5": 128, "lenet5-1998": 128, "cifar10": 128, "alexnet": 16, "resnet18": 8,
         "vgg16": 4}  # fmt: skip
ALL = ["lenet5", "lenet5-1998", "cifar10", "alexnet", "resnet18", "vgg16"]


# ------------------------------------------------------------------------------- the worker
def worker(engine: str, name: str, batch: int, steps: int, threads: int, spec: dict) -> dict:
    """One engine's run in this process: first step, `steps` timed steps, peak RSS. `spec`:
    the net's input shape, classes and optimizer (the PyTorch process imports no netdsl)."""
    import resource

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *spec["shape"])).astype(np.float32)
    y = rng.integers(0, spec["classes"], batch)
    opt_spec = spec["optimizer"]
    if engine == "netdsl":
        sys.path.insert(0, str(ROOT))
        import netdsl
        from netdsl.backends import compile_network
        from netdsl.train.optimizer import Optimizer

        net = netdsl.load(str(ROOT / "nets" / f"{name}.net"))
        cnet = compile_network(net, batch=batch, seed=0)
        # as netdsl train does: theta.size would wait for the parameters' drawing thread
        opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.grad.size)

        def step() -> float:
            loss = cnet.step_grads(x, y)
            opt.step(cnet.theta, cnet.grad, opt_spec["lr"])
            return loss
    else:
        import torch

        sys.path.insert(0, str(ROOT))
        from benchmarks import torch_nets

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = torch_nets.build(name)  # PyTorch's own initialisation
        model.train()
        opt = torch_nets.sgd(model, opt_spec)
        loss_fn = torch_nets.loss_fn(name)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt), yt)
            loss.backward()
            opt.step()
            return loss.item()  # netdsl's step returns its loss too

    loss = step()
    first_end = time.time()  # the parent subtracts its launch time
    usage = resource.getrusage(resource.RUSAGE_SELF)
    first_cpu = usage.ru_utime + usage.ru_stime  # this process's CPU time so far
    if steps == 0:  # --startup: the first step is all that is measured
        out = {"engine": engine, "first_end": first_end, "first_cpu_s": first_cpu,
               "loss_finite": bool(np.isfinite(loss))}  # fmt: skip
        ahead = getattr(cnet, "ahead", None) if engine == "netdsl" else None
        if ahead is not None:  # the compile-ahead helper (ended by now: joined or never forked)
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            est = ahead.idle_cores_estimate(first_cpu)
            out.update(
                ahead=ahead.reason,
                helpers=len(ahead.helpers),
                helper_cpu_s=kids.ru_utime + kids.ru_stime,
                waited_s=ahead.waited_s,
                two_core_s=first_cpu if est is None else est,
                # wall seconds each process waited for the other's compile of a shared kernel
                lock_wait_s=[
                    getattr(ahead, "parent_wait_s", 0.0),
                    getattr(ahead, "child_wait_s", 0.0),
                ],
            )
        return out
    # Warm up for 5 steps or 0.5 s, then time at least `steps` steps and 2 s: 20 steps of
    # a 5 ms LeNet step are 0.1 s, where one scheduler hiccup moved the median by 50 %.
    warm_until, n = time.perf_counter() + 0.5, 0
    while n < 5 or time.perf_counter() < warm_until:
        step()
        n += 1
    times: list[float] = []
    timed_until = time.perf_counter() + 2.0
    while len(times) < steps or time.perf_counter() < timed_until:
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"engine": engine, "step_s": statistics.median(times), "first_end": first_end,
            "first_cpu_s": first_cpu, "rss_mib": rss_kib / 1024,
            "loss_finite": bool(np.isfinite(loss))}  # fmt: skip


# ------------------------------------------------------------------------------ the parent
def cpu_busy(seconds: float = 1.0) -> tuple[float, float]:
    """(cores busy over the next `seconds` by /proc/stat, the 1-minute load average)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
    except OSError:  # no /proc: no check
        return 0.0, 0.0
    return (1.0 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1), load1


def net_spec(name: str) -> dict:
    """What a worker needs of nets/<name>.net: input shape, classes, optimizer settings."""
    sys.path.insert(0, str(ROOT))
    import netdsl

    net = netdsl.load(str(ROOT / "nets" / f"{name}.net"))
    return {"shape": list(net.input.out_shape), "classes": net.loss.in_shapes[0][0],
            "optimizer": dict(net.train["optimizer"])}  # fmt: skip


def run_worker(engine: str, name: str, batch: int, steps: int, threads: int,
               cache_dir: str, extra_env: dict | None = None) -> dict:  # fmt: skip
    # netdsl's kernels bring their own threads and run BLAS on one (as `netdsl train`
    # does); PyTorch gets the same number through torch.set_num_threads and OpenMP
    blas = "1" if engine == "netdsl" else str(threads)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=blas,
               OPENBLAS_NUM_THREADS=blas, MKL_NUM_THREADS=blas,
               NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"),
               NETDSL_CACHE_DIR=os.path.join(cache_dir, "netdsl"), **(extra_env or {}))  # fmt: skip
    cmd = [sys.executable, __file__, "--worker", engine, "--nets", name, "--batch", str(batch),
           "--steps", str(steps), "--threads", str(threads),
           "--spec", json.dumps(net_spec(name))]  # fmt: skip
    busy, load1 = cpu_busy()
    launched = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{engine} worker failed on {name}:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["first_s"] = r.pop("first_end") - launched
    r["busy"], r["load1"] = busy, load1
    return r


def bench_net(name: str, batch: int, runs: int, steps: int, threads: int,
              max_busy: float) -> dict:  # fmt: skip
    """Cold runs, then `runs` alternating runs of each engine: the summary of one net."""
    rec: dict = {"net": name, "batch": batch, "threads": threads, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="netdsl-cache-") as cache:
        cold = {"netdsl": run_worker("netdsl", name, batch, 2, threads, cache),
                "torch": run_worker("torch", name, batch, 2, threads, cache)}  # fmt: skip
        res: dict[str, list[dict]] = {"netdsl": [], "torch": []}
        for i in range(runs):
            for eng in ("netdsl", "torch") if i % 2 == 0 else ("torch", "netdsl"):
                r = run_worker(eng, name, batch, steps, threads, cache)
                r["loaded"] = r["busy"] > max_busy
                res[eng].append(r)
                flag = "  LOADED" if r["loaded"] else ""
                print(f"  {name} run {i + 1} {eng:6}: step {1e3 * r['step_s']:9.2f} ms, "
                      f"first step {r['first_s']:.2f} s, RSS {r['rss_mib']:.0f} MiB, "
                      f"{r['busy']:.2f} cores busy before (load {r['load1']:.2f}){flag}",
                      flush=True)  # fmt: skip
    summary = {}
    for eng, rs in res.items():
        quiet = [r for r in rs if not r["loaded"]]
        use = quiet or rs
        summary[eng] = {
            "step_s": statistics.median(r["step_s"] for r in use),
            "rss_mib": max(r["rss_mib"] for r in use),
            "first_cold_s": cold[eng]["first_s"],
            "first_warm_s": statistics.median(r["first_s"] for r in use),
            "first_cold_cpu_s": cold[eng]["first_cpu_s"],
            "first_warm_cpu_s": statistics.median(r["first_cpu_s"] for r in use),
            "runs_used": len(use), "runs_loaded": len(rs) - len(quiet),
            "loss_finite": all(r["loss_finite"] for r in rs),
        }  # fmt: skip
    rec["runs"] = res
    rec["cold"] = cold
    rec["summary"] = summary
    return rec


def bench_startup(name: str, batch: int, runs: int, threads: int, in_process: bool) -> dict:
    """`runs` rounds of: a cold netdsl process (new empty caches), a warm one, PyTorch; with
    `in_process` first a cold one compiling everything itself (its own empty caches)."""
    kinds = [("cold", "netdsl", {}), ("warm", "netdsl", {}), ("torch", "torch", {})]
    if in_process:
        kinds.insert(0, ("cold1", "netdsl", {"NETDSL_COMPILE_AHEAD": "0"}))
    rows: dict[str, list[dict]] = {kind: [] for kind, _, _ in kinds}
    for i in range(runs):
        for kind, eng, env in kinds:
            if kind != "warm":  # the warm start reuses the cold start's caches
                cache = tempfile.TemporaryDirectory(prefix="netdsl-cache-")
            r = run_worker(eng, name, batch, 0, threads, cache.name, env)
            rows[kind].append(r)
            n = r.get("helpers", 1)
            helper = (f"; helper: {r['ahead']}" + (f" ({n} helpers)" if n > 1 else "")
                      + f", +{r['helper_cpu_s']:.2f} s CPU, {max(n, 1) + 1} idle cores "
                      f"{r['two_core_s']:.2f} s" if "ahead" in r else "")  # fmt: skip
            if any(r.get("lock_wait_s", ())):
                helper += " (lock waits: this process {:.2f} s, helper {:.2f} s)".format(
                    *r["lock_wait_s"]
                )
            print(f"  {name} round {i + 1} {kind:5}: first step {r['first_s']:6.2f} s wall, "
                  f"{r['first_cpu_s']:6.2f} s CPU; {r['busy']:.2f} cores busy before "
                  f"(load {r['load1']:.2f}){helper}", flush=True)  # fmt: skip
            if kind in ("cold1", "warm", "torch"):
                cache.cleanup()
    med = {}
    for k, v in rows.items():
        med[k] = {"wall_s": statistics.median(r["first_s"] for r in v),
                  "cpu_s": statistics.median(r["first_cpu_s"] for r in v),
                  "busy": statistics.median(r["busy"] for r in v)}  # fmt: skip
        if all("two_core_s" in r for r in v):
            med[k]["helper_cpu_s"] = statistics.median(r["helper_cpu_s"] for r in v)
            med[k]["two_core_s"] = statistics.median(r["two_core_s"] for r in v)
    return {"net": name, "batch": batch, "threads": threads, "runs": rows, "startup": med}


def startup_table(records: list[dict]) -> str:
    """Time to the end of the first training step (Markdown): medians, wall and CPU."""
    one = any("cold1" in rec["startup"] for rec in records)
    lines = ["| net, batch | " + ("netdsl cold in-process: wall / CPU | " if one else "")
             + "netdsl cold: wall / CPU + helper / 2 idle cores | netdsl warm: wall / CPU | "
             "PyTorch (incl. import): wall / CPU | cores busy before (worst median) |",
             "|---|---|---|---|---|" + ("---|" if one else "")]  # fmt: skip
    for rec in records:
        m = rec["startup"]
        cells = []
        for k in ("cold1", "cold", "warm", "torch") if one else ("cold", "warm", "torch"):
            cell = f"{m[k]['wall_s']:.2f} s / {m[k]['cpu_s']:.2f} s"
            if k == "cold" and "two_core_s" in m[k]:
                cell += f" + {m[k]['helper_cpu_s']:.2f} s / {m[k]['two_core_s']:.2f} s"
            cells.append(cell)
        busy = max(m[k]["busy"] for k in m)
        lines.append(f"| {rec['net']}, {rec['batch']} | {' | '.join(cells)} | {busy:.2f} |")
    return "\n".join(lines)


def table(records: list[dict]) -> str:
    """The issue 15 table (Markdown)."""
    lines = ["| net, batch | netdsl step | PyTorch step | ratio (img/s) | peak RSS netdsl / "
             "PyTorch | first step netdsl cold / warm | PyTorch cold / warm (incl. import) "
             "| runs used (loaded) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rec in records:
        n, t = rec["summary"]["netdsl"], rec["summary"]["torch"]
        ms = lambda s: f"{1e3 * s:.1f} ms" if s < 1 else f"{s:.2f} s"  # noqa: E731
        loaded = n["runs_loaded"] + t["runs_loaded"]
        lines.append(
            f"| {rec['net']}, {rec['batch']} | {ms(n['step_s'])} | {ms(t['step_s'])} | "
            f"{t['step_s'] / n['step_s']:.2f}x | {n['rss_mib']:,.0f} / {t['rss_mib']:,.0f} MiB "
            f"| {n['first_cold_s']:.1f} s / {n['first_warm_s']:.2f} s | "
            f"{t['first_cold_s']:.1f} s / {t['first_warm_s']:.2f} s | "
            f"{n['runs_used']} + {t['runs_used']} ({loaded}) |"
        )
    return "\n".join(lines)


def combine(invocations: list[list[dict]]) -> list[dict]:
    """One record per net from the records of several invocations (`--json` files) of the
    same nets: each engine's step time, first steps and runs are the medians over the
    invocations' summaries, peak RSS the largest; `invocations` and `steps_s` keep every
    invocation's step times so the table can show the spread."""
    by_net: dict[tuple[str, int], list[dict]] = {}
    for records in invocations:
        for rec in records:
            by_net.setdefault((rec["net"], rec["batch"]), []).append(rec)
    out = []
    for (name, batch), recs in by_net.items():
        summary = {}
        for eng in ("netdsl", "torch"):
            ss = [r["summary"][eng] for r in recs]
            med = lambda k, ss=ss: statistics.median(s[k] for s in ss)  # noqa: E731
            summary[eng] = {
                "step_s": med("step_s"), "rss_mib": max(s["rss_mib"] for s in ss),
                "first_cold_s": med("first_cold_s"), "first_warm_s": med("first_warm_s"),
                "first_cold_cpu_s": med("first_cold_cpu_s"),
                "first_warm_cpu_s": med("first_warm_cpu_s"),
                "runs_used": sum(s["runs_used"] for s in ss),
                "runs_loaded": sum(s["runs_loaded"] for s in ss),
                "loss_finite": all(s["loss_finite"] for s in ss),
                "steps_s": [s["step_s"] for s in ss],
            }  # fmt: skip
        out.append({"net": name, "batch": batch, "threads": recs[0]["threads"],
                    "invocations": len(recs), "summary": summary})  # fmt: skip
    return out


def spread_table(records: list[dict]) -> str:
    """Each invocation's step times and ratio, for a table made by `combine`."""
    lines = ["| net, batch | netdsl step per invocation | PyTorch step per invocation | "
             "ratio per invocation |", "|---|---|---|---|"]  # fmt: skip
    for rec in records:
        n, t = rec["summary"]["netdsl"]["steps_s"], rec["summary"]["torch"]["steps_s"]
        ms = lambda v: ", ".join(f"{1e3 * s:.1f}" for s in v) + " ms"  # noqa: E731
        ratios = ", ".join(f"{b / a:.2f}x" for a, b in zip(n, t))
        lines.append(f"| {rec['net']}, {rec['batch']} | {ms(n)} | {ms(t)} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["lenet5"],
                    help=f"net names, or all ({', '.join(ALL)})")  # fmt: skip
    ap.add_argument("--batch", type=int, help="batch size (default: issue 15's for each net)")
    ap.add_argument(
        "--steps",
        type=int,
        default=20,
        help="timed steps per run, at least (and at least 2 s of them)",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (medians)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-busy", type=float, default=0.3,
                    help="cores busy before a run above which it is flagged "
                         "(default 0.3)")  # fmt: skip
    ap.add_argument("--json", help="also write every run's numbers here")
    ap.add_argument("--startup", action="store_true",
                    help="measure only the time to the first step: per round a cold and a "
                         "warm netdsl process and a PyTorch one")  # fmt: skip
    ap.add_argument("--in-process", action="store_true",
                    help="with --startup: also a cold start with the compile-ahead helper off "
                         "(NETDSL_COMPILE_AHEAD=0)")  # fmt: skip
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="print the table of several invocations' --json files (medians over "
                         "the invocations) and each one's step times; runs nothing")  # fmt: skip
    ap.add_argument("--worker", choices=["netdsl", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(a.spec)
        print(json.dumps(worker(a.worker, a.nets[0], a.batch, a.steps, a.threads, spec)))
        return
    if a.combine:
        invocations = []
        for path in a.combine:
            try:
                invocations.append(json.loads(Path(path).read_text()))
            except (OSError, ValueError) as e:
                ap.error(f"{path}: not a --json file of this script ({e})")
        records = combine(invocations)
        print(f"{len(invocations)} invocations: " + ", ".join(a.combine) + "\n")
        print(table(records))
        print()
        print(spread_table(records))
        return
    names = ALL if a.nets == ["all"] else a.nets
    unknown = [n for n in names if n not in BATCH]
    if unknown:
        ap.error(f"unknown nets {unknown}: choose from {', '.join(ALL)} or all")
    load = open("/proc/loadavg").read().strip() if os.path.exists("/proc/loadavg") else "?"
    print(f"{a.threads} threads, {a.steps} steps per run, {a.runs} runs per engine; "
          f"{os.cpu_count()} cores, /proc/loadavg at start: {load}")  # fmt: skip
    if a.startup:
        records = [bench_startup(name, a.batch or BATCH[name], a.runs, a.threads, a.in_process)
                   for name in names]  # fmt: skip
        print()
        print(startup_table(records))
        if a.json:
            Path(a.json).write_text(json.dumps(records, indent=1))
        return
    records = []
    for name in names:
        records.append(bench_net(name, a.batch or BATCH[name], a.runs, a.steps, a.threads,
                                 a.max_busy))  # fmt: skip
    print()
    print(table(records))
    if any(r["summary"][e]["runs_loaded"] for r in records for e in ("netdsl", "torch")):
        print("\nsome runs started with other load on the CPU (LOADED above): they are left "
              "out where quiet runs exist; a table from loaded runs only is not "
              "comparable")  # fmt: skip
    if any(not r["summary"][e]["loss_finite"] for r in records for e in ("netdsl", "torch")):
        print("\nnote: a loss became non-finite during a run (random data, the file's lr)")
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
