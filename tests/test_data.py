"""Dataset readers: every format against small files written here, each corruption
reported as a DataError naming the file and the problem, and the shipped MNIST."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train import data as data_mod
from netdsl.train.data import (
    Dataset,
    compute_mean_std,
    iterate_batches,
    load_dataset,
    num_batches,
    read_cifar10_batches,
    read_idx,
    read_npz,
    to_float,
)

MNIST_DIR = Path(data_mod.__file__).resolve().parents[1] / "datasets" / "mnist"
TRAIN_LABELS_SHA256 = "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"

IDX_CODES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``a`` as an IDX file with the given type code."""
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(a, dtype=IDX_CODES[code]).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@contextmanager
def raises_naming(path: Path, *fragments: str) -> Iterator[None]:
    """Expect a DataError whose message names ``path`` and contains each fragment."""
    with pytest.raises(DataError) as info:
        yield
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip_ubyte(tmp_path: Path, gz: bool) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(a), gz))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, a)
    got[0, 0, 0] = 7  # readers return writable arrays


@pytest.mark.parametrize("code", sorted(IDX_CODES))
def test_read_idx_every_dtype_is_big_endian_decoded(tmp_path: Path, code: int) -> None:
    a = np.array([[-2, 1, 100], [3, -1, 0]]) if code != 0x08 else np.array([[2, 1, 200]])
    got = read_idx(write(tmp_path / "t.idx", idx_bytes(a, code)))
    assert got.dtype == np.dtype(IDX_CODES[code]).newbyteorder("=")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_read_idx_detects_gzip_by_magic_not_extension(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "zipped.idx", idx_bytes(a), True)), a)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain.gz", idx_bytes(a))), a)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.idx", b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05")
    with raises_naming(p, "bad magic number 0x01000801"):
        read_idx(p)


def test_read_idx_bad_dtype(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.idx", b"\x00\x00\x0a\x01" + b"\x00\x00\x00\x01" + b"\x05")
    with raises_naming(p, "unsupported IDX data type code 0x0A"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path: Path, gz: bool) -> None:
    full = idx_bytes(np.zeros((3, 4), np.int32), 0x0C)  # 48 bytes of data
    p = write(tmp_path / "short.idx", full[:-5], gz)
    with raises_naming(p, "truncated: expected 48 bytes of data, found 43"):
        read_idx(p)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    p = write(tmp_path / "long.idx", idx_bytes(np.zeros(4, np.uint8)) + b"xyz")
    with raises_naming(p, "3 unexpected trailing bytes", "exactly 4 bytes"):
        read_idx(p)


def test_read_idx_truncated_header_and_empty(tmp_path: Path) -> None:
    p = write(tmp_path / "hdr.idx", b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with raises_naming(p, "truncated header"):
        read_idx(p)
    e = write(tmp_path / "empty.idx", b"")
    with raises_naming(e, "too short"):
        read_idx(e)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    garbled = write(tmp_path / "garbled.gz", good[:10] + bytes(b ^ 0x5A for b in good[10:]))
    with raises_naming(garbled, "corrupt gzip data"):
        read_idx(garbled)
    cut = write(tmp_path / "cut.gz", good[: len(good) // 2])
    with raises_naming(cut, "corrupt gzip data"):
        read_idx(cut)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.idx"
    with raises_naming(p, "cannot read"):
        read_idx(p)


# ------------------------------------------------------------------------- CIFAR


def cifar_bytes(labels: list[int], seed: int = 0) -> tuple[bytes, np.ndarray]:
    pix = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    rec = np.concatenate([np.array(labels, np.uint8)[:, None], pix], axis=1)
    return rec.tobytes(), pix.reshape(-1, 3, 32, 32)


def test_read_cifar10_batches(tmp_path: Path) -> None:
    b1, x1 = cifar_bytes([0, 9, 3], seed=1)
    b2, x2 = cifar_bytes([5], seed=2)
    x, y = read_cifar10_batches([write(tmp_path / "a.bin", b1), write(tmp_path / "b.bin", b2)])
    assert x.dtype == np.uint8 and x.shape == (4, 3, 32, 32)
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 3, 5]
    np.testing.assert_array_equal(x, np.concatenate([x1, x2]))
    # channel-first: the first 1024 pixel bytes of a record are the red plane
    assert x[0, 0, 0, 1] == np.frombuffer(b1, np.uint8)[2]


def test_read_cifar10_bad_size_and_label(tmp_path: Path) -> None:
    b, _ = cifar_bytes([1, 2])
    short = write(tmp_path / "short.bin", b[:-1])
    with raises_naming(short, "6145 bytes is not a multiple of the 3073-byte"):
        read_cifar10_batches([short])
    bad_label, _ = cifar_bytes([1, 12])
    p = write(tmp_path / "label.bin", bad_label)
    with raises_naming(p, "label 12 in record 1 is out of range 0..9"):
        read_cifar10_batches([p])
    empty = write(tmp_path / "empty.bin", b"")
    with raises_naming(empty, "empty"):
        read_cifar10_batches([empty])


# --------------------------------------------------------------------------- npz


def test_read_npz_adds_channel_axis_and_types(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 5, 6), np.uint8), y=np.array([0, 2, 1], np.int32))
    x, y = read_npz(p)
    assert x.shape == (3, 1, 5, 6) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [0, 2, 1]
    np.savez(p, x=np.ones((2, 3, 4, 4)), y=np.array([1, 1]))
    x, _ = read_npz(p)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32


class _Exploit:
    """Unpickling this creates a marker file: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_read_npz_refuses_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.npz"
    x = np.empty(1, dtype=object)
    x[0] = _Exploit(marker)
    np.savez(p, x=x, y=np.array([0]))  # np.savez pickles object arrays
    assert b"pwned" in p.read_bytes()  # the payload really is in there
    with raises_naming(p, "pickled (object) arrays", "refused"):
        read_npz(p)
    assert not marker.exists()


def test_read_npz_refuses_plain_pickle_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.npz"
    p.write_bytes(pickle.dumps(_Exploit(marker)))
    with raises_naming(p, "not an .npz archive"):
        read_npz(p)
    assert not marker.exists()


def test_read_npz_missing_key(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with raises_naming(p, "missing array 'y'", "'labels'"):
        read_npz(p)


def test_read_npz_count_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1]))
    with raises_naming(p, "count mismatch: x has 3 images but y has 2"):
        read_npz(p)


@pytest.mark.parametrize(
    ("x", "y", "problem"),
    [
        (np.zeros((2, 4), np.uint8), [0, 1], "expected (N, C, H, W) or (N, H, W)"),
        (np.zeros((2, 4, 4), np.uint8), [0, -1], "negative label -1"),
        (np.zeros((2, 4, 4), np.uint8), [0.0, 1.0], "expected integer class labels"),
        (np.zeros((2, 4, 4), np.int64), [0, 1], "expected uint8 or floating-point"),
        (np.zeros((2, 4, 4), np.uint8), [[0], [1]], "expected (N,) integer labels"),
    ],
)
def test_read_npz_bad_contents(tmp_path: Path, x: np.ndarray, y: list, problem: str) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=np.array(y))
    with raises_naming(p, problem):
        read_npz(p)


def test_read_npz_not_zip_and_truncated(tmp_path: Path) -> None:
    npy = tmp_path / "plain.npz"
    np.save(npy.with_suffix(""), np.zeros(3))  # writes plain.npy
    npy.write_bytes(npy.with_suffix(".npy").read_bytes())
    with raises_naming(npy, "not an .npz archive"):
        read_npz(npy)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(buf.getvalue()[:-30])
    with raises_naming(cut, "corrupt or truncated"):
        read_npz(cut)


# ------------------------------------------------------------------ load_dataset


def test_shipped_mnist_loads() -> None:
    ds = load_dataset("mnist")
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert ds.image_shape == (1, 28, 28) and ds.has_test
    mean, std = compute_mean_std(ds.x_train)  # the README's figures
    assert round(mean[0], 4) == 0.1307 and round(std[0], 4) == 0.3081


def test_shipped_mnist_train_labels_checksum() -> None:
    raw = gzip.decompress((MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == TRAIN_LABELS_SHA256
    assert TRAIN_LABELS_SHA256 in (MNIST_DIR / "README.md").read_text()


def make_idx_dir(d: Path, n_train: int = 6, n_test: int = 4) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        imgs = rng.integers(0, 256, (n, 5, 5), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write(d / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(imgs), gz)
        write(d / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)


def test_load_idx_directory_relative_to_base_dir(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "nets" / "fashion")
    ds = load_dataset("fashion", base_dir=tmp_path / "nets")
    assert ds.x_train.shape == (6, 1, 5, 5) and ds.x_test.shape == (4, 1, 5, 5)
    assert ds.num_classes == 3 and ds.name == "fashion"


def test_load_relative_to_cwd_when_not_under_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_idx_dir(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("data", base_dir=tmp_path / "elsewhere")
    assert len(ds.y_train) == 6


def test_load_idx_directory_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    write(labels, idx_bytes(np.zeros(3, np.uint8)))
    with raises_naming(labels, "count mismatch"):
        load_dataset(str(tmp_path))


def make_cifar_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write(d / f"data_batch_{i}.bin", cifar_bytes([i, 0], seed=i)[0])
    write(d / "test_batch.bin", cifar_bytes([9, 8, 7])[0])


def test_load_cifar10(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path / "cifar-10-batches-bin")
    for spec in (
        f"cifar10:{tmp_path / 'cifar-10-batches-bin'}",
        str(tmp_path / "cifar-10-batches-bin"),
        str(tmp_path),  # the folder the official tarball unpacks into
    ):
        ds = load_dataset(spec)
        assert ds.name == "cifar10" and ds.num_classes == 10
        assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
        assert ds.y_train.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]


def test_load_cifar10_missing_batch(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with raises_naming(tmp_path, "missing CIFAR-10 batch file(s) data_batch_4.bin"):
        load_dataset(f"cifar10:{tmp_path}")


def test_load_npz_single_and_pair(tmp_path: Path) -> None:
    np.savez(tmp_path / "tr.npz", x=np.zeros((5, 2, 4, 4), np.uint8), y=np.arange(5) % 4)
    np.savez(tmp_path / "te.npz", x=np.zeros((3, 2, 4, 4), np.uint8), y=np.array([0, 1, 6]))
    ds = load_dataset("tr.npz", base_dir=tmp_path)
    assert ds.x_train.shape == (5, 2, 4, 4) and not ds.has_test
    assert ds.x_test.shape == (0, 2, 4, 4) and ds.num_classes == 4
    ds = load_dataset("tr.npz, te.npz", base_dir=tmp_path)
    assert ds.has_test and ds.num_classes == 7


def test_load_npz_pair_shape_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "tr.npz", x=np.zeros((5, 4, 4), np.uint8), y=np.zeros(5, int))
    np.savez(tmp_path / "te.npz", x=np.zeros((3, 4, 5), np.uint8), y=np.zeros(3, int))
    with raises_naming(tmp_path / "te.npz", "test images are"):
        load_dataset("tr.npz,te.npz", base_dir=tmp_path)


def test_load_unknown_specs_say_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-such-thing: dataset not found.*accepted: 'mnist'"):
        load_dataset("no-such-thing", base_dir=tmp_path)
    (tmp_path / "junk.txt").write_text("hi")
    with raises_naming(tmp_path / "junk.txt", "unrecognised dataset file", "cifar10:DIR"):
        load_dataset(str(tmp_path / "junk.txt"))
    (tmp_path / "emptydir").mkdir()
    with raises_naming(tmp_path / "emptydir", "no recognised dataset"):
        load_dataset(str(tmp_path / "emptydir"))
    with pytest.raises(DataError, match="cifar10:DIR"):
        load_dataset("cifar10")


def test_mnist_resolves_from_installed_layout() -> None:
    # data.py finds the files next to the package, not via the cwd
    assert (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
    assert data_mod._package_dir() / "datasets" / "mnist" == MNIST_DIR


# --------------------------------------------------------------------- normalise


def test_to_float_per_channel_and_scalar() -> None:
    x = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1, 1)
    got = to_float(x, mean=[0.0, 0.1, 0.5], std=[1.0, 0.5, 0.25])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.ravel(), [0.0, (0.2 - 0.1) / 0.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(to_float(x, 0.5, 0.5).ravel(), [-1.0, -0.6, 1.0], rtol=1e-6)
    f = np.full((1, 1, 2, 2), 0.5, np.float32)  # float input is already [0, 1]
    np.testing.assert_allclose(to_float(f, 0.5, 1.0), 0.0)
    assert to_float(f) is not f
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        to_float(x, mean=[0.1, 0.2])


def test_compute_mean_std_matches_numpy() -> None:
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 5), dtype=np.uint8)
    mean, std = compute_mean_std(x, chunk=3)
    ref = x / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-9)


# ----------------------------------------------------------------------- batches


def test_iterate_batches_is_a_seeded_permutation() -> None:
    a = list(iterate_batches(10, 3, np.random.default_rng(5)))
    b = list(iterate_batches(10, 3, np.random.default_rng(5)))
    assert len(a) == 3 == num_batches(10, 3)
    assert all(len(i) == 3 and i.dtype == np.int64 for i in a)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    whole = list(iterate_batches(10, 3, np.random.default_rng(5), drop_last=False))
    assert len(whole) == 4 and len(whole[-1]) == 1
    assert sorted(np.concatenate(whole).tolist()) == list(range(10))
    plain = list(iterate_batches(5, 2, np.random.default_rng(0), shuffle=False))
    assert [i.tolist() for i in plain] == [[0, 1], [2, 3]]


def test_iterate_batches_draws_eagerly_and_resumes() -> None:
    rng = np.random.default_rng(1)
    rng.random()  # some earlier use
    state = rng.bit_generator.state
    full = list(iterate_batches(20, 4, rng))
    after = rng.random()
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = state
    it = iterate_batches(20, 4, rng2, start_batch=2)
    assert rng2.random() == after  # permutation drawn at the call, not on first next()
    rest = list(it)
    assert len(rest) == 3
    assert all((x == y).all() for x, y in zip(full[2:], rest, strict=True))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_iterate_batches_shards_partition_each_batch(world: int) -> None:
    full = list(iterate_batches(23, 6, np.random.default_rng(9), drop_last=False))
    shards = [
        list(iterate_batches(23, 6, np.random.default_rng(9), drop_last=False, shard=(r, world)))
        for r in range(world)
    ]
    for k, batch in enumerate(full):
        parts = [s[k] for s in shards]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        b = len(batch)
        assert [len(p) for p in parts] == [
            (r + 1) * b // world - r * b // world for r in range(world)
        ]


def test_iterate_batches_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        iterate_batches(10, 0, rng)
    with pytest.raises(ValueError):
        iterate_batches(10, 2, rng, shard=(2, 2))
