"""Generated kernel modules (netdsl/ops/codegen.py): @generated factories, the cache folder,
`netdsl compile --emit`, NETDSL_DEBUG, and Numba's on-disk cache serving the CUDA kernels.

The kernels' numbers are the op tests' business (tests/test_op_*.py and tests/test_cuda.py run
the generated kernels in the simulator); these tests check the generation and the caching.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.ops import codegen, pool, softmax
from netdsl.ops.codegen import generated

ROOT = Path(__file__).resolve().parents[1]
POOL_CFG = (6, 6, 3, 3, 2, 2, 2, 2, 0, 0, "max")  # h, w, ho, wo, kernel, stride, pad, mode


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, NETDSL_CACHE_DIR=str(cache), NUMBA_ENABLE_CUDASIM="1")
    env.pop("NETDSL_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _python(code: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res


# ---- the lifted text


def test_generation_is_deterministic_and_keyed_by_the_config():
    a = pool._cuda_kernels.source(*POOL_CFG)
    assert a == pool._cuda_kernels.source(*POOL_CFG)
    b = pool._cuda_kernels.source(*POOL_CFG[:-1], "avg")
    assert a != b
    assert codegen.module_name("pool", a) == codegen.module_name("pool", a)
    assert codegen.module_name("pool", a) != codegen.module_name("pool", b)
    # parameters are constants at the top, defaults included; the body follows
    assert "\nh = 6\n" in a and "\nmode = 'max'\n" in a and "\nact_code = " in a
    assert a.count("@cuda.jit(cache=True)") == 2  # pool_forward, pool_backward
    assert "global cuda" not in a and "\n_kernels = types.SimpleNamespace(" in a
    assert "# start from the first tap" in a  # the factory's comments are kept
    compile(a, "pool.py", "exec")


def test_the_name_follows_the_code_version(monkeypatch):
    text = softmax._cuda_kernels.source(10, 256, True)
    before = codegen.module_name("softmax", text)
    monkeypatch.setattr(codegen, "code_version", lambda: "0" * 16)
    assert codegen.module_name("softmax", text) != before


def test_code_version_changes_with_any_ops_source(tmp_path):
    """A copy of the package, then the same copy with one netdsl/ops file edited."""
    code = "from netdsl.ops.codegen import code_version; print(code_version())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    versions = []
    for edit in (False, True):
        root = tmp_path / f"copy{int(edit)}"
        shutil.copytree(ROOT / "netdsl", root / "netdsl",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        if edit:
            with open(root / "netdsl" / "ops" / "pool.py", "a") as f:
                f.write("\n# an edit\n")
        versions.append(_python(code, env, cwd=root).stdout.strip())
    assert versions[0] != versions[1]
    assert versions[0] == codegen.code_version()  # the copy hashes as the original


def _toy(n: int, scale: float = 2.0):
    """A toy factory (never imported: only lifted)."""
    global cuda
    from numba import cuda

    half = n // 2  # a comment that stays

    @cuda.jit(device=True, inline="always")
    def twice(v):
        return v * scale

    @cuda.jit
    def bare(x):
        x[0] = twice(x[0]) + half

    @cuda.jit(fastmath=True)
    def with_options(x):
        x[0] = 1.0

    @cuda.jit("void(float32[:])")
    def with_signature(x):
        x[0] = 2.0

    @cuda.jit(cache=False)
    def told_not_to(x):
        return

    return bare, with_options, with_signature, told_not_to


def test_lifting_adds_cache_to_kernels_only():
    text = generated("toy")(_toy).source(8)
    tree = ast.parse(text)  # what ruff or a reader needs: valid Python
    decorators = {f.name: ast.unparse(f.decorator_list[0]) for f in tree.body
                  if isinstance(f, ast.FunctionDef)}  # fmt: skip
    assert decorators == {
        "twice": "cuda.jit(device=True, inline='always')",
        "bare": "cuda.jit(cache=True)",
        "with_options": "cuda.jit(fastmath=True, cache=True)",
        "with_signature": "cuda.jit('void(float32[:])', cache=True)",
        "told_not_to": "cuda.jit(cache=False)",
    }
    assert "\nn = 8\nscale = 2.0\n" in text
    assert "half = n // 2  # a comment that stays" in text
    assert text.rstrip().endswith("_kernels = bare, with_options, with_signature, told_not_to")
    assert "A toy factory" in text  # the docstring goes to the module's


def _early(n: int):
    if n:
        return None
    return n


def test_a_factory_must_return_once_at_its_end():
    with pytest.raises(TypeError, match="only the last statement may return"):
        generated("early")(_early).source(1)


def test_config_values_become_literals():
    assert codegen._literal((1, 2.5, "max", True, None)) == "(1, 2.5, 'max', True, None)"
    assert codegen._literal((3,)) == "(3,)"
    assert codegen._literal(np.float32(0.25)) == "np.float32(0.25)"
    with pytest.raises(TypeError, match="parameter must be a number"):
        codegen._literal([1, 2])


# ---- the cache folder, across processes


def test_a_second_process_reuses_the_file(tmp_path):
    code = (f"from netdsl.ops import pool; m = pool._cuda_kernels.module(*{POOL_CFG!r}); "
            "print(m.__file__); pool._cuda_kernels(*" + repr(POOL_CFG) + ")")  # fmt: skip
    env = _env(tmp_path / "cache", NETDSL_DEBUG="1")
    first = _python(code, env)
    path = Path(first.stdout.strip())
    assert path.parent == tmp_path / "cache" / "kernels" and path.name.startswith("pool_")
    assert f"netdsl: kernel source generated: {path}" in first.stderr
    # the CPU activation module (imported by every op) and this one
    assert "netdsl: kernels: 2 generated, 0 from the cache; 2 distinct" in first.stderr
    stamp = path.stat().st_mtime_ns
    second = _python(code, env)
    assert second.stdout.strip() == str(path)
    assert f"netdsl: kernel source reused: {path}" in second.stderr
    assert "netdsl: kernels: 0 generated, 2 from the cache; 2 distinct" in second.stderr
    assert path.stat().st_mtime_ns == stamp  # not rewritten: Numba's cache keys on the stamp


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _env(blocker / "cache", TMPDIR=str(tmp), NETDSL_DEBUG="1")
    code = f"from netdsl.ops import pool; print(pool._cuda_kernels.module(*{POOL_CFG!r}).__file__)"
    path = Path(_python(code, env).stdout.strip())
    assert path.is_file() and path.is_relative_to(tmp) and path.parent.name == "kernels"


# ---- netdsl compile --emit


def test_compile_emit_cuda_writes_readable_modules_and_an_index(tmp_path):
    out = tmp_path / "kernels"
    env = _env(tmp_path / "cache")
    env.pop("NUMBA_ENABLE_CUDASIM")  # the user's shell: no simulator, no GPU
    cmd = [sys.executable, "-m", "netdsl", "compile", "nets/lenet5.net", "--emit", str(out),
           "--device", "cuda", "--batch", "2"]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["net"] == "lenet5" and index["device"] == "cuda" and index["batch"] == 2
    files = {e["file"]: e for e in index["modules"] if e["file"]}
    assert sorted(p.name for p in out.glob("*.py")) == sorted(files)
    by_layer = {layer: e for e in files.values() for layer in e["layers"]}
    assert by_layer["s2"]["kernels"] == ["pool_forward", "pool_backward"]
    assert by_layer["s2"]["file"] != by_layer["s4"]["file"]  # two pooling geometries
    assert by_layer["loss"]["factory"] == "netdsl.ops.loss._cuda_kernels"
    for name in files:
        text = (out / name).read_text()
        compile(text, name, "exec")
        assert text.startswith('"""Generated by netdsl')
    assert f"lenet5: {len(files)} generated kernel modules (cuda, batch 2)" in res.stdout
    assert "s2" in res.stdout and "pool_forward" in res.stdout


def test_compile_emit_cpu(tmp_path):
    out = tmp_path / "kernels"
    res = subprocess.run([sys.executable, "-m", "netdsl", "compile", "nets/lenet5.net",
                          "--emit", str(out), "--batch", "2"], cwd=ROOT,
                         env=_env(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "index.json").read_text())
    (act,) = [e for e in index["modules"] if e["file"].startswith("act_")]
    assert "act_forward" in act["kernels"] and "c1" in act["layers"]
    compile((out / act["file"]).read_text(), act["file"], "exec")


# ---- Numba's cache serves the generated CUDA kernels (no GPU: cuda_ptx.no_driver)


def _nvvm_available() -> bool:
    code = "from cuda.pathfinder import load_nvidia_dynamic_lib as l; l('nvvm'); l('nvrtc')"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    return res.returncode == 0


def test_numba_cache_serves_a_generated_cuda_kernel_in_a_second_process(tmp_path):
    """Compiled in one process through the dispatcher (to PTX: no driver here), the kernel
    is loaded from Numba's cache beside the generated file in the next: a hit, no compile.
    pool_backward calls device functions built elsewhere (the activation chain, made by
    exec in netdsl/ops/activation.py; the window math): they are inlined, so it caches."""
    if not _nvvm_available():
        pytest.skip("NVVM / NVRTC libraries not installed (pip install '.[ptx]')")
    code = (
        "from numba import types\n"
        "from netdsl.backends.cuda_ptx import no_driver\n"
        "from netdsl.ops import pool\n"
        f"k = pool._cuda_kernels(*{POOL_CFG!r}, 0).pool_backward\n"
        "f32, i32 = types.float32[::1], types.int32[::1]\n"
        "with no_driver((9, 0)):\n"
        "    k.compile((f32, i32, f32, f32, types.float32, types.float32))\n"
        "s = k.stats\n"
        "print(sum(s.cache_misses.values()), sum(s.cache_hits.values()), s.cache_path)\n"
    )
    env = _env(tmp_path / "cache")
    env.pop("NUMBA_ENABLE_CUDASIM")
    first = _python(code, env).stdout.split()
    second = _python(code, env).stdout.split()
    assert first[:2] == ["1", "0"] and second[:2] == ["0", "1"]
    assert Path(first[2]) == tmp_path / "cache" / "kernels" / "__pycache__"
    assert list(Path(first[2]).glob("pool_*.pool_backward-*.nbi"))


def test_debug_says_what_numba_compiled_and_what_it_loaded(tmp_path):
    """The CPU activation kernels (a generated module): compiled by the first process, loaded
    from Numba's cache by the second, as NETDSL_DEBUG's last lines say."""
    code = ("import numpy as np\n"
            "from netdsl.ops import act_codegen\n"
            "x = np.ones(4, np.float32)\n"
            "act_codegen.load().act_forward(x, x, 0, np.float32(0), np.float32(0))\n")  # fmt: skip
    env = _env(tmp_path / "cache", NETDSL_DEBUG="1")
    first, second = _python(code, env).stderr, _python(code, env).stderr
    assert "act_forward compiled" in first
    assert "kernels: 1 generated, 0 from the cache; 1 distinct in this process; Numba: " in first
    assert "act_forward loaded from cache" in second
    assert "Numba: 0 kernels compiled" in second
