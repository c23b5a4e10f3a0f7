"""`netdsl pack`: image folders (bad files listed and skipped, the same store whatever the
number of workers), the other sources, overwriting, and packs that fail or are stopped
midway leaving nothing that looks like a store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.train import pack as packmod
from netdsl.train.data import load_dataset
from netdsl.train.sources import take
from netdsl.train.store import MANIFEST, open_store

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def folder(tmp_path):
    """An RGB image folder: 3 classes, 8 training and 2 test images each, varied sizes,
    plus a corrupt and a truncated JPEG, a grey PNG, a CMYK JPEG and a text file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split, n in (("train", 8), ("val", 2)):
        for c in ("ant", "bee", "cat"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = ".png" if i % 2 else ".jpg"
                Image.fromarray(img).save(d / f"{i}{ext}")
    t = root / "train"
    (t / "ant" / "x-corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    whole = (t / "ant" / "0.jpg").read_bytes()
    (t / "bee" / "x-cut.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(t / "cat" / "x-grey.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(
        t / "cat" / "x-cmyk.jpg"
    )
    (t / "cat" / "notes.txt").write_text("not an image")
    return root


def test_pack_a_folder_lists_and_skips_bad_files(tmp_path, folder, capsys):
    code = main(["pack", str(folder), str(tmp_path / "st"), "--size", "16", "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "packed 32 images (train 26, test 6) of 3x16x16" in out
    assert "skipped 2 file(s) that could not be decoded" in out
    assert "skipped train/ant/x-corrupt.jpg: cannot decode image" in out
    assert "skipped train/bee/x-cut.jpg: cannot decode image" in out
    assert "skipped 1 file(s) that are not images by their extension (.txt)" in err
    m = json.loads((tmp_path / "st" / MANIFEST).read_text())
    assert sorted(s["file"] for s in m["skipped"]) == ["train/ant/x-corrupt.jpg",
                                                       "train/bee/x-cut.jpg"]  # fmt: skip
    assert m["class_names"] == ["ant", "bee", "cat"] and m["format"] == "netdsl-store"
    ds = load_dataset(str(tmp_path / "st"))
    assert ds.class_names == ("ant", "bee", "cat") and ds.image_shape == (3, 16, 16)
    assert sorted(ds.y_train.tolist()) == [0] * 8 + [1] * 8 + [2] * 10
    # the store holds what decoding the folder gives (the grey and CMYK files as RGB)
    src = load_dataset(str(folder), image_size=16)
    good = [i for i, f in enumerate(src.x_train.files) if "corrupt" not in f and "cut" not in f]
    assert np.array_equal(take(ds.x_train, slice(None)), take(src.x_train, good))
    assert np.array_equal(take(ds.x_test, slice(None)), take(src.x_test, slice(None)))
    assert main(["pack", "--verify", str(tmp_path / "st")]) == 0
    assert ": ok: 26 training and 6 test images of 3x16x16" in capsys.readouterr().out


def test_two_workers_write_the_same_store_as_one(tmp_path, folder):
    one = packmod.pack(folder, tmp_path / "one", size=12, workers=1)
    two = packmod.pack(folder, tmp_path / "two", size=12, workers=2)
    assert one["fingerprint"] == two["fingerprint"]
    a, b = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert a.stats.mean == b.stats.mean and np.array_equal(a.stats.eigvec, b.stats.eigvec)


def test_pack_idx_cifar_like_and_npz_sources(tmp_path, capsys):
    ds = load_dataset("mnist")
    np.savez(tmp_path / "f.npz", x=ds.x_test[:20].astype(np.float32) / 255, y=ds.y_test[:20])
    r = packmod.pack(tmp_path / "f.npz", tmp_path / "st", size=8)
    assert r["counts"] == {"train": 20}  # no test split in a lone .npz
    assert "--size applies to image folders" in capsys.readouterr().err
    st = open_store(tmp_path / "st")
    assert np.array_equal(take(st.x_train, slice(None)), ds.x_test[:20])  # float -> bytes
    assert not st.has_test


def test_an_existing_out_needs_overwrite_and_only_a_store_is_replaced(tmp_path, folder, capsys):
    packmod.pack(folder, tmp_path / "st", size=8, workers=1)
    assert main(["pack", str(folder), str(tmp_path / "st"), "--size", "8"]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    r = packmod.pack(folder, tmp_path / "st", size=10, workers=1, overwrite=True)
    assert open_store(tmp_path / "st").image_shape == (3, 10, 10) and r["counts"]["test"] == 6
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match="not a store, so --overwrite does not replace it"):
        packmod.pack(folder, other, size=8, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "mine", "st"]


def test_a_pack_failing_midway_leaves_no_store(tmp_path, folder, monkeypatch):
    calls = []
    real = packmod._consume

    def fail_on_second_split(*args):
        calls.append(1)
        if len(calls) == 2:  # the test split: the train shards are written by now
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(packmod, "_consume", fail_on_second_split)
    with pytest.raises(RuntimeError):
        packmod.pack(folder, tmp_path / "st", size=8, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no OUT, no temp


def test_ctrl_c_exits_130_and_removes_the_partial_store(tmp_path, folder, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(packmod, "_consume", interrupted)
    assert main(["pack", str(folder), str(tmp_path / "st"), "--workers", "1"]) == 130
    assert capsys.readouterr().err.endswith("interrupted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_a_killed_pack_s_leftover_is_no_store_and_is_removed_next_time(tmp_path, folder, capsys):
    # a pack killed (SIGKILL) midway leaves its temporary folder: shards, no manifest
    dead = tmp_path / ".st.packing-999999999"
    dead.mkdir()
    np.save(dead / "train-00000.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(DataError):
        load_dataset(str(dead))
    packmod.pack(folder, tmp_path / "st", size=8, workers=1)
    assert f"removed {dead}, the unfinished store of a pack that was stopped" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "st"]
    # one whose process still runs is another pack into the same folder: refused
    live = tmp_path / f".again.packing-{os.getppid()}"
    live.mkdir()
    with pytest.raises(DataError, match="another pack into .* is running"):
        packmod.pack(folder, tmp_path / "again", size=8, workers=1)
    assert live.is_dir()


def test_usage_errors(tmp_path, capsys):
    assert main(["pack", "mnist"]) == 2
    assert "give the store folder to write" in capsys.readouterr().err
    assert main(["pack", "--verify", "a", "b"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["pack", "mnist", str(tmp_path / "x"), "--workers", "0"])
    assert e.value.code == 2
    assert main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 1
    assert "dataset not found" in capsys.readouterr().err
