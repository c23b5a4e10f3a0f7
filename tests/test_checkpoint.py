"""Checkpoints: exact round trip, RNG restore, atomic replacement, corrupt files."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv1.w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "conv1.b": np.array([np.nan, -0.0, np.inf, 1e-45], np.float32),  # bit patterns
        "fc.w": rng.standard_normal((10, 7)),
        "step": np.array(12345, np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float16),
    }


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    arrays = sample_arrays()
    meta = {"epoch": 3, "lr": 0.05, "net": "lenet", "history": [1.5, 0.25], "nested": {"a": None}}
    p = tmp_path / "ckpt.npz"
    save_checkpoint(p, arrays, meta)
    got, got_meta = load_checkpoint(p)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert got[name].tobytes() == a.tobytes(), name


def test_numpy_scalars_in_meta(tmp_path: Path) -> None:
    p = tmp_path / "c.npz"
    save_checkpoint(p, {}, {"epoch": np.int64(4), "loss": np.float32(0.5)})
    assert load_checkpoint(p)[1] == {"epoch": 4, "loss": 0.5}


@pytest.mark.parametrize("bit_generator", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_rng_state_restores_the_same_draws(tmp_path: Path, bit_generator: str) -> None:
    gen = np.random.Generator(getattr(np.random, bit_generator)(42))
    gen.normal(size=5)  # advance it, including the cached-gaussian path
    p = tmp_path / "c.npz"
    save_checkpoint(p, {"w": np.ones(2)}, {"rng": rng_state(gen)})
    _, meta = load_checkpoint(p)
    restored = restore_rng(meta["rng"])
    np.testing.assert_array_equal(restored.random(8), gen.random(8))
    np.testing.assert_array_equal(restored.permutation(50), gen.permutation(50))
    json.dumps(rng_state(gen))  # JSON-able as promised


def test_restore_rng_rejects_bad_state() -> None:
    with pytest.raises(DataError, match="ck.npz: RNG state names unknown bit generator 'os'"):
        restore_rng({"bit_generator": "os"}, source="ck.npz")
    with pytest.raises(DataError, match="invalid PCG64 RNG state"):
        restore_rng({"bit_generator": "PCG64", "state": {}})


def test_save_rejects_reserved_and_object_arrays(tmp_path: Path) -> None:
    p = tmp_path / "c.npz"
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(p, {META_KEY: np.zeros(1)}, {})
    with pytest.raises(TypeError, match="plain numeric"):
        save_checkpoint(p, {"o": np.array([{}], dtype=object)}, {})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(p, {}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_old_checkpoint_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "ckpt.npz"
    save_checkpoint(p, {"w": np.zeros(3)}, {"epoch": 1})
    before = p.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(DataError, match=f"{p}: cannot write checkpoint: No space left"):
        save_checkpoint(p, {"w": np.ones(3)}, {"epoch": 2})
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ckpt.npz"]
    arrays, meta = load_checkpoint(p)
    assert meta == {"epoch": 1} and arrays["w"].tolist() == [0, 0, 0]


def test_interrupt_mid_write_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill during the data write (KeyboardInterrupt stands in for it) must not
    # touch the target and must clean up its temp file.
    p = tmp_path / "ckpt.npz"
    save_checkpoint(p, {"w": np.zeros(3)}, {"epoch": 1})
    before = p.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, {"w": np.ones(3)}, {"epoch": 2})
    assert p.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["ckpt.npz"]


def test_write_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "missing-dir" / "c.npz"
    with pytest.raises(DataError, match="missing-dir/c.npz: cannot write checkpoint"):
        save_checkpoint(p, {}, {})


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def meta_bytes(record: object) -> np.ndarray:
    return np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)


def good_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.arange(1000.0), __meta__=meta_bytes(_record({"epoch": 1})))
    return buf.getvalue()


def _record(meta: dict, version: int = FORMAT_VERSION) -> dict:
    return {"format": FORMAT, "version": version, "meta": meta}


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b"hello, not a zip"), "not a netdsl checkpoint"),
        (lambda p: p.write_bytes(b""), "not a netdsl checkpoint"),
        (lambda p: p.write_bytes(good_bytes()[:-100]), "corrupt or truncated checkpoint"),
        (lambda p: p.write_bytes(good_bytes()[:200]), "corrupt or truncated checkpoint"),
        (lambda p: write_npz(p, w=np.zeros(2)), "missing '__meta__' record"),
        (
            lambda p: write_npz(p, __meta__=np.frombuffer(b"{not json", np.uint8)),
            "metadata is not valid JSON",
        ),
        (lambda p: write_npz(p, __meta__=meta_bytes({"a": 1})), "does not identify"),
        (
            lambda p: write_npz(p, __meta__=meta_bytes(_record({}, version=99))),
            "checkpoint format version 99 is not supported",
        ),
        (
            lambda p: write_npz(p, __meta__=np.zeros(3, np.float32)),
            "'__meta__' record has dtype float32",
        ),
        (
            lambda p: write_npz(p, o=np.array([{}], dtype=object), __meta__=meta_bytes({})),
            "pickled (object) data",
        ),
    ],
)
def test_corrupt_checkpoints_name_the_file(tmp_path: Path, make, problem: str) -> None:
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(DataError) as info:
        load_checkpoint(p)
    assert str(p) in str(info.value) and problem in str(info.value), str(info.value)


def test_corrupted_member_data_is_detected(tmp_path: Path) -> None:
    # flip bytes inside a stored member: the zip CRC check catches it
    p = tmp_path / "flip.npz"
    data = bytearray(good_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("w.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[start : start + 8] = b"\xff" * 8
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="flip.npz: corrupt or truncated checkpoint"):
        load_checkpoint(p)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.npz: cannot read checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")
