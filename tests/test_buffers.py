"""netdsl/buffers.py: large host buffers on 2 MiB-aligned mappings advised for huge pages,
zeroed and writable, with NETDSL_HUGEPAGES=0 and a plain-numpy fallback."""

from __future__ import annotations

import io
import mmap
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from netdsl import buffers

BIG = (3, 700, 500)  # 4.2 MB of float32: two whole huge pages and a partial one
linux_only = pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE")


def _on_mapping(a: np.ndarray) -> bool:
    """Whether `a` lies on a mapping of its own (buffers' huge path) rather than numpy's heap."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@linux_only
def test_large_buffer_is_aligned_zeroed_and_writable(monkeypatch) -> None:
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)
    a = buffers.zeros(BIG)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.flags.writeable and _on_mapping(a)
    assert a.ctypes.data % buffers.HUGE == 0
    assert not a.any()
    a[...] = 1.5
    assert float(a.sum(dtype=np.float64)) == 1.5 * a.size
    b = buffers.empty(BIG, np.float64)  # other dtypes too; a fresh mapping is zero
    assert b.dtype == np.float64 and b.ctypes.data % buffers.HUGE == 0 and not b.any()
    f = buffers.full(BIG, 0.25)
    assert (f == np.float32(0.25)).all()


@linux_only
def test_huge_pages_reported_in_smaps(monkeypatch) -> None:
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)
    a = buffers.zeros(BIG)
    a[...] = 1.0  # touch every page
    kib = buffers.huge_kib(a)
    # whether the kernel had a free 2 MiB page is the machine's business: the count is read,
    # in whole huge pages, and never more than the advised whole pages of the buffer
    assert kib is not None and kib % 2048 == 0 and kib <= a.nbytes // 1024
    assert buffers.huge_kib(np.zeros(10)) is None  # not a buffer of its own


def test_small_buffers_stay_plain_numpy() -> None:
    a = buffers.zeros((100, 100))  # 40 KB
    assert a.base is None and not a.any() and a.flags.writeable
    assert buffers.empty(7).tolist() == [0.0] * 7  # zeroed, whatever the name says
    assert buffers.zeros(0).shape == (0,)


@pytest.mark.parametrize("value", ["0", "off"])
def test_env_switch_turns_it_off(monkeypatch, value: str) -> None:
    monkeypatch.setenv("NETDSL_HUGEPAGES", value)
    assert not buffers.enabled()
    a = buffers.zeros(BIG)
    assert not _on_mapping(a) and a.base is None and not a.any()


def test_fallback_without_madvise(monkeypatch) -> None:
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)
    monkeypatch.delattr(mmap, "MADV_HUGEPAGE", raising=False)  # as on macOS / Windows
    assert not buffers.enabled()
    a = buffers.zeros(BIG)
    assert not _on_mapping(a) and not a.any() and a.flags.writeable


@linux_only
def test_fallback_when_the_mapping_fails(monkeypatch) -> None:
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(buffers.mmap, "mmap", refuse)
    a = buffers.zeros(BIG)
    assert not _on_mapping(a) and not a.any()


@linux_only
def test_buffers_pickle_and_save(monkeypatch) -> None:
    """Checkpoints save theta and optimizer state with np.savez; runs pickle them."""
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)
    a = buffers.zeros(BIG)
    a[1, 2, 3] = 7.0
    back = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(back, a)
    f = io.BytesIO()
    np.savez(f, allow_pickle=False, a=a)
    f.seek(0)
    np.testing.assert_array_equal(np.load(f)["a"], a)
    a[...] = np.load(io.BytesIO(_npy(back)))  # loading into it in place (load_state)
    assert a[1, 2, 3] == 7.0


def _npy(a: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


@linux_only
def test_net_buffers_use_it(monkeypatch) -> None:
    """Where the big arrays are made: conv workspaces, flat parameters' optimizer state,
    the compiler's activation / gradient buffers."""
    monkeypatch.delenv("NETDSL_HUGEPAGES", raising=False)
    from netdsl.compiler import _host_zeros
    from netdsl.ops.conv import Scratch
    from netdsl.train.optimizer import Optimizer

    act = _host_zeros((8, 64, 56, 56))
    assert _on_mapping(act) and act.ctypes.data % buffers.HUGE == 0
    ws = Scratch().get("cols", (600, 1000))
    assert _on_mapping(ws) and ws.ctypes.data % buffers.HUGE == 0
    slots = [SimpleNamespace(size=1 << 20, lr_mult=1.0, decay_mult=1.0)]
    opt = Optimizer({"kind": "adam"}, slots, 1 << 20)
    assert _on_mapping(opt.v) and _on_mapping(opt.m)
    monkeypatch.setenv("NETDSL_HUGEPAGES", "0")
    assert not _on_mapping(_host_zeros((8, 64, 56, 56)))
