"""The wheel works on its own: built, installed into a fresh venv, run from elsewhere.

This proves the grammar (grammars/netdsl.lark, force-included as netdsl/grammars/) is
found inside the installed package and not only in a source checkout.

The venv is a plain one (no --system-site-packages: that would give the *base* interpreter's
site-packages, not those of the environment running the tests, which hold lark when the
tests run in a fresh venv as the README says). Instead it sees the running environment's
site-packages through a .pth file, after its own, so the wheel installed into it is the
netdsl that is imported, and the dependencies come from where pytest found them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put the source checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _running_site_dirs() -> list[str]:
    """The site-packages directories of the interpreter running the tests (not the checkout)."""
    root = ROOT.resolve()
    dirs = []
    for entry in sys.path:
        p = Path(entry or ".").resolve()
        if p.name in ("site-packages", "dist-packages") and p.is_dir() and p != root:
            dirs.append(str(p))
    return list(dict.fromkeys(dirs))


def _see_running_site_packages(py: Path, env: dict[str, str]) -> None:
    """Let the venv of `py` import the test environment's packages (lark), after its own."""
    r = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    own = Path(r.stdout.strip())
    outer = _running_site_dirs()
    assert outer, sys.path
    # `import` lines of a .pth file run at start-up; addsitedir also reads the .pth files
    # there (an editable install, mpich's); the venv's own site-packages stays first
    lines = [f"import site; site.addsitedir({d!r})" for d in outer]
    (own / "zz_test_environment.pth").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy so the build leaves nothing behind in the checkout
    src = out / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            "__pycache__",
            "*.pyc",
            "*.nbi",
            "*.nbc",
            ".pytest_cache",
            ".ruff_cache",
            ".hypothesis",
            ".venv",
            "build",
            "dist",
            "runs",
            ".benchmarks",
        ),
    )
    argv = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(out)]
    try:
        import hatchling  # noqa: F401
    except ImportError:
        r = _run(argv, env=_clean_env())
    else:
        r = _run([*argv, "--no-build-isolation"], env=_clean_env())
    if (
        r.returncode != 0
        and "hatchling" in r.stdout + r.stderr
        and (
            "No matching distribution" in r.stdout + r.stderr
            or "Could not find a version" in r.stdout + r.stderr
        )
    ):
        pytest.skip("the build backend (hatchling) cannot be installed here: no package index")
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(out.glob("netdsl-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_the_grammar(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "netdsl/grammars/netdsl.lark" in names
    assert "netdsl/grammars/prototxt.lark" in names  # netdsl import of Caffe files
    assert "netdsl/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


@pytest.mark.slow
def test_installed_netdsl_checks_a_net_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)])
    assert r.returncode == 0, r.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / ("python.exe" if os.name == "nt" else "python")
    env = _clean_env()
    _see_running_site_packages(py, env)
    r = _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "nets" / "lenet5.net", work / "lenet5.net")
    (work / "bad.net").write_text("input image: 1x28x28\nconv c1: 6 filters 5x5, strid 2\n")

    # the package must come from the venv, not from the checkout or the test environment
    r = _run([str(py), "-c", "import netdsl; print(netdsl.__file__)"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve().is_relative_to(venv.resolve()), r.stdout
    # and the grammar it reads is the one inside that installed package
    probe = ("from importlib import resources; import netdsl.parse as p; "
             "f = resources.files('netdsl') / 'grammars' / 'netdsl.lark'; "
             "assert f.read_text(encoding='utf-8') == p.grammar_text(); print(f)")  # fmt: skip
    r = _run([str(py), "-c", probe], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve().is_relative_to(venv.resolve()), r.stdout
    assert Path(r.stdout.strip()).read_text(encoding="utf-8") == (
        ROOT / "grammars" / "netdsl.lark"
    ).read_text(encoding="utf-8")

    script = bindir / ("netdsl.exe" if os.name == "nt" else "netdsl")
    assert script.exists()
    r = _run([str(script), "check", "lenet5.net"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "lenet5.net: ok  lenet5: 9 layers, 61,706 parameters, 416.52K MACs\n"

    r = _run([str(script), "check", "bad.net"], cwd=work, env=env)
    assert r.returncode == 2
    assert r.stderr == (
        "bad.net:2:25: error: unknown option 'strid' for conv\n"
        "    conv c1: 6 filters 5x5, strid 2\n"
        "                            ^~~~~\n"
        "hint: did you mean 'stride'?\n"
    )
    assert "Traceback" not in r.stderr

    r = _run([str(script), "summary", "--json", "lenet5.net"], cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert '"network": "lenet5"' in r.stdout
