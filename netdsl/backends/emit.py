"""`netdsl compile FILE --emit DIR`: the generated kernel source of a plan, for a person to read.

netdsl emits its geometry-specialised kernels as Python source (netdsl/ops/codegen.py) into
the kernel cache. This command builds the plan for `--device` at `--batch` and copies every
generated module the plan uses into DIR, with ``index.json`` saying which layer uses which file
(and, for CUDA, which kernels of it), and prints the same as a table.

For ``--device cuda`` nothing is compiled and no GPU is needed: the plan is built in a child
process running Numba's CUDA simulator with the real GPU's launch configurations (tile sizes,
block sizes; cudakit.simulator() answers False there), every kernel launch of one training
step captured and not executed, uploads not copied. Kernels that a factory still builds as a
closure (not generated) are listed in the index as such, without a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

INDEX = "index.json"


def cmd_emit(args) -> int:
    """The --emit branch of `netdsl compile`."""
    from .. import load
    from ..backends import resolve_device

    load(args.file)  # a mistake in the file is reported here, at its line (exit 2)
    device = "cuda" if args.device == "cuda" else resolve_device(args.device)
    out = Path(args.emit)
    if device == "cuda":
        index = _child_index(str(args.file), args.batch)
    else:
        index = plan_index(str(args.file), "cpu", args.batch)
    write(index, out)
    print(render(index, out))
    return 0


# ---- the plan's modules


def _launches_of(obj: Any, depth: int = 4, seen: set[int] | None = None) -> list:
    """Every cudakit.Launch reachable from obj's attributes (and lists, dicts) within depth."""
    from ..ops.cudakit import Launch

    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, Launch):
        return [obj]
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).values())
    else:
        return []
    found = []
    for item in items:
        if isinstance(item, (int, float, str, bytes)) or item is None:
            continue
        found += _launches_of(item, depth - 1, seen)
    return found


def _generated_module_of(value: Any) -> str | None:
    """The generated module a function, kernel or dispatcher comes from, else None."""
    from ..ops.codegen import PACKAGE

    fn = getattr(value, "py_func", None) or getattr(value, "fn", None) or value
    name = getattr(fn, "__module__", None)
    return name if isinstance(name, str) and name.startswith(PACKAGE + ".") else None


def _cuda_entries(launches: dict[int, tuple[Any, str]]) -> list[dict]:
    """One entry per distinct (factory, cfg): its file (or none) and kernels and layers."""
    from ..ops.codegen import GeneratedFactory

    entries: dict[tuple, dict] = {}
    for launch, layer in launches.values():
        factory = launch.factory
        if isinstance(factory, GeneratedFactory):
            path = factory.module(*launch.cfg).__file__
        else:  # a factory gathering kernels of several generated modules (conv, fc)
            name = _generated_module_of(launch.kernel)
            path = sys.modules[name].__file__ if name else None
        # one entry per file; a generated factory's cfg names its file, conv's and fc's
        # launches with different cfgs (a phase, a split) may share one
        key = (factory.__module__, factory.__qualname__, path or launch.cfg)
        e = entries.get(key)
        if e is None:
            e = entries[key] = {"file": Path(path).name if path else None, "path": path,
                                "factory": f"{key[0]}.{key[1]}", "config": list(launch.cfg),
                                "kernels": [], "layers": []}  # fmt: skip
        if launch.name not in e["kernels"]:
            e["kernels"].append(launch.name)
        if layer not in e["layers"]:
            e["layers"].append(layer)
    return list(entries.values())


def _cpu_entries(cnet) -> list[dict]:
    """The generated modules this process loaded, with the layers whose runner can reach one
    of their kernels (its attributes, its class's module, a kernel module it holds)."""
    import types

    from ..ops import codegen

    users: dict[str, list[str]] = {}
    for r in cnet.runners:
        values = list(vars(r).values()) + list(vars(sys.modules[type(r).__module__]).values())
        # a module the runner holds (its kernels' module, looked up once): its globals too;
        # the base runner holds the activation module for a fused activation, used only then
        if getattr(r, "fused_act", True):
            values += [x for v in vars(r).values() if isinstance(v, types.ModuleType)
                       for x in vars(v).values()]  # fmt: skip
        for v in values:
            name = _generated_module_of(v)
            if name and r.layer.name not in users.setdefault(name, []):
                users[name].append(r.layer.name)
    entries, done = [], set()
    for name, path, _ in codegen.EVENTS:
        if name in done:
            continue
        done.add(name)
        full = f"{codegen.PACKAGE}.{name}"
        module = sys.modules.get(full)
        kernels = [k for k, v in vars(module).items() if _generated_module_of(v) == full
                   and not k.startswith("_")] if module else []  # fmt: skip
        entries.append({"file": Path(path).name, "path": path, "factory": name.split("_")[0],
                        "config": [], "kernels": kernels,
                        "layers": users.get(full, [])})  # fmt: skip
    return entries


def plan_index(net_path: str, device: str, batch: int | None) -> dict:
    """Build the plan in this process and describe its generated modules (see the module doc).
    For CUDA this process must run the simulator (see _child_index)."""
    from .. import load
    from ..backends import compile_network
    from ..ops import codegen

    net = load(net_path)
    if device == "cpu":
        cnet = compile_network(net, device="cpu", batch=batch)
        entries = _cpu_entries(cnet)
    else:
        cnet, launches = _record_cuda(net, batch)
        entries = _cuda_entries(launches)
    return {"net": net.name, "device": device, "batch": cnet.batch,
            "code_version": codegen.code_version(), "modules": entries}  # fmt: skip


def _record_cuda(net, batch: int | None):
    """The CUDA plan built without running anything, and {id: (Launch, layer)} of every
    launch it holds or one training step makes."""
    import numpy as np
    from numba import cuda

    from ..backends import compile_network
    from ..ops import cudakit
    from ..train.optimizer import Optimizer

    cudakit.simulator = lambda: False  # the real GPU's tiles and blocks (nothing runs)
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    upload = cuda.to_device

    def to_device(ary, stream=0, copy=True, to=None):  # no copy of the batch or the weights
        if to is None:
            return FakeCUDAArray(np.asarray(ary), stream=stream)
        return upload(ary, stream, copy, to)

    cuda.to_device = to_device
    cnet = compile_network(net, device="cuda", batch=batch, seed=0)
    opt = Optimizer(dict(net.train["optimizer"]), cnet.slots, cnet.theta.size, "cuda")
    launches: dict[int, tuple[Any, str]] = {}
    for r in cnet.runners:
        for launch in _launches_of(r):
            launches.setdefault(id(launch), (launch, r.layer.name))
    for launch in _launches_of(opt):
        launches.setdefault(id(launch), (launch, "(optimizer)"))
    where = [("(plan)", "")]
    cudakit.tag_runners(cnet.runners, where)

    def sink(launch, args) -> None:
        launches.setdefault(id(launch), (launch, where[-1][0]))

    with cudakit.capturing(sink):
        cnet._launch_train()
        where.append(("(optimizer)", "update"))
        opt.step(cnet.theta, cnet.grad, 0.01)
    return cnet, launches


def _child_index(net_path: str, batch: int | None) -> dict:
    """plan_index for CUDA, in a child process running Numba's CUDA simulator."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "netdsl.backends.emit", net_path]
    if batch:
        cmd += ["--batch", str(batch)]
    from ..errors import NetdslError

    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        last = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        if os.environ.get("NETDSL_DEBUG"):
            sys.stderr.write(res.stderr)
        raise NetdslError(f"building the CUDA plan of {net_path} to list its kernels failed "
                          f"(exit {res.returncode}): {last}")  # fmt: skip
    sys.stderr.write(res.stderr)  # NETDSL_DEBUG's lines, placement notes
    return json.loads(res.stdout)


# ---- the output


def write(index: dict, out: Path) -> None:
    """Copy the modules into `out` and write its index.json (atomically, last)."""
    from ..files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    for e in index["modules"]:
        if e["path"]:
            tmp = out / f".{e['file']}.tmp"
            shutil.copyfile(e["path"], tmp)
            os.replace(tmp, out / e["file"])
    public = {**index, "modules": [{k: v for k, v in e.items() if k != "path"}
                                   for e in index["modules"]]}  # fmt: skip
    write_atomic(out / INDEX, json.dumps(public, indent=1) + "\n", what="kernel index")


def render(index: dict, out: Path) -> str:
    """The table printed after writing: file, kernels, layers."""
    files = [e for e in index["modules"] if e["file"]]
    closures = [e for e in index["modules"] if not e["file"]]
    batch = f", batch {index['batch']}"
    from ..train.progress import plural

    lines = [f"{index['net']}: {plural(len(files), 'generated kernel module')} "
             f"({index['device']}{batch}) written to {out}/ (index: {out / INDEX})"]  # fmt: skip
    width = max((len(e["file"]) for e in files), default=4)
    for e in files:
        what = ", ".join(e["kernels"]) or "-"
        lines.append(f"  {e['file']:<{width}}  {what}  <- {', '.join(e['layers']) or '-'}")
    if closures:
        lines.append(f"not generated (closures built in-process): "
                     f"{plural(len(closures), 'configuration')}")  # fmt: skip
        by_factory: dict[str, list[dict]] = {}
        for e in closures:
            by_factory.setdefault(e["factory"], []).append(e)
        for factory, group in by_factory.items():
            layers = list(dict.fromkeys(x for e in group for x in e["layers"]))
            lines.append(f"  {factory}: {plural(len(group), 'configuration')} <- "
                         f"{', '.join(layers)}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The child of `compile --emit --device cuda`: the plan's index as JSON on stdout."""
    import argparse

    from ..ops import cudakit

    ap = argparse.ArgumentParser(prog="python -m netdsl.backends.emit")
    ap.add_argument("file")
    ap.add_argument("--batch", type=int)
    opts = ap.parse_args(argv)
    if not cudakit.simulator():
        ap.error("runs in Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1")
    print(json.dumps(plan_index(opts.file, "cuda", opts.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
