"""The `netdsl` command: a thin layer of argument parsing over the library.

`check`, `summary` and `graph` never import numba, so they answer at once.
Every user mistake prints a located message and exits 2 (data problems 1);
`--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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
    from .report import summary_json, summary_text

    net = _load(args.file)
    print(summary_json(net, args.batch) if args.json else summary_text(net, args.batch))
    return 0


def cmd_graph(args) -> int:
    from .report import graph_dot

    dot = graph_dot(_load(args.file))
    if args.output:
        Path(args.output).write_text(dot)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(dot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netdsl",
        description="Compile and train convolutional networks written in the .net language.",
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="check .net files; one line per file")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("summary", help="the layer table: shapes, params, MACs, memory, RF, GPUs")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--batch", type=int, default=None, help="batch size for memory figures")
    s.set_defaults(func=cmd_summary)

    g = sub.add_parser("graph", help="write the network as Graphviz DOT")
    g.add_argument("file", metavar="FILE")
    g.add_argument("-o", "--output", help="write to this file instead of standard output")
    g.set_defaults(func=cmd_graph)

    try:
        from .train.cli import add_commands
    except ImportError:  # the training commands are not built yet
        return p
    add_commands(sub)
    return p


KERNEL_COMMANDS = ("compile", "train", "eval", "predict", "bench")


def _one_blas_thread() -> None:
    """The conv layers run their own worker threads; BLAS threads spinning beside them
    slow every step (measured: 7.4 ms vs 5.5 ms per LeNet-5 step), so BLAS gets one
    thread unless the user chose otherwise. Must run before numpy is imported."""
    if "numpy" not in sys.modules:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `netdsl` console script."""
    from .errors import NetdslError

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or bool(os.environ.get("NETDSL_DEBUG_TRACEBACK"))
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if args.command in KERNEL_COMMANDS:
        _one_blas_thread()
    try:
        return args.func(args)
    except NetdslError as e:
        if debug:
            raise
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
