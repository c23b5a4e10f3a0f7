"""`netdsl export FILE CHECKPOINT --onnx OUT.onnx --safetensors OUT.safetensors --pytorch
OUT.py`: registered by netdsl/cli.py through add_command. No kernels: numba is not imported."""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli import path_arg


def add_command(sub) -> None:
    """Register `export` on the CLI's subparsers; every argument has help."""
    e = sub.add_parser("export", help="write a network and its weights as ONNX, safetensors "
                       "(a PyTorch state_dict) or PyTorch module source")  # fmt: skip
    e.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    e.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        type=path_arg,
        nargs="?",
        help="a checkpoint.npz written by train (not needed for --pytorch alone)",
    )
    e.add_argument(
        "--onnx",
        metavar="OUT.onnx",
        type=path_arg,
        help="write an ONNX model (opset 17), checked with onnx.checker",
    )
    e.add_argument(
        "--safetensors",
        metavar="OUT.safetensors",
        type=path_arg,
        help="write the weights as a PyTorch state_dict in a safetensors file",
    )
    e.add_argument(
        "--pytorch",
        metavar="OUT.py",
        type=path_arg,
        help="write a standalone PyTorch nn.Module source file for the network",
    )
    e.add_argument("--probabilities", action="store_true",
                   help="ONNX: end in a Softmax (output `probabilities`) instead of the class "
                        "scores (output `scores`)")  # fmt: skip
    e.set_defaults(func=cmd_export)


def _usage(message: str) -> int:
    print(f"netdsl export: error: {message}", file=sys.stderr)
    return 2


def cmd_export(args) -> int:
    from .. import load
    from .common import checkpoint_tensors, need

    outs = [(flag, getattr(args, flag)) for flag in ("onnx", "safetensors", "pytorch")]
    outs = [(flag, out) for flag, out in outs if out]
    if not outs:
        return _usage("say what to write: --onnx OUT.onnx, --safetensors OUT.safetensors "
                      "and/or --pytorch OUT.py")  # fmt: skip
    weighted = [f"--{flag}" for flag, _ in outs if flag != "pytorch"]
    if weighted and not args.checkpoint:
        verb = "needs" if len(weighted) == 1 else "need"
        return _usage(f"{' and '.join(weighted)} {verb} the weights: give a CHECKPOINT")
    if args.probabilities and not args.onnx:
        return _usage("--probabilities is an ONNX option; add --onnx OUT.onnx")
    inputs = {Path(p).resolve() for p in (args.file, args.checkpoint) if p}
    paths = [Path(out).resolve() for _, out in outs]
    for (flag, out), resolved in zip(outs, paths):
        if resolved in inputs:
            return _usage(f"--{flag} {out} would overwrite an input file")
        if paths.count(resolved) > 1:
            return _usage(f"{out} is given for two outputs")
    if args.onnx:  # a missing extra is said before any slow work
        need("onnx", "--onnx")
    if args.safetensors:
        need("safetensors", "--safetensors")

    net = load(args.file)
    tensors = checkpoint_tensors(net, args.checkpoint) if args.checkpoint else {}
    for flag, out in outs:
        if flag == "onnx":
            from .onnx import OPSET, save_onnx

            save_onnx(net, tensors, out, probabilities=args.probabilities)
            output = "probabilities" if args.probabilities else "scores"
            what = f"ONNX opset {OPSET}, output `{output}`"
        elif flag == "safetensors":
            from .safetensors import save_safetensors

            save_safetensors(net, tensors, out)
            what = "PyTorch state_dict"
        else:
            from .pytorch import save_pytorch

            weights = Path(args.safetensors).name if args.safetensors else None
            what = f"PyTorch module {save_pytorch(net, out, weights)}"
        print(f"wrote {out} ({what})", file=sys.stderr)
    return 0
