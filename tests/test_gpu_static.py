"""benchmarks/gpu_static.py: the kernels of a plan compiled for sm_90 and read back, no GPU.

The occupancy rules and the SASS loop analysis are checked on their own (no tools); the
whole script runs on a small LeNet-like net where NVVM, ptxas, cuobjdump and nvdisasm are installed
(pip install '.[sass]') and is skipped, saying so, where they are not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opcheck import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_static.py"


gs = load_script(SCRIPT, "gpu_static")


@pytest.mark.parametrize(
    "threads, regs, smem, blocks, limit",
    [
        (256, 68, 4096, 3, "registers"),  # 68 -> 2,304 per warp: 28 warps, 3 blocks of 8
        (256, 126, 4096, 2, "registers"),  # 4,096 per warp: 16 warps
        (256, 32, 0, 8, "threads"),  # 2,048 threads
        (32, 16, 0, 32, "threads"),  # at most 32 blocks
        (128, 40, 100 * 1024, 2, "shared"),  # 101 KB per block (1 KB reserved) in 228 KB
    ],
)
def test_blocks_per_sm_by_sm90_rules(threads, regs, smem, blocks, limit):
    assert gs.blocks_per_sm(threads, regs, smem) == (blocks, limit)


# A made-up kernel in cuobjdump's format: a K-slice loop (0x0040-0x0150, with a barrier)
# holding a tile fill (0x0050-0x0070) and a multiply-add loop (0x00a0-0x00f0, 2 FFMA per
# step), and a conditional forward branch that falls through.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   IMAD R2, R0, 0x4, RZ ;
        /*0030*/                   MOV R3, RZ ;
        /*0040*/                   ISETP.GE.AND P0, PT, R3, 0x10, PT ;
        /*0050*/                   LDG.E R4, desc[UR4][R6.64] ;
        /*0060*/                   STS [R2], R4 ;
        /*0070*/               @P1 BRA 0x50 ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/              @!P0 BRA 0xa0 ;
        /*00a0*/                   LDS R8, [R2] ;
        /*00b0*/                   LDS R9, [R2+0x100] ;
        /*00c0*/                   FFMA R10, R8, R9, R10 ;
        /*00d0*/                   FFMA R11, R8, R9, R11 ;
        /*00e0*/                   IADD3 R5, R5, 0x1, RZ ;
        /*00f0*/               @P2 BRA 0xa0 ;
        /*0100*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0110*/                   BRA 0x130 ;
        /*0120*/                   MOV R12, RZ ;
        /*0130*/                   IADD3 R3, R3, 0x8, RZ ;
        /*0140*/                   ISETP.NE.AND P3, PT, R3, 0x40, PT ;
        /*0150*/               @P3 BRA 0x40 ;
        /*0160*/                   EXIT ;
        /*0170*/                   BRA 0x170;
"""


def test_loops_are_found_by_their_backward_branches():
    (outer,) = gs.find_loops(gs.parse_sass(SASS))  # not the self-loop after EXIT
    assert (outer.start, outer.end) == (0x40, 0x150)
    assert [(c.start, c.end) for c in outer.children] == [(0x50, 0x70), (0xA0, 0xF0)]


def test_main_loop_mix_of_a_gemm_slice():
    # tile (bm, bn, bk, tm, tn) = (4, 4, 8, 1, 1): 16 threads, 8 FFMA per slice -> the
    # multiply-add loop runs 8 / 2 = 4 times, the A fill 4*8/16 = 2 times. Per slice: the
    # slice's own 8 instructions on its straight path (0x120 is jumped over) + 2 x 3 (fill)
    # + 4 x 6 (multiply-add) = 38.
    mix = gs.main_loop_mix(SASS, (4, 4, 8, 1, 1))
    assert mix["kind"] == "per K slice"
    assert sorted(mix["trips"]) == [2, 4]
    counts = (mix["instructions"], mix["ffma"], mix["lds"], mix["ldg"], mix["bar"])
    assert counts == (38, 8, 8, 2, 2)
    assert mix["ffma_share"] == pytest.approx(8 / 38)
    assert mix["lds_per_ffma"] == 1.0 and mix["ldg_per_ffma"] == 0.25


def test_main_loop_mix_of_another_kernel_is_its_innermost_ffma_loop():
    mix = gs.main_loop_mix(SASS)
    assert (mix["kind"], mix["instructions"], mix["ffma"]) == ("static", 6, 2)
    assert mix["ffma_share"] == pytest.approx(2 / 6)


def test_ptxas_output_is_read():
    log = """ptxas info    : 8 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 68 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]
"""
    assert gs.parse_ptxas(log) == {"registers": 68, "shared_bytes": 4096, "stack": 16,
                                   "spill_stores": 8, "spill_loads": 12}  # fmt: skip


def test_missing_tools_name_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(gs.shutil, "which", lambda tool: None)
    pathfinder = pytest.importorskip("cuda.pathfinder")
    monkeypatch.setattr(pathfinder, "find_nvidia_binary_utility", lambda tool: None)
    assert gs.main([str(ROOT / "nets" / "lenet5.net")]) == 1
    err = capsys.readouterr().err
    assert "ptxas not found" in err and "pip install '.[sass]'" in err


def test_a_net_mistake_is_a_located_error(tmp_path, capsys):
    bad = tmp_path / "bad.net"
    bad.write_text("network x\ninput image: 1x8x8\nconv c1: 4 filters 3x3 strid 2\n")
    assert gs.main([str(bad)]) == 2
    assert f"{bad}:3:" in capsys.readouterr().err


def _tools_present() -> str | None:
    """None when the script can run, else why not."""
    try:
        gs.find_tools()
    except gs.ToolError as e:
        return str(e)
    code = "from cuda.pathfinder import load_nvidia_dynamic_lib as l; l('nvvm'); l('nvrtc')"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode:
        return "NVVM / NVRTC libraries not installed (pip install '.[sass]')"
    return None


# LeNet-5's first layers, one of each kind: the same tiles as LeNet-5's plan at batch 8 (conv
# and the fc backward GEMMs on 32 x 128, fc forward on 32 x 32), which tests/test_cuda.py's PTX
# test leaves to this one, without the other 8 GEMMs of LeNet-5 (two of them 128 x 128), each
# a Numba + NVVM + ptxas compile of its own (the whole LeNet-5 took ~4x as long).
SMALL_NET = """network small
input image: 1x16x16
conv  c1: 6 filters 5x5, pad 2, relu
pool  s2: max 2x2, stride 2
fc    out: 10
loss  cross_entropy
"""


@pytest.mark.slow
def test_small_net_kernels_for_sm90(tmp_path):
    why = _tools_present()
    if why:
        pytest.skip(why)
    net = tmp_path / "small.net"
    net.write_text(SMALL_NET)
    cmd = [sys.executable, str(SCRIPT), str(net), "--batch", "8",
           "--json", "--jobs", "2", "--kernels", "conv_forward|gemm|pool_forward",
           "--keep", str(tmp_path / "sass")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    kernels = res["kernels"]
    names = {(k["name"], k["layer"]) for k in kernels}
    assert {("conv_forward", "c1"), ("pool_forward", "s2"), ("gemm", "out")} <= names, names
    assert not any(k["name"].startswith("conv_backward") for k in kernels)  # --kernels
    for k in kernels:
        assert {"name", "layer", "registers", "spills", "shared_bytes", "blocks_per_sm",
                "ffma_share"} <= set(k)  # fmt: skip
        assert 0 < k["registers"] <= 255, k
        assert k["spills"] >= 0 and k["blocks_per_sm"] >= 1, k
        assert 0.0 <= k["ffma_share"] <= 1.0, k
    for k in kernels:
        if k["name"] in ("conv_forward", "gemm"):  # a GEMM: shared tiles, FFMAs, an estimate
            assert k["shared_bytes"] > 0 and k["ffma_share"] > 0, k
            assert k["loop"]["kind"] in ("per K slice", "one K slice"), k
            assert k["loop"]["bar"] >= 1, k
            assert 0 < k["est_tflops"] <= 67.0, k
        else:
            assert k["ffma_share"] == 0.0, k  # max pooling multiplies nothing
    tiles = {tuple(k["tile"]) for k in kernels if k.get("tile")}
    assert {(32, 128, 8, 2, 8), (32, 32, 8, 2, 2)} <= tiles, tiles  # LeNet-5's thin tiles
    # 2 x MACs x batch per GEMM: c1 has 6 x 16 x 16 x 25 MACs per image, forward only here
    c1 = next(lay for lay in res["layers"] if lay["layer"] == "c1")
    assert c1["gflop"] == pytest.approx(2 * 6 * 16 * 16 * 25 * 8 / 1e9)
    assert 0 < res["step"]["gemm_est_tflops"] <= 67.0
    # --keep: every distinct kernel's PTX, cubin and SASS, and an index naming their layers
    index = (tmp_path / "sass" / "index.txt").read_text().splitlines()
    assert len(index) == res["step"]["distinct_kernels"]
    assert any(line.split()[1] == "conv_forward" and "c1/forward" in line for line in index)
    for line in index:
        stem = f"{line[:3]}_{line.split()[2].rsplit('.', 1)[-1]}_{line.split()[1]}"
        sass = (tmp_path / "sass" / f"{stem}.sass").read_text()
        assert "FFMA" in sass or "pool" in stem, stem
