"""Forward + backward time of single CPU convolutions (netdsl's ConvCPU, optionally PyTorch).

The conv layers of the issue 15 nets whose CPU time lags PyTorch's, each alone on random
data: ResNet-18 at batch 8 (the 7x7/2 stem, 3x3 at 56/28/14/7 px, the stride-2 3x3 and 1x1
layers), cifar10 at batch 128 (5x5 on 32 channels at 32/16/8 px), AlexNet's 5x5 conv2 at
batch 16 (48 -> 128 per group), LeNet-5 at batch 128 and LeNet-5 (1998) at batch 32, a 1x1
stride-1 layer (no im2col) and VGG-16's 3x3 layers at batch 4 (prefix vgg; not in the
default set: its 224 px layers take seconds). A row is the minimum
over --reps calls (the least disturbed by other load: the machine this was written on was
shared), forward and backward separately; --cpu times process CPU time instead.

Which netdsl is timed is the one Python imports: compare two checkouts by running this
script with PYTHONPATH set to each, alternating, e.g.

    PYTHONPATH=/path/to/old python benchmarks/conv_cpu_layers.py --only r18 --json old.json
    PYTHONPATH=. python benchmarks/conv_cpu_layers.py --only r18 --json new.json

BLAS gets one thread as `netdsl train` runs it; the layers use NUMBA_NUM_THREADS workers.
--algo gemm,winograd times each layer once per convolution algorithm (NETDSL_CONV_ALGO, set
while the layer is built; winograd applies to 3x3 and 5x5 stride-1 layers only, others run gemm);
wino2,wino4 compares F(2x2, 3x3) with F(4x4, 3x3) on the 3x3 stride-1 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: as `netdsl train` runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# (name, batch, C, H, W, O, k, stride, pad[, groups]): pad symmetric, floor-mode output
LAYERS = [
    ("r18.stem", 8, 3, 224, 224, 64, 7, 2, 3),
    ("r18.l1", 8, 64, 56, 56, 64, 3, 1, 1),
    ("r18.l2a.conv1", 8, 64, 56, 56, 128, 3, 2, 1),
    ("r18.l2a.proj", 8, 64, 56, 56, 128, 1, 2, 0),
    ("r18.l2", 8, 128, 28, 28, 128, 3, 1, 1),
    ("r18.l3a.conv1", 8, 128, 28, 28, 256, 3, 2, 1),
    ("r18.l3a.proj", 8, 128, 28, 28, 256, 1, 2, 0),
    ("r18.l3", 8, 256, 14, 14, 256, 3, 1, 1),
    ("r18.l4a.conv1", 8, 256, 14, 14, 512, 3, 2, 1),
    ("r18.l4a.proj", 8, 256, 14, 14, 512, 1, 2, 0),
    ("r18.l4", 8, 512, 7, 7, 512, 3, 1, 1),
    ("cifar.conv1", 128, 3, 32, 32, 32, 5, 1, 2),
    ("cifar.conv2", 128, 32, 16, 16, 32, 5, 1, 2),
    ("cifar.conv3", 128, 32, 8, 8, 64, 5, 1, 2),
    ("alex.conv2", 16, 96, 27, 27, 256, 5, 1, 2, 2),  # 48 -> 128 per group
    ("alex.conv3", 16, 256, 13, 13, 384, 3, 1, 1),
    ("alex.conv4", 16, 384, 13, 13, 384, 3, 1, 1, 2),  # 192 -> 192 per group
    ("alex.conv5", 16, 384, 13, 13, 256, 3, 1, 1, 2),  # 192 -> 128 per group
    ("lenet5.c1", 128, 1, 28, 28, 6, 5, 1, 2),
    ("lenet5.c3", 128, 6, 14, 14, 16, 5, 1, 0),
    ("lenet98.c1", 32, 1, 32, 32, 6, 5, 1, 0),
    ("lenet98.c3", 32, 6, 14, 14, 16, 5, 1, 0),
    ("lenet98.c5", 32, 16, 5, 5, 120, 5, 1, 0),
    ("onebyone.s1", 8, 256, 14, 14, 512, 1, 1, 0),
    ("vgg.c1_2", 4, 64, 224, 224, 64, 3, 1, 1),
    ("vgg.c2_1", 4, 64, 112, 112, 128, 3, 1, 1),
    ("vgg.c2_2", 4, 128, 112, 112, 128, 3, 1, 1),
    ("vgg.c3_1", 4, 128, 56, 56, 256, 3, 1, 1),
    ("vgg.c3_2", 4, 256, 56, 56, 256, 3, 1, 1),
    ("vgg.c4_1", 4, 256, 28, 28, 512, 3, 1, 1),
    ("vgg.c4_2", 4, 512, 28, 28, 512, 3, 1, 1),
    ("vgg.c5", 4, 512, 14, 14, 512, 3, 1, 1),
]
DEFAULT = [L for L in LAYERS if not L[0].startswith("vgg")]


def _min_time(fn, reps: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(reps):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def time_netdsl(layer, reps: int, clock=time.perf_counter, algo: str = "") -> tuple[float, float]:
    """(forward s, backward s) of netdsl's ConvCPU on this layer, by `clock`; algo: the
    NETDSL_CONV_ALGO the layer is built under ("": as set in the environment)."""
    from netdsl.ops.conv import ConvCPU

    _, n, c, h, w, o, k, s, p, *rest = layer
    g = rest[0] if rest else 1
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    y = np.empty((n, o, ho, wo), np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(wt), np.empty_like(b)
    # wino2 / wino4: Winograd with F(2x2, 3x3) / F(4x4, 3x3) tiles (NETDSL_WINO_TILE)
    env = {"NETDSL_CONV_ALGO": algo} if algo else {}
    if algo in ("wino2", "wino4"):
        env = {"NETDSL_CONV_ALGO": "winograd", "NETDSL_WINO_TILE": algo[-1]}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        op = ConvCPU(n, c, h, w, o, k, k, (s, s), (p, p), (1, 1), g, (ho, wo), True)
    finally:
        for key, val in old.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
    op.reuse_forward_weights = True  # as the net's runner does: w is the forward's
    op.forward(x, wt, b, y)  # compile
    op.backward(dy, x, wt, dx, dw, db)
    fwd = _min_time(lambda: op.forward(x, wt, b, y), reps, clock)
    bwd = _min_time(lambda: op.backward(dy, x, wt, dx, dw, db), reps, clock)
    return fwd, bwd


def time_torch(layer, reps: int, threads: int, clock=time.perf_counter) -> tuple[float, float]:
    """(forward s, backward s) of torch.nn.Conv2d on this layer, in training mode, by `clock`."""
    import torch

    torch.set_num_threads(threads)
    _, n, c, h, w, o, k, s, p, *rest = layer
    conv = torch.nn.Conv2d(c, o, k, stride=s, padding=p, groups=rest[0] if rest else 1)
    x = torch.randn(n, c, h, w, requires_grad=True)
    y = conv(x)
    dy = torch.randn_like(y)

    def fwd():
        return conv(x)

    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).backward(dy)

    fwd()
    step()
    f = _min_time(fwd, reps, clock)
    return f, max(0.0, _min_time(step, reps, clock) - f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated name prefixes (r18, cifar, ...)")
    ap.add_argument("--reps", type=int, default=5, help="calls per row; the minimum is shown")
    ap.add_argument("--torch", action="store_true", help="also time PyTorch (same threads)")
    ap.add_argument("--cpu", action="store_true",
                    help="process CPU time (all threads, both engines) instead of wall time: "
                         "steadier on a loaded machine, blind to idle workers")  # fmt: skip
    ap.add_argument("--algo", default="",
                    help="comma-separated NETDSL_CONV_ALGO values (gemm, winograd, auto; "
                         "wino2, wino4: winograd with NETDSL_WINO_TILE=2 or 4) to time each "
                         "layer under (default: the environment's)")  # fmt: skip
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    prefixes = [p for p in args.only.split(",") if p]
    layers = (
        [L for L in LAYERS if any(L[0].startswith(p) for p in prefixes)] if prefixes else DEFAULT
    )
    algos = [a for a in args.algo.split(",") if a] or [""]
    import netdsl.ops.conv as conv_mod

    threads = conv_mod.num_threads()
    print(f"netdsl from {os.path.dirname(conv_mod.__file__)}, {threads} threads, "
          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)  # fmt: skip
    rows = []
    head = f"{'layer':16} {'algo':8} {'fwd ms':>8} {'bwd ms':>8}"
    print(head + (f" {'torch fwd':>9} {'torch bwd':>9} {'ratio':>6}" if args.torch else ""))
    clock = time.process_time if args.cpu else time.perf_counter
    for layer in layers:
        tt = time_torch(layer, args.reps, threads, clock) if args.torch else None
        for algo in algos:
            f, b = time_netdsl(layer, args.reps, clock, algo)
            row = {"layer": layer[0], "algo": algo or "env", "fwd_ms": f * 1e3, "bwd_ms": b * 1e3}
            line = f"{layer[0]:16} {algo or 'env':8} {f * 1e3:8.2f} {b * 1e3:8.2f}"
            if tt is not None:
                tf, tb = tt
                row.update(torch_fwd_ms=tf * 1e3, torch_bwd_ms=tb * 1e3)
                line += f" {tf * 1e3:9.2f} {tb * 1e3:9.2f} {(f + b) / (tf + tb):6.2f}"
            print(line, flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
