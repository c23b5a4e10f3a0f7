"""`netdsl show filters|maps|neighbours|confusion`: the pictures and the numbers behind them.

Tiny nets on a tiny random data set, with a checkpoint written through the API (the nets'
initial weights): each picture is checked for its size and that it is not blank, and the
data behind it against an independent computation.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

import netdsl
from netdsl.cli import main
from netdsl.show import common
from netdsl.show.grid import GAP, PAD, filter_grid, gpu_ranges, rescale
from netdsl.show.neighbours import nearest
from netdsl.train.checkpoint import save_checkpoint

GREY_NET = """\
network grey
input image: 1x8x8
conv c1: 4 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
conv c2: 3 filters 3x3, relu
fc f1: 6, relu
fc out: 3
loss cross_entropy
train {
  data "train.npz,test.npz"
  normalize mean=100, std=50
  batch 16
}
"""

# AlexNet's shape in miniature: two GPUs, an RGB first layer, a grouped conv, dropout
RGB_NET = """\
network rgb
gpus 2
input image: 3x8x8
conv c1: 6 filters 3x3, relu
conv c2: 4 filters 3x3, groups 2, relu
fc f1: 6, relu
dropout d1: 0.5
fc out: 3
loss cross_entropy
train {
  data "train.npz,test.npz"
  batch 16
}
"""

N_TRAIN, N_TEST = 40, 24


def _make_run(folder, text: str, channels: int, seed: int):
    """A .net file, its data set and a checkpoint of its initial weights in `folder`."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (n, channels, 8, 8), dtype=np.uint8)
        np.savez(folder / f"{name}.npz", x=x, y=rng.integers(0, 3, n))
    path = folder / "tiny.net"
    path.write_text(text)
    net = netdsl.load(path)
    from netdsl.train.trainer import prepare_data

    cnet = netdsl.compile(path, batch=16, seed=seed)
    # random weights of unit-ish scale, so that no layer's output is all zero
    arrays = {f"param.{k}": rng.normal(0, 0.5, v.shape).astype(np.float32)
              for k, v in cnet.params.items()}  # fmt: skip
    ckpt = folder / "checkpoint.npz"
    save_checkpoint(ckpt, arrays, {"data": prepare_data(net).record})
    return path, ckpt, net


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("grey"), GREY_NET, 1, 1)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("rgb"), RGB_NET, 3, 2)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["show", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def png(path) -> np.ndarray:
    """The picture's pixels; it must be a real, non-blank PNG."""
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 100, pixels.shape
    assert pixels[..., :3].std() > 0.05, "the picture is blank"
    return pixels


# ------------------------------------------------------------------ filters


def test_filter_grid_holds_the_kernels_rescaled_rgb_in_gpu_columns():
    w = np.random.default_rng(0).standard_normal((7, 3, 2, 3))
    grid = filter_grid(w, columns=2, per_row=2)
    scaled = (w - w.min()) / (w.max() - w.min())  # one affine map for the layer
    assert grid.shape[2] == 3 and grid.min() >= 0 and grid.max() <= 1
    # GPU 0 owns filters 0-3, GPU 1 filters 4-6 (placement.py's split); 2 tiles a row
    assert gpu_ranges(7, 2) == [(0, 4), (4, 7)]
    block_w = PAD + 2 * (3 + PAD)
    for g, (lo, hi) in enumerate(gpu_ranges(7, 2)):
        for j, f in enumerate(range(lo, hi)):
            r, c = divmod(j, 2)
            top, left = PAD + r * (2 + PAD), g * (block_w + GAP) + PAD + c * (3 + PAD)
            tile = grid[top : top + 2, left : left + 3]
            np.testing.assert_allclose(tile, scaled[f].transpose(1, 2, 0), rtol=0, atol=1e-12)
    # nothing else but background: the tiles hold 7*2*3 pixels of colour
    assert np.sum(np.any(grid != 1.0, axis=2)) <= 7 * 2 * 3


def test_filter_grid_channel_mode_and_per_filter_scale():
    w = np.random.default_rng(1).standard_normal((3, 4, 3, 3))
    grid = filter_grid(w, scale="filter")
    assert grid.shape == (PAD + 3 * (3 + PAD), PAD + 4 * (3 + PAD))
    for f in range(3):
        scaled = rescale(w, "filter")[f]
        assert scaled.min() == 0 and scaled.max() == 1
        for ch in range(4):
            top, left = PAD + f * (3 + PAD), PAD + ch * (3 + PAD)
            np.testing.assert_array_equal(grid[top : top + 3, left : left + 3], scaled[ch])
    assert np.all(rescale(np.ones((2, 1, 3, 3))) == 0.5)  # a constant layer: mid grey


def test_show_filters_rgb_gpu_net(rgb, tmp_path, capsys):
    path, ckpt, net = rgb
    out = tmp_path / "f.png"
    code, text, err = run_cli(capsys, "filters", path, ckpt, "--json", "-o", out)
    assert code == 0, err
    got = json.loads(text)
    w = np.load(ckpt)["param.c1.weight"]
    assert got["layer"] == "c1" and got["shape"] == [6, 3, 3, 3] and got["mode"] == "rgb"
    assert got["min"] == pytest.approx(float(w.min()), rel=1e-5)
    assert got["max"] == pytest.approx(float(w.max()), rel=1e-5)
    assert got["gpu_columns"] == [[0, 3], [3, 6]]
    png(out)
    assert f"wrote {out}" in err
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary file left
    # the grouped layer: one row per filter, one tile per channel of its group
    code, text, err = run_cli(capsys, "filters", path, ckpt, "--layer", "c2", "--json")
    assert code == 0 and not err
    assert json.loads(text)["shape"] == [4, 3, 3, 3] and json.loads(text)["mode"] == "channels"
    code, _, err = run_cli(capsys, "filters", path, ckpt, "--layer", "c2")  # the default name
    assert code == 0 and (ckpt.parent / "filters-c2.png").is_file()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["--layer", "nope"],
            2,
            "error: grey has no layer 'nope'; filters can be shown for: c1, c2",
        ),  # fmt: skip
        (
            ["--layer", "f1"],
            2,
            "error: grey cannot show filters of layer 'f1'; filters can be shown for: c1, c2",
        ),  # fmt: skip
        (["-o", "x.jpg"], 2, "x.jpg: show writes PNG pictures; name the output file .png"),
        (["-o", "nodir/x.png"], 1, "error: nodir/x.png: cannot write: No such file or directory"),
    ],
)
def test_show_filters_errors(grey, capsys, tmp_path, monkeypatch, argv, code, message):
    path, ckpt, _ = grey
    monkeypatch.chdir(tmp_path)
    got, out, err = run_cli(capsys, "filters", path, ckpt, *argv)
    assert got == code and message in err and not out
    assert not list(tmp_path.iterdir())  # no picture, no temporary file


def test_checkpoint_of_another_net_is_refused(grey, rgb, capsys):
    for picture in ("filters", "maps", "confusion", "neighbours"):
        extra = ["test:0"] if picture == "maps" else []
        code, out, err = run_cli(capsys, picture, grey[0], rgb[1], *extra)
        assert code == 1 and not out
        assert err.strip().splitlines() == [
            f"error: {rgb[1]}: does not fit this network: c1.weight is (6, 3, 3, 3), the "
            "network grey needs (4, 1, 3, 3)"
        ]


def test_checkpoint_with_extra_weights_is_refused(grey, tmp_path, capsys):
    path, ckpt, _ = grey
    from netdsl.train.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "more.npz", {**arrays, "param.zz.weight": np.ones(3)}, meta)
    code, out, err = run_cli(capsys, "filters", path, tmp_path / "more.npz")
    assert code == 1 and not out
    assert err.strip() == (f"error: {tmp_path / 'more.npz'}: does not fit this network: it "
                           "has zz.weight, which the network grey has no place for")  # fmt: skip


# ------------------------------------------------------------------ maps


def reference_outputs(net, params: dict[str, np.ndarray], x: np.ndarray) -> dict:
    """Every layer's output by the float64 NumPy references (no dropout in these nets)."""
    from netdsl.ops import registry
    from netdsl.ops.base import RefContext
    from netdsl.reference import _act_fwd, _own

    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ctx = RefContext(np.asarray(x, np.float64), {}, {}, np.zeros(len(x), np.int64))
    out = {}
    for lyr in net.layers:
        if registry.of(lyr).is_loss:
            break
        y = registry.of(lyr).ref_forward(lyr, [out[i] for i in lyr.inputs], _own(p, lyr), ctx)
        out[lyr.name] = _act_fwd(y, lyr.attrs)
    return out


def test_maps_are_the_layer_outputs_of_a_forward_pass(grey):
    path, ckpt, net = grey
    arrays, meta = common.checkpoint_params(net, str(ckpt))
    data = common.load_data(net, str(ckpt), meta, None, False)
    cnet = common.compiled(net, arrays, str(ckpt), batch=16)
    x = data.test.x[:20]  # a full batch and a partial one
    got = common.forward_layers(cnet, x, ["c1", "p1", "c2", "f1", "out"])
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param.")}
    want = reference_outputs(net, params, x)
    for name, y in got.items():
        assert y.shape == (20, *net.layer(name).out_shape)
        np.testing.assert_allclose(y, want[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.any(got["c2"] != 0)


def test_show_maps_cli(grey, tmp_path, capsys):
    path, ckpt, net = grey
    out = tmp_path / "m.png"
    code, text, err = run_cli(capsys, "maps", path, ckpt, "test:5", "--json", "-o", out)
    assert code == 0, err
    got = json.loads(text)
    assert [g["layer"] for g in got["layers"]] == ["c1", "p1", "c2"]  # layers with maps
    # the numbers are those of the layer outputs
    arrays, meta = common.checkpoint_params(net, str(ckpt))
    data = common.load_data(net, str(ckpt), meta, None, False)
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param.")}
    want = reference_outputs(net, params, data.test.x[5:6])
    assert got["label"] == int(data.test.y[5])
    assert got["prediction"] == int(np.argmax(want["out"][0]))
    for g in got["layers"]:
        y = want[g["layer"]][0]
        assert g["shape"] == list(y.shape)
        assert g["max"] == pytest.approx(y.max(), rel=1e-4, abs=1e-5)
        assert g["mean"] == pytest.approx(y.mean(), rel=1e-4, abs=1e-5)
    png(out)
    code, text, err = run_cli(capsys, "maps", path, ckpt, "train:3", "--json")
    assert code == 0 and json.loads(text)["label"] == int(data.train.y[3])
    # an image file, a chosen list of layers (a vector layer too)
    raw = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    np.save(tmp_path / "one.npy", raw)
    code, text, err = run_cli(capsys, "maps", path, ckpt, tmp_path / "one.npy", "--layers",
                              "c2,f1", "-o", tmp_path / "m2")  # fmt: skip
    assert code == 0, err
    png(tmp_path / "m2.png")


def test_show_maps_reads_a_png_through_pillow(grey, tmp_path, capsys):
    image = pytest.importorskip("PIL.Image")
    path, ckpt, _ = grey
    image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "a.png")
    code, text, err = run_cli(capsys, "maps", path, ckpt, tmp_path / "a.png", "--json")
    assert code == 0, err
    assert json.loads(text)["image"] == str(tmp_path / "a.png")


@pytest.mark.parametrize(
    ("image", "code", "message"),
    [
        ("test:24", 2, "error: test:24: the test set has 24 images, numbered 0 to 23"),
        ("bad.npy", 1, "bad.npy: not an .npy file (no NUMPY signature)"),
        ("bad.png", 1, "bad.png: cannot decode image"),
        ("missing.npy", 1, "missing.npy"),
    ],
)
def test_show_maps_errors(grey, tmp_path, capsys, monkeypatch, image, code, message):
    if image.endswith(".png"):
        pytest.importorskip("PIL")
    path, ckpt, _ = grey
    (tmp_path / "bad.npy").write_bytes(b"hello")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    monkeypatch.chdir(tmp_path)
    got, out, err = run_cli(capsys, "maps", path, ckpt, image)
    assert got == code and message in err and not out
    assert len(err.strip().splitlines()) == 1


def test_show_maps_unknown_layer(grey, capsys):
    code, _, err = run_cli(capsys, "maps", grey[0], grey[1], "test:0", "--layers", "c1,zz")
    assert code == 2
    assert "error: grey has no layer 'zz'; maps can be shown for: c1, p1, c2, f1, out" in err


# ------------------------------------------------------------------ neighbours


def test_nearest_is_the_brute_force_answer():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((103, 5)).astype(np.float32)
    queries = np.concatenate([base[[7, 50]], rng.standard_normal((3, 5))]).astype(np.float32)
    idx, dist = nearest(queries, base, k=6, chunk=10)  # many chunks
    full = np.linalg.norm(queries[:, None].astype(np.float64) - base[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :6], rtol=1e-12)
    assert idx[0, 0] == 7 and dist[0, 0] == 0.0 and idx[1, 0] == 50 and dist[1, 0] == 0.0


def test_show_neighbours_of_training_images_include_themselves(rgb, tmp_path, capsys):
    path, ckpt, net = rgb
    out = tmp_path / "n.png"
    argv = ["neighbours", path, ckpt, "--from", "train", "--queries", "5", "--k", "3"]
    code, text, err = run_cli(capsys, *argv, "--json", "-o", out)
    assert code == 0, err
    got = json.loads(text)
    assert got["layer"] == "f1"  # the last hidden layer (drop1 is looked through)
    assert got["features"] == 6 and got["training_images"] == N_TRAIN
    assert [q["index"] for q in got["queries"]] == [0, 10, 20, 29, 39]
    for q in got["queries"]:
        pairs = dict(zip(q["neighbours"], q["distances"]))
        assert pairs.get(q["index"]) == 0.0, q
        assert q["distances"] == sorted(q["distances"])
    png(out)
    code, text, err = run_cli(capsys, "neighbours", path, ckpt, "--layer", "c2", "--json")
    assert code == 0 and json.loads(text)["features"] == 4 * 4 * 4
    assert "features of 40 training images at c2" in err
    code, text, err = run_cli(capsys, "neighbours", path, ckpt, "--k", "33")
    assert code == 2 and not text
    assert err.strip() == ("error: a picture holds at most 32 neighbours (--k) of 64 queries "
                           "(--queries); ask --json for more")  # fmt: skip
    code, text, err = run_cli(capsys, "neighbours", path, ckpt, "--k", "99", "--json")
    assert code == 0 and len(json.loads(text)["queries"][0]["neighbours"]) == N_TRAIN


# ------------------------------------------------------------------ confusion


def test_show_confusion_matches_eval(grey, tmp_path, capsys):
    path, ckpt, _ = grey
    out = tmp_path / "c.png"
    code, text, err = run_cli(capsys, "confusion", path, ckpt, "--json", "-o", out)
    assert code == 0, err
    got = json.loads(text)
    m = np.array(got["matrix"])
    assert m.shape == (3, 3) and m.sum() == N_TEST and got["images"] == N_TEST
    assert got["classes"] == ["0", "1", "2"]
    assert (np.load(path.parent / "test.npz")["y"] == 0).sum() == m[0].sum()  # rows: true
    assert main(["eval", str(path), str(ckpt)]) == 0
    acc = float(re.search(r"accuracy ([\d.]+)%", capsys.readouterr().out).group(1))
    assert 100 * np.trace(m) / N_TEST == pytest.approx(acc, abs=0.005)
    assert got["accuracy"] == pytest.approx(np.trace(m) / N_TEST)
    for pair in got["most_confused"]:
        t, p = int(pair["true"]), int(pair["predicted"])
        assert t != p and pair["count"] == m[t, p] > 0
    png(out)
    code, text, err = run_cli(capsys, "confusion", path, ckpt, "-o", tmp_path / "c2.png")
    assert code == 0 and text.startswith(f"test: {N_TEST} images, accuracy")


# ------------------------------------------------------------------ without matplotlib


def test_without_matplotlib_json_works_and_pictures_say_what_to_install(grey, capsys,
                                                                        monkeypatch):  # fmt: skip
    path, ckpt, _ = grey
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    code, text, err = run_cli(capsys, "filters", path, ckpt, "--json")
    assert code == 0 and json.loads(text)["layer"] == "c1" and json.loads(text)["mode"] == "grey"
    code, text, err = run_cli(capsys, "confusion", path, ckpt)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "error: drawing pictures needs matplotlib, but matplotlib is not installed; "
        "install it with: pip install 'netdsl[plot]'"
    )


def test_maps_of_a_producer_are_its_own_when_a_standalone_activation_follows():
    """The CPU plan folds `act r1: relu` into c1 (one buffer); maps must still show c1's own
    output, negatives included, and r1's as relu of it."""
    from netdsl.backends import compile_network

    net = netdsl.loads(
        "network folded\ninput image: 1x6x6\nconv c1: 3 filters 3x3, pad 1\nact r1: relu\n"
        "fc out: 2\nloss cross_entropy\n"
    )
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)
    params = {f"param.{k}": v for k, v in compile_network(net, batch=2).params.items()}
    folded = common.compiled(net, params, "none.npz", batch=2)
    assert folded.fold_activations  # what the training plan does
    cnet = common.compiled(net, params, "none.npz", batch=2, every_map=True)
    got = common.forward_layers(cnet, x, ["c1", "r1"])
    assert np.any(got["c1"] < 0)
    np.testing.assert_array_equal(got["r1"], np.maximum(got["c1"], 0))
    both = common.forward_layers(folded, x, ["r1"])
    np.testing.assert_array_equal(both["r1"], got["r1"])  # the same net either way
