"""The reports of the example nets: golden files, and the published figures checked by hand.

`netdsl summary nets/X.net` and `netdsl summary nets/X.net --json` must equal
tests/golden/X.summary.txt and tests/golden/X.summary.json. After a deliberate change to
the report, regenerate them with

    NETDSL_UPDATE_GOLDEN=1 pytest tests/test_golden.py

and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import netdsl
from netdsl.cli import main
from netdsl.passes.placement import exchange_bytes

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
NETS = sorted(p.name for p in (ROOT / "nets").glob("*.net"))


def _update() -> bool:
    return os.environ.get("NETDSL_UPDATE_GOLDEN", "") not in ("", "0")


def _cli_stdout(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


@pytest.fixture
def in_root(monkeypatch):
    """Run from the repository root so reports name the files `nets/X.net`."""
    monkeypatch.chdir(ROOT)


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if _update():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing; run with NETDSL_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} differs from the golden file"


def test_every_example_net_has_golden_files():
    assert NETS, "no nets/*.net found"
    if _update():
        pytest.skip("regenerating the golden files")
    for net in NETS:
        stem = net.removesuffix(".net")
        assert (GOLDEN / f"{stem}.summary.txt").is_file()
        assert (GOLDEN / f"{stem}.summary.json").is_file()


@pytest.mark.parametrize("net", NETS)
def test_summary_text_matches_golden(capsys, in_root, net):
    out = _cli_stdout(capsys, ["summary", f"nets/{net}"])
    _check_golden(net.removesuffix(".net") + ".summary.txt", out)


@pytest.mark.parametrize("net", NETS)
def test_summary_json_matches_golden(capsys, in_root, net):
    out = _cli_stdout(capsys, ["summary", "--json", f"nets/{net}"])
    json.loads(out)
    _check_golden(net.removesuffix(".net") + ".summary.json", out)


# ---------------------------------------------------------------- the published figures


def _json(capsys, net: str) -> dict:
    return json.loads(_cli_stdout(capsys, ["summary", "--json", f"nets/{net}"]))


def _layers(doc: dict) -> dict[str, dict]:
    return {row["name"]: row for row in doc["layers"]}


@pytest.mark.parametrize("net", NETS)
def test_json_schema(capsys, in_root, net):
    doc = _json(capsys, net)
    assert {"network", "layers", "totals"} <= set(doc)
    assert isinstance(doc["network"], str) and doc["network"]
    for row in doc["layers"]:
        assert {"name", "type", "output_shape", "params", "macs"} <= set(row)
        assert len(row["output_shape"]) == 3
        assert all(isinstance(d, int) and d >= 1 for d in row["output_shape"])
    totals = doc["totals"]
    assert {"params", "macs", "flops"} <= set(totals)
    assert totals["flops"] == 2 * totals["macs"]
    assert totals["params"] == sum(row["params"] for row in doc["layers"])
    assert totals["macs"] == sum(row["macs"] for row in doc["layers"])


def test_lenet5_figures(capsys, in_root):
    doc = _json(capsys, "lenet5.net")
    assert doc["network"] == "lenet5"
    assert doc["totals"]["params"] == 61_706
    assert doc["totals"]["macs"] == 416_520
    assert doc["totals"]["flops"] == 833_040


def test_lenet5_1998_per_layer_params(capsys, in_root):
    layers = _layers(_json(capsys, "lenet5-1998.net"))
    params = {name: layers[name]["params"] for name in ("c1", "s2", "c3", "s4", "c5", "f6")}
    assert params == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164}
    # C3 through LeCun's Table I: 60 links of 5x5 kernels plus 16 biases, not 6*16*25+16
    assert 60 * 25 + 16 == 1_516


def test_alexnet_shapes_and_totals(capsys, in_root):
    doc = _json(capsys, "alexnet.net")
    layers = _layers(doc)
    shapes = {
        name: tuple(layers[name]["output_shape"])
        for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    }
    assert shapes == {
        "conv1": (96, 55, 55),
        "pool1": (96, 27, 27),
        "conv2": (256, 27, 27),
        "pool2": (256, 13, 13),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "pool5": (256, 6, 6),
    }
    assert doc["totals"]["params"] == 60_965_224
    assert doc["totals"]["macs"] == 724_406_816
    assert doc["totals"]["flops"] == 2 * 724_406_816


def test_vgg16_totals(capsys, in_root):
    totals = _json(capsys, "vgg16.net")["totals"]
    assert totals["params"] == 138_357_544
    assert totals["macs"] == 15_470_264_320


def test_resnet18_totals(capsys, in_root):
    totals = _json(capsys, "resnet18.net")["totals"]
    assert totals["params"] == 11_689_512  # trainable; BN running stats are not counted here
    assert totals["non_trainable"] == 2 * 4_800  # running mean and variance of 4,800 BN maps
    assert totals["macs"] == 1_814_073_344


def test_alexnet_exchange_bytes_by_hand(capsys, in_root):
    """Work out AlexNet's GPU traffic independently and compare with the placement pass.

    Two GPUs, each owning half of every layer's maps. Per image, forward:
      norm1  LRN size 5 reads 2 maps on each side of a map; at the boundary between
             the GPUs each GPU fetches 2 of the other's 55x55 maps     2*2*55*55
      norm2  the same halo on 27x27 maps                               2*2*27*27
      conv3  ungrouped: each GPU reads the other GPU's 128 13x13 maps   2*128*13*13
      fc6    reads all of pool5: the other GPU's 128 6x6 maps           2*128*6*6
      fc7    reads all 4096 fc6 outputs: the other GPU's 2048          2*2048
      fc8    the same on fc7                                            2*2048
      loss   GPU 0 gathers GPU 1's 500 of the 1000 class scores        500
    conv2, conv4 and conv5 are grouped (groups 2), so they read only their own GPU's
    maps; conv1 reads the image, which both GPUs load. The backward pass moves the
    gradients of the same maps, so a step of batch 128 moves twice the forward bytes.
    """
    by_hand = {
        "norm1": 2 * 2 * 55 * 55,
        "norm2": 2 * 2 * 27 * 27,
        "conv3": 2 * 128 * 13 * 13,
        "fc6": 2 * 128 * 6 * 6,
        "fc7": 2 * 2048,
        "fc8": 2 * 2048,
        "loss": 500,
    }
    per_image = sum(by_hand.values())
    assert per_image == 76_188
    batch, float32, directions = 128, 4, 2
    expected = per_image * batch * float32 * directions
    assert expected == 78_016_512

    doc = _json(capsys, "alexnet.net")
    exchanged = {
        row["name"]: row["exchange_elements"] for row in doc["layers"] if row["exchange_elements"]
    }
    assert exchanged == by_hand
    assert doc["totals"]["batch"] == batch
    assert doc["totals"]["exchange_bytes_per_step"] == expected

    net = netdsl.load("nets/alexnet.net")
    assert exchange_bytes(net, batch) == expected
    assert net.layer("loss").gpus == (0,)
    assert all(lyr.gpus == (0, 1) for lyr in net.layers if lyr.type != "loss")


def test_alexnet_summary_states_the_exchange(capsys, in_root):
    out = _cli_stdout(capsys, ["summary", "nets/alexnet.net"])
    assert "per training step (78,016,512 bytes;" in out
    marked = [line.split()[1] for line in out.splitlines() if line.endswith("⇄")]
    assert marked == ["norm1", "norm2", "conv3", "fc6", "fc7", "fc8", "loss"]
