"""Kernels compiled with ``no_cpython_wrapper=True`` have no entry point for Python: only
other compiled kernels may call them (Python calling one crashes the interpreter). This
checks the sources: every use of such a function by name, anywhere in netdsl, the tests or
the benchmarks, sits inside a function that is itself compiled (@njit or @kernel)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPILED = {"njit", "jit", "kernel"}


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
        elif isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _without_wrapper(tree: ast.Module) -> set[str]:
    """Names of the functions in `tree` decorated with no_cpython_wrapper=True."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and any(
                    k.arg == "no_cpython_wrapper"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is True
                    for k in d.keywords
                ):
                    found.add(node.name)
    return found


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """module name -> (file, tree) for netdsl, the tests and the benchmarks."""
    files = [*(ROOT / "netdsl").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py")]  # fmt: skip
    out = {}
    for p in files:
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (p, ast.parse(p.read_text(), str(p)))
    return out


def _bindings(module: str, tree: ast.Module, targets: dict[str, set[str]]):
    """In `module`: the local names bound to a function of `targets` ({module: names}), and
    the local names bound to one of those modules (for attribute uses)."""
    names, modules = set(), {}
    names |= targets.get(module, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .conv_cpu import gemm
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            for a in node.names:
                local = a.asname or a.name
                if a.name in targets.get(base, set()):
                    names.add(local)
                if f"{base}.{a.name}" in targets:
                    modules[local] = f"{base}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in targets and a.asname:
                    modules[a.asname] = a.name
    return names, modules


def _uses_outside_kernels(tree: ast.Module, names: set[str], modules: dict[str, str],
                          targets: dict[str, set[str]]) -> list[tuple[int, str]]:  # fmt: skip
    """(line, name) of each use of a wrapper-less function not inside a compiled function:
    by a local name, or as an attribute of its module."""
    bad = []

    def visit(node: ast.AST, compiled: bool) -> None:
        if isinstance(node, ast.FunctionDef):
            compiled = compiled or bool(_decorator_names(node) & COMPILED)
            if node.name in names:  # its own definition (decorators and body)
                return
        used = None
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            used = node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            owner = ast.unparse(node.value)
            owner = modules.get(owner, owner)
            if node.attr in targets.get(owner, set()):
                used = f"{owner}.{node.attr}"
        if used and not compiled:
            bad.append((node.lineno, used))
        for child in ast.iter_child_nodes(node):
            visit(child, compiled)

    visit(tree, False)
    return bad


def test_functions_without_a_wrapper_are_only_used_by_compiled_kernels():
    sources = _sources()
    targets = {m: _without_wrapper(t) for m, (_, t) in sources.items()}
    targets = {m: n for m, n in targets.items() if n}
    assert {"gemm", "fill_col_gather"} <= targets["netdsl.ops.conv_cpu"]  # the check sees them
    assert "_max_whole_rows" in targets["netdsl.ops.pool"]
    bad = []
    for module, (path, tree) in sources.items():
        names, modules = _bindings(module, tree, targets)
        for line, name in _uses_outside_kernels(tree, names, modules, targets):
            bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert bad == []


def test_the_check_finds_a_use_from_python():
    tree = ast.parse(
        "from numba import njit\n"
        "@njit(no_cpython_wrapper=True)\n"
        "def inner(a):\n"
        "    return a\n"
        "@njit\n"
        "def outer(a):\n"
        "    return inner(a)\n"
        "def plain(a):\n"
        "    return inner(a)\n"
        "run = [inner]\n"
    )
    assert _without_wrapper(tree) == {"inner"}
    targets = {"m": {"inner"}}
    names, modules = _bindings("m", tree, targets)
    assert _uses_outside_kernels(tree, names, modules, targets) == [(9, "inner"), (10, "inner")]
    other = ast.parse(
        "from m import inner\nimport m as mm\nx = inner\ny = mm.inner\nz = mm.other\n"
    )
    names, modules = _bindings("n", other, targets)
    assert _uses_outside_kernels(other, names, modules, targets) == [(3, "inner"), (4, "m.inner")]
