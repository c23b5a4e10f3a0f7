"""The CPU update split over threads (optim.split_segments, Optimizer): the same bits as one
call, whatever the thread count, and the float64 reference's values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from opcheck import assert_close

from netdsl.ops import optim
from netdsl.train.optimizer import Optimizer

# uneven sizes, segments crossing the slice cuts, one slot frozen (lr 0) and one undecayed
SIZES = (70_001, 3, 130_000, 17, 90_123)
MULTS = ((1.0, 1.0), (2.0, 0.0), (0.0, 1.0), (2.0, 0.0), (0.5, 1.0))


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_split_segments_covers_every_element_once(parts: int) -> None:
    segs = optim.make_segments([7, 3, 5, 40], [1, 2, 1, 3], [1, 0, 1, 2])
    slices = optim.split_segments(segs, 55, parts)
    assert len(slices) == parts
    owner = np.zeros(55, np.int64)  # slices covering each element
    for t, (s, e, lm, dm) in enumerate(slices):
        for a, b, x, y in zip(s, e, lm, dm, strict=True):
            owner[a:b] += 1
            i = np.searchsorted(segs[0], a, side="right") - 1  # the segment it came from
            assert b <= segs[1][i] and (x, y) == (segs[2][i], segs[3][i])
            if t:  # cuts on 16-element boundaries (no cache line shared between threads)
                assert a >= slices[t - 1][1].max(initial=0)
    np.testing.assert_array_equal(owner, 1)
    for s, _, _, _ in slices[1:]:
        assert s.size == 0 or s[0] % 16 == 0


def _opt(kind: str, threads: int, monkeypatch) -> Optimizer:
    import netdsl.ops.conv as conv

    monkeypatch.setattr(conv, "num_threads", lambda: threads)
    spec = {"kind": kind, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
            "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # fmt: skip
    slots = [SimpleNamespace(size=s, lr_mult=a, decay_mult=b)
             for s, (a, b) in zip(SIZES, MULTS, strict=True)]  # fmt: skip
    opt = Optimizer(spec, slots, sum(SIZES))
    assert (opt._workers is not None) == (threads > 1)  # the threaded path is taken
    return opt


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_threaded_update_is_bitwise_one_thread(kind: str, monkeypatch) -> None:
    assert sum(SIZES) >= optim.PARALLEL_MIN_PARAMS
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(sum(SIZES)).astype(np.float32)
    grads = [rng.standard_normal(w0.size).astype(np.float32) for _ in range(3)]
    results = []
    for threads in (1, 2, 3):
        opt, w = _opt(kind, threads, monkeypatch), w0.copy()
        for g in grads:
            opt.step(w, g, 0.01)
        results.append((w, opt.v.copy(), opt.m.copy()))
    for w, v, m in results[1:]:
        np.testing.assert_array_equal(w, results[0][0])
        np.testing.assert_array_equal(v, results[0][1])
        np.testing.assert_array_equal(m, results[0][2])
    if kind == "sgd":  # and the float64 reference's iterates
        segs = optim.make_segments(SIZES, [a for a, _ in MULTS], [b for _, b in MULTS])
        w64, v64 = w0.astype(np.float64), np.zeros(w0.size)
        for g in grads:
            w64, v64 = optim.ref_sgd_update(w64, g, v64, *segs, 0.01, 0.9, 5e-4, True)
        assert_close(results[1][0], w64, 1e-5, "w")
        assert_close(results[1][1], v64, 1e-5, "v")
