"""netdsl.files: outputs are written whole or not at all, and a device is never replaced."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from netdsl.cli import main
from netdsl.errors import DataError
from netdsl.files import atomic_output, write_atomic


def test_a_new_file_gets_the_usual_mode_and_no_temporary_file_remains(tmp_path):
    target = tmp_path / "out.net"
    write_atomic(target, "network x\n")
    assert target.read_text() == "network x\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.net"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed in the middle")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_directory_or_a_missing_folder_is_a_data_error_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        write_atomic(tmp_path, b"x")
    with pytest.raises(DataError, match="nowhere"):
        write_atomic(tmp_path / "nowhere" / "x.onnx", b"x")


def test_dev_null_stays_a_device(tmp_path, capsys):
    """Renaming a temporary file over /dev/null (as root) would replace the device with a
    regular file, breaking every later use of it on the machine."""
    before = os.stat(os.devnull).st_mode
    assert stat.S_ISCHR(before)
    net = tmp_path / "a.net"
    net.write_text("network a\ninput image: 1x8x8\nfc f: 2\nloss cross_entropy\n")
    assert main(["graph", str(net), "-o", os.devnull]) == 0
    write_atomic(os.devnull, b"discarded")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
