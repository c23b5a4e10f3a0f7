"""Issue 11, data and checkpoints: every bad data or checkpoint file is a DataError that names
the file (and the field), found before anything large is allocated; NaN/inf data, huge
labels, decompression bombs and header lies are caught at load time; a checkpoint write
killed half-way leaves no temp file behind for good."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train import checkpoint as ckpt_mod
from netdsl.train.checkpoint import (
    check_training_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
)
from netdsl.train.data import MAX_LABEL, load_dataset, read_idx, read_images, read_npz
from tests.test_data import idx_bytes, raises_naming, write

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def zip_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


# ------------------------------------------------------------- sizes that lie


def test_gzip_idx_is_read_only_as_far_as_its_header_says(tmp_path: Path) -> None:
    """64 images declared, 64 MiB of zeros behind them: refused without inflating them."""
    header = idx_bytes(np.zeros((64, 28, 28), np.uint8))
    p = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(p, "wb", compresslevel=1) as g:
        g.write(header)
        for _ in range(16):
            g.write(bytes(1 << 22))
    assert p.stat().st_size < 1 << 20  # small on disk, 64 MiB inflated
    tracemalloc.start()
    try:
        with raises_naming(p, "more than 1,048,576 unexpected trailing bytes", "(64, 28, 28)"):
            read_idx(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB: the whole stream was inflated"


def test_gzip_idx_with_a_short_tail_counts_it(tmp_path: Path) -> None:
    p = write(tmp_path / "tail.gz", idx_bytes(np.zeros(4, np.uint8)) + b"xyz", gz=True)
    with raises_naming(p, "3 unexpected trailing bytes", "exactly 4 bytes", "found 7"):
        read_idx(p)


def test_raw_idx_header_claiming_a_billion_images_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    head = bytes([0, 0, 8, 3]) + np.array([10**9, 28, 28], ">u4").tobytes()
    p = write(tmp_path / "liar-idx3-ubyte", head + bytes(784))
    with raises_naming(p, "truncated: expected 784000000000 bytes of data, found 784"):
        read_idx(p)


def test_npy_header_claiming_1e12_images_is_refused_before_allocating(tmp_path: Path) -> None:
    p = write(tmp_path / "huge.npy", npy_header((10**12, 28, 28)) + bytes(100))
    with raises_naming(p, "declares shape (1000000000000, 28, 28)", "holds only 100 bytes"):
        read_images(p)


@pytest.mark.parametrize("member", ["x", "y"])
def test_npz_member_header_claiming_too_much_is_refused(tmp_path: Path, member: str) -> None:
    good = {"x": npy_bytes(np.zeros((2, 4, 4), np.uint8)), "y": npy_bytes(np.array([0, 1]))}
    good[member] = npy_header((10**12,), "<i8") + bytes(16)
    p = zip_members(tmp_path / "huge.npz", {f"{k}.npy": v for k, v in good.items()})
    with raises_naming(p, f"array '{member}' declares shape (1000000000000,)"):
        read_npz(p)
    with raises_naming(p, f"array '{member}' declares"):
        load_dataset(str(p))


def test_truncated_npy_names_the_file(tmp_path: Path) -> None:
    p = write(tmp_path / "cut.npy", npy_bytes(np.zeros((3, 8, 8)))[:-10])
    with raises_naming(p, "truncated or corrupt"):
        read_images(p)


# --------------------------------------------------- members that are not arrays


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ({"x": b"hello", "y.npy": npy_bytes(np.array([0]))}, "missing array 'x'"),
        ({"x.npy": b"hello", "y.npy": npy_bytes(np.array([0]))}, "not a valid .npy array"),
        ({"x.npy": b"\x93NUMPY\x01\x00garbage", "y.npy": b""}, "not a valid .npy array"),
        ({"x.txt": b"1 2 3", "y.csv": b"0"}, "other members: 'x.txt', 'y.csv'"),
    ],
)
def test_npz_members_that_are_not_arrays(tmp_path: Path, members: dict, problem: str) -> None:
    p = zip_members(tmp_path / "odd.npz", members)
    with raises_naming(p, problem):
        read_npz(p)


def test_npz_object_member_is_refused_without_unpickling(tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with raises_naming(p, "pickled (object) arrays", "refused"):
        read_npz(p)
    q = tmp_path / "obj.npy"
    np.save(q, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with raises_naming(q, "pickled (object)"):
        read_images(q)


# --------------------------------------------------------------- labels, values


@pytest.mark.parametrize(
    ("labels", "dtype"),
    [([0, 1, 2**64 - 1], np.uint64), ([0, 2**40, 1], np.int64), ([2**63, 0, 0], np.uint64)],
)
def test_labels_beyond_range_are_refused_not_wrapped(tmp_path: Path, labels, dtype) -> None:
    p = tmp_path / "big.npz"
    np.savez(p, x=np.zeros((3, 4, 4), np.uint8), y=np.array(labels, dtype))
    with raises_naming(p, f"label {max(labels)}", "out of range", f"{MAX_LABEL:,}"):
        read_npz(p)


def test_idx_label_problems_name_the_labels_file(tmp_path: Path) -> None:
    d = tmp_path / "fashion"
    d.mkdir()
    for prefix, n in (("train", 4), ("t10k", 2)):
        write(d / f"{prefix}-images-idx3-ubyte", idx_bytes(np.zeros((n, 5, 5), np.uint8)))
        write(d / f"{prefix}-labels-idx1-ubyte", idx_bytes(np.zeros(n, np.uint8)))
    bad = write(d / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, -3], np.int8), 0x09))
    with raises_naming(bad, "negative label -3"):
        load_dataset(str(d))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_pixels_are_found_when_loading(tmp_path: Path, bad: float) -> None:
    x = np.zeros((5, 4, 4), np.float64)
    x[3, 1, 2] = bad
    x[4, 0, 0] = bad
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=np.arange(5) % 2)
    kind = "NaN" if np.isnan(bad) else "infinite"  # 1e300 is infinite as float32
    with raises_naming(p, f"x holds 2 {kind} values", "the first in image 3"):
        read_npz(p)


def test_nan_in_a_test_split_names_the_test_file(tmp_path: Path) -> None:
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=np.zeros((4, 4, 4), np.float32), y=np.array([0, 1, 0, 1]))
    x = np.zeros((2, 4, 4), np.float32)
    x[1, 1, 1] = x[1, 2, 2] = x[0, 0, 0] = np.nan
    np.savez(test, x=x, y=np.array([0, 1]))
    with raises_naming(test, "x holds 3 NaN values"):
        load_dataset(f"{train},{test}")


def test_non_finite_float_idx_images_name_the_images_file(tmp_path: Path) -> None:
    d = tmp_path / "floats"
    d.mkdir()
    imgs = np.zeros((3, 4, 4), np.float32)
    imgs[2, 0, 0] = np.inf
    for prefix in ("train", "t10k"):
        write(d / f"{prefix}-images-idx3-ubyte", idx_bytes(imgs, 0x0D))
        write(d / f"{prefix}-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    with raises_naming(d / "train-images-idx3-ubyte", "images hold 1 infinite value"):
        load_dataset(str(d))


# ------------------------------------------------------------------ long paths


def test_a_5000_character_data_path_is_a_short_clean_error(tmp_path: Path) -> None:
    long = str(tmp_path / ("a" * 5000)) + ".npz"
    for load in (lambda: load_dataset(long), lambda: read_npz(long), lambda: read_idx(long),
                 lambda: read_images(long), lambda: load_checkpoint(long)):  # fmt: skip
        with pytest.raises(DataError) as info:
            load()
        message = str(info.value)
        assert "file name too long" in message or "not found" in message, message
        assert len(message) < 1200 and "characters)" in message, message


def test_a_directory_where_a_file_belongs(tmp_path: Path) -> None:
    d = tmp_path / "data.npz"
    d.mkdir()
    for load in (read_npz, read_idx, read_images, load_checkpoint):
        with raises_naming(d, "Is a directory"):
            load(d)


# ------------------------------------------------------------------- read_images


@pytest.mark.parametrize(
    ("shape", "channels", "expected"),
    [
        ((28, 28), 1, (1, 1, 28, 28)),
        ((1, 28, 28), 1, (1, 1, 28, 28)),
        ((3, 32, 32), 3, (1, 3, 32, 32)),
        ((5, 28, 28), 1, (5, 1, 28, 28)),
        ((5, 3, 32, 32), 3, (5, 3, 32, 32)),
    ],
)
def test_read_images_takes_one_image_or_a_stack(
    tmp_path: Path, shape: tuple, channels: int, expected: tuple
) -> None:
    p = tmp_path / "img.npy"
    np.save(p, np.zeros(shape, np.uint8))
    assert read_images(p, channels=channels).shape == expected


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros(5, np.uint8), "expected one image (H, W)"),
        (np.zeros((1, 1, 1, 4, 4), np.uint8), "expected one image (H, W)"),
        (np.zeros((0, 4, 4), np.uint8), "holds no images"),
        (np.zeros((2, 4, 4), np.int64), "images have dtype int64"),
        (np.full((2, 4, 4), np.nan, np.float32), "images hold 32 NaN values"),
    ],
)
def test_read_images_refusals(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    p = tmp_path / "img.npy"
    np.save(p, array)
    with raises_naming(p, problem):
        read_images(p)


def test_read_images_of_an_npz_needs_no_labels_and_names_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, x=np.zeros((2, 6, 6), np.uint8))
    assert read_images(p).shape == (2, 1, 6, 6)
    net = write(tmp_path / "lenet.net", b"network n\n")
    with raises_naming(net, "not an image file", ".npz", ".npy", "IDX"):
        read_images(net)


# ------------------------------------------------------------ checkpoint temps


def _tmp_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from netdsl.train import checkpoint

def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between the write and the rename

os.replace = die
checkpoint.save_checkpoint(sys.argv[1], {"w": np.ones(1000)}, {"epoch": 2})
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_kill_9_during_a_checkpoint_write_leaves_no_temp_file_for_good(tmp_path: Path) -> None:
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, {"w": np.zeros(1000)}, {"epoch": 1})
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(p)], env=ENV, cwd=ROOT,
                       capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = _tmp_names(tmp_path)
    assert len(left) == 1 and left[0].startswith(".checkpoint.npz."), left
    arrays, meta = load_checkpoint(p)  # the old checkpoint stands; the load cleans up
    assert meta == {"epoch": 1} and not arrays["w"].any()
    assert _tmp_names(tmp_path) == []
    # the same through a save
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(p)], env=ENV, cwd=ROOT,
                   capture_output=True, timeout=120)  # fmt: skip
    assert len(_tmp_names(tmp_path)) == 1
    save_checkpoint(p, {"w": np.ones(3)}, {"epoch": 3})
    assert _tmp_names(tmp_path) == []
    assert load_checkpoint(p)[1] == {"epoch": 3}


def test_only_stale_temp_files_of_that_checkpoint_are_removed(tmp_path: Path) -> None:
    p = tmp_path / "checkpoint.npz"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(done.stdout)  # a process that has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".checkpoint.npz.{dead}.ab12cd_9.tmp": False,  # killed writer: removed
            f".checkpoint.npz.{live.pid}.zz99yy00.tmp": True,  # live writer: kept
            f".other.npz.{dead}.ab12cd_9.tmp": True,  # another checkpoint's
            ".checkpoint.npz.notes.tmp": True,  # not our pattern
            "checkpoint.npz.tmp": True,
            f".checkpoint.npz.{dead}.ab12cd_9.tmp.bak": True,
            ".checkpoint.npz.abcdefgh.tmp": True,  # an older netdsl's, fresh: may be live
        }
        for name in names:
            (tmp_path / name).write_bytes(b"partial")
        old = tmp_path / ".checkpoint.npz.olderabc.tmp"  # an older netdsl's, a day old
        old.write_bytes(b"partial")
        os.utime(old, (time.time() - 86400, time.time() - 86400))
        mine = tmp_path / f".checkpoint.npz.{os.getpid()}.mine0000.tmp"  # same PID, earlier
        mine.write_bytes(b"partial")  # process (a restarted container): removed
        os.utime(mine, (ckpt_mod._IMPORTED - 60, ckpt_mod._IMPORTED - 60))
        removed = remove_stale_temp_files(p)
        assert sorted(r.name for r in removed) == sorted(
            [f".checkpoint.npz.{dead}.ab12cd_9.tmp", old.name, mine.name]
        )
        assert sorted(x.name for x in tmp_path.iterdir()) == sorted(
            n for n, keep in names.items() if keep
        )
    finally:
        live.kill()
        live.wait()


def test_temp_file_names_carry_the_writer_pid(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(2)}, {})
    assert len(seen) == 1 and seen[0].startswith(f".c.npz.{os.getpid()}.")
    assert seen[0].endswith(".tmp")


# ------------------------------------------------------- checkpoint metadata


def _good_state(n: int = 10, adam: bool = False) -> tuple[dict, dict]:
    gen = np.random.default_rng(0)
    meta = {
        "network": "tiny", "epoch": 2, "optim_t": 12, "batch": 16, "seed": 3,
        "rng": rng_state(gen), "dropout_rng": rng_state(np.random.default_rng(1)),
        "schedule": {"scale": 1.0, "best": float("inf"), "bad_epochs": 0},
        "history": [{"epoch": 1}, {"epoch": 2}],
    }  # fmt: skip
    arrays = {"optim.v": np.zeros(n, np.float32),
              "optim.m": np.zeros(n if adam else 0, np.float32)}  # fmt: skip
    return arrays, meta


def test_a_written_training_checkpoint_passes(tmp_path: Path) -> None:
    arrays, meta = _good_state(adam=True)
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, arrays, meta)  # through JSON: inf, nested dicts, ints
    got_arrays, got_meta = load_checkpoint(p)
    check_training_checkpoint(p, got_arrays, got_meta, n_params=10, optimizer="adam")


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BAD_META = [
    ("optim_t", lambda m: _drop(m, "optim_t"), "is missing"),
    ("optim_t", lambda m: {**m, "optim_t": "12"}, "'12' (a str)"),
    ("optim_t", lambda m: {**m, "optim_t": 1.5}, "expected a whole number"),
    ("optim_t", lambda m: {**m, "optim_t": True}, "expected a whole number"),
    ("epoch", lambda m: _drop(m, "epoch"), "is missing"),
    ("epoch", lambda m: {**m, "epoch": -1}, "expected a whole number >= 0"),
    ("epoch", lambda m: {**m, "epoch": None}, "is null"),
    ("batch", lambda m: {**m, "batch": 0}, "expected a whole number >= 1"),
    ("network", lambda m: {**m, "network": 7}, "expected the network's name"),
    ("rng", lambda m: _drop(m, "rng"), "is missing"),
    ("rng", lambda m: {**m, "rng": "seed"}, "expected an RNG state"),
    ("rng", lambda m: {**m, "rng": {"bit_generator": "PCG64", "state": 5}}, "not a usable RNG"),
    ("rng", lambda m: {**m, "rng": {"bit_generator": "os"}}, "not a usable RNG"),
    ("dropout_rng", lambda m: _drop(m, "dropout_rng"), "is missing"),
    ("dropout_rngs", lambda m: {**m, "dropout_rngs": {"a": 1}}, "expected a list"),
    ("dropout_rngs[1]", lambda m: {**m, "dropout_rngs": [m["rng"], 3]}, "expected an RNG"),
    ("schedule", lambda m: _drop(m, "schedule"), "is missing"),
    ("schedule", lambda m: {**m, "schedule": [1.0]}, "expected the schedule's state"),
    ("schedule.scale", lambda m: {**m, "schedule": {**m["schedule"], "scale": "big"}},
     "expected a number"),
    ("schedule.scale", lambda m: {**m, "schedule": {**m["schedule"], "scale": -1.0}},
     "positive"),
    ("schedule.best", lambda m: {**m, "schedule": _drop(m["schedule"], "best")}, "missing"),
    ("schedule.bad_epochs", lambda m: {**m, "schedule": {**m["schedule"], "bad_epochs": 0.5}},
     "whole number"),
    ("history", lambda m: {**m, "history": "lots"}, "expected a list of per-epoch records"),
    ("history", lambda m: {**m, "history": [1, 2]}, "expected a list of per-epoch records"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "mutate", "problem"), BAD_META,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_META)])  # fmt: skip
def test_bad_checkpoint_metadata_names_the_file_and_field(
    tmp_path: Path, field: str, mutate, problem: str
) -> None:
    arrays, meta = _good_state()
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, arrays, mutate(meta))
    got_arrays, got_meta = load_checkpoint(p)
    with raises_naming(p, f"checkpoint field '{field}'", problem):
        check_training_checkpoint(p, got_arrays, got_meta, n_params=10, optimizer="sgd")


@pytest.mark.parametrize(
    ("name", "value", "optimizer"),
    [
        ("optim.v", np.zeros(9, np.float32), "sgd"),  # would broadcast? no: 9 vs 10
        ("optim.v", np.zeros(1, np.float32), "sgd"),  # would broadcast silently
        ("optim.v", np.zeros((2, 5), np.float32), "sgd"),
        ("optim.v", np.zeros(10, np.int64), "sgd"),
        ("optim.m", np.zeros(10, np.float32), "sgd"),
        ("optim.m", np.zeros(0, np.float32), "adam"),
        ("optim.m", None, "adam"),
    ],
)
def test_optimizer_state_of_the_wrong_shape_names_the_array(
    tmp_path: Path, name: str, value, optimizer: str
) -> None:
    arrays, meta = _good_state(adam=optimizer == "adam")
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    with raises_naming(tmp_path / "c.npz", f"checkpoint field '{name}'"):
        check_training_checkpoint(tmp_path / "c.npz", arrays, meta, n_params=10,
                                  optimizer=optimizer)  # fmt: skip
