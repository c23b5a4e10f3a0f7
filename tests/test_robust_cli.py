"""Issue 11, the command line: every flag is checked like the file's settings (usage error,
exit 2), every argument has help, one exit-status table is kept, and the commands one step
off the README path (predict one image, plot without matplotlib, a bad --out, a non-UTF-8
terminal, long paths) answer with one clean message, never a traceback."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import EXIT_STATUS, build_parser, main
from netdsl.errors import DataError
from netdsl.train.paths import check_output_dir

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

GREY = """
network grey
input image: 1x8x8
conv c1: 2 filters 3x3, pad 1, relu
fc   out: 3
loss cross_entropy
train {
  batch 4
  epochs 1
  optimizer sgd(lr=0.1)
}
"""
COLOUR = GREY.replace("network grey", "network colour").replace("1x8x8", "3x8x8")


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def shell(argv: list[str], encoding: str | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(ENV, PYTHONIOENCODING=encoding) if encoding else ENV
    return subprocess.run([sys.executable, "-m", "netdsl", *argv], cwd=ROOT, env=env,
                          capture_output=True, timeout=120, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    """A one-channel and a three-channel net, each with a checkpoint of its initial weights."""
    from netdsl import load
    from netdsl.backends import compile_network
    from netdsl.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("nets")
    for name, text in (("grey", GREY), ("colour", COLOUR)):
        (d / f"{name}.net").write_text(text)
        cnet = compile_network(load(d / f"{name}.net"), batch=4)
        arrays = {f"param.{k}": v for k, v in cnet.params.items()}
        save_checkpoint(d / f"{name}.npz", arrays, {"network": name})
    return d


# ------------------------------------------------------------------ flags


BAD_FLAGS = [
    (["summary", "nets/lenet5.net"], "--batch", ["0", "-3", "ten", "1.5"]),
    (["compile", "nets/lenet5.net"], "--batch", ["0", "-1"]),
    (["train", "nets/lenet5.net"], "--epochs", ["0", "-2", "1e3"]),
    (["train", "nets/lenet5.net"], "--batch", ["0", "-5"]),
    (["train", "nets/lenet5.net"], "--limit", ["0", "-5"]),
    (["train", "nets/lenet5.net"], "--lr", ["0", "-1", "nan", "inf", "-inf", "1e400", "fast"]),
    (["train", "nets/lenet5.net"], "--seed", ["-1", "9" * 30, "1" * 5000, "0.5"]),
    (["eval", "nets/lenet5.net", "c.npz"], "--batch", ["0", "-1"]),
    (["predict", "nets/lenet5.net", "c.npz", "x.npy"], "--top", ["0", "-1"]),
    (["bench", "nets/lenet5.net"], "--batch", ["0"]),
    (["bench", "nets/lenet5.net"], "--iters", ["0", "-20"]),
]
BAD_FLAG_CASES = [(cmd, flag, v) for cmd, flag, values in BAD_FLAGS for v in values]


@pytest.mark.parametrize(("cmd", "flag", "value"), BAD_FLAG_CASES,
                         ids=[f"{c[0]}{f}={v[:8]}" for c, f, v in BAD_FLAG_CASES])  # fmt: skip
def test_a_bad_numeric_flag_is_a_usage_error(capsys, cmd, flag, value) -> None:
    err = usage_error(capsys, [*cmd, f"{flag}={value}"])
    assert f"argument {flag}: " in err and ("expected " in err or " must be " in err)
    assert len(err) < 2000  # a 5,000-digit value is not echoed whole


@pytest.mark.parametrize("flag", ["--data", "--out"])
def test_an_empty_path_flag_is_a_usage_error(capsys, flag) -> None:
    err = usage_error(capsys, ["train", "nets/lenet5.net", flag, ""])
    assert f"argument {flag}: expected a path" in err


def test_good_flag_values_pass_through() -> None:
    args = build_parser().parse_args(
        ["train", "x.net", "--epochs", "3", "--batch", "32", "--lr", "1e-3", "--seed", "0",
         "--limit", "100"]
    )  # fmt: skip
    assert (args.epochs, args.batch, args.lr, args.seed, args.limit) == (3, 32, 1e-3, 0, 100)


def _actions(parser: argparse.ArgumentParser):
    """(command, action) for every argument of every command, the top level included."""
    yield "netdsl", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_no_numeric_flag_is_left_unchecked() -> None:
    """Every int/float argument goes through a checking type, in every command."""
    for name, parser in _actions(build_parser()):
        for action in parser._actions:
            assert action.type not in (int, float), f"{name} {action.dest}: type={action.type}"


def test_every_argument_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert commands and all(c.help for c in commands)
    listed = {c.dest: c.help for c in commands[0]._choices_actions}
    assert listed and all(h for h in listed.values()), listed
    seen = 0
    for name, sub in _actions(parser):
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            seen += 1
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
    assert seen > 30


def test_help_ends_with_the_exit_status_table(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(EXIT_STATUS.rstrip())  # verbatim: the formatter keeps lines
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in out


def test_version_prints_the_version_without_numba() -> None:
    code = ("import sys; from netdsl.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'numba' not in sys.modules, 'numba was imported'")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import netdsl

    assert r.stdout == f"netdsl {netdsl.__version__}\n"


# ------------------------------------------------------------- exit codes


def test_exit_status_table_end_to_end(tmp_path) -> None:
    bad_net = tmp_path / "bad.net"
    bad_net.write_text("input image: 1x28x28\nconv c1: 6 filters 5x5, strid 2\n")
    assert shell(["check", "nets/lenet5.net"]).returncode == 0
    missing = shell(["eval", "nets/lenet5.net", str(tmp_path / "none.npz")])
    assert missing.returncode == 1 and b"none.npz" in missing.stderr
    assert shell(["train", "nets/lenet5.net", "--lr", "nan"]).returncode == 2
    assert shell(["check", str(bad_net)]).returncode == 2
    for r in (missing,):
        assert b"Traceback" not in r.stderr


def test_no_gpu_is_a_runtime_error_not_a_net_mistake(capsys, monkeypatch, nets) -> None:
    from netdsl import backends

    monkeypatch.setattr(backends, "_cuda_available", lambda: (False, False))
    code, _, err = run(capsys, ["compile", str(nets / "grey.net"), "--device", "cuda"])
    assert code == 1
    assert err.startswith("error: no CUDA GPU is available") and "--device cpu" in err
    assert ".net:" not in err


def test_ctrl_c_during_predict_is_130(capsys, monkeypatch, nets) -> None:
    from netdsl.train import data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "read_images", interrupted)
    code, _, err = run(capsys, ["predict", str(nets / "grey.net"), str(nets / "grey.npz"),
                                str(nets / "grey.npz")])  # fmt: skip
    assert (code, err) == (130, "interrupted\n")


def test_out_of_memory_is_exit_1_with_a_hint(capsys, nets) -> None:
    code, _, err = run(capsys, ["compile", str(nets / "grey.net"), "--batch", str(10**13)])
    assert code == 1
    assert err == "error: out of memory; try a smaller batch (--batch) or fewer images (--limit)\n"


def test_an_os_error_no_reader_caught_is_exit_1_naming_the_file(capsys, monkeypatch) -> None:
    from netdsl import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    monkeypatch.setattr(cli, "cmd_check", full)
    code, _, err = run(capsys, ["check", "nets/lenet5.net"])
    assert (code, err) == (1, "error: runs/x/metrics.jsonl: No space left on device\n")


# ---------------------------------------------------------------- predict


def test_predict_one_image_of_height_by_width(capsys, tmp_path, nets) -> None:
    img = tmp_path / "one.npy"
    np.save(img, np.zeros((8, 8), np.uint8))
    code, out, err = run(capsys, ["predict", str(nets / "grey.net"), str(nets / "grey.npz"),
                                  str(img), "--top", "2"])  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("0\t") and lines[0].count("(") == 2


def test_predict_one_colour_image_and_a_stack(capsys, tmp_path, nets) -> None:
    one, stack = tmp_path / "one.npy", tmp_path / "stack.npy"
    np.save(one, np.zeros((3, 8, 8), np.float32))
    np.save(stack, np.zeros((5, 3, 8, 8), np.float32))
    for path, n in ((one, 1), (stack, 5)):
        code, out, err = run(capsys, ["predict", str(nets / "colour.net"),
                                      str(nets / "colour.npz"), str(path)])  # fmt: skip
        assert code == 0, err
        assert [line.split("\t")[0] for line in out.splitlines()] == [str(i) for i in range(n)]


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((2, 3, 8, 8), np.uint8), "images have 3 channel(s), the network takes 1"),
        (np.zeros((2, 12, 12), np.uint8), "images are 12x12, the network takes 8x8"),
        (np.zeros(7, np.uint8), "expected one image (H, W)"),
        (np.full((8, 8), np.nan, np.float32), "images hold 64 NaN values"),
    ],
)
def test_predict_refusals_are_one_line_naming_the_file(capsys, tmp_path, nets, array, problem):
    img = tmp_path / "img.npy"
    np.save(img, array)
    code, out, err = run(capsys, ["predict", str(nets / "grey.net"), str(nets / "grey.npz"),
                                  str(img)])  # fmt: skip
    assert code == 1 and out == ""
    assert err.startswith(f"error: {img}: ") and problem in err and err.count("\n") == 1


def test_predict_with_nan_weights_says_so(capsys, tmp_path, nets) -> None:
    from netdsl.train.checkpoint import load_checkpoint, save_checkpoint

    arrays, meta = load_checkpoint(nets / "grey.npz")
    arrays = {k: np.full_like(v, np.nan) if k.startswith("param.") else v
              for k, v in arrays.items()}  # fmt: skip
    ck = tmp_path / "nan.npz"
    save_checkpoint(ck, arrays, meta)
    img = tmp_path / "one.npy"
    np.save(img, np.zeros((8, 8), np.uint8))
    code, out, err = run(capsys, ["predict", str(nets / "grey.net"), str(ck), str(img)])
    assert code == 1 and out == ""
    assert err.startswith(f"error: {ck}: the weights are NaN or infinite")


def test_predict_top_larger_than_the_classes_lists_every_class(capsys, tmp_path, nets) -> None:
    img = tmp_path / "x.npz"
    np.savez(img, x=np.zeros((2, 8, 8), np.uint8))  # no labels needed to predict
    code, out, _ = run(capsys, ["predict", str(nets / "grey.net"), str(nets / "grey.npz"),
                                str(img), "--top", "10"])  # fmt: skip
    assert code == 0
    assert [line.count("(") for line in out.splitlines()] == [3, 3]


# ------------------------------------------------------------------- plot


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5, "test_err": 0.1}\n')
    return run_dir


def test_plot_without_matplotlib_is_one_clean_message(capsys, monkeypatch, tmp_path) -> None:
    run_dir = _run_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    code, out, err = run(capsys, ["plot", str(run_dir)])
    assert code == 1 and out == ""
    assert err == ("error: plotting needs matplotlib, but matplotlib is not installed; "
                   "install it with: pip install 'netdsl[plot]'\n")  # fmt: skip


def test_plot_without_matplotlib_from_the_shell(tmp_path) -> None:
    run_dir = _run_dir(tmp_path)
    code = ("import sys; sys.modules['matplotlib'] = None; from netdsl.cli import main; "
            f"sys.exit(main(['plot', {str(run_dir)!r}]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "pip install 'netdsl[plot]'" in r.stderr


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda t: t / "none", "no such run folder"),
        (lambda t: (t / "f.txt").write_text("x") and t / "f.txt", "is not a folder"),
        (lambda t: (t / "empty").mkdir() or t / "empty", "no metrics.jsonl here"),
    ],
)
def test_plot_of_a_folder_that_is_not_a_run(capsys, tmp_path, make, problem) -> None:
    target = make(tmp_path)
    code, _, err = run(capsys, ["plot", str(target)])
    assert code == 1 and err.startswith(f"error: {target}: {problem}")


def test_plot_output_format_is_checked_and_a_folder_or_bare_name_works(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = _run_dir(tmp_path)
    err = usage_error(capsys, ["plot", str(run_dir), "-o", str(tmp_path / "p.txt")])
    assert "cannot write a plot as .txt" in err
    code, _, err = run(capsys, ["plot", str(run_dir), "-o", str(tmp_path)])
    assert code == 0 and err == f"wrote {tmp_path / 'metrics.png'}\n"
    assert (tmp_path / "metrics.png").stat().st_size > 0
    code, _, err = run(capsys, ["plot", str(run_dir), "-o", str(tmp_path / "curves")])
    assert code == 0 and err == f"wrote {tmp_path / 'curves.png'}\n"
    assert (tmp_path / "curves.png").is_file()


# ------------------------------------------------------------------ --out


def test_out_that_is_a_file_or_under_a_file(capsys, tmp_path, nets) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    for out, problem in ((f, f"error: {f}: cannot use as output folder: it is a file"),
                         (f / "run", f"error: {f}/run: cannot create output folder: {f} is a "
                                     "file")):  # fmt: skip
        code, _, err = run(capsys, ["train", str(nets / "grey.net"), "--out", str(out),
                                    "--quiet"])  # fmt: skip
        assert code == 1 and err == problem + "\n"


def test_out_in_a_folder_that_cannot_be_written(capsys, tmp_path, nets, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if Path(p) == locked else real_access(p, mode, **kw)))  # fmt: skip
    code, _, err = run(capsys, ["train", str(nets / "grey.net"), "--out", str(locked / "run")])
    assert code == 1
    assert err == (f"error: {locked}/run: cannot write to output folder: permission denied "
                   f"({locked} is not writable)\n")  # fmt: skip


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_for_real(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DataError, match="permission denied"):
        check_output_dir(locked / "run")


def test_check_output_dir_accepts_new_and_existing_folders_and_creates_nothing(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


def test_a_5000_character_out_or_data_path_is_short_and_clean(capsys, tmp_path, nets) -> None:
    long = str(tmp_path / ("o" * 5000))
    for argv in (["train", str(nets / "grey.net"), "--out", long],
                 ["train", str(nets / "grey.net"), "--data", long + ".npz",
                  "--out", str(tmp_path / "r")],
                 ["eval", str(nets / "grey.net"), long + ".npz", "--data", long + ".npz"],
                 ["predict", str(nets / "grey.net"), str(nets / "grey.npz"), long + ".npy"],
                 ["graph", str(nets / "grey.net"), "-o", long + ".dot"]):  # fmt: skip
        code, _, err = run(capsys, argv)
        assert code == 1, (argv[0], err[:300])
        assert err.startswith("error: ") and "characters)" in err and len(err) < 1200, err[:300]


# ------------------------------------------------------- graph -o, encodings


@pytest.mark.parametrize("where", ["dir", "missing"])
def test_graph_output_that_cannot_be_written(capsys, tmp_path, where) -> None:
    target = tmp_path if where == "dir" else tmp_path / "no" / "g.dot"
    code, out, err = run(capsys, ["graph", "nets/lenet5.net", "-o", str(target)])
    assert code == 1 and out == ""
    assert err.startswith(f"error: {target}: cannot write: ")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_summary_on_a_terminal_without_box_drawing(encoding) -> None:
    r = shell(["summary", "nets/alexnet.net"], encoding=encoding)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    text = r.stdout.decode("ascii")  # plain ASCII throughout
    lines = text.splitlines()
    rules = [line for line in lines if line and set(line) == {"-"}]
    assert len(rules) == 3
    assert "<>" in text and "<> marks the layers" in text


def test_summary_on_a_utf8_terminal_keeps_box_drawing() -> None:
    r = shell(["summary", "nets/alexnet.net"], encoding="utf-8")
    text = r.stdout.decode("utf-8")
    assert "─" * 20 in text and "⇄" in text


def test_a_non_ascii_file_name_on_an_ascii_terminal(tmp_path) -> None:
    good, bad = tmp_path / "réseau.net", tmp_path / "übel.net"
    good.write_text((ROOT / "nets" / "lenet5.net").read_text(), encoding="utf-8")
    bad.write_text("input image: 1x28x28\nconv c1: 6 filters 5x5, strid 2\n", encoding="utf-8")
    r = shell(["check", str(good), str(bad)], encoding="ascii")
    out, err = r.stdout.decode("ascii"), r.stderr.decode("ascii")
    assert r.returncode == 2, err
    assert "Traceback" not in err
    assert out.startswith(f"{tmp_path}/r\\xe9seau.net: ok  lenet5: 9 layers")
    assert "\\xfcbel.net:2:25: error: unknown option" in err
