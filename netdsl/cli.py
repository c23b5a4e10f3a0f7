"""The `netdsl` command: a thin layer of argument parsing over the library.

`check`, `summary` and `graph` never import numba, so they answer at once.
Every flag is checked as the file's settings are (a bad value is a usage error, exit 2);
every error prints a message, never a traceback, and exits with the status of
EXIT_STATUS below; `--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .limits import MAX_NUMBER

EXIT_STATUS = """\
exit status:
  0    success
  1    a runtime, data or checkpoint problem: a missing, unreadable or invalid data
       or checkpoint file, an output that cannot be written, no GPU, out of memory
  2    a usage mistake (an unknown command, a bad flag or argument) or a mistake in
       a .net file (reported as file:line:col)
  3    training diverged: the loss became NaN or infinite
  130  interrupted (Ctrl-C)
"""

# ------------------------------------------------------------------ flag types
# argparse calls these on the text of a flag; ArgumentTypeError becomes the usual
# "argument --batch: ..." usage error, exit 2.


def _whole(text: str, lo: int, what: str) -> int:
    try:
        value = int(text.strip()) if len(text) <= 64 else None
    except ValueError:
        value = None
    if value is None or not lo <= value <= MAX_NUMBER:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise argparse.ArgumentTypeError(
            f"expected {what} from {lo} to {MAX_NUMBER:.0e}, got {shown!r}".replace("e+", "e")
        )
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (an image count, iterations, top K)."""
    return _whole(text, 1, "a whole number")


def setting_int(key: str):
    """A flag that overrides the train section's one-number setting `key`: the same
    kind and range as the file's setting (trainconf.SETTING_ARGS), so both agree."""

    def parse(text: str) -> int:
        from .trainconf import setting_problem

        value = _whole(text, 0, "a whole number")
        problem = setting_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{key} {problem}")
        return value

    parse.__name__ = f"{key}_int"  # argparse names the type in some messages
    return parse


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {shown!r}")
    return value


def path_arg(text: str) -> str:
    """A file or folder name: not empty, no NUL character."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a path cannot hold a NUL character")
    return text


def _load(path: str):
    from . import load

    return load(path)


def cmd_check(args) -> int:
    from .errors import NetError
    from .passes.lint import print_warnings
    from .report import _human

    status = 0
    for f in args.files:
        try:
            net = _load(f)
        except NetError as e:
            if args.debug:
                raise
            print(e.render(), file=sys.stderr)
            status = 2
            continue
        print_warnings(net)  # to stderr; a warning does not change the exit status
        params = sum(lyr.n_params for lyr in net.layers)
        macs = sum(lyr.macs for lyr in net.layers)
        print(f"{f}: ok  {net.name}: {len(net.layers)} layers, {params:,} parameters, "
              f"{_human(macs)} MACs")  # fmt: skip
    return status


def cmd_summary(args) -> int:
    from .passes.lint import print_warnings
    from .report import summary_json, summary_text

    net = _load(args.file)
    print_warnings(net)  # to stderr: the JSON on stdout stays clean
    if args.json:
        print(summary_json(net, args.batch))
    else:
        print(summary_text(net, args.batch, ascii_only=not can_print("─⇄…")))
    return 0


def can_print(chars: str, stream=None) -> bool:
    """Whether ``stream`` (standard output) can encode ``chars`` (a non-UTF-8 terminal cannot
    encode box-drawing characters)."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "ascii"
    try:
        chars.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def write_text_file(path: str, text: str) -> None:
    """Write an output file whole or not at all; a DataError naming it when it cannot be
    written (netdsl.files.write_atomic)."""
    from .files import write_atomic

    write_atomic(path, text)


def emit_text(output: str | None, text: str) -> None:
    """A command's text result: into the file `output` (whole or not at all; its name on
    standard error), or to standard output when there is none."""
    if output:
        write_text_file(output, text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_graph(args) -> int:
    from .report import graph_dot

    emit_text(args.output, graph_dot(_load(args.file)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; every argument has help text."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="netdsl",
        description="Compile and train convolutional networks written in the .net language.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"netdsl {__version__}",
                   help="print the version and exit")  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND",
        help="one of these; `netdsl COMMAND --help` lists its flags",
    )  # fmt: skip

    c = sub.add_parser("check", help="check .net files; one line per file")
    c.add_argument("files", nargs="+", metavar="FILE", type=path_arg, help="the .net files")
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("summary", help="the layer table: shapes, params, MACs, memory, RF, GPUs")
    s.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--batch", type=positive_int, default=None,
                   help="batch size for memory figures (default: the file's)")  # fmt: skip
    s.set_defaults(func=cmd_summary)

    g = sub.add_parser("graph", help="write the network as Graphviz DOT")
    g.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    g.add_argument("-o", "--output", type=path_arg,
                   help="write to this file instead of standard output")  # fmt: skip
    g.set_defaults(func=cmd_graph)
    __import__("netdsl.export.cli", fromlist=["cli"]).add_command(sub)  # export (no kernels)

    from .interop.cli import add_command as add_import

    add_import(sub)

    try:
        from .train.cli import add_commands
    except ImportError:  # the training commands are not built yet
        return p
    add_commands(sub)
    from .show.cli import add_command as add_show_command  # netdsl show (netdsl/show/)

    add_show_command(sub)
    return p


KERNEL_COMMANDS = ("compile", "train", "eval", "predict", "bench", "show")


def _one_blas_thread() -> None:
    """The conv layers run their own worker threads; BLAS threads spinning beside them
    slow every step (measured: 7.4 ms vs 5.5 ms per LeNet-5 step), so BLAS gets one
    thread unless the user chose otherwise. The fc layers still use every core: a big one
    splits its GEMMs over those same worker threads, one BLAS call each (netdsl/ops/fc.py,
    FcCPU). Must run before numpy is imported."""
    if "numpy" not in sys.modules:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `netdsl` console script; returns the exit status (EXIT_STATUS)."""
    from .errors import NetdslError

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or bool(os.environ.get("NETDSL_DEBUG_TRACEBACK"))
    _printable_streams()
    if any(a in KERNEL_COMMANDS for a in argv):  # first thing: nothing may import numpy
        _one_blas_thread()  # before it (OpenBLAS reads the setting once, on import)
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    try:
        return args.func(args)
    except NetdslError as e:
        if debug:
            raise
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `netdsl ... | head`: the reader left; that is not an error
        _silence_stdout()
        return 0
    except MemoryError:
        if debug:
            raise
        print("error: out of memory; try a smaller batch (--batch) or fewer images (--limit)",
              file=sys.stderr)  # fmt: skip
        return 1
    except OSError as e:  # a file or device problem no reader caught: say which, no traceback
        if debug:
            raise
        from .train.paths import os_problem, show_path

        where = f"{show_path(e.filename)}: " if e.filename else ""
        print(f"error: {where}{os_problem(e)}", file=sys.stderr)
        return 1


def _printable_streams() -> None:
    """A terminal that cannot show a character (a non-UTF-8 locale) gets an escape such as
    \\u2500 instead of a UnicodeEncodeError traceback."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or unusual stream: leave it
                pass


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's final flush does not raise
    BrokenPipeError again (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
