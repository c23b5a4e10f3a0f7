"""Image folders and decoding: MNIST digits written as PNG/JPEG, the bad-file classes
(corrupt, truncated, grey, CMYK, palette, RGBA, 16-bit), empty class folders, non-image
files, and predict on image files against the same images as .npy."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.errors import DataError, NetdslError
from netdsl.train.data import load_dataset
from netdsl.train.sources import take

Image = pytest.importorskip("PIL.Image")

from netdsl.train.images import FolderSource, decode_file, scan_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 30 MNIST training digits of classes 0, 1, 2 and their labels."""
    ds = load_dataset("mnist")
    keep = np.flatnonzero(ds.y_train < 3)[:30]
    return ds.x_train[keep, 0], ds.y_train[keep]


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, ext: str = ".png",
                 test_every: int = 5) -> Path:  # fmt: skip
    """Write images x (N, H, W) or (N, H, W, 3) into root/{train,val}/digitK/."""
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        split = "val" if i % test_every == 0 else "train"
        d = root / split / f"digit{int(label)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}{ext}")
    return root


def _file_order(ds) -> list[int]:
    """The digit number of each training image, from its file name."""
    return [int(Path(f).stem) for f in ds.x_train.files]


def test_a_png_folder_reads_back_the_exact_digits(tmp_path, digits):
    x, y = digits
    ds = load_dataset(str(write_folder(tmp_path / "d", x, y)))
    assert ds.class_names == ("digit0", "digit1", "digit2") and ds.num_classes == 3
    assert ds.x_train.shape == (24, 1, 28, 28) and ds.x_test.shape == (6, 1, 28, 28)
    order = _file_order(ds)
    assert sorted(order) == [i for i in range(30) if i % 5]
    assert np.array_equal(take(ds.x_train, slice(None))[:, 0], x[order])
    assert ds.y_train.tolist() == [int(y[i]) for i in order]
    assert np.array_equal(take(ds.x_test, slice(None))[:, 0], x[sorted(range(0, 30, 5),
                          key=lambda i: (int(y[i]), i))])  # fmt: skip
    assert ds.stats is None and ds.fingerprint().startswith("blake2b:")


def test_training_images_come_in_a_fixed_shuffled_order(tmp_path, digits):
    x, y = digits
    root = write_folder(tmp_path / "d", x, y)
    a, b = load_dataset(str(root)), load_dataset(str(root))
    assert a.x_train.files == b.x_train.files  # the same order every time
    last = a.y_train[-8:].tolist()  # `validate 8` takes more than the last class
    assert len(set(last)) > 1 and a.y_train.tolist() != sorted(a.y_train.tolist())


def test_a_jpeg_folder_is_close_to_the_digits(tmp_path, digits):
    x, y = digits
    ds = load_dataset(str(write_folder(tmp_path / "d", x, y, ".jpg")))
    got = take(ds.x_train, np.arange(24))[:, 0].astype(float)
    assert ds.image_shape == (1, 28, 28)
    assert np.abs(got - x[_file_order(ds)]).mean() < 6  # lossy, but the same digits


def test_resize_shorter_side_then_centre_crop(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "wide.png")
    got = decode_file(tmp_path / "wide.png", 10, 3)
    want = np.asarray(Image.fromarray(a).resize((20, 10), Image.Resampling.BILINEAR))[:, 5:15]
    assert got.shape == (3, 10, 10) and np.array_equal(got, want.transpose(2, 0, 1))


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path):
    yy, xx = np.mgrid[0:400, 0:600]
    a = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=95)
    got = decode_file(tmp_path / "big.jpg", 64, 3).astype(float)
    with Image.open(tmp_path / "big.jpg") as im:
        full = im.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR)
    want = np.asarray(full)[:, 16:80].transpose(2, 0, 1).astype(float)
    assert np.abs(got - want).mean() < 12  # the same picture, decoded at 1/4 scale first


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_other_modes_are_converted(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    ext = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{ext}"
    if mode == "L":
        img = base.convert("L")
        img.save(path)
        g = np.asarray(img)
        assert np.array_equal(decode_file(path, 8, 3), np.stack([g, g, g]))  # grey -> RGB
        assert np.array_equal(decode_file(path, 8, 1)[0], g)
    elif mode == "CMYK":
        base.convert("CMYK").save(path, quality=100)
        got = decode_file(path, 8, 3).astype(float)
        assert np.abs(got - rgb.transpose(2, 0, 1)).mean() < 8
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.save(path)
        want = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(decode_file(path, 8, 3), want)
    elif mode == "RGBA":
        alpha = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], -1)).save(path)
        assert np.array_equal(decode_file(path, 8, 3), rgb.transpose(2, 0, 1))  # alpha dropped
    else:
        v = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
        Image.fromarray(v).save(path)
        with Image.open(path) as im:
            assert im.mode.startswith("I")
        want = np.rint(v / 257).astype(np.uint8)
        assert np.array_equal(decode_file(path, 8, 1)[0], want)


def test_corrupt_and_truncated_files_are_named(tmp_path, digits):
    x, _ = digits
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.tile(x[0], (4, 4))).save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for bad in (corrupt, cut):
        with pytest.raises(DataError) as e:
            decode_file(bad, 28, 1)
        assert str(e.value).startswith(f"{bad}: cannot decode image")


def test_a_bad_file_while_training_from_a_folder_names_the_file(tmp_path, digits):
    x, y = digits
    root = write_folder(tmp_path / "d", x, y)
    bad = root / "train" / "digit1" / "zz-bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = load_dataset(str(root))
    i = ds.x_train.files.index(str(bad.relative_to(root)))
    take(ds.x_train, [0, 1])  # the good ones read
    with pytest.raises(DataError) as e:
        take(ds.x_train, [0, i])
    assert str(bad) in str(e.value) and "netdsl pack" in str(e.value)


def test_empty_class_folders_and_other_files_are_reported(tmp_path, digits, capsys):
    x, y = digits
    root = write_folder(tmp_path / "d", x, y)
    (root / "train" / "digit9").mkdir()
    (root / "val" / "digit9").mkdir()
    (root / "train" / "digit0" / "notes.txt").write_text("hi")
    (root / "train" / "digit1" / "labels.xml").write_text("<x/>")
    (root / "train" / "README").write_text("loose")
    ds = load_dataset(str(root))
    err = capsys.readouterr().err
    assert "warning:" in err and "1 empty class folder(s): digit9" in err
    assert "skipped 2 file(s) that are not images by their extension (.txt, .xml)" in err
    assert "skipped 1 file(s) outside the class folders (e.g. README)" in err
    assert ds.class_names == ("digit0", "digit1", "digit2", "digit9") and ds.num_classes == 4
    assert len(ds.y_train) == 24


def test_folder_problems_are_errors_naming_the_folder(tmp_path, digits):
    x, y = digits
    root = write_folder(tmp_path / "d", x, y)
    (root / "val" / "cats").mkdir()
    with pytest.raises(DataError, match="class folder 'cats' has no counterpart"):
        load_dataset(str(root))
    empty = tmp_path / "e"
    (empty / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"e/train: no image files"):
        load_dataset(str(empty))
    (tmp_path / "f" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(str(tmp_path / "f"))


def test_size_defaults_to_256_and_never_enlarges(tmp_path):
    big = np.zeros((300, 400, 3), np.uint8)
    for k in range(2):
        d = tmp_path / "b" / "train" / f"c{k}"
        d.mkdir(parents=True)
        Image.fromarray(big).save(d / "a.png")
    assert scan_image_folder(tmp_path / "b").size == 256
    assert scan_image_folder(tmp_path / "b", size=64).size == 64
    assert load_dataset(str(tmp_path / "b"), image_size=32).image_shape == (3, 32, 32)


def test_a_folder_source_pickles_by_name(tmp_path, digits):
    x, y = digits
    ds = load_dataset(str(write_folder(tmp_path / "d", x, y)))
    blob = pickle.dumps(ds.x_train)
    assert len(blob) < 2000  # names, not pixels (24 images of 784 bytes would be 18 kB)
    again = pickle.loads(blob)
    assert isinstance(again, FolderSource)
    assert np.array_equal(take(again, [3, 1]), take(ds.x_train, [3, 1]))


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(NetdslError, match=r"pip install 'netdsl\[images\]'"):
        decode_file(tmp_path / "x.png", 8)


# ---------------------------------------------------------------- predict


NET = """
network colour
input image: 3x8x8
conv c1: 2 filters 3x3, pad 1, relu
fc   out: 3
loss cross_entropy
train {
  batch 4
  epochs 1
  optimizer sgd(lr=0.1)
}
"""


@pytest.fixture(scope="module")
def colour_net(tmp_path_factory) -> Path:
    """A 3x8x8 net and a checkpoint whose data record names the classes."""
    from netdsl import load
    from netdsl.backends import compile_network
    from netdsl.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("net")
    (d / "colour.net").write_text(NET)
    cnet = compile_network(load(d / "colour.net"), batch=4)
    rng = np.random.default_rng(3)
    arrays = {f"param.{k}": rng.normal(0, 0.5, v.shape).astype(v.dtype)
              for k, v in cnet.params.items()}  # fmt: skip
    record = {"image_shape": [3, 8, 8], "class_names": ["ant", "bee", "cat"], "classes": 3}
    save_checkpoint(d / "colour.npz", arrays, {"network": "colour", "data": record})
    return d


def _rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


def test_predict_png_and_jpeg_files_score_as_the_same_pixels_as_npy(tmp_path, colour_net,
                                                                    capsys):  # fmt: skip
    from netdsl.cli import main

    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    files = []
    for i, img in enumerate(imgs):
        for ext in (".png", ".jpg"):
            Image.fromarray(img).save(tmp_path / f"im{i}{ext}", quality=90)
            files.append(tmp_path / f"im{i}{ext}")
    same = np.stack([decode_file(f, 8, 3) for f in files])  # what the files hold
    np.save(tmp_path / "same.npy", same)
    net, ck = str(colour_net / "colour.net"), str(colour_net / "colour.npz")
    assert main(["predict", net, ck, *map(str, files), "--top", "3"]) == 0
    from_files = _rows(capsys.readouterr().out)
    assert main(["predict", net, ck, str(tmp_path / "same.npy"), "--top", "3"]) == 0
    from_npy = _rows(capsys.readouterr().out)
    assert [r[0] for r in from_files] == [str(f) for f in files]
    assert [r[1:] for r in from_files] == [r[1:] for r in from_npy]
    assert {r[1].split(" ")[0] for r in from_files} <= {"ant", "bee", "cat"}
    # a folder gives its files, sorted
    assert main(["predict", net, ck, str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == sorted(str(f) for f in files)


def test_predict_resizes_and_crops_as_at_test_time(tmp_path, colour_net, capsys):
    from netdsl import load
    from netdsl.backends import compile_network
    from netdsl.cli import main
    from netdsl.train import augment
    from netdsl.train.checkpoint import load_checkpoint, save_checkpoint
    from netdsl.train.trainer import load_weights

    arrays, meta = load_checkpoint(colour_net / "colour.npz")
    meta["data"]["image_shape"] = [3, 12, 12]  # trained on 12x12 images, 8x8 crops
    ck = tmp_path / "c12.npz"
    save_checkpoint(ck, arrays, meta)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    x = decode_file(tmp_path / "a.png", 12, 3)[None].astype(np.float32) / 255
    cnet = compile_network(load(colour_net / "colour.net"), batch=1)
    load_weights(cnet, arrays, ck)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    centre = softmax(cnet.forward(np.ascontiguousarray(x[:, :, 2:10, 2:10])).astype(float))
    views = augment.ten_crop(x, (8, 8))
    ten = np.mean([softmax(cnet.forward(np.ascontiguousarray(v)).astype(float))
                   for v in views], axis=0)  # fmt: skip
    net = str(colour_net / "colour.net")
    for crops, want in (("1", centre), ("10", ten)):
        assert main(["predict", net, str(ck), str(tmp_path / "a.png"), "--crops", crops,
                     "--top", "3"]) == 0  # fmt: skip
        row = _rows(capsys.readouterr().out)[0][1:]
        names = ["ant", "bee", "cat"]
        expect = [f"{names[k]} ({want[0, k]:.3f})" for k in np.argsort(-want[0])]
        assert row == expect


def test_predict_names_a_bad_image_file(tmp_path, colour_net, capsys):
    from netdsl.cli import main

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    net, ck = str(colour_net / "colour.net"), str(colour_net / "colour.npz")
    assert main(["predict", net, ck, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: cannot decode image") and err.count("\n") == 1
    assert main(["predict", net, ck, str(tmp_path / "missing.png")]) == 1
    assert "missing.png: no such image file" in capsys.readouterr().err


def test_train_eval_and_predict_from_a_png_folder(tmp_path, digits, capsys):
    import json

    from netdsl.cli import main

    x, y = digits
    root = write_folder(tmp_path / "d", x, y)
    net = tmp_path / "t.net"
    net.write_text(f"""
input image: 1x28x28
conv c1: 2 filters 5x5, stride 3, relu
fc out: 3
loss cross_entropy
train {{
  data "{root}"
  batch 8
  epochs 1
  optimizer sgd(lr=0.05)
}}
""")
    assert main(["train", str(net), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["class_names"] == ["digit0", "digit1", "digit2"]
    ck = str(tmp_path / "run" / "checkpoint.npz")
    capsys.readouterr()
    assert main(["eval", str(net), ck]) == 0
    assert "test: 6 images" in capsys.readouterr().out
    one = root / "val" / "digit0" / "000.png"
    assert main(["predict", str(net), ck, str(one), "--top", "3"]) == 0
    row = capsys.readouterr().out.strip().split("\t")
    assert row[0] == str(one) and sorted(c.split(" ")[0] for c in row[1:]) == [
        "digit0",
        "digit1",
        "digit2",
    ]
