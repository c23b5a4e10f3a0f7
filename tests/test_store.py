"""The packed store: reads equal the source images (ints, slices, indices across shards,
other processes), statistics against NumPy over all pixels, the fingerprint (equal to the
in-memory data's; changes with one pixel), and damaged stores named at open."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import numpy as np
import pytest

from netdsl.errors import DataError
from netdsl.train import augment
from netdsl.train.data import compute_mean_std, load_dataset
from netdsl.train.pack import pack
from netdsl.train.runinfo import data_fingerprint
from netdsl.train.sources import SubsetSource, subset, take
from netdsl.train.store import MANIFEST, StoreSource, open_store, verify_store

TINY_SHARDS = 0.01  # MB per shard: 10 kB, a dozen 28x28 images, so reads cross shards


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """(train.npz, test.npz, x_train, y_train, x_test, y_test) of RGB images whose channels
    are correlated, with known statistics."""
    rng = np.random.default_rng(0)
    n, h = 40, 6
    base = rng.integers(0, 200, (n, 1, h, h))
    x = np.concatenate([base, base // 2 + rng.integers(0, 50, (n, 1, h, h)),
                        rng.integers(0, 256, (n, 1, h, h))], axis=1).astype(np.uint8)  # fmt: skip
    y = rng.integers(0, 4, n).astype(np.int64)
    d = tmp_path_factory.mktemp("rgb")
    np.savez(d / "train.npz", x=x[:30], y=y[:30])
    np.savez(d / "test.npz", x=x[30:], y=y[30:])
    return d, x[:30], y[:30], x[30:], y[30:]


@pytest.fixture(scope="module")
def mnist_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    ds = load_dataset("mnist")
    np.savez(d / "train.npz", x=ds.x_train[:100], y=ds.y_train[:100])
    np.savez(d / "test.npz", x=ds.x_test[:30], y=ds.y_test[:30])
    pack(f"{d}/train.npz,{d}/test.npz", d / "st", shard_mb=TINY_SHARDS, workers=1)
    return d


def test_reads_equal_the_source_across_shards(mnist_store):
    ds = load_dataset("mnist")
    st = open_store(mnist_store / "st")
    assert isinstance(st.x_train, StoreSource) and len(st.x_train.files) > 5
    assert st.x_train.shape == (100, 1, 28, 28) and st.x_train.dtype == np.uint8
    src = ds.x_train[:100]
    idx = np.array([99, 0, 13, 12, 11, 50, 50, -1])
    assert np.array_equal(take(st.x_train, idx), src[idx])
    assert np.array_equal(take(st.x_train, 7), src[7:8])
    assert np.array_equal(take(st.x_train, slice(5, 60, 3)), src[5:60:3])
    assert np.array_equal(np.asarray(st.x_test), ds.x_test[:30])
    assert np.array_equal(st.y_train, ds.y_train[:100])
    with pytest.raises(IndexError):
        take(st.x_train, [100])
    shard = mnist_store / "st" / st.x_train.files[1]
    mm = np.load(shard, mmap_mode="r")  # a shard is a plain .npy
    start = st.x_train.counts[0]
    assert np.array_equal(mm, src[start : start + len(mm)])


def _read_in_worker(args):
    source, idx = args
    return take(source, idx)


def test_a_store_source_pickles_by_path_and_reads_in_other_processes(mnist_store):
    st = open_store(mnist_store / "st")
    take(st.x_train, [1])  # opens a file: the descriptor must not travel
    blob = pickle.dumps(st.x_train)
    assert len(blob) < 3000
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.map(_read_in_worker, [(st.x_train, [i, 99 - i]) for i in range(4)])
    for i, g in enumerate(got):
        assert np.array_equal(g, take(st.x_train, [i, 99 - i]))


def test_a_subset_reads_only_its_range(mnist_store):
    st = open_store(mnist_store / "st")
    sub = subset(st.x_train, 90, None)
    assert isinstance(sub, SubsetSource) and sub.shape == (10, 1, 28, 28)
    assert np.array_equal(take(sub, [0, -1]), take(st.x_train, [90, 99]))
    assert np.array_equal(
        np.asarray(subset(st.x_train, -5, None)), take(st.x_train, range(95, 100))
    )


def test_the_fingerprint_is_the_in_memory_data_s(mnist_store):
    st = open_store(mnist_store / "st")
    ds = load_dataset(f"{mnist_store}/train.npz,{mnist_store}/test.npz")
    assert st.fingerprint() == ds.fingerprint()
    assert st.fingerprint() == data_fingerprint(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    assert "ok" in verify_store(mnist_store / "st")


def test_one_changed_pixel_changes_the_fingerprint(tmp_path, mnist_store):
    ds = load_dataset(f"{mnist_store}/train.npz")
    x = ds.x_train.copy()
    x[57, 0, 14, 14] ^= 1
    np.savez(tmp_path / "changed.npz", x=x, y=ds.y_train)
    a = pack(mnist_store / "train.npz", tmp_path / "a", workers=1)
    b = pack(tmp_path / "changed.npz", tmp_path / "b", workers=1)
    assert a["fingerprint"] != b["fingerprint"]
    # the same change made in a packed shard is found by --verify, not at open
    shard = tmp_path / "a" / "train-00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    open_store(tmp_path / "a")  # sizes still agree
    with pytest.raises(DataError, match="contents changed since packing"):
        verify_store(tmp_path / "a")


def test_statistics_match_numpy_over_all_pixels(tmp_path, rgb):
    d, x, y, xt, yt = rgb
    pack(f"{d}/train.npz,{d}/test.npz", tmp_path / "s", workers=1, shard_mb=TINY_SHARDS)
    st = load_dataset(str(tmp_path / "s"))
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(st.stats.mean, pixels.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(st.stats.std, pixels.std(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(st.stats.mean, compute_mean_std(x)[0], atol=1e-12)
    cov = np.cov(pixels, rowvar=False)
    val, vec = np.linalg.eigh(cov)
    assert np.allclose(st.stats.eigval, val[::-1], atol=1e-12)
    for i in range(3):  # eigenvectors up to sign
        assert abs(abs(float(st.stats.eigvec[:, i] @ vec[:, 2 - i])) - 1) < 1e-9
    val2, _ = augment.pca_of_pixels(x)
    assert np.allclose(st.stats.eigval, val2, atol=1e-12)
    assert st.stats.pixels == 30 * 36


def test_a_damaged_store_is_named_at_open(tmp_path, mnist_store):
    import shutil

    st = tmp_path / "st"
    shutil.copytree(mnist_store / "st", st)
    shard = st / "train-00003.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError) as e:
        load_dataset(str(st))
    assert str(e.value).startswith(f"{shard}: ") and "the manifest says" in str(e.value)
    shard.unlink()
    with pytest.raises(DataError, match=f"{shard}: missing store shard"):
        open_store(st)
    m = json.loads((st / MANIFEST).read_text())
    m["version"] = 99
    (st / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest.json: store format version 99"):
        open_store(st)
    (st / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match=r"manifest.json: not a valid store manifest"):
        open_store(st)


def test_training_and_eval_from_a_store(tmp_path, mnist_store, capsys):
    from netdsl.cli import main

    net = tmp_path / "t.net"
    net.write_text(f"""
input image: 1x28x28
conv c1: 2 filters 5x5, stride 3, relu
fc out: 10
loss cross_entropy
train {{
  data "{mnist_store / "st"}"
  batch 10
  epochs 1
  optimizer sgd(lr=0.05)
}}
""")
    assert main(["train", str(net), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["fingerprint"] == open_store(mnist_store / "st").fingerprint()
    capsys.readouterr()
    assert main(["eval", str(net), str(tmp_path / "run" / "checkpoint.npz")]) == 0
    assert "test: 30 images" in capsys.readouterr().out
