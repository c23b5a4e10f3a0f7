"""Generated kernel source: written once into a cache folder, imported from there.

Numba caches compiled code on disk only for functions defined in a real source file (a
closure built per layer geometry is compiled again by every process), and keys that cache
on the file. So a kernel specialised for constants (a layer's sizes, a tile config, the
registered activation kinds) is emitted here as Python source, into
``<cache>/kernels/<kind>_<hash>.py``, where the hash covers the text and the version of the
code that generated it (every source file of ``netdsl.ops``); the kernels in it are declared
with Numba's ``cache=True``. A second process finds the same file and Numba's cache beside
it (``__pycache__``) and compiles nothing it compiled before.

The cache folder is ``$NETDSL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/netdsl`` (default
``~/.cache/netdsl``); a per-user temporary folder when that cannot be written.
``NETDSL_DEBUG=1`` says on standard error which modules were generated and which reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

PACKAGE = "netdsl.ops._generated"  # the modules' names in sys.modules (not a real package)

# (module name, path, "generated" | "reused"), in the order this process loaded them
EVENTS: list[tuple[str, str, str]] = []


def cache_folder() -> Path:
    """The folder generated kernels go into (created on first write)."""
    env = os.environ.get("NETDSL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netdsl"


def _fallback_folder() -> Path:
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    return Path(tempfile.gettempdir()) / f"netdsl-{user}"


@cache
def code_version() -> str:
    """A hash of every source file of netdsl.ops: generated kernels call into these modules
    (shared device functions, element math), which Numba's per-file cache does not track."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "_generated" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def module_name(kind: str, text: str) -> str:
    """`<kind>_<hash>`: the hash of the text and the generating code's version."""
    digest = hashlib.sha256(f"{code_version()}\n{text}".encode()).hexdigest()[:16]
    return f"{kind}_{digest}"


_LOADED: dict[str, ModuleType] = {}


def kernel_module(kind: str, text: str) -> ModuleType:
    """Write `text` (once) as a module of the kernel cache and import it.

    `kind` names the family (``conv``, ``act``…): it starts the file's name. The same text
    from the same code gives the same module, in this process and the next.
    """
    name = module_name(kind, text)
    if name not in _LOADED:
        _LOADED[name] = _load(name, text)
    return _LOADED[name]


def _load(name: str, text: str) -> ModuleType:
    path, how = _write(name, text)
    EVENTS.append((name, str(path), how))
    if os.environ.get("NETDSL_DEBUG"):
        print(f"netdsl: kernel source {how}: {path}", file=sys.stderr)
        _report_at_exit()
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # netdsl.ops.jit binds @kernel through sys.modules
    spec.loader.exec_module(module)
    return module


def numba_stats(module: ModuleType) -> dict[str, tuple[int, int]]:
    """{kernel: (compiled, loaded from Numba's cache)} for the kernels of a generated module
    that Numba has compiled or loaded in this process (counted per signature; the CUDA
    simulator and kernels not yet called have none)."""
    out = {}
    for attr, value in vars(module).items():
        value = getattr(value, "_dispatcher", None) or value  # a netdsl.ops.jit.kernel
        stats = getattr(value, "stats", None)
        fn = getattr(value, "py_func", None)
        if stats is None or getattr(fn, "__module__", None) != module.__name__:
            continue  # not a dispatcher, or one this module imported
        misses = sum(getattr(stats, "cache_misses", {}).values())
        hits = sum(getattr(stats, "cache_hits", {}).values())
        if misses or hits:
            out[attr] = (misses, hits)
    return out


def summary() -> str:
    """One line on the kernel modules of this process: how many were generated now, how many
    came from the cache, and what Numba compiled or loaded from its own cache."""
    generated = sum(1 for _, _, how in EVENTS if how == "generated")
    reused = sum(1 for _, _, how in EVENTS if how == "reused")
    compiled = loaded = 0
    for module in _LOADED.values():
        for misses, hits in numba_stats(module).values():
            compiled, loaded = compiled + misses, loaded + hits
    numba = (f"; Numba: {compiled} kernels compiled, {loaded} loaded from its cache"
             if compiled or loaded else "")  # fmt: skip
    return (f"kernels: {generated} generated, {reused} from the cache; {len(_LOADED)} "
            f"distinct in this process{numba}")  # fmt: skip


@cache
def _report_at_exit() -> None:
    """NETDSL_DEBUG: at exit, per module what Numba compiled or loaded, then summary()."""
    import atexit

    def report() -> None:
        for name, module in _LOADED.items():
            stats = numba_stats(module)
            if stats:
                what = ", ".join(f"{k} {'compiled' if m else 'loaded from cache'}"
                                 for k, (m, _) in stats.items())  # fmt: skip
                print(f"netdsl: numba: {name}: {what}", file=sys.stderr)
        print(f"netdsl: {summary()}", file=sys.stderr)

    atexit.register(report)


def _write(name: str, text: str) -> tuple[Path, str]:
    """The file holding `text` and whether it was written now ("generated") or found."""
    for folder in (cache_folder() / "kernels", _fallback_folder() / "kernels"):
        path = folder / f"{name}.py"
        try:
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                return path, "reused"
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # atomic: a concurrent process reads a whole file or none
            return path, "generated"
        except OSError:
            continue
    raise OSError(f"cannot write generated kernels to {cache_folder()} nor to a temporary folder")


# ---------------------------------------------------------------------------------------------
# Kernel factories lifted into generated modules (@generated)
#
# An op's CUDA kernels are built by a factory `_cuda_kernels(*cfg)` whose parameters (a
# layer's sizes, a tile config) the kernels use as compile-time constants. Defined as
# closures, they cannot be cached on disk. @generated("pool") turns the factory's body into a
# module per cfg: the parameters become module constants at its top, the body follows as
# module code (comments kept), each `@cuda.jit` kernel gets `cache=True` (device functions stay
# as they are: they are inlined into the kernels that call them), and the final `return EXPR`
# becomes `_kernels = EXPR`. Names the body takes from the factory's module are imported from
# it. The module goes through kernel_module, so the same cfg from the same code is the same
# file in every process, and Numba's cache beside it serves the compiled kernels.
# ---------------------------------------------------------------------------------------------

RESULT = "_kernels"  # the generated module's name for what the factory returned


class GeneratedFactory:
    """A kernel factory whose body is emitted as a module per configuration (see above).

    Calling it returns what the factory would have returned (memoised per configuration in
    this process); :meth:`source` gives the module's text and :meth:`module` the module.
    Attributes set on it (``geometry_args``) stay readable, as on the plain function.
    """

    def __init__(self, kind: str, func) -> None:
        import functools
        import inspect

        functools.update_wrapper(self, func)
        self.kind = kind
        self._signature = inspect.signature(func)
        self._template: tuple[list[str], str, str] | None = None  # (imports, body, doc)

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def source(self, *args, **kwargs) -> str:
        """The generated module's text for this configuration."""
        params = self._bind(args, kwargs)
        imports, body, doc = self._lifted()
        consts = {k: _literal(v) for k, v in params.items()}
        if any("np." in v for v in consts.values()) and "import numpy as np" not in imports:
            imports = ["import numpy as np", *imports]
        where = f"{self.__module__}.{self.__qualname__}"
        call = ", ".join(f"{k}={v!r}" for k, v in params.items())
        head = [f'"""Generated by netdsl from {where}; do not edit.', "",
                f"{where}({call})"]  # fmt: skip
        if doc:
            head += ["", doc]
        lines = [*head, '"""', "", *imports, ""]
        if params:
            lines += ["# the factory's parameters: compile-time constants of the kernels below"]
            lines += [f"{k} = {v}" for k, v in consts.items()]
            lines.append("")
        return "\n".join(lines) + "\n" + body

    def module(self, *args, **kwargs) -> ModuleType:
        """The generated module for this configuration (written once, then imported)."""
        return kernel_module(self.kind, self.source(*args, **kwargs))

    def __call__(self, *args, **kwargs):
        params = self._bind(args, kwargs)
        key = tuple(params.values())
        memo = self.__dict__.setdefault("_memo", {})
        if key not in memo:
            memo[key] = getattr(self.module(**params), RESULT)
        return memo[key]

    def cache_clear(self) -> None:
        """Forget the kernels built in this process (the files stay in the cache)."""
        self.__dict__.pop("_memo", None)

    def _lifted(self) -> tuple[list[str], str, str]:
        if self._template is None:
            self._template = lift(self.__wrapped__)
        return self._template


def generated(kind: str):
    """Decorator for a kernel factory: emit its body as a cached module per configuration.

    >>> @generated("pool")
    ... def _cuda_kernels(planes: int, h: int, w: int): ...
    """

    def wrap(func) -> GeneratedFactory:
        return GeneratedFactory(kind, func)

    return wrap


def _literal(value) -> str:
    """Python source for a configuration value (numbers, strings, bools, None, tuples)."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value)  # repr round-trips a float exactly
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    type_name = type(value).__name__
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # a NumPy scalar
        return f"np.{type_name}({_literal(value.item())})"
    raise TypeError(f"a kernel factory's parameter must be a number, string or tuple of them, "
                    f"not {type_name} ({value!r})")  # fmt: skip


def lift(func) -> tuple[list[str], str, str]:
    """(import lines, body text, docstring) of a factory, as the generated module needs them.

    The body is the factory's own source text (comments kept), dedented, with these edits
    located by `ast`: the docstring and `global` statements go, `cache=True` is added to every
    kernel's `@cuda.jit` decorator, and the final `return EXPR` becomes `_kernels = EXPR`.
    """
    import ast
    import inspect
    import textwrap

    lines, _ = inspect.getsourcelines(func)
    text = textwrap.dedent("".join(lines))
    (fdef,) = ast.parse(text).body
    if not isinstance(fdef, ast.FunctionDef):
        raise TypeError(f"{func.__qualname__}: @generated needs a plain function")
    body = list(fdef.body)
    doc = ast.get_docstring(fdef) or ""
    if doc:
        body = body[1:]
    last = body[-1] if body else None
    if not isinstance(last, ast.Return) or last.value is None:
        raise TypeError(f"{func.__qualname__}: a kernel factory must end with `return EXPR`")
    if any(_returns(node) for node in body[:-1]):
        raise TypeError(f"{func.__qualname__}: only the last statement may return")
    src = text.splitlines()
    edits: list[tuple[int, int, int, str]] = []  # (line, start col, end col, new text); 1-based
    drop: set[int] = set()
    for node in body:
        if isinstance(node, ast.Global):
            drop.update(range(node.lineno, node.end_lineno + 1))
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef):
                for dec in sub.decorator_list:
                    edits.extend(_cache_edit(dec))
    edits.append((last.lineno, last.col_offset, last.col_offset + len("return"), f"{RESULT} ="))
    for line, start, end, new in sorted(edits, reverse=True):
        raw = src[line - 1].encode()  # ast's offsets count UTF-8 bytes
        src[line - 1] = (raw[:start] + new.encode() + raw[end:]).decode()
    first = body[0].lineno
    # comments between the docstring and the first statement belong to the body
    while first > fdef.body[0].end_lineno + 1 and src[first - 2].strip().startswith("#"):
        first -= 1
    kept = [src[i - 1] for i in range(first, last.end_lineno + 1) if i not in drop]
    out = textwrap.dedent("\n".join(kept)) + "\n"
    compile(out, f"<{func.__qualname__} lifted>", "exec")  # a broken lift fails here, loudly
    return _imports(func, body), out, doc


def _returns(node) -> bool:
    """True if `node` is or holds a `return` of the factory itself (not of a nested def)."""
    import ast

    if isinstance(node, ast.Return):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        return False
    return any(_returns(child) for child in ast.iter_child_nodes(node))


def _cache_edit(dec) -> list[tuple[int, int, int, str]]:
    """The edit adding cache=True to a kernel decorator `@cuda.jit` / `@cuda.jit(...)` (none
    for a device function, `device=True`, or any other decorator)."""
    import ast

    def is_jit(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "jit"
                and isinstance(node.value, ast.Name) and node.value.id == "cuda")  # fmt: skip

    if is_jit(dec):
        return [(dec.end_lineno, dec.end_col_offset, dec.end_col_offset, "(cache=True)")]
    if isinstance(dec, ast.Call) and is_jit(dec.func):
        words = {k.arg: k.value for k in dec.keywords}
        device = words.get("device")
        if "cache" in words or (isinstance(device, ast.Constant) and device.value):
            return []
        sep = ", " if dec.args or dec.keywords else ""
        at = dec.end_col_offset - 1  # the closing parenthesis
        return [(dec.end_lineno, at, at, f"{sep}cache=True")]
    return []


def _imports(func, body) -> list[str]:
    """Import lines for the names the body reads from the factory's module: modules as
    `import X as name`, everything else from the factory's module itself."""
    import ast
    import types as _types

    params = set(inspect_params(func))
    names: set[str] = set()
    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
    scope = func.__globals__
    modules, objects = [], []
    for name in sorted(names - params - {"cuda"}):
        if name not in scope:
            continue  # a builtin or a name the body binds itself
        value = scope[name]
        if isinstance(value, _types.ModuleType):
            real = value.__name__
            modules.append(f"import {real}" if real == name else f"import {real} as {name}")
        else:
            objects.append(name)
    lines = sorted(modules)
    if objects:
        lines.append(f"from {func.__module__} import {', '.join(objects)}")
    return lines


def inspect_params(func) -> list[str]:
    """The parameter names of `func`."""
    import inspect

    return list(inspect.signature(func).parameters)
