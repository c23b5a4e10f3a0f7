"""`netdsl bench`: its rows add up to the step, and `--torch` adds PyTorch's per-layer times
(or, without PyTorch, says how to install it and exits 1)."""

from __future__ import annotations

import builtins
import re
import sys

import pytest

from netdsl.cli import main

TINY = """\
network tiny
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
fc   out: 10
loss cross_entropy
train {
  data mnist
  batch 4
  optimizer sgd(lr=0.1, momentum=0.9)
}
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.net"
    p.write_text(TINY)
    return str(p)


def rows(out: str) -> dict[str, list[str]]:
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("input", "image", "c1", "p1", "out", "loss", "update",
                                  "timers", "total"):  # fmt: skip
            table[parts[0]] = parts
    return table


def number(cell: str) -> float:
    return 0.0 if cell == "-" else float(cell)


def test_rows_add_up_to_the_step(tiny, capsys):
    assert main(["bench", tiny, "--iters", "5"]) == 0
    out = capsys.readouterr().out
    t = rows(out)
    assert set(t) >= {"input", "c1", "p1", "out", "loss", "update", "timers", "total"}
    # every row but the total: (forward, backward) are the last two cells
    parts = [number(c) for name, r in t.items() if name != "total" for c in r[-2:]]
    total = number(t["total"][-2]) + number(t["total"][-1])
    step = float(re.search(r"step \(input \+ forward \+ backward \+ update\): ([\d.]+) ms", out)[1])
    # the cells are rounded to 3 decimals: 2 cells a row, up to 0.0005 each
    assert abs(sum(parts) - total) <= 0.001 * len(t) + 1e-9
    assert abs(total - step) <= 0.002
    assert number(t["timers"][-1]) >= -0.002  # what the pieces leave of the wall time


def test_torch_without_pytorch_is_a_clear_error(tiny, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert main(["bench", tiny, "--torch", "--iters", "2"]) == 1
    err = capsys.readouterr().err
    assert "PyTorch is not installed" in err and "pip install 'netdsl[torch]'" in err
    assert "Traceback" not in err


def test_torch_column_beside_each_layer(tiny, capsys):
    pytest.importorskip("torch")
    assert main(["bench", tiny, "--torch", "--iters", "3"]) == 0
    out = capsys.readouterr().out
    assert "torch fwd ms" in out and "netdsl/torch" in out
    t = rows(out)
    for name in ("c1", "p1", "out", "loss"):  # a time for each layer that computes
        fwd, bwd, ratio = t[name][-3:]
        assert float(fwd) > 0 and float(bwd) >= 0 and ratio.endswith("x"), t[name]
    assert t["image"][-3:] == ["-", "-", "-"]  # the input has no PyTorch layer


def test_torch_on_a_gpu_is_a_usage_error(tiny, capsys):
    assert main(["bench", tiny, "--torch", "--device", "cuda"]) == 2
    assert "--torch compares CPU times" in capsys.readouterr().err
