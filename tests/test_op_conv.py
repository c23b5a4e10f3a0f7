"""Convolution op: reference vs finite differences, CPU kernel vs reference, reference vs torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, check_reference_grad

from netdsl.ops import conv


def out_size(size: int, k: int, s: int, p_total: int, d: int) -> int:
    """Floor-mode output size for `p_total` padding split over both sides."""
    return (size + p_total - d * (k - 1) - 1) // s + 1


# (name, N, C, H, W, O, (kh, kw), stride, pad (top, left), extra (bottom, right), dilation, G)
# The output size counts pad + extra padding, so extra > pad is asymmetric ('same' with an
# even kernel, say) and extra < pad drops input the last window never reaches.
CASES = [
    ("groups-stride-dilation", 2, 4, 7, 6, 6, (3, 2), (2, 1), (1, 2), (1, 2), (2, 1), 2),
    ("same-even-kernel", 2, 3, 6, 5, 4, (2, 4), (1, 1), (0, 1), (1, 2), (1, 1), 1),
    ("dilated-wide", 1, 2, 7, 7, 3, (3, 3), (1, 1), (2, 2), (2, 2), (1, 2), 1),
    ("depthwise-stride", 2, 3, 8, 7, 6, (3, 3), (2, 3), (1, 1), (0, 1), (1, 1), 3),
    ("one-by-one", 2, 4, 3, 5, 2, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1),
    ("kernel-covers-input", 2, 2, 5, 4, 3, (5, 4), (1, 1), (0, 0), (0, 0), (1, 1), 1),
    ("many-taps", 2, 8, 5, 4, 3, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),  # K = 72 >= 64
]
IDS = [c[0] for c in CASES]


def geometry(case):
    _, n, c, h, w, o, k, s, p, extra, d, g = case
    out_hw = (
        out_size(h, k[0], s[0], p[0] + extra[0], d[0]),
        out_size(w, k[1], s[1], p[1] + extra[1], d[1]),
    )
    return n, c, h, w, o, k, s, p, d, g, out_hw


def tensors(case, seed: int = 0, dtype=np.float64):
    n, c, h, w, o, k, s, p, d, g, out_hw = geometry(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c // g) + k).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, wt, b


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_grad(case) -> None:
    n, c, h, w, o, k, s, p, d, g, out_hw = geometry(case)
    x, wt, b = tensors(case)
    check_reference_grad(
        lambda x, wt, b: conv.ref_forward(x, wt, b, s, p, d, g, out_hw),
        lambda dy: conv.ref_backward(dy, x, wt, s, p, d, g, out_hw),
        [x, wt, b],
    )


def test_reference_values() -> None:
    # 1 channel, 3x3 input, 2x2 kernel of ones, pad 1 top/left: sums of the 2x2 windows.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = conv.ref_forward(
        x, np.ones((1, 1, 2, 2)), np.array([0.5]), (1, 1), (1, 1), (1, 1), 1, (3, 3)
    )
    expect = np.array([[0, 1, 3], [3, 8, 12], [9, 20, 24]]) + 0.5
    np.testing.assert_allclose(y[0, 0], expect)


def run_cpu(case, bias: bool, want_dx: bool, seed: int = 1):
    n, c, h, w, o, k, s, p, d, g, out_hw = geometry(case)
    x, wt, b = tensors(case, seed, np.float32)
    b = b if bias else None
    layer = conv.ConvCPU(n, c, h, w, o, k[0], k[1], s, p, d, g, out_hw, bias)
    y = np.full((n, o) + out_hw, np.nan, np.float32)
    layer.forward(x, wt, b, y)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    dx = np.full_like(x, np.nan) if want_dx else None  # NaN: every element must be written
    dw = np.full_like(wt, np.nan)
    db = np.full_like(b, np.nan) if bias else None
    for _ in range(2):  # twice: workspaces must not carry state from the last call
        layer.backward(dy, x, wt, dx, dw, db)
    return (x, wt, b, dy), (y, dx, dw, db), (s, p, d, g, out_hw)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("bias, want_dx", [(True, True), (False, False)])
def test_cpu_matches_reference(case, bias: bool, want_dx: bool) -> None:
    (x, wt, b, dy), (y, dx, dw, db), geo = run_cpu(case, bias, want_dx)
    assert_close(y, conv.ref_forward(x, wt, b, *geo), 1e-4, "forward")
    dx_ref, dw_ref, db_ref = conv.ref_backward(dy, x, wt, *geo)
    assert_close(dw, dw_ref, 1e-4, "dw")
    if want_dx:
        assert_close(dx, dx_ref, 1e-4, "dx")
    if bias:
        assert_close(db, db_ref, 1e-4, "db")


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
def test_cpu_several_workers(case, monkeypatch) -> None:
    """Split the batch over 3 threads, unevenly (5 images), with per-worker dw reduction."""
    monkeypatch.setattr(conv, "num_threads", lambda: 3)
    monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)
    big = (case[0], 5) + case[2:]  # 5 images over 3 workers
    (x, wt, b, dy), (y, dx, dw, db), geo = run_cpu(big, True, True)
    dx_ref, dw_ref, db_ref = conv.ref_backward(dy, x, wt, *geo)
    assert_close(y, conv.ref_forward(x, wt, b, *geo), 1e-4, "forward")
    assert_close(dx, dx_ref, 1e-4, "dx")
    assert_close(dw, dw_ref, 1e-4, "dw")
    assert_close(db, db_ref, 1e-4, "db")


def test_import_does_not_load_numba() -> None:
    code = "import sys, netdsl.ops.conv; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_torch(case) -> None:
    import torch
    import torch.nn.functional as F

    n, c, h, w, o, k, s, p, d, g, out_hw = geometry(case)
    x, wt, b = tensors(case, seed=2)
    extra = case[9]
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    padded = F.pad(xt, (p[1], extra[1], p[0], extra[0]))  # (left, right, top, bottom) zeros
    yt = F.conv2d(padded, wtt, bt, stride=s, dilation=d, groups=g)
    assert yt.shape[2:] == out_hw
    dy = np.random.default_rng(3).standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))
    assert_close(conv.ref_forward(x, wt, b, s, p, d, g, out_hw), yt.detach().numpy(), 1e-10, "y")
    grads = conv.ref_backward(dy, x, wt, s, p, d, g, out_hw)
    for name, mine, theirs in zip(("dx", "dw", "db"), grads, (xt, wtt, bt), strict=True):
        assert_close(mine, theirs.grad.numpy(), 1e-10, name)
