"""benchmarks/loader.py --smoke: the loader benchmark still runs against netdsl's own
store (`netdsl pack`), image folders and trainer, at toy sizes and without torchvision,
so that it cannot silently fall behind the library again (it once set a Dataset field
that had become a method)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PIL.Image")  # the benchmark generates and decodes JPEGs

from netdsl.train.store import is_store, open_store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _rows(out: str, first: str) -> list[list[str]]:
    """The cells of the markdown table rows of ``out`` whose header starts with ``first``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_smoke_runs_speed_and_memory_on_real_stores(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loader.py"), "--smoke", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]

    # the speed table: store and folder rates for 0 and 1 workers, no torchvision column
    speed = _rows(p.stdout, "workers")
    assert [r[0] for r in speed] == ["0", "1"]
    for r in speed:
        assert float(r[1]) > 0 and float(r[2]) > 0
        assert r[3:] == ["-", "-", "-"]
    # what it read is what `netdsl pack` wrote: a store with a manifest, the folder's images
    ds = open_store(tmp_path / "store")
    assert len(ds.y_train) == 32 and ds.image_shape == (3, 256, 256)
    assert ds.class_names == tuple(f"class{i:02d}" for i in range(10))

    # the memory table: both store sizes trained, their peaks and losses reported
    mem = _rows(p.stdout, "images")
    assert [r[0] for r in mem] == ["1,100", "1,300"]
    for n, r in zip((1100, 1300), mem, strict=True):
        assert is_store(tmp_path / f"store{n}")
        assert len(open_store(tmp_path / f"store{n}").y_train) == n
        assert float(re.match(r"(\d+) MiB", r[3]).group(1)) > 0
        assert math.isfinite(float(r[5]))
    assert re.search(r"\([+-]\d+\.\d%\)", mem[1][3])  # the growth over the smaller store
