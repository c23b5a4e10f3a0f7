"""Training-step time of netdsl on CUDA versus PyTorch eager (cuDNN) on the same GPU.

Each measurement runs in its own process on random data of the net's input shape; a step is
the batch's upload (images and labels, from pinned host memory, in both engines: netdsl's
step_grads uploads its batch, so PyTorch's step does too) + forward + backward + SGD update;
netdsl runs with its training step replayed as a CUDA graph (the default) and once more
launching kernels one by one. Every step is timed alone (the device synchronised before and
after) and the median over the steps after a warm-up is reported. PyTorch runs twice, with
TF32 off (IEEE float32, what netdsl computes) and on (cuDNN / cuBLAS may use TF32 tensor
cores), with cudnn.benchmark on. Reported per net: the medians, the ratios netdsl / PyTorch,
and the achieved FLOP/s of each of netdsl's conv and fc layers (forward, and backward data +
weights) against the H100 / H200's 67 TFLOP/s float32 (non-tensor-core) peak.

A second measurement times a training loop: steps back to back, each uploading its batch
from the host and reading its loss, one synchronisation at the end. netdsl runs it as its
trainer does (start_step / finish_step: a step's loss is read one step late, so the host
prepares the next batch while the GPU computes); PyTorch runs the usual loop (`.to(device)`,
forward, backward, step, `loss.item()`).

A net that declares `gpus N` (AlexNet: `gpus 2`) is timed twice on netdsl: as the file
declares it, the model-parallel plan `netdsl train` runs (N columns, logical GPUs sharing the
physical ones present), and as one column on one GPU, as PyTorch runs it (same layers, same
`groups`); --plan declared / one keeps one of them.

    python benchmarks/gpu_vs_torch.py                       # lenet5 and alexnet, batch 128
    python benchmarks/gpu_vs_torch.py --nets lenet5 --steps 50
    python benchmarks/gpu_vs_torch.py --nets alexnet --plan declared
    python benchmarks/gpu_vs_torch.py --nets alexnet --no-eager --steps 10   # quicker
    python benchmarks/gpu_vs_torch.py --dry-run             # no GPU: the logic, simulated

Each worker's numbers are printed as one line the moment it ends (flushed), so a run stopped
by a time limit still shows what it measured (benchmarks/gpu_check.sh relies on that).

Without a GPU it says so and exits 0. --dry-run runs every code path on a tiny net that
declares `gpus 2` instead: netdsl in Numba's CUDA simulator, PyTorch on the CPU (timings
meaningless).
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
H100_FP32_PEAK = 67e12  # FLOP/s, float32 without tensor cores (H100 / H200 SXM)

TINY = """
network tiny_lenet
gpus 2
input image: 1x12x12
conv c1: 4 filters 5x5, pad 2, relu
pool s2: max 2x2, stride 2
conv c3: 6 filters 3x3, relu
pool s4: max 2x2, stride 2
fc   f5: 16, relu
dropout d5: 0.5
fc   out: 10
loss cross_entropy
"""


def _sync_torch(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def _median_step(step, sync, warmup: int, steps: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _loop_ms(step, finish, steps: int) -> float:
    """ms per step of `steps` steps run back to back, as a training loop runs them."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    finish()
    return 1e3 * (time.perf_counter() - t0) / steps


def share_macs(cnet, r) -> float:
    """MACs per image of a runner's layer: in a split plan, its column's share of them (a
    share's layer keeps the whole layer's count; its output channels are split)."""
    share = getattr(r, "share", None)
    if share is None:
        return float(r.layer.macs)
    name, lo, hi = share
    return r.layer.macs * (hi - lo) / cnet.net.layer(name).out_shape[0]


def layer_flops(cnet, warmup: int, reps: int) -> list[dict]:
    """Achieved FLOP/s of every conv and fc layer (each column's share in a split plan),
    forward and backward, on netdsl."""
    out = []
    for r in (r for r in cnet.runners if r.layer.type in ("conv", "fc")):
        flops = 2.0 * share_macs(cnet, r) * cnet.batch  # one GEMM pass over the batch

        def fwd(r=r):
            r.forward(True)

        def bwd(r=r):
            r.backward()

        tf, _ = _median_step(fwd, cnet.sync, warmup, reps)
        tb, _ = _median_step(bwd, cnet.sync, warmup, reps)
        passes = 2 if r.dx[0] is not None else 1  # data gradient (unless the input's) + weights
        out.append({"layer": r.layer.name, "type": r.layer.type, "gflop_fwd": flops / 1e9,
                    "fwd_tflops": flops / tf / 1e12, "bwd_tflops": passes * flops / tb / 1e12,
                    "fwd_ms": 1e3 * tf, "bwd_ms": 1e3 * tb})  # fmt: skip
    return out


def worker(engine: str, net_path: str, batch: int, steps: int, tf32: bool, split: bool,
           dry: bool) -> dict:  # fmt: skip
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import netdsl

    net = netdsl.load(net_path)
    if not split and net.gpus > 1:
        net.gpus = 1  # one column on one device, like PyTorch (the layers' `groups` stay)
        from netdsl.passes.placement import place

        place(net)
    rng = np.random.default_rng(0)
    k = net.loss.in_shapes[0][0]
    x = rng.standard_normal((batch, *net.input.out_shape)).astype(np.float32)
    y = rng.integers(0, k, batch)
    warmup = 0 if dry else 5  # (a dry run: every code path once, nothing to warm up)
    t_start = time.perf_counter()
    if engine == "netdsl":
        from netdsl.backends import compile_network
        from netdsl.train.optimizer import Optimizer

        cnet = compile_network(net, device="cuda", batch=batch, seed=0)
        opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size, "cuda")

        def step():
            cnet.step_grads(x, y)
            opt.step(cnet.theta, cnet.grad, 0.01)

        step()
        first = time.perf_counter() - t_start
        med, times = _median_step(step, cnet.sync, warmup, steps)
        pending: list[int] = []

        def loop_step():  # the trainer's loop: a step's loss is read one step late
            cnet.start_step(x, y)
            opt.step(cnet.theta, cnet.grad, 0.01)
            if pending:
                cnet.finish_step()
            pending[:] = [1]

        def loop_finish():
            if pending:
                cnet.finish_step()
            pending.clear()
            cnet.sync()

        # (every conv and fc layer: in the simulator one timed pass each is enough)
        per_layer = layer_flops(cnet, warmup, 1 if dry else max(2, steps // 2))
        extra = {"layers": per_layer, "convs": [c for c in per_layer if c["type"] == "conv"],
                 "plan": type(cnet).__name__, "graph_replays": cnet.step_graph.replays,
                 "loop_ms": _loop_ms(loop_step, loop_finish, steps)}  # fmt: skip
    else:
        import torch

        device = "cpu" if dry else "cuda"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        from netdsl.torch_ref import build

        model = build(net).to(device)
        for p in model.parameters():
            torch.nn.init.normal_(p, 0.0, 0.01)
        o = net.train["optimizer"]
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=o.get("momentum", 0.9),
                              weight_decay=o.get("weight_decay", 0.0))  # fmt: skip
        # the batch is uploaded in every step, as netdsl's step_grads uploads its own: from
        # pinned host memory, without waiting (netdsl's staging buffers are pinned too)
        xh, yh = torch.from_numpy(x), torch.from_numpy(y)
        if device == "cuda":
            xh, yh = xh.pin_memory(), yh.pin_memory()
        model.train()

        def step():
            xt = xh.to(device, non_blocking=True) if device == "cuda" else xh.clone()
            yt = yh.to(device, non_blocking=True) if device == "cuda" else yh.clone()
            sgd.zero_grad(set_to_none=True)
            model.loss(model(xt), yt).backward()
            sgd.step()

        def sync():
            _sync_torch(torch, device)

        def loop_step():  # the usual loop: batch uploaded, loss read for the log
            xb = xh.to(device, non_blocking=True) if device == "cuda" else xh.clone()
            yb = yh.to(device, non_blocking=True) if device == "cuda" else yh.clone()
            sgd.zero_grad(set_to_none=True)
            loss = model.loss(model(xb), yb)
            loss.backward()
            sgd.step()
            loss.item()

        step()
        first = time.perf_counter() - t_start
        med, times = _median_step(step, sync, warmup, steps)
        extra = {"tf32": tf32, "loop_ms": _loop_ms(loop_step, sync, steps)}
    return {
        "engine": engine,
        "step_ms": 1e3 * med,
        "images_per_s": batch / med,
        "first_step_s": first,
        "steps": len(times),
        **extra,
    }


def run_worker(engine, net, batch, steps, tf32, split, dry, graphs=True) -> dict:
    env = dict(os.environ)
    if dry:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["NETDSL_CUDA_GRAPHS"] = "1" if graphs else "0"  # the simulator replays a stand-in
    cmd = (
        [
            sys.executable,
            __file__,
            "--worker",
            engine,
            "--net",
            net,
            "--batch",
            str(batch),
            "--steps",
            str(steps),
        ]
        + (["--tf32"] if tf32 else [])
        + (["--split"] if split else [])
    )
    cmd += ["--dry-run"] if dry else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{engine} worker failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    what = (f"netdsl {'declared plan' if split else 'one column'}"
            f"{'' if graphs else ' eager'}" if engine == "netdsl"
            else f"torch TF32 {'on' if tf32 else 'off'}")  # fmt: skip
    print(f"  [worker {Path(net).stem}, {what}: {result['step_ms']:.2f} ms/step, loop "
          f"{result['loop_ms']:.2f} ms/step, first step {result['first_step_s']:.1f} s]",
          flush=True)  # fmt: skip
    return result


def gpu_present() -> str | None:
    """The GPU's name, or None (no driver, no device, or the simulator)."""
    try:
        from numba import config, cuda

        if config.ENABLE_CUDASIM or not cuda.is_available():
            return None
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def have_torch(cuda_needed: bool) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available()) or not cuda_needed


def medians(runs: list[dict]) -> dict:
    """One result from --runs processes of an engine: the medians of their step and loop
    times (the rest, conv FLOP/s included, from the first run)."""
    return dict(runs[0], **{k: statistics.median(r[k] for r in runs)
                            for k in ("step_ms", "loop_ms")})  # fmt: skip


def declared_gpus(path: str) -> int:
    """The `gpus N` a .net file declares (netdsl.load imports no numba)."""
    sys.path.insert(0, str(ROOT))
    import netdsl

    return netdsl.load(path).gpus


def report(name: str, nd: dict, eager: dict | None,
           torch_runs: dict[bool, dict | None]) -> list[str]:  # fmt: skip
    lines = [f"{name}: netdsl {nd['step_ms']:8.2f} ms/step ({nd['images_per_s']:,.0f} img/s, "
             f"first step incl. compilation {nd['first_step_s']:.1f}s; CUDA graph replayed "
             f"{nd['graph_replays']} steps)"]  # fmt: skip
    if eager is not None:
        speedup = eager["step_ms"] / nd["step_ms"]
        lines.append(f"  netdsl without the graph {eager['step_ms']:8.2f} ms/step (kernels "
                     f"launched one by one; graph speed-up {speedup:.2f}x)")  # fmt: skip
    for tf32, r in torch_runs.items():
        if r is None:
            continue
        lines.append(f"  torch TF32 {'on ' if tf32 else 'off'}  {r['step_ms']:8.2f} ms/step   "
                     f"netdsl / torch time ratio {nd['step_ms'] / r['step_ms']:6.2f}")  # fmt: skip
    lines.append(f"  training loop (batch uploaded, loss read, steps back to back): netdsl "
                 f"{nd['loop_ms']:.2f} ms/step")  # fmt: skip
    for tf32, r in torch_runs.items():
        if r is not None:
            lines.append(f"    torch TF32 {'on ' if tf32 else 'off'} {r['loop_ms']:.2f} ms/step, "
                         f"netdsl / torch {nd['loop_ms'] / r['loop_ms']:.2f}")  # fmt: skip
    for c in nd["layers"]:
        lines.append(f"  {c['layer']:8} {c['gflop_fwd']:7.2f} GFLOP fwd: {c['fwd_tflops']:6.2f} "
                     f"TFLOP/s ({100 * c['fwd_tflops'] * 1e12 / H100_FP32_PEAK:4.1f}% of 67), "
                     f"bwd {c['bwd_tflops']:6.2f} TFLOP/s "
                     f"({100 * c['bwd_tflops'] * 1e12 / H100_FP32_PEAK:4.1f}%)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["lenet5", "alexnet"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=1, help="processes per engine (medians of medians)")
    ap.add_argument("--plan", choices=["both", "declared", "one"], default="both",
                    help="for a net declaring `gpus N`: time netdsl's plan as declared (N "
                    "columns), as one column,\nor both (default)")  # fmt: skip
    ap.add_argument("--no-eager", action="store_true",
                    help="skip netdsl's second run without the CUDA graph (one process less per "
                    "plan)")  # fmt: skip
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)  # a worker's plan
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU needed: a tiny net, netdsl simulated, torch on the CPU",
    )
    ap.add_argument("--worker", choices=["netdsl", "torch"])
    ap.add_argument("--net")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.net, a.batch, a.steps, a.tf32, a.split, a.dry_run)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if a.dry_run:
            path = Path(tmp) / "tiny_lenet.net"
            path.write_text(TINY)
            nets, batch, steps = {"tiny_lenet": str(path)}, 2, 2
            print("dry run: netdsl in the CUDA simulator, PyTorch on the CPU; timings mean "
                  "nothing, every code path runs")  # fmt: skip
        else:
            name = gpu_present()
            if name is None:
                print(
                    "no CUDA GPU here (numba.cuda.is_available() is False): nothing to "
                    "measure; --dry-run checks the benchmark's logic in the simulator"
                )
                return 0
            nets = {n: str(ROOT / "nets" / f"{n}.net") for n in a.nets}
            batch, steps = a.batch, a.steps
            print(f"{name}: batch {batch}, {steps} timed steps after warm-up, "
                  f"{a.runs} process(es) per engine")  # fmt: skip
        torch_ok = have_torch(cuda_needed=not a.dry_run)
        if not torch_ok:
            print("PyTorch (with CUDA) not installed: netdsl timings only")
        # On a GPU the workers run one at a time, each timed alone, a plan's when its report
        # is next; a dry run's timings mean nothing, so all its workers (the simulator holds
        # one core each) are queued at once and run two at a time.
        pool = ThreadPoolExecutor(2) if a.dry_run else None
        try:
            for name, path in nets.items():
                _bench_net(a, pool, name, path, batch, steps, torch_ok)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return 0


def _bench_net(a, pool, name: str, path: str, batch: int, steps: int, torch_ok: bool) -> None:
    """Run one net's workers and print its report: through `pool` (a dry run), else each
    worker on the spot."""

    def submit(engine, split, tf32=False, graphs=True) -> Future:
        args = (engine, path, batch, steps, tf32, split, a.dry_run, graphs)
        if pool is not None:
            return pool.submit(run_worker, *args)
        done: Future = Future()
        done.set_result(run_worker(*args))
        return done

    def plan_jobs(i, split):
        nd = [submit("netdsl", split) for _ in range(a.runs)]
        eager = None  # (the dry run launches one by one once: the code path is the same)
        if not (a.dry_run and i) and not a.no_eager:
            eager = submit("netdsl", split, graphs=False)
        return nd, eager

    gpus = declared_gpus(path)
    plans = [(name, False)]  # (label, split)
    if gpus > 1:
        plans = {"both": [(name, True), (f"{name} as one column", False)],
                 "declared": [(name, True)],
                 "one": [(f"{name} as one column", False)]}[a.plan]  # fmt: skip
    # PyTorch runs the net one way (its model has the layers' groups, no columns)
    torch_jobs = {tf32: [submit("torch", False, tf32) for _ in range(a.runs)]
                  for tf32 in (False, True)} if torch_ok else {}  # fmt: skip
    ahead = [plan_jobs(i, split) for i, (_, split) in enumerate(plans)] if a.dry_run else []
    torch_runs: dict[bool, dict | None] = {False: None, True: None}
    for tf32, jobs in torch_jobs.items():
        torch_runs[tf32] = medians([j.result() for j in jobs])
    for i, (label, split) in enumerate(plans):
        nd_jobs, eager_job = ahead[i] if ahead else plan_jobs(i, split)
        nd = medians([j.result() for j in nd_jobs])
        nd["images_per_s"] = batch / (nd["step_ms"] / 1e3)
        eager = eager_job.result() if eager_job else None
        if gpus > 1:
            print(f"{label}: " + (f"gpus {gpus} as the file declares ({nd['plan']}: "
                                  f"{gpus} columns, logical GPUs sharing the GPUs here)"
                                  if split else f"one column on one GPU ({nd['plan']}), "
                                  "as PyTorch runs it"))  # fmt: skip
        print("\n".join(report(label, nd, eager, torch_runs)))


if __name__ == "__main__":
    raise SystemExit(main())
