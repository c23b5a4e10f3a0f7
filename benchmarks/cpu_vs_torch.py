"""Training throughput of netdsl on the CPU versus PyTorch on the CPU, same net and batch.

Each measurement runs in its own process with the same thread count (NUMBA_NUM_THREADS,
OMP_NUM_THREADS, torch.set_num_threads), on random data of the net's input shape;
a step is forward + backward + SGD update. Reported: median images/s over several runs,
the ratio netdsl / PyTorch, and netdsl's time to the first batch cold (empty Numba
cache: JIT compiling) and warm (cached).

    python benchmarks/cpu_vs_torch.py                      # lenet5 and cifar10, 2 threads
    python benchmarks/cpu_vs_torch.py --nets lenet5 --runs 5 --steps 100
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


def worker(engine: str, net_path: str, batch: int, steps: int, threads: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import netdsl

    t_start = time.perf_counter()
    net = netdsl.load(net_path)
    rng = np.random.default_rng(0)
    k = net.loss.in_shapes[0][0]
    x = rng.standard_normal((batch, *net.input.out_shape)).astype(np.float32)
    y = rng.integers(0, k, batch)
    if engine == "netdsl":
        from netdsl.backends import compile_network
        from netdsl.train.optimizer import Optimizer

        cnet = compile_network(net, batch=batch, seed=0)
        opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size)

        def step():
            cnet.step_grads(x, y)
            opt.step(cnet.theta, cnet.grad, 0.01)
    else:
        import torch

        torch.set_num_threads(threads)
        from netdsl.torch_ref import build

        model = build(net)
        for p in model.parameters():
            torch.nn.init.normal_(p, 0.0, 0.05)
        o = net.train["optimizer"]
        opt = torch.optim.SGD(
            model.parameters(),
            lr=0.01,
            momentum=o.get("momentum", 0.9),
            weight_decay=o.get("weight_decay", 0.0),
        )
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = model.loss(model(xt), yt)
            loss.backward()
            opt.step()

    step()
    first = time.perf_counter() - t_start
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"engine": engine, "images_per_s": batch * steps / dt, "first_batch_s": first}


def run_worker(engine, net, batch, steps, threads, cache_dir) -> dict:
    # netdsl's conv layers bring their own threads and run BLAS on one (as `netdsl train`
    # does); PyTorch gets the same number of threads through torch.set_num_threads
    blas = "1" if engine == "netdsl" else str(threads)
    env = dict(
        os.environ,
        NUMBA_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=blas,
        OPENBLAS_NUM_THREADS=blas,
        MKL_NUM_THREADS=blas,
        NUMBA_CACHE_DIR=cache_dir,
    )
    cmd = [
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
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{engine} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["lenet5", "cifar10"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=["netdsl", "torch"])
    ap.add_argument("--net")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.net, a.batch, a.steps, a.threads)))
        return
    print(f"batch {a.batch}, {a.threads} threads, {a.steps} steps per run, median of {a.runs} runs")
    for name in a.nets:
        path = str(ROOT / "nets" / f"{name}.net")
        with tempfile.TemporaryDirectory() as cache:
            cold = run_worker("netdsl", path, a.batch, 2, a.threads, cache)["first_batch_s"]
            res = {"netdsl": [], "torch": []}
            firsts = []
            for _ in range(a.runs):
                for eng in ("netdsl", "torch"):
                    r = run_worker(eng, path, a.batch, a.steps, a.threads, cache)
                    res[eng].append(r["images_per_s"])
                    if eng == "netdsl":
                        firsts.append(r["first_batch_s"])
        nd, pt = statistics.median(res["netdsl"]), statistics.median(res["torch"])
        print(
            f"{name:8} netdsl {nd:10,.0f} img/s   torch {pt:10,.0f} img/s   "
            f"ratio {nd / pt:5.2f}   netdsl first batch: cold {cold:.1f}s, "
            f"warm {statistics.median(firsts):.2f}s"
        )
        print(
            f"         runs netdsl {[round(v) for v in res['netdsl']]}  "
            f"torch {[round(v) for v in res['torch']]}"
        )


if __name__ == "__main__":
    main()
