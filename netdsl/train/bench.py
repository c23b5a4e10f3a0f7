"""`netdsl bench`: forward and backward time per layer and per step, like `caffe time`.

A timed step is what a training step does: copy the batch in (`input`), every layer's
forward and backward, and the optimizer's update over the flat buffers (`update`, the
file's optimizer at lr 0, so the weights stay as initialised and every step does the same
work). `timers` is what is left of the step's wall time: the clock reads and the Python
loop between the timed pieces. Rows are means over the same steps (the fastest three
quarters of them, so a step slowed by other load drops out whole), so they add up to the
step; a median per row would not (a sum of medians is not the median of the sums).

`--torch` puts PyTorch's time for the same layer beside each row: the layer alone, its
forward and backward on inputs of the same shapes, as `netdsl export --pytorch` writes it
(nn.Conv2d with its own padding, nn.MaxPool2d with ceil_mode, ...), in training mode, on
as many threads as netdsl's kernels use.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..errors import NetdslError

KEEP = 0.75  # the share of steps the means are taken over: the fastest ones


def bench_file(path: str, batch: int | None = None, iters: int = 20, device: str = "cpu",
               torch: bool = False) -> str:  # fmt: skip
    """Time each layer's forward and backward, the input copy and the update (means over
    the fastest steps of `iters`), and the whole step; with `torch`, PyTorch's per-layer
    times beside them (CPU only; needs PyTorch)."""
    from .. import load
    from ..backends import compile_network
    from .optimizer import Optimizer

    if torch and device != "cpu":
        raise NetdslError("--torch compares CPU times: use it with --device cpu")
    torch_mod = _import_torch() if torch else None
    load_before = _load_average()
    net = load(path)
    # PyTorch runs first, in a process of its own: threads netdsl's kernels leave spinning
    # (and the BLAS pinning of this process) must not slow it
    theirs = _torch_in_child(path, batch or net.train["batch"], iters) if torch else None
    note = ""
    if net.gpus > 1:  # per-layer times of the whole layers: time the net on one device
        from ..passes.placement import place

        net.gpus = 1
        place(net)
        note = " (gpus N ignored: every layer whole, on one device)"
    cnet = compile_network(net, device=device, batch=batch)
    opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size,
                    device=cnet.device, like=cnet.theta)  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cnet.batch, *net.input.out_shape)).astype(np.float32)
    k = net.loss.in_shapes[0][0] if net.loss else 1
    y = rng.integers(0, k, cnet.batch)
    t0 = time.perf_counter()
    cnet.step_grads(x, y)  # compiles every kernel
    opt.step(cnet.theta, cnet.grad, 0.0)
    warm = time.perf_counter() - t0
    names = [r.layer.name for r in cnet.runners]
    fwd = {n: [] for n in names}
    bwd = {n: [] for n in names}
    inputs, updates, steps = [], [], []
    clock = time.perf_counter
    for _ in range(iters):
        cnet.sync()
        s0 = clock()
        cnet._load_input(x)
        cnet.labels[:] = y
        cnet._prepare(True)  # a GPU's per-step uploads: labels, dropout keep-masks
        cnet.sync()  # kernels are asynchronous on a GPU: wait before and after each piece
        inputs.append(clock() - s0)
        for r in cnet.runners:
            t = clock()
            r.forward(True)
            cnet.sync()
            fwd[r.layer.name].append(clock() - t)
        for r in reversed(cnet.runners):
            t = clock()
            r.backward()
            for scratch, dst in r.adds:
                cnet.accumulate_into(dst, scratch)
            cnet.sync()
            bwd[r.layer.name].append(clock() - t)
        t = clock()
        opt.step(cnet.theta, cnet.grad, 0.0)
        cnet.sync()
        updates.append(clock() - t)
        steps.append(clock() - s0)
    keep = np.argsort(steps)[: max(1, math.ceil(KEEP * iters))]

    def mean_ms(v: list[float]) -> float:
        return 1e3 * float(np.mean(np.asarray(v)[keep]))

    f_ms = {n: mean_ms(fwd[n]) for n in names}
    b_ms = {n: mean_ms(bwd[n]) for n in names}
    in_ms, up_ms, step_ms = mean_ms(inputs), mean_ms(updates), mean_ms(steps)
    timers_ms = step_ms - in_ms - up_ms - sum(f_ms.values()) - sum(b_ms.values())

    lines = [f"{net.name}: batch {cnet.batch}, device {cnet.device}, means over the fastest "
             f"{len(keep)} of {iters} steps (first step incl. compilation: {warm:.2f}s)"
             f"{note}"]  # fmt: skip
    head = f"{'layer':20} {'type':10} {'forward ms':>11} {'backward ms':>12}"
    if theirs is not None:
        head += f" {'torch fwd ms':>13} {'torch bwd ms':>13} {'netdsl/torch':>12}"
        import numba

        lines.insert(1, f"PyTorch {torch_mod.__version__}: {numba.get_num_threads()} "
                        "threads, each layer alone as `netdsl export --pytorch` writes "
                        "it")  # fmt: skip
    if load_before is not None and load_before >= 1.0:
        lines.insert(1, f"note: load average {load_before:.2f} before timing: other programs "
                        "share the CPU, so these times are not comparable with a quiet "
                        "machine's")  # fmt: skip
    lines.append(head)

    def row(name: str, kind: str, f: float | None, b: float | None, tf=None, tb=None,
            mine: float | None = None) -> str:  # fmt: skip
        """A table row; `mine`: netdsl's time the ratio compares (default f + b)."""
        cell = lambda v, w: f"{v:{w}.3f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        s = f"{name:20} {kind:10} {cell(f, 11)} {cell(b, 12)}"
        if theirs is not None:
            ratio = None
            if tf is not None and tf + (tb or 0.0) > 0:
                ratio = (mine if mine is not None else (f or 0.0) + (b or 0.0)) / (tf + (tb or 0.0))
            s += f" {cell(tf, 13)} {cell(tb, 13)} "
            s += f"{ratio:11.2f}x" if ratio is not None else f"{'-':>12}"
        return s

    lines.append(row("input", "(copy in)", in_ms, None))
    for r in cnet.runners:
        n = r.layer.name
        tf, tb = (theirs.get(n) or (None, None)) if theirs is not None else (None, None)
        lines.append(row(n, r.layer.type, f_ms[n], b_ms[n], tf, tb))
    lines.append(row("update", f"({opt.kind})", None, up_ms))
    lines.append(row("timers", "(overhead)", None, timers_ms))
    total_f = in_ms + sum(f_ms.values())
    total_b = sum(b_ms.values()) + up_ms + timers_ms
    tt, mine = (None, None), None
    if theirs is not None:  # the ratio of the total: the layers PyTorch timed, both sides
        timed = [n for n in names if (theirs.get(n) or (None,))[0] is not None]
        tt = (sum(theirs[n][0] for n in timed), sum(theirs[n][1] or 0.0 for n in timed))
        mine = sum(f_ms[n] + b_ms[n] for n in timed)
    lines.append(row("total", "", total_f, total_b, *tt, mine=mine))
    lines.append(f"step (input + forward + backward + update): {step_ms:.3f} ms = "
                 f"{cnet.batch / (step_ms / 1e3):,.0f} images/s; the rows add up to "
                 "it")  # fmt: skip
    if theirs is not None:
        lines.append("torch: each layer alone, without PyTorch's input copy, update or "
                     "autograd work between layers; total's ratio: the layers both "
                     "timed")  # fmt: skip
    return "\n".join(lines)


def _load_average() -> float | None:
    """The 1-minute load average, None where the system has none."""
    import os

    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torch"
        why = "PyTorch is not installed" if missing else f"PyTorch cannot load ({e})"
        raise NetdslError(f"netdsl bench --torch needs PyTorch, but {why}; install it with: "
                          "pip install 'netdsl[torch]'") from None  # fmt: skip
    return torch


def _torch_in_child(path: str, batch: int, iters: int) -> dict[str, tuple]:
    """_torch_times in a fresh Python process with as many threads as netdsl's kernels."""
    import json
    import os
    import subprocess
    import sys

    import numba

    threads = str(numba.get_num_threads())
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads)  # fmt: skip
    code = ("import json, sys; from netdsl.train.bench import _torch_times; "
            "print(json.dumps(_torch_times(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
            "int(sys.argv[4]))))")  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    r = subprocess.run([sys.executable, "-c", code, path, str(batch), str(iters), threads],
                       env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        raise NetdslError(f"timing the layers in PyTorch failed:\n{r.stderr.strip()}")
    return {k: tuple(v) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def _torch_times(path: str, batch: int, iters: int, threads: int) -> dict[str, tuple]:
    """{layer: (forward ms, backward ms)} of each layer alone in PyTorch (medians of
    `iters` after one warm-up), (None, None) where the layer does nothing in PyTorch's
    module (the input, a linear activation)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812

    from .. import load
    from ..export.pytorch import TorchSource
    from ..ops import activations, registry

    torch.set_num_threads(threads)
    net = load(path)
    t = TorchSource(net)
    ns: dict[str, Any] = {"torch": torch, "nn": nn, "F": F, "math": math}
    out: dict[str, tuple] = {}
    gen = torch.Generator().manual_seed(0)
    for lyr in net.layers:
        lt = registry.of(lyr)
        if lt.source:
            t.var[lyr.name], t.rank[lyr.name] = "x", 4
            out[lyr.name] = (None, None)
            continue
        ctor = lt.torch_module_lines(lyr, t)
        expr, rank = lt.torch_forward_expr(lyr, t)
        act = lyr.attrs.get("activation")
        if act and act[0] != "linear":
            expr = activations.get(act[0]).torch_expr(expr, activations.params_of(act))
        for src in t.helpers.values():
            exec(src, ns)  # noqa: S102 - netdsl's own generated helpers (export --pytorch)
        ins = {}
        for i, src in enumerate(lyr.inputs):
            shape = lyr.in_shapes[i] if t.rank[src] == 4 else (int(np.prod(lyr.in_shapes[i])),)
            v = torch.randn((batch, *shape), generator=gen)
            v.requires_grad_(not registry.of(net.layer(src)).source)  # as netdsl: no dx
            ins[t.var[src]] = v
        if lt.is_loss:
            kind = lyr.attrs.get("kind", "cross_entropy")
            k = lyr.in_shapes[0][0]
            labels = torch.randint(0, k, (batch,), generator=gen)
            fn = _torch_loss(kind, next(iter(ins.values())), labels, k, F)
            out[lyr.name] = _time_torch(fn, list(ins.values()), [], iters) if fn else (None, None)
            t.var[lyr.name], t.rank[lyr.name] = expr, rank
            continue
        holder = nn.Module()
        if ctor is not None:
            parts = lyr.name.split(".")
            box = holder
            for p in parts[:-1]:  # a dotted name's containers, as the export makes them
                box.add_module(p, nn.Module())
                box = getattr(box, p)
            box.add_module(parts[-1], eval(ctor, ns))  # noqa: S307 - the export's own text
        holder.train()
        if expr == t.var.get(lyr.inputs[0]):  # the identity (a linear act): nothing to time
            out[lyr.name] = (None, None)
            t.var[lyr.name], t.rank[lyr.name] = expr, rank
            continue
        scope = {**ns, **ins, "self": holder}
        fn = lambda scope=scope, expr=expr: eval(expr, scope)  # noqa: E731, S307
        out[lyr.name] = _time_torch(fn, list(ins.values()), list(holder.parameters()), iters)
        t.var[lyr.name], t.rank[lyr.name] = t.local(lyr.name), rank
    return out


def _torch_loss(kind: str, scores, labels, k: int, F):  # noqa: N803
    """The loss as PyTorch computes it (netdsl/torch_ref.py's), None for other kinds."""
    if kind == "cross_entropy":
        return lambda: F.cross_entropy(scores.flatten(1), labels)
    if kind == "mse":
        onehot = F.one_hot(labels, k).to(scores.dtype)
        return lambda: 0.5 * ((scores.flatten(1) - onehot) ** 2).sum(dim=1).mean()
    return None


def _time_torch(fn, ins: list, params: list, iters: int) -> tuple[float, float]:
    """(forward ms, backward ms), medians: fn() then .backward() of a random gradient."""
    import torch

    f_t, b_t = [], []
    for i in range(iters + 1):
        for p in [*ins, *params]:
            p.grad = None
        t0 = time.perf_counter()
        y = fn()
        t1 = time.perf_counter()
        if y.requires_grad:
            g = torch.ones_like(y) if y.dim() == 0 else torch.randn_like(y)
            t2 = time.perf_counter()
            y.backward(g)
            t3 = time.perf_counter()
        else:
            t2 = t3 = 0.0
        if i:  # the first run warms PyTorch's caches
            f_t.append(t1 - t0)
            b_t.append(t3 - t2)
    return 1e3 * float(np.median(f_t)), 1e3 * float(np.median(b_t))
