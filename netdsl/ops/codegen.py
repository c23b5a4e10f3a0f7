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
    if name in _LOADED:
        return _LOADED[name]
    path, how = _write(name, text)
    EVENTS.append((name, str(path), how))
    if os.environ.get("NETDSL_DEBUG"):
        print(f"netdsl: kernel source {how}: {path}", file=sys.stderr)
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # netdsl.ops.jit binds @kernel through sys.modules
    spec.loader.exec_module(module)
    _LOADED[name] = module
    return module


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
