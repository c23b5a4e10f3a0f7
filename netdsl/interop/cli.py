"""`netdsl import SRC [-o OUT.net]`: another framework's network file as a .net file."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import NetError
from . import FORMATS, ImportedNet, write_net

# The module that reads each format (netdsl/interop/<module>.py); it defines
# `read(path: str, opts: ImportOptions) -> ImportedNet`.
_MODULES = {"caffe": "caffe", "darknet": "darknet", "cudaconvnet": "cudaconvnet"}


class ImportOptions:
    """What the command line adds to a source file: the input shape where the file does not
    state it, a solver (Caffe), a layer-params file (cuda-convnet), the network's name."""

    def __init__(self, input_shape: tuple[int, int, int] | None = None,
                 solver: str | None = None, params: str | None = None,
                 name: str | None = None) -> None:  # fmt: skip
        self.input_shape = input_shape
        self.solver = solver
        self.params = params
        self.name = name


def shape_arg(text: str) -> tuple[int, int, int]:
    """`--input CxHxW`: three whole numbers >= 1."""
    import argparse

    m = re.fullmatch(r"\s*(\d{1,6})x(\d{1,6})x(\d{1,6})\s*", text)
    if not m or min(int(g) for g in m.groups()) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x224x224, got {text!r}")
    c, h, w = (int(g) for g in m.groups())
    return c, h, w


def detect_format(path: str, text: str) -> str | None:
    """The format of a source file, from its name and its first lines."""
    suffix = Path(path).suffix.lower()
    if suffix in (".prototxt", ".pbtxt"):
        return "caffe"
    if re.search(r"^\s*layers?\s*\{", text, re.M) or re.search(r"^\s*input_shape\s*\{", text, re.M):
        return "caffe"
    head = re.search(r"^\s*\[([^\]]+)\]", text, re.M)
    if head and head.group(1).strip().lower() in ("net", "network"):
        return "darknet"
    if head and re.search(r"^\s*type\s*=", text, re.M):
        return "cudaconvnet"
    return None


def import_file(
    path: str, fmt: str | None = None, opts: ImportOptions | None = None
) -> ImportedNet:
    """Read another framework's network file into an ImportedNet (NetError at SOURCE:line:col
    for what netdsl cannot express); the format is detected unless `fmt` names it."""
    from ..source import Source

    opts = opts or ImportOptions()
    text = Source.from_file(path).text
    fmt = fmt or detect_format(path, text)
    if fmt is None:
        raise NetError(
            f"{path}: cannot tell which framework's file this is",
            hint="name it with --format " + "|".join(FORMATS),
        )
    module = importlib.import_module(f"{__package__}.{_MODULES[fmt]}")
    return module.read(path, opts)


def convert(path: str, fmt: str | None = None, opts: ImportOptions | None = None) -> str:
    """The .net text of another framework's network file, checked by netdsl's own checker
    (a conversion that netdsl then rejects is a bug of the importer, reported as one)."""
    from .. import loads

    net = import_file(path, fmt, opts)
    text = write_net(net)
    try:
        loads(text, name=f"<import of {path}>")
    except NetError as e:
        at = _source_of(net, e)
        if at is not None:  # what netdsl's checker refuses, shown at the source layer
            raise NetError(e.message, at, hint=e.hint) from None
        raise NetError(
            f"the import of {path} produced a .net file netdsl rejects (an importer bug; "
            f"please report it):\n{e.render()}"
        ) from None
    return text


def _source_of(net: ImportedNet, e: NetError):
    """The source location of the imported line an error of netdsl's checker is on."""
    line = e.loc.source_line if e.loc is not None else ""
    m = re.match(r"\s*[A-Za-z_]\w*\s+([A-Za-z_][\w.]*)", line)
    found = [ln for ln in net.lines if m and ln.name == m.group(1)]
    return found[0].src if found else None


def add_command(sub: Any) -> None:
    """Register `netdsl import`."""
    from ..cli import path_arg

    p = sub.add_parser(
        "import",
        help="convert a Caffe prototxt, Darknet cfg or cuda-convnet layer file to .net",
    )
    p.add_argument("source", metavar="SRC", type=path_arg, help="the file to convert")
    p.add_argument("-o", "--output", type=path_arg, metavar="OUT.net",
                   help="write the .net file here (default: standard output)")  # fmt: skip
    p.add_argument("--format", choices=FORMATS, help="the source's format (default: detected)")
    p.add_argument("--input", type=shape_arg, metavar="CxHxW", dest="input_shape",
                   help="the input shape, where the source does not state it")  # fmt: skip
    p.add_argument("--solver", type=path_arg, metavar="SOLVER",
                   help="a Caffe solver prototxt, made the train { } section")  # fmt: skip
    p.add_argument("--params", type=path_arg, metavar="PARAMS",
                   help="cuda-convnet's layer-params file (learning rates, decay)")  # fmt: skip
    p.add_argument("--name", help="the network's name (default: from the source)")
    p.add_argument("--weights", type=path_arg, metavar="W.weights",
                   help="Darknet only: also convert these weights into a netdsl checkpoint, "
                        "OUT.npz beside OUT.net (needs -o)")  # fmt: skip
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from ..cli import emit_text

    opts = ImportOptions(args.input_shape, args.solver, args.params, args.name)
    if getattr(args, "weights", None):  # Darknet .weights: the checkpoint beside the .net
        return _import_with_weights(args, opts)
    text = convert(args.source, args.format, opts)
    emit_text(args.output, text)
    return 0


def _import_with_weights(args, opts: ImportOptions) -> int:
    """`--weights`: the .net file and, beside it, its Darknet weights as a checkpoint that
    `netdsl eval`/`predict` read (both made before either is written)."""
    from ..cli import write_text_file
    from ..source import Source
    from ..train.checkpoint import save_checkpoint
    from .darknet import read_weights

    fmt = args.format or detect_format(args.source, Source.from_file(args.source).text)
    if fmt != "darknet":
        raise NetError(f"--weights reads Darknet .weights files; {args.source} is not a "
                       "Darknet cfg")  # fmt: skip
    if not args.output:
        raise NetError("--weights needs -o OUT.net (the weights are written as OUT.npz)")
    text = convert(args.source, "darknet", opts)
    net, arrays = read_weights(args.source, args.weights, opts)
    ckpt = str(Path(args.output).with_suffix(".npz"))
    write_text_file(args.output, text)
    save_checkpoint(ckpt, arrays, {"network": net.name, "epoch": 0,
                                   "imported_from": str(args.weights)})  # fmt: skip
    print(f"wrote {args.output} and {ckpt}", file=sys.stderr)
    return 0
