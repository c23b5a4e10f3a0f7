"""What netdsl's CUDA kernels compile to for sm_90 (H100/H200), measured without a GPU.

For one training step of a plan (forward, backward and the optimizer's update, at the real
batch size: the kernels fold the layer sizes, batch included, into their code), every
kernel is compiled as a GPU would get it: NVVM -> PTX -> `ptxas -arch=sm_90 -v` (registers,
spills, shared memory) -> `cuobjdump -sass` (the machine code). Printed per launch:

- registers, spilled bytes, shared bytes and blocks per SM by sm_90's occupancy rules
  (65,536 registers per SM allocated 256 per warp, 228 KB shared per SM plus 1 KB the
  runtime reserves per block, at most 32 blocks and 2,048 threads);
- the instruction mix of the main loop, found in the SASS by its backward branch: for the
  GEMMs (conv forward / backward data / backward weights, fc) the loop over K slices, which
  contains a barrier; its inner loops (the tile fills and the multiply-add steps) are
  weighted by their trip counts, known from the tile config; every other kernel gets the
  innermost loop with an FFMA (else the largest loop, else its whole body), inner loops
  counted once. A loop's instructions are counted along its straight path: conditional
  forward branches fall through (the in-bounds side of a bounds check), unconditional ones
  jump (past the other side of an if/else); exact for straight-line loop bodies, an
  estimate of the common path otherwise. LDS and LDG per FFMA;
- a roofline-style estimate for the GEMMs: an SM issues 4 warp-instructions per cycle and
  an FFMA is 2 FLOPs per lane, so a loop whose issue is a fraction f FFMA runs at most at
  f x the FP32 peak (67 TFLOP/s for H100/H200 SXM, 132 SMs at 1.98 GHz); the blocks are
  spread over the SMs in whole blocks (a grid of fewer blocks than SMs leaves SMs idle),
  tiles padded past the matrix edge count as work, and the FLOPs counted as useful are
  netdsl's MAC counts (2 x MACs x batch per GEMM; a column's share in a split plan).
  Latency, memory bandwidth and the other kernels (memory-bound: pools, LRN, activations,
  reductions) are not modelled: the estimate is a ceiling the code's instruction mix
  allows, per layer and per step.

    python benchmarks/gpu_static.py nets/alexnet.net                 # gpus 2: two columns
    python benchmarks/gpu_static.py nets/alexnet.net --one-column --batch 128
    python benchmarks/gpu_static.py nets/lenet5.net --batch 8 --json
    python benchmarks/gpu_static.py nets/vgg16.net --kernels 'conv_|gemm' --keep sass/

--json prints {"kernels": [{"name", "layer", "registers", "spills", "shared_bytes",
"blocks_per_sm", "ffma_share", ...}, ...], "layers": [...], "step": {...}}.

Needs NVVM, ptxas, cuobjdump and nvdisasm, but no GPU and no driver: pip install '.[sass]'
(the nvidia-nvvm, nvidia-cuda-nvrtc, nvidia-cuda-nvcc, nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels). The launches are recorded in a process running Numba's CUDA
simulator, with netdsl choosing the real GPU's tile configs and nothing executed; the
kernels are compiled in other processes, without the simulator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCH, CC = "sm_90", (9, 0)
FP32_PEAK = 67e12  # FLOP/s, H100 / H200 SXM without tensor cores
SMS = 132  # H100 / H200 SXM
CLOCK = FP32_PEAK / (SMS * 4 * 32 * 2)  # 4 schedulers x 32 lanes x 2 FLOPs per FFMA per cycle
# sm_90's occupancy rules (CUDA occupancy calculator, compute capability 9.0)
REGS_PER_SM, REG_UNIT = 65536, 256  # registers are allocated per warp in units of 256
SMEM_PER_SM, SMEM_RESERVED, SMEM_UNIT = 228 * 1024, 1024, 128
MAX_BLOCKS, MAX_WARPS = 32, 64
# netdsl's GEMM kernels: (module, kernel) -> how to read (bm, bn, bk, tm, tn) and the number
# of K slices a block runs from the factory's configuration (see netdsl/ops/conv.py, fc.py)
GEMMS = {
    ("netdsl.ops.conv", "conv_forward"): "conv_forward",
    ("netdsl.ops.conv", "conv_backward_data"): "conv_backward_data",
    ("netdsl.ops.conv", "conv_backward_weights"): "conv_backward_weights",
    ("netdsl.ops.fc", "gemm"): "fc",
}
EXTRA = "pip install '.[sass]'  (or: pip install 'netdsl[sass]')"


class ToolError(Exception):
    """A compiler tool is missing: exit 1 naming the extra that installs it."""


# ---------------------------------------------------------------------------------------------
# The occupancy rules and the SASS analysis: pure Python, testable without any tool
# ---------------------------------------------------------------------------------------------


def blocks_per_sm(threads: int, registers: int, shared: int) -> tuple[int, str]:
    """Resident blocks per SM on sm_90 and what limits them ('threads', 'registers',
    'shared')."""
    warps = -(-threads // 32)
    by_threads = min(MAX_BLOCKS, MAX_WARPS // warps)
    per_warp = -(-max(registers, 1) * 32 // REG_UNIT) * REG_UNIT
    by_regs = (REGS_PER_SM // per_warp) // warps
    per_block = -(-(shared + SMEM_RESERVED) // SMEM_UNIT) * SMEM_UNIT
    by_smem = SMEM_PER_SM // per_block
    limits = [(by_threads, "threads"), (by_regs, "registers"), (by_smem, "shared")]
    return min(limits, key=lambda t: t[0])  # the first of equal limits


_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P(?:T|\d)\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)"
                   r"([^;]*);")  # fmt: skip
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)|\b0x([0-9a-f]+)\b")


@dataclass
class Insn:
    addr: int
    op: str  # the opcode without modifiers: FFMA, LDS, LDG, BRA, BAR ...
    conditional: bool = False  # under a predicate other than PT
    target: int | None = None  # a branch's target address


@dataclass
class Loop:
    start: int
    end: int  # the address of the backward branch
    children: list[Loop] = field(default_factory=list)

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and self != other


def parse_sass(text: str) -> list[Insn]:
    """The instructions of a kernel's `cuobjdump -sass` listing (one kernel), in order."""
    insns: list[Insn] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    raw_targets: list[str | None] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSN.search(line)
        if not m:
            continue
        addr, pred, op, rest = int(m.group(1), 16), m.group(2), m.group(3), m.group(5)
        for name in pending:
            labels[name] = addr
        pending = []
        insns.append(Insn(addr, op, bool(pred) and "PT" not in pred))
        t = _TARGET.search(rest) if op in ("BRA", "BRX", "JMP") else None
        raw_targets.append(None if t is None else (t.group(1) or t.group(2)))
    for insn, t in zip(insns, raw_targets):
        if t is not None:
            insn.target = labels.get(t) if t.startswith(".L") else int(t, 16)
    return insns


def find_loops(insns: list[Insn]) -> list[Loop]:
    """Loops by their backward branches (target <= the branch), nested: the outermost ones,
    each with its children."""
    ends: dict[int, int] = {}
    for i in insns:
        # (a branch to itself is the trap after the last EXIT, not a loop)
        if i.op == "BRA" and i.target is not None and i.target < i.addr:
            ends[i.target] = max(ends.get(i.target, -1), i.addr)
    loops = sorted((Loop(s, e) for s, e in ends.items()), key=lambda lp: (lp.start, -lp.end))
    roots: list[Loop] = []
    stack: list[Loop] = []
    for lp in loops:
        while stack and not stack[-1].contains(lp):
            stack.pop()
        (stack[-1].children if stack else roots).append(lp)
        stack.append(lp)
    return roots


def _walk(loops: list[Loop]):
    for lp in loops:
        yield lp
        yield from _walk(lp.children)


def _count(insns: list[Insn], lo: int, hi: int, op: str) -> int:
    return sum(1 for i in insns if lo <= i.addr <= hi and i.op == op)


def _mix(insns: list[Insn], loop: Loop, trips: dict[int, float]) -> dict[str, float]:
    """Issued instructions per iteration of `loop` along its straight path: from its first
    instruction, conditional branches fall through (the in-bounds side of a bounds check),
    unconditional forward branches jump (past the other side of an if/else), and each child
    loop on the path counts trips[start] times (1 when not known)."""
    ops = ("FFMA", "LDS", "LDG", "STS", "BAR")
    mix = {"instructions": 0, **{op.lower(): 0 for op in ops}}
    body = [i for i in insns if loop.start <= i.addr <= loop.end]
    children = {c.start: c for c in loop.children}
    k = 0
    while k < len(body):
        i = body[k]
        child = children.get(i.addr)
        if child is not None:
            sub = _mix(insns, child, trips)
            for name in mix:
                mix[name] += trips.get(child.start, 1) * sub[name]
            k = next((j for j in range(k, len(body)) if body[j].addr > child.end), len(body))
            continue
        mix["instructions"] += 1
        if i.op in ops:
            mix[i.op.lower()] += 1
        if i.op == "EXIT" and not i.conditional:
            break
        if i.op == "BRA" and not i.conditional and i.target is not None and i.target > i.addr:
            if i.target > loop.end:
                break  # leaves the loop
            k = next(j for j in range(k, len(body)) if body[j].addr >= i.target)
            continue
        k += 1
    return mix


def main_loop_mix(sass: str, tile: tuple[int, int, int, int, int] | None = None) -> dict:
    """The main loop's instruction mix of one kernel's SASS (see the module doc).

    tile = (bm, bn, bk, tm, tn) for a GEMM: the main loop is the innermost loop holding an
    FFMA and a barrier (one K slice; the whole kernel when K fits one slice); the child loop
    with the FFMAs runs until the slice's tm*tn*bk FFMAs are issued, the other children (the
    A then B tile fills) run bm*bk / threads and bk*bn / threads times on average.
    """
    insns = parse_sass(sass)
    loops = list(_walk(find_loops(insns)))
    has = {
        id(lp): (_count(insns, lp.start, lp.end, "FFMA"), _count(insns, lp.start, lp.end, "BAR"))
        for lp in loops
    }
    trips: dict[int, float] = {}
    kind = "static"
    main: Loop | None = None
    if tile is not None:
        slices = [lp for lp in loops if has[id(lp)][0] and has[id(lp)][1]]
        if slices:
            main, kind = min(slices, key=lambda lp: lp.end - lp.start), "per K slice"
        elif insns:  # K fits one slice: no K loop, the kernel's body is the slice
            main = Loop(insns[0].addr, insns[-1].addr, find_loops(insns))
            kind = "one K slice"
        if main is not None:
            bm, bn, bk, tm, tn = tile
            threads = (bm // tm) * (bn // tn)
            fma_children = [c for c in main.children if _count(insns, c.start, c.end, "FFMA")]
            # a grid-stride fill of E elements by T threads: E / T iterations per thread on
            # average (fewer elements than threads: some warps skip it)
            fills = iter([bm * bk / threads, bk * bn / threads])
            for c in main.children:
                if c not in fma_children:
                    trips[c.start] = next(fills, 1)
            if len(fma_children) == 1:
                c = fma_children[0]
                outside = _mix(insns, main, {**trips, c.start: 0})["ffma"]
                inner = _mix(insns, c, {})["ffma"]
                trips[c.start] = max(1, round((tm * tn * bk - outside) / inner))
    if main is None:
        with_ffma = [lp for lp in loops if has[id(lp)][0]]
        if with_ffma:
            main = min(with_ffma, key=lambda lp: lp.end - lp.start)
        elif loops:
            main = max(loops, key=lambda lp: lp.end - lp.start)
    if main is None:
        body = Loop(insns[0].addr, insns[-1].addr) if insns else Loop(0, -1)
        mix, kind = _mix(insns, body, {}), "whole kernel"
    else:
        mix = _mix(insns, main, trips)
    n, f = mix["instructions"], mix["ffma"]
    per_ffma = {f"{op}_per_ffma": mix[op] / f if f else None for op in ("lds", "ldg")}
    return {**mix, **per_ffma, "kind": kind, "trips": sorted(trips.values()),
            "ffma_share": f / n if n else 0.0, "kernel_instructions": len(insns)}  # fmt: skip


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "shared_bytes": re.compile(r"(\d+) bytes smem"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers, shared bytes, stack and spills of the entry function in `ptxas -v` output."""
    entry = log.split("Compiling entry function", 1)[-1]
    return {k: int(m.group(1)) if (m := rx.search(entry)) else 0 for k, rx in _PTXAS.items()}


# ---------------------------------------------------------------------------------------------
# The tools
# ---------------------------------------------------------------------------------------------


def find_tools() -> dict[str, str]:
    """Paths of ptxas, cuobjdump and nvdisasm (the CUDA wheels' or on PATH); ToolError names
    the extra when one is missing."""
    found: dict[str, str] = {}
    for tool in ("ptxas", "cuobjdump", "nvdisasm"):
        path = None
        try:
            from cuda.pathfinder import find_nvidia_binary_utility

            path = find_nvidia_binary_utility(tool)
        except Exception:  # cuda-pathfinder missing or too old: PATH only
            path = None
        path = path or shutil.which(tool)
        if path is None:
            raise ToolError(f"{tool} not found (it comes with the CUDA toolkit or the "
                            f"nvidia-cuda-* wheels): {EXTRA}")  # fmt: skip
        found[tool] = path
    return found


def _env(simulator: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------------------------------------
# Step 1 (a process in the CUDA simulator): the launches of one training step, not executed
# ---------------------------------------------------------------------------------------------


def record(net_path: str, batch: int, one_column: bool) -> dict:
    """Build the CUDA plan at `batch` with the real GPU's launch configurations and capture one
    training step's launches (forward, backward, the optimizer's update) without running them.
    """
    import numpy as np
    from numba import cuda

    import netdsl
    from netdsl.backends import compile_network
    from netdsl.ops import cudakit
    from netdsl.train.optimizer import Optimizer

    # Runners pick tile configs and block sizes by cudakit.simulator(): say "real GPU" while
    # the plan is built, so the launches are the GPU's (the simulator's are smaller).
    cudakit.simulator = lambda: False
    # Nothing runs: uploads need not copy (VGG-16's buffers at batch 128 would take 20 GB).
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    upload = cuda.to_device

    def to_device(ary, stream=0, copy=True, to=None):
        if to is None:
            return FakeCUDAArray(np.asarray(ary), stream=stream)
        return upload(ary, stream, copy, to)

    cuda.to_device = to_device
    net = netdsl.load(net_path)
    declared = net.gpus
    if one_column and net.gpus > 1:
        from netdsl.passes.placement import place

        net.gpus = 1  # one device: the layers' `groups` are unchanged
        place(net)
    cnet = compile_network(net, device="cuda", batch=batch, seed=0)
    opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size, "cuda")
    where: list[tuple[str, str]] = [("(plan)", "")]
    for r in cnet.runners:
        for phase in ("forward", "backward"):
            run = getattr(r, phase)

            def tagged(*args, run=run, tag=(r.layer.name, phase)):
                where.append(tag)
                try:
                    return run(*args)
                finally:
                    where.pop()

            setattr(r, phase, tagged)
    launches = []

    def sink(launch, args) -> None:
        layer, phase = where[-1]
        launches.append({
            "layer": layer, "phase": phase, "name": launch.name,
            "key": (launch.factory.__module__, launch.factory.__name__, launch.cfg, launch.name,
                    tuple(cudakit._describe(a) for a in args)),
            "grid": _dims(launch.grid), "block": _dims(launch.block),
        })  # fmt: skip

    with cudakit.capturing(sink):
        cnet._launch_train()
        where.append(("(optimizer)", "update"))
        opt.step(cnet.theta, cnet.grad, 0.01)
    return {"net": net.name, "batch": batch, "gpus": declared, "plan": type(cnet).__name__,
            "columns": net.gpus if type(cnet).__name__ == "GroupedCudaNet" else 1,
            "launches": launches}  # fmt: skip


def _dims(d) -> tuple[int, int, int]:
    d = tuple(d) if isinstance(d, (tuple, list)) else (d,)
    return tuple(int(v) for v in (*d, 1, 1)[:3])


# ---------------------------------------------------------------------------------------------
# Step 2 (processes without the simulator): NVVM -> PTX -> ptxas -> cuobjdump
# ---------------------------------------------------------------------------------------------


def gemm_tile(key: tuple) -> tuple[int, int, int, int, int] | None:
    """(bm, bn, bk, tm, tn) of one of netdsl's GEMM kernels, else None."""
    module, factory, cfg, name, _ = key
    if (module, name) not in GEMMS:
        return None
    import importlib

    geo = getattr(getattr(importlib.import_module(module), factory), "geometry_args", 0)
    return tuple(int(v) for v in cfg[geo : geo + 5])


def compile_kernels(keys: list[tuple[int, tuple]], tools: dict[str, str],
                    keep: str | None) -> list[dict]:  # fmt: skip
    """Compile each (number, kernel) for sm_90 and analyse it; one dict per kernel, in order.
    With `keep`, its PTX, cubin and SASS are kept as DIR/<number>_<module>_<kernel>.*"""
    import importlib

    from numba import cuda
    from numba.cuda import dispatcher

    from netdsl.backends.cuda_ptx import _type

    class _Device:  # device functions ask the current device for its compute capability
        compute_capability = CC

    dispatcher.get_current_device = lambda: _Device()  # no driver here: pretend to be sm_90
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(tools["nvdisasm"]).parent), env.get("PATH", "")])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, key in keys:
            module, factory, cfg, name, args = key
            kern = getattr(getattr(importlib.import_module(module), factory)(*cfg), name)
            try:
                # the kernel's own launch bounds (generated GEMMs declare them): ptxas budgets
                # registers by them, as the driver's JIT would
                bounds = getattr(kern, "targetoptions", {}).get("launch_bounds")
                ptx, _ = cuda.compile_ptx(kern.py_func, tuple(_type(a) for a in args), cc=CC,
                                          launch_bounds=bounds)  # fmt: skip
            except ImportError as e:  # numba-cuda's NvvmSupportError: no libNVVM
                raise ToolError(f"NVVM not found ({e}): {EXTRA}") from None
            stem = Path(keep or tmp) / f"{n:03d}_{module.rsplit('.', 1)[-1]}_{name}"
            stem.with_suffix(".ptx").write_text(ptx)
            cubin = stem.with_suffix(".cubin")
            cmd = [tools["ptxas"], f"-arch={ARCH}", "-v", f"{stem}.ptx", "-o", str(cubin)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode:
                raise RuntimeError(f"ptxas failed on {name}: {res.stderr.strip()}")
            info = parse_ptxas(res.stderr)
            res = subprocess.run([tools["cuobjdump"], "-sass", str(cubin)], capture_output=True,
                                 text=True, env=env)  # fmt: skip
            if res.returncode or "/*0000*/" not in res.stdout:
                raise ToolError(f"cuobjdump -sass failed ({res.stderr.strip()}): needs "
                                f"nvdisasm beside it; {EXTRA}")  # fmt: skip
            if keep:
                stem.with_suffix(".sass").write_text(res.stdout)
            tile = gemm_tile(key)
            out.append({**info, "tile": tile, "loop": main_loop_mix(res.stdout, tile)})
    return out


# ---------------------------------------------------------------------------------------------
# Step 3: occupancy and the roofline estimate
# ---------------------------------------------------------------------------------------------


def gemm_shape(key: tuple) -> tuple[int, int, int]:
    """(M, N, K) of one of netdsl's GEMM kernels (per group, for a grouped conv)."""
    module, _, cfg, name, _ = key
    if module == "netdsl.ops.fc":
        return tuple(int(v) for v in cfg[:3])
    n, c, h, w, o, groups, kh, kw = cfg[:8]
    ho, wo = cfg[14], cfg[15]
    cg, og = c // groups, o // groups
    if name == "conv_forward":
        return og, n * ho * wo, cg * kh * kw
    if name == "conv_backward_data":
        return cg, n * h * w, og * kh * kw
    return og, cg * kh * kw, n * ho * wo  # conv_backward_weights


def k_slices(key: tuple, tile: tuple) -> int:
    """K slices one block of a GEMM runs."""
    module, _, cfg, name, _ = key
    bk = tile[2]
    if module == "netdsl.ops.fc":
        return -(-cfg[2] // bk)
    n, c, h, w, o, groups, kh, kw = cfg[:8]
    chunk = cfg[16]
    if name == "conv_forward":
        return -(-(c // groups) * kh * kw // bk)
    if name == "conv_backward_data":
        return -(-(o // groups) * kh * kw // bk)
    return chunk // bk  # conv_backward_weights: a split of `chunk` output pixels


def useful_flops(key: tuple) -> float:
    """2 x the MACs of the layer (or, in a split plan, the column's share) a GEMM serves:
    netdsl's MAC count, the same for its forward, backward-data and backward-weights GEMMs."""
    module, _, cfg, _, _ = key
    if module == "netdsl.ops.fc":
        m, n, k = cfg[:3]
        return 2.0 * m * n * k
    n, c, _, _, o, groups, kh, kw = cfg[:8]
    ho, wo = cfg[14], cfg[15]
    return 2.0 * n * o * ho * wo * (c // groups) * kh * kw


def analyse(rec: dict, compiled: dict[tuple, dict]) -> dict:
    kernels, layers = [], {}
    for lc in rec["launches"]:
        key = lc["key"]
        if key not in compiled:
            continue
        c = compiled[key]
        threads = math.prod(lc["block"])
        blocks = math.prod(lc["grid"])
        bps, limit = blocks_per_sm(threads, c["registers"], c["shared_bytes"])
        loop = c["loop"]
        k = {"name": lc["name"], "layer": lc["layer"], "phase": lc["phase"],
             "registers": c["registers"], "spills": c["spill_stores"] + c["spill_loads"],
             "stack": c["stack"], "shared_bytes": c["shared_bytes"], "threads": threads,
             "blocks": blocks, "blocks_per_sm": bps, "occupancy_limit": limit,
             "ffma_share": round(loop["ffma_share"], 4), "loop": loop}  # fmt: skip
        if c["tile"] is not None and loop["kind"].endswith("K slice"):
            flops = useful_flops(key)
            warps = -(-threads // 32)
            # issue-bound: the busiest SM runs ceil(blocks / SMs) blocks' warp-instructions
            # at 4 per cycle (with fewer warps than schedulers, fewer: one per warp)
            per_block = warps * k_slices(key, c["tile"]) * loop["instructions"]
            resident = min(bps, -(-blocks // SMS))
            rate = min(4, warps * resident)  # warp-instructions per cycle per SM
            seconds = -(-blocks // SMS) * per_block / rate / CLOCK
            tflops = flops / seconds / 1e12 if seconds else 0.0
            k.update(tile=c["tile"], gemm_mnk=gemm_shape(key), gflop=flops / 1e9,
                     est_us=1e6 * seconds, est_tflops=tflops)  # fmt: skip
            lay = layers.setdefault(lc["layer"], {"layer": lc["layer"], "gflop": 0.0,
                                                  "est_us": 0.0})  # fmt: skip
            lay["gflop"] += flops / 1e9
            lay["est_us"] += 1e6 * seconds
        kernels.append(k)
    for lay in layers.values():
        lay["est_tflops"] = lay["gflop"] / lay["est_us"] * 1e3 if lay["est_us"] else 0.0
    gflop = sum(lay["gflop"] for lay in layers.values())
    est_us = sum(lay["est_us"] for lay in layers.values())
    step = {"gemm_gflop": gflop, "gemm_est_ms": est_us / 1e3,
            "gemm_est_tflops": gflop / est_us * 1e3 if est_us else 0.0,
            "launches": len(rec["launches"]), "distinct_kernels": len(compiled)}  # fmt: skip
    return {"net": rec["net"], "batch": rec["batch"], "arch": ARCH, "plan": rec["plan"],
            "columns": rec["columns"], "kernels": kernels, "layers": list(layers.values()),
            "step": step}  # fmt: skip


def render(res: dict) -> str:
    ratio = 100 / (FP32_PEAK / 1e12)
    lines = [f"{res['net']}: batch {res['batch']}, {res['plan']} ({res['columns']} column(s)), "
             f"{res['arch']}; {res['step']['launches']} launches per training step, "
             f"{res['step']['distinct_kernels']} distinct kernels compiled", "",
             f"{'kernel':<22} {'layer':<14} {'phase':<8} {'regs':>4} {'spill':>5} "
             f"{'smem':>6} {'thr':>4} {'blocks':>7} {'blk/SM':>6} {'loop':>5} {'FFMA%':>6} "
             f"{'LDS/F':>5} {'LDG/F':>5} {'est TFLOP/s':>11}  GEMM M x N x K"]  # fmt: skip
    for k in res["kernels"]:
        lp = k["loop"]
        lds = "-" if lp["lds_per_ffma"] is None else f"{lp['lds_per_ffma']:.2f}"
        ldg = "-" if lp["ldg_per_ffma"] is None else f"{lp['ldg_per_ffma']:.2f}"
        est = f"{k['est_tflops']:7.2f}" if "est_tflops" in k else ""
        mnk = " x ".join(map(str, k["gemm_mnk"])) if "gemm_mnk" in k else ""
        lines.append(f"{k['name']:<22} {k['layer']:<14} {k['phase']:<8} {k['registers']:>4} "
                     f"{k['spills']:>5} {k['shared_bytes']:>6} {k['threads']:>4} "
                     f"{k['blocks']:>7} {k['blocks_per_sm']:>6} {lp['instructions']:>5.0f} "
                     f"{100 * k['ffma_share']:>5.1f}% {lds:>5} {ldg:>5} {est:>11}  "
                     f"{mnk}")  # fmt: skip
    lines += ["", "loop: issued instructions per iteration of the main loop (per K slice for "
              "the GEMMs); FFMA%: its FFMA share; est: issue-bound ceiling (module doc)", "",
              f"{'layer':<14} {'GEMM GFLOP':>10} {'est us':>9} {'est TFLOP/s':>11} "
              f"{'of peak':>7}"]  # fmt: skip
    for lay in res["layers"]:
        lines.append(f"{lay['layer']:<14} {lay['gflop']:>10.2f} {lay['est_us']:>9.1f} "
                     f"{lay['est_tflops']:>11.2f} {ratio * lay['est_tflops']:>6.1f}%")  # fmt: skip
    s = res["step"]
    lines.append(f"training step: GEMMs {s['gemm_gflop']:.1f} GFLOP, issue-bound estimate "
                 f"{s['gemm_est_ms']:.2f} ms = {s['gemm_est_tflops']:.2f} TFLOP/s "
                 f"({ratio * s['gemm_est_tflops']:.1f}% of {FP32_PEAK / 1e12:.0f}); "
                 "other kernels not modelled")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command: a recording process, compiling processes, the report
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], simulator: bool, what: str) -> None:
    res = subprocess.run(cmd, env=_env(simulator), capture_output=True, text=True)
    if res.returncode:
        tail = res.stderr.strip().splitlines()[-1:] or [""]
        if res.returncode == 3:  # a ToolError in the child: its message, no traceback
            raise ToolError(tail[0])
        raise RuntimeError(f"{what} failed:\n{res.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("net", help="a .net file")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--one-column", action="store_true",
                    help="a net declaring `gpus N` as one column on one GPU")  # fmt: skip
    ap.add_argument("--kernels", metavar="REGEX", help="only kernels whose name matches")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="compiling processes")  # fmt: skip
    ap.add_argument("--keep", metavar="DIR", help="keep each kernel's PTX, cubin and SASS in DIR")
    ap.add_argument("--_record", nargs=2, metavar=("OUT", "ONE_COLUMN"), help=argparse.SUPPRESS)
    ap.add_argument("--_compile", nargs=2, metavar=("KEYS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.batch < 1:
        ap.error("--batch must be at least 1")
    try:
        if a._record:
            Path(a._record[0]).write_bytes(
                pickle.dumps(record(a.net, a.batch, a._record[1] == "1"))
            )
            return 0
        if a._compile:
            keys = pickle.loads(Path(a._compile[0]).read_bytes())  # [(number, key)]
            result = compile_kernels(keys, find_tools(), a.keep)
            Path(a._compile[1]).write_bytes(pickle.dumps(result))
            return 0
        return _command(a)
    except ToolError as e:
        print(f"gpu_static: {e}", file=sys.stderr)
        return 3 if (a._record or a._compile) else 1
    except RuntimeError as e:  # a recording or compiling process failed: its own message
        print(f"gpu_static: {e}", file=sys.stderr)
        return 1


def _command(a) -> int:
    sys.path.insert(0, str(ROOT))
    import netdsl
    from netdsl.errors import NetdslError

    try:
        netdsl.load(a.net)  # a .net mistake: located error, exit 2, before anything is built
    except NetdslError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gpu_static: cannot read {a.net}: {e.strerror}", file=sys.stderr)
        return 2
    find_tools()  # missing tools: say so now, before the slow recording
    if a.keep:
        Path(a.keep).mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        rec_path = Path(tmp) / "launches.pkl"
        _run([*me, a.net, "--batch", str(a.batch), "--_record", str(rec_path),
              "1" if a.one_column else "0"], True, "recording the launches")  # fmt: skip
        rec = pickle.loads(rec_path.read_bytes())
        wanted = [lc for lc in rec["launches"] if not a.kernels or re.search(a.kernels, lc["name"])]
        keys = list(dict.fromkeys(lc["key"] for lc in wanted))
        if a.keep:  # which file is which kernel of which layer
            index = [f"{n:03d} {k[3]} {k[0]} {list(k[2])}: " + " ".join(sorted({
                f"{lc['layer']}/{lc['phase']}" for lc in wanted if lc["key"] == k})) + "\n"
                for n, k in enumerate(keys)]  # fmt: skip
            (Path(a.keep) / "index.txt").write_text("".join(index))
        numbered = list(enumerate(keys))
        parts = [numbered[i :: max(1, a.jobs)] for i in range(max(1, a.jobs))]
        procs = []
        for i, part in enumerate(p for p in parts if p):
            kp, op = Path(tmp) / f"keys{i}.pkl", Path(tmp) / f"out{i}.pkl"
            kp.write_bytes(pickle.dumps(part))
            cmd = [*me, a.net, "--_compile", str(kp), str(op)] + (["--keep", a.keep] if a.keep
                                                                   else [])  # fmt: skip
            procs.append((part, op, subprocess.Popen(cmd, env=_env(False), text=True,
                                                     stderr=subprocess.PIPE)))  # fmt: skip
        compiled: dict[tuple, dict] = {}
        failure = None
        for part, op, proc in procs:
            _, err = proc.communicate()
            if proc.returncode == 3:
                failure = ToolError((err.strip().splitlines() or [""])[-1])
            elif proc.returncode:
                failure = failure or RuntimeError(f"compiling failed:\n{err.strip()}")
            else:
                compiled.update(zip((k for _, k in part), pickle.loads(op.read_bytes())))
        if failure is not None:
            raise failure
    res = analyse(rec, compiled)
    print(json.dumps(res, indent=1) if a.json else render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
