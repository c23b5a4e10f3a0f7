"""`netdsl bench`: forward and backward time per layer and per step, like `caffe time`."""

from __future__ import annotations

import time

import numpy as np


def bench_file(path: str, batch: int | None = None, iters: int = 20, device: str = "cpu") -> str:
    """Time each layer's forward and backward (medians over `iters`) and the whole step."""
    from .. import load
    from ..backends import compile_network

    net = load(path)
    note = ""
    if net.gpus > 1:  # per-layer times of the whole layers: time the net on one device
        from ..passes.placement import place

        net.gpus = 1
        place(net)
        note = " (gpus N ignored: every layer whole, on one device)"
    cnet = compile_network(net, device=device, batch=batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cnet.batch, *net.input.out_shape)).astype(np.float32)
    k = net.loss.in_shapes[0][0] if net.loss else 1
    y = rng.integers(0, k, cnet.batch)
    t0 = time.perf_counter()
    cnet.step_grads(x, y)  # compiles every kernel
    warm = time.perf_counter() - t0
    fwd = {r.layer.name: [] for r in cnet.runners}
    bwd = {r.layer.name: [] for r in cnet.runners}
    steps = []
    for _ in range(iters):
        cnet._load_input(x)
        cnet.labels[:] = y
        cnet._prepare(True)  # a GPU's per-step uploads: labels, dropout keep-masks
        cnet.sync()  # kernels are asynchronous on a GPU: wait before and after each layer
        s0 = time.perf_counter()
        for r in cnet.runners:
            t = time.perf_counter()
            r.forward(True)
            cnet.sync()
            fwd[r.layer.name].append(time.perf_counter() - t)
        for r in reversed(cnet.runners):
            t = time.perf_counter()
            r.backward()
            for scratch, dst in r.adds:
                cnet.accumulate_into(dst, scratch)
            cnet.sync()
            bwd[r.layer.name].append(time.perf_counter() - t)
        steps.append(time.perf_counter() - s0)
    med = np.median
    lines = [f"{net.name}: batch {cnet.batch}, {iters} iterations, device {cnet.device} "
             f"(first step incl. compilation: {warm:.2f}s){note}",
             f"{'layer':20} {'type':10} {'forward ms':>11} {'backward ms':>12}"]  # fmt: skip
    for r in cnet.runners:
        n = r.layer.name
        f_ms, b_ms = 1e3 * med(fwd[n]), 1e3 * med(bwd[n])
        lines.append(f"{n:20} {r.layer.type:10} {f_ms:11.3f} {b_ms:12.3f}")
    total_f = sum(med(v) for v in fwd.values())
    total_b = sum(med(v) for v in bwd.values())
    step = med(steps)
    lines.append(f"{'total':20} {'':10} {1e3 * total_f:11.3f} {1e3 * total_b:12.3f}")
    lines.append(f"step (forward + backward): {1e3 * step:.3f} ms = "
                 f"{cnet.batch / step:,.0f} images/s")  # fmt: skip
    return "\n".join(lines)
