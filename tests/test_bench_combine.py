"""benchmarks/cpu_vs_torch.py --combine: the issue 15 table from several invocations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from opcheck import load_script

ROOT = Path(__file__).resolve().parent.parent


def _module():
    return load_script(ROOT / "benchmarks" / "cpu_vs_torch.py", "cpu_vs_torch")


def _record(net: str, step: float, torch_step: float, rss: float, loaded: int = 0) -> dict:
    def summ(s: float, r: float) -> dict:
        return {"step_s": s, "rss_mib": r, "first_cold_s": 10 * s, "first_warm_s": 2 * s,
                "first_cold_cpu_s": 9 * s, "first_warm_cpu_s": s, "runs_used": 1,
                "runs_loaded": loaded, "loss_finite": True}  # fmt: skip

    return {"net": net, "batch": 8, "threads": 2,
            "summary": {"netdsl": summ(step, rss), "torch": summ(torch_step, 2 * rss)}}  # fmt: skip


def test_combine_takes_medians_over_invocations():
    mod = _module()
    runs = [[_record("a", 0.30, 0.50, 100), _record("b", 1.0, 2.0, 10)],
            [_record("a", 0.40, 0.52, 120, loaded=1), _record("b", 1.2, 2.2, 11)],
            [_record("a", 0.35, 0.60, 110), _record("b", 1.1, 1.9, 12)]]  # fmt: skip
    out = {r["net"]: r for r in mod.combine(runs)}
    a = out["a"]["summary"]
    assert out["a"]["invocations"] == 3
    assert a["netdsl"]["step_s"] == 0.35 and a["torch"]["step_s"] == 0.52
    assert a["netdsl"]["rss_mib"] == 120 and a["torch"]["rss_mib"] == 240
    assert a["netdsl"]["runs_used"] == 3 and a["netdsl"]["runs_loaded"] == 1
    assert a["netdsl"]["steps_s"] == [0.30, 0.40, 0.35]
    table = mod.table(list(out.values()))
    assert "| a, 8 | 350.0 ms | 520.0 ms | 1.49x |" in table
    spread = mod.spread_table(list(out.values()))
    assert (
        "| b, 8 | 1000.0, 1200.0, 1100.0 ms | 2000.0, 2200.0, 1900.0 ms | 2.00x, 1.83x, 1.73x |"
        in spread
    )


def test_combine_cli_names_a_bad_file(tmp_path):
    good = tmp_path / "r1.json"
    good.write_text(json.dumps([_record("a", 0.3, 0.5, 100)]))
    bad = tmp_path / "r2.json"
    bad.write_text("{not json")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_vs_torch.py"), "--combine"]
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "| a, 8 | 300.0 ms | 500.0 ms | 1.67x |" in ok.stdout
    err = subprocess.run(cmd + [str(good), str(bad)], capture_output=True, text=True, check=False)
    assert err.returncode == 2 and "r2.json: not a --json file" in err.stderr
    assert "Traceback" not in err.stderr
