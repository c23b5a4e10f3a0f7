"""Data-parallel scaling over MPI ranks: images/s with 1 and 2 ranks, and the Allreduce cost.

Each configuration runs under ``mpiexec -n R`` with one Numba thread per rank
(NUMBA_NUM_THREADS=1), the global batch of the .net file (each rank computes
batch/R images). A step is what ``netdsl train`` does: forward + backward on this
rank's share, ONE in-place Allreduce of the flat gradient buffer (through the
trainer's MPICommunicator) and the SGD update. Reported per configuration (medians
over ``--runs`` runs):

* images/s of the global batch, and the speed-up over 1 rank;
* ms per step, and the part of it spent in the gradient Allreduce as the trainer sees
  it (``in step``: includes waiting for the slower rank);
* the Allreduce alone (``alone``): the same buffer, after a barrier, no compute around.

Needs the ``mpi`` extra (``pip install 'netdsl[mpi]'``)::

    python benchmarks/mpi_scaling.py                     # lenet5, random data, 1 and 2 ranks
    python benchmarks/mpi_scaling.py --data mnist --steps 100 --ranks 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(net_path: str, data: str, steps: int, warmup: int, batch: int | None) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import netdsl
    from netdsl.backends import compile_network
    from netdsl.train.distributed import MPICommunicator, local_batch, shard_bounds
    from netdsl.train.optimizer import Optimizer

    comm = MPICommunicator()
    net = netdsl.load(net_path)
    gb = batch or net.train["batch"]
    cnet = compile_network(net, batch=local_batch(gb, comm.size), seed=0)
    opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size)
    k = net.loss.in_shapes[0][0]
    n = gb * 8
    if data == "mnist":
        from netdsl.train.trainer import prepare_data

        train = prepare_data(net, "mnist", limit=n).train
        x_all, y_all = train.x, train.y
    else:
        rng = np.random.default_rng(0)
        x_all = rng.standard_normal((n, *net.input.out_shape)).astype(np.float32)
        y_all = rng.integers(0, k, n)
    lo, hi = shard_bounds(comm.rank, comm.size, gb)
    order = np.random.default_rng(1).permutation(n)  # the same on every rank

    def step(s: int) -> None:
        idx = order[(s % 8) * gb : (s % 8 + 1) * gb][lo:hi]
        cnet.step_grads(x_all[idx], y_all[idx])
        comm.average_(cnet.grad)
        opt.step(cnet.theta, cnet.grad, 0.01)

    comm.broadcast_(cnet.theta)
    for s in range(warmup):  # compiles every kernel
        step(s)
    comm.barrier()
    comm.comm_seconds = 0.0
    t0 = time.perf_counter()
    for s in range(steps):
        step(s)
    wall = time.perf_counter() - t0
    in_step = comm.comm_seconds / steps
    comm.barrier()
    alone = []
    for _ in range(max(steps, 20)):
        comm.barrier()
        t = time.perf_counter()
        comm.allreduce_sum_(cnet.grad)
        alone.append(time.perf_counter() - t)
    walls = comm.gather_obj(wall)
    in_steps = comm.gather_obj(in_step)
    if comm.is_root:
        wall = max(walls)
        print("RESULT " + json.dumps({
            "ranks": comm.size, "batch": gb, "local_batch": cnet.batch, "steps": steps,
            "params": int(cnet.theta.size), "images_per_s": steps * gb / wall,
            "ms_per_step": 1e3 * wall / steps,
            "allreduce_in_step_ms": 1e3 * statistics.mean(in_steps),
            "allreduce_alone_ms": 1e3 * statistics.median(alone),
        }), flush=True)  # fmt: skip


def mpiexec() -> str:
    sys.path.insert(0, str(ROOT))
    from netdsl.train.distributed import find_mpiexec

    found = find_mpiexec()
    if found is None:
        sys.exit("mpi_scaling: no mpiexec; pip install 'netdsl[mpi]'")
    return found


def run(ranks: int, args) -> dict:
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, __file__, "--worker",
           "--net", args.net, "--data", args.data, "--steps", str(args.steps),
           "--warmup", str(args.warmup)]  # fmt: skip
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
    if p.returncode or not lines:
        sys.exit(f"mpi_scaling: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default=str(ROOT / "nets" / "lenet5.net"))
    ap.add_argument("--data", choices=["random", "mnist"], default="random")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, help="global batch (default: the file's)")
    ap.add_argument("--threads", type=int, default=1, help="Numba threads per rank")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.net, args.data, args.steps, args.warmup, args.batch)
        return
    rows = []
    for r in args.ranks:
        runs = [run(r, args) for _ in range(args.runs)]
        row = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        row["spread"] = (min(x["images_per_s"] for x in runs), max(x["images_per_s"] for x in runs))
        rows.append(row)
    base = rows[0]["images_per_s"]
    first = rows[0]
    print(f"{Path(args.net).stem}: global batch {first['batch']}, {first['params']:,} parameters "
          f"({4 * first['params'] / 2**10:.0f} KiB of gradient), {args.data} data, "
          f"{args.threads} Numba thread(s) per rank, {os.cpu_count()} CPUs; "
          f"medians of {args.runs} runs of {args.steps} steps")  # fmt: skip
    print(f"{'ranks':>5} {'batch/rank':>10} {'images/s':>10} {'(min-max)':>15} {'speed-up':>8} "
          f"{'ms/step':>8} {'allreduce ms: in step':>21} {'alone':>7}")  # fmt: skip
    for row in rows:
        lo, hi = row["spread"]
        print(f"{int(row['ranks']):5d} {int(row['local_batch']):10d} {row['images_per_s']:10,.0f} "
              f"{f'({lo:,.0f}-{hi:,.0f})':>15} {row['images_per_s'] / base:7.2f}x "
              f"{row['ms_per_step']:8.2f} {row['allreduce_in_step_ms']:21.3f} "
              f"{row['allreduce_alone_ms']:7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
