"""`netdsl train --tensorboard`: the event files hold metrics.jsonl's numbers and, once
per epoch, the first conv layer's filters.

The event files are read back record by record (TFRecord framing: a length, its CRC,
the serialized Event, its CRC) with tensorboardX's own Event protobuf.
"""

from __future__ import annotations

import io
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.train.checkpoint import load_checkpoint
from netdsl.train.metrics import read_metrics
from netdsl.train.tensorboard import filters_image
from netdsl.train.trainer import fit_file
from tests.test_mpi import needs_mpi
from tests.test_train import TINY, make_data


def read_events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], list]:
    """({tag: [(step, value), ...]}, [(tag, step, image as an array), ...]) of every
    event file in ``folder``, in the order written."""
    from tensorboardX.proto.event_pb2 import Event

    files = []
    for path in folder.glob("events.out.tfevents.*"):
        data, i, events = path.read_bytes(), 0, []
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
        files.append(events)
    files.sort(key=lambda events: events[0].wall_time)  # names may share their second
    scalars, images = defaultdict(list), []
    for event in (e for events in files for e in events):
        for v in event.summary.value:
            if v.HasField("image"):
                from PIL import Image

                with Image.open(io.BytesIO(v.image.encoded_image_string)) as im:
                    images.append((v.tag, event.step, np.asarray(im)))
            elif v.HasField("simple_value"):
                scalars[v.tag].append((event.step, v.simple_value))
    return scalars, images


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "tiny.net").write_text(TINY)
    make_data(tmp_path / "tiny.npz")
    make_data(tmp_path / "test.npz", n=48, seed=1)
    return tmp_path


def train(tiny: Path, out: str, *flags) -> tuple[int, str]:
    data = f"{tiny}/tiny.npz,{tiny}/test.npz"
    argv = ["train", tiny / "tiny.net", "--data", data, "--out", tiny / out, "--quiet", *flags]
    return main([str(a) for a in argv])


def test_the_events_hold_the_metrics_and_one_filter_image_per_epoch(tiny, capsys):
    pytest.importorskip("tensorboardX")
    assert train(tiny, "run", "--epochs", "2", "--tensorboard") == 0
    run = tiny / "run"
    records = read_metrics(run / "metrics.jsonl")
    scalars, images = read_events(run / "tensorboard")
    for key in ("train_loss", "train_err", "test_loss", "test_err", "test_top5_err", "lr"):
        steps = [s for s, _ in scalars[f"epoch/{key}"]]
        assert steps == [1, 2], key
        values = [v for _, v in scalars[f"epoch/{key}"]]
        assert values == pytest.approx([r[key] for r in records], rel=1e-6), key  # float32
    for key, tag in (("loss", "train_loss"), ("err", "train_err"), ("lr", "lr")):
        got = scalars[f"step/{tag}"]
        assert [s for s, _ in got] == list(range(1, 13))  # 6 steps an epoch, counted on
        want = [v for r in records for v in r["steps"][key]]
        assert [v for _, v in got] == pytest.approx(want, rel=1e-6), tag
    assert [(tag, step) for tag, step, _ in images] == [("filters/c1", 1), ("filters/c1", 2)]
    # the last image is the checkpoint's kernels (4 filters 3x3), tiled and rescaled
    arrays, _ = load_checkpoint(run / "checkpoint.npz")
    want = filters_image(arrays["param.c1.weight"])
    img = images[-1][2].astype(np.float64) / 255.0
    img = img if img.ndim == 2 else img[..., 0]  # a grey image may come back as RGB(A)
    assert img.shape == want.shape
    np.testing.assert_allclose(img, want, atol=1 / 255 + 1e-9)


def test_a_resumed_run_continues_its_events_and_a_new_run_does_not_mix_in(tiny, capsys):
    pytest.importorskip("tensorboardX")
    board = tiny / "board"
    assert train(tiny, "run", "--epochs", "1", "--tensorboard", board) == 0
    assert train(tiny, "run", "--epochs", "2", "--tensorboard", board, "--resume") == 0
    scalars, images = read_events(board)
    assert [s for s, _ in scalars["epoch/test_err"]] == [1, 2]
    assert [step for _, step, _ in images] == [1, 2]
    capsys.readouterr()
    # another run may not add its events to these
    assert train(tiny, "other", "--epochs", "1", "--tensorboard", board) == 1
    err = capsys.readouterr().err
    assert f"error: {board}: holds another run's TensorBoard events" in err
    assert not (tiny / "other").exists()
    with pytest.raises(DataError, match="--overwrite"):
        fit_file(tiny / "tiny.net", data=f"{tiny}/tiny.npz,{tiny}/test.npz", epochs=1,
                 out=tiny / "other", quiet=True, tensorboard=board)  # fmt: skip
    # --overwrite replaces the run and its events
    assert train(tiny, "run", "--epochs", "1", "--tensorboard", board, "--overwrite") == 0
    scalars, images = read_events(board)
    assert [s for s, _ in scalars["epoch/test_err"]] == [1] and len(images) == 1


def test_without_tensorboardx_it_fails_before_training(tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now fails
    assert train(tiny, "run", "--epochs", "1", "--tensorboard") == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert "--tensorboard needs tensorboardX" in out.err
    assert "pip install 'netdsl[tensorboard]'" in out.err
    assert not (tiny / "run").exists()  # nothing trained, nothing written


def test_without_the_flag_nothing_is_written_for_tensorboard(tiny, capsys):
    assert train(tiny, "run", "--epochs", "1") == 0
    assert not (tiny / "run" / "tensorboard").exists()


@pytest.mark.mpi
@needs_mpi
def test_under_two_ranks_rank_0_alone_writes_the_curve_of_one_process(tmp_path):
    pytest.importorskip("tensorboardX")
    from tests import test_mpi

    (tmp_path / "tiny.net").write_text(test_mpi.TINY)
    test_mpi.make_data(tmp_path / "train.npz", n=96, seed=0)
    test_mpi.make_data(tmp_path / "test.npz", n=40, seed=1)
    one, _ = test_mpi.train(tmp_path, "one", 0, "--tensorboard")
    two, _ = test_mpi.train(tmp_path, "two", 2, "--tensorboard")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1  # rank 0's file
    # the curve within each epoch adds up the ranks' shares: one process's curve
    a = read_metrics(tmp_path / "one" / "metrics.jsonl")
    b = read_metrics(tmp_path / "two" / "metrics.jsonl")
    for r1, r2 in zip(a, b, strict=True):
        assert r1["steps"]["err"] == r2["steps"]["err"]
        assert r2["steps"]["loss"] == pytest.approx(r1["steps"]["loss"], rel=1e-4)
    scalars, images = read_events(tmp_path / "two" / "tensorboard")
    assert len(scalars["step/train_loss"]) == 12 and len(images) == 2


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # cuda: Numba's simulator (conftest)
def test_first_conv_copies_that_layers_weight_from_the_device(device):
    import netdsl
    from netdsl.backends import compile_network
    from netdsl.train.tensorboard import first_conv

    cnet = compile_network(netdsl.loads(TINY, "tiny.net"), device=device, batch=2)
    name, weight = first_conv(cnet)
    assert name == "c1" and weight.shape == (4, 1, 3, 3) and np.abs(weight).sum() > 0
    np.testing.assert_array_equal(weight, cnet.params["c1.weight"])
    fc_only = TINY.replace("conv c1: 4 filters 3x3, pad 1, relu\n", "")
    assert first_conv(compile_network(netdsl.loads(fc_only, "fc.net"), batch=2)) is None
