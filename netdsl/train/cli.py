"""The kernel-using commands: compile, train, eval, predict, bench, plot.

Imported by netdsl/cli.py only to register the commands; each handler imports the
compiler (and so numba) only when it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import path_arg, positive_float, positive_int, setting_int

DEVICE_HELP = "cpu, cuda (an NVIDIA GPU) or auto (the GPU when there is one)"
PLOT_FORMATS = ("png", "pdf", "svg", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def plot_output(text: str) -> str:
    """-o of `plot`: a file name whose extension matplotlib writes (none: .png is added)."""
    path_arg(text)
    suffix = Path(text).suffix.lower().lstrip(".")
    if suffix and suffix not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"cannot write a plot as .{suffix}; use one of: .{', .'.join(PLOT_FORMATS)}"
        )
    return text


# ---- --workers (the data loader, loader.py)
WORKERS_HELP = ("processes that read and augment batches ahead of the training loop (0: "
                "in this process; default: none for a data set in memory, else the cores "
                "less one)")  # fmt: skip


def workers_arg(text: str) -> int:
    """A whole number >= 0 of loader processes."""
    from ..cli import _whole

    return _whole(text, 0, "a whole number")


def add_commands(sub) -> None:
    """Register the training commands on the CLI's subparsers; every argument has help."""
    c = sub.add_parser("compile", help="build the execution plan, warm the kernels, print it")
    c.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    c.add_argument("--batch", type=positive_int, help="batch size (default: the file's)")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help=DEVICE_HELP)
    c.add_argument("--emit", metavar="DIR",
                   help="write the plan's generated kernel source into DIR (with index.json: "
                        "which layer uses which file) instead of warming the kernels; "
                        "--device cuda needs no GPU")  # fmt: skip
    c.set_defaults(func=cmd_compile)

    t = sub.add_parser("train", help="train with the file's train section; flags override it")
    t.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    t.add_argument("--epochs", type=setting_int("epochs"),
                   help="number of epochs (default: the file's)")  # fmt: skip
    t.add_argument("--batch", type=setting_int("batch"), help="batch size (default: the file's)")
    t.add_argument("--lr", type=positive_float, help="base learning rate (default: the file's)")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help=DEVICE_HELP)
    t.add_argument("--data", type=path_arg,
                   help="dataset: mnist, cifar10:DIR, an IDX directory or a .npz")  # fmt: skip
    t.add_argument("--out", type=path_arg, help="output folder (default runs/NETWORK)")
    t.add_argument("--seed", type=setting_int("seed"), help="random seed (default: the file's)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (deletes its checkpoint, metrics and run.json; "
                        "other files stay); not with --resume")  # fmt: skip
    t.add_argument("--validate", type=setting_int("validate"), metavar="N",
                   help="hold out the last N training images for validation (overrides the "
                        "file's `validate`; 0: none)")  # fmt: skip
    t.add_argument("--allow-other-data", action="store_true",
                   help="with --resume: continue on data that differs from the data the run "
                        "recorded")  # fmt: skip
    t.add_argument("--limit", type=positive_int, help="use only the first N training images")
    t.add_argument("--quiet", action="store_true", help="one line per epoch, no live bar")
    t.add_argument("--workers", type=workers_arg, metavar="N", help=WORKERS_HELP)
    t.add_argument("--distributed", choices=["none", "mpi"],
                   help="data-parallel over MPI ranks (mpiexec -n N netdsl train FILE); default: "
                        "mpi when launched as more than one rank, else none")  # fmt: skip
    t.add_argument("--cuda-aware-mpi", action="store_true",
                   help="with a GPU: give device buffers to MPI directly instead of staging "
                        "them in pinned host memory")  # fmt: skip
    t.add_argument("--tensorboard", nargs="?", const=True, type=path_arg, metavar="DIR",
                   help="also log the metrics and the first conv layer's filters for "
                        "TensorBoard into DIR (default OUT/tensorboard; needs tensorboardX: "
                        "pip install 'netdsl[tensorboard]')")  # fmt: skip
    t.add_argument("--init-from", type=path_arg, metavar="W.safetensors",
                   help="start from these weights (a PyTorch state_dict, as `netdsl export "
                        "--safetensors` writes); every tensor must fit the network")  # fmt: skip
    t.add_argument("--init-partial", action="store_true",
                   help="with --init-from: load the tensors whose name and shape fit, leave "
                        "the others at their init and list both")  # fmt: skip
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    e.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    e.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg,
                   help="a checkpoint.npz written by train")  # fmt: skip
    e.add_argument("--data", type=path_arg, help="dataset to evaluate on (default: the file's)")
    e.add_argument("--batch", type=positive_int, help="batch size (default: the file's)")
    e.add_argument(
        "--allow-other-data",
        action="store_true",
        help="evaluate on data that differs from the data the checkpoint recorded",
    )
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help=DEVICE_HELP)
    e.add_argument("--workers", type=workers_arg, metavar="N", help=WORKERS_HELP)
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify images: JPEG/PNG files, folders of them, "
                                       ".npz (array x), .npy or IDX")  # fmt: skip
    p.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg,
                   help="a checkpoint.npz written by train")  # fmt: skip
    p.add_argument("images", metavar="IMAGES", type=path_arg, nargs="+",
                   help="image files (.jpg, .png, ...), folders of them, or a stack of the "
                        "input's size: .npz (array x), .npy (HxW, CxHxW, NxHxW or NxCxHxW) "
                        "or IDX")  # fmt: skip
    p.add_argument("--top", type=positive_int, default=1, help="print the top K classes")
    p.add_argument("--crops", type=positive_int, choices=[1, 10],
                   help="image files: 1 scores the centre crop, 10 averages the ten views "
                        "(default: the train section's test_crops)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help=DEVICE_HELP)
    p.set_defaults(func=cmd_predict)

    b = sub.add_parser("bench", help="forward and backward time per layer and per step")
    b.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    b.add_argument("--batch", type=positive_int, help="batch size (default: the file's)")
    b.add_argument("--iters", type=positive_int, default=20,
                   help="timed iterations; medians are reported (default 20)")  # fmt: skip
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help=DEVICE_HELP)
    b.add_argument("--torch", action="store_true",
                   help="put PyTorch's time for each layer alone beside its row (CPU; needs "
                        "PyTorch: pip install 'netdsl[torch]')")  # fmt: skip
    b.set_defaults(func=cmd_bench)

    pl = sub.add_parser("plot", help="plot runs' loss, error and learning rate to PNG "
                        "(needs matplotlib)")  # fmt: skip
    pl.add_argument("runs", metavar="RUN_DIR", type=path_arg, nargs="+",
                    help="a run folder (holding metrics.jsonl); several are overlaid")  # fmt: skip
    pl.add_argument("-o", "--output", type=plot_output, metavar="OUT",
                    help="image file to write (default RUN_DIR/metrics.png; required for "
                         "several runs)")  # fmt: skip
    pl.set_defaults(func=cmd_plot)

    from .pack import add_command as add_pack  # netdsl pack (pack.py)

    add_pack(sub)


def cmd_compile(args) -> int:
    if args.emit:  # imported here: building the parser must not import numpy (BLAS threads)
        from ..backends.emit import cmd_emit

        return cmd_emit(args)
    import numpy as np

    from .. import load
    from ..backends import compile_network

    t0 = time.perf_counter()
    net = load(args.file)
    cnet = compile_network(net, device=args.device, batch=args.batch)
    x = np.zeros((cnet.batch, *net.input.out_shape), np.float32)
    cnet.forward(x)
    if cnet.loss_runner is not None:
        cnet.step_grads(x, np.zeros(cnet.batch, np.int64))
    print(cnet.describe())
    print(f"compiled and warmed forward + backward in {time.perf_counter() - t0:.2f}s "
          "(kernels are cached on disk; a second run starts faster)")  # fmt: skip
    return 0


def cmd_train(args) -> int:
    from .distributed import abort_on_error, setup
    from .progress import plural
    from .trainer import fit_file

    if args.resume and args.overwrite:
        print("netdsl train: error: --resume continues the run in the output folder and "
              "--overwrite replaces it: give one of them", file=sys.stderr)  # fmt: skip
        return 2
    if args.init_from and args.resume or args.init_partial and not args.init_from:
        print("netdsl train: error: --init-from starts a new run from a safetensors file "
              "(not with --resume); --init-partial goes with it", file=sys.stderr)  # fmt: skip
        return 2
    comm = setup(args.distributed, cuda_aware=args.cuda_aware_mpi)
    with abort_on_error(comm, debug=getattr(args, "debug", False)):  # no rank left hanging
        r = fit_file(args.file, epochs=args.epochs, batch=args.batch, lr=args.lr,
                     device=args.device, data=args.data, out=args.out, seed=args.seed,
                     resume=args.resume, quiet=args.quiet, limit=args.limit,
                     comm=comm, overwrite=args.overwrite, validate=args.validate,
                     allow_other_data=args.allow_other_data, init_from=args.init_from,
                     init_partial=args.init_partial, tensorboard=args.tensorboard,
                     workers=args.workers)  # fmt: skip
    if comm.is_root and "epoch" in r:
        print(f"done: {closing_figures(r)} after {plural(r['epoch'], 'epoch')}, "
              f"{r['wall_seconds']:.1f}s; checkpoint {r['out']}/checkpoint.npz")  # fmt: skip
    return 0


def closing_figures(r: dict) -> str:
    """ "validation accuracy 97.10% (cross-entropy 0.0912), test accuracy ..." of a result."""
    from .trainer import LOSS_NAMES

    loss = LOSS_NAMES.get(r.get("loss_kind", "cross_entropy"), "loss")
    parts = []
    for key, label in (("val", "validation"), ("test", "test")):
        err = r.get(f"{key}_err")
        if err is not None:
            parts.append(f"{label} accuracy {100 * (1 - err):.2f}% ({loss} "
                         f"{r.get(f'{key}_loss', float('nan')):.4f})")  # fmt: skip
    return ", ".join(parts) or "no evaluation"


def _load_checkpointed(args, batch=None):
    net, cnet, _ = _load_with_meta(args, batch)
    return net, cnet


def _load_with_meta(args, batch=None):
    """The .net file, compiled, with the checkpoint's weights, and the checkpoint's meta."""
    from .. import load
    from ..backends import compile_network
    from .checkpoint import load_checkpoint
    from .trainer import load_weights

    net = load(args.file)
    arrays, meta = load_checkpoint(args.checkpoint)  # before compiling: a bad file fails fast
    cnet = compile_network(net, device=args.device, batch=batch or net.train["batch"])
    load_weights(cnet, arrays, args.checkpoint)
    return net, cnet, meta


def cmd_eval(args) -> int:
    from .loader import Loader, default_workers
    from .trainer import LOSS_NAMES, evaluate, loss_kind, recorded_data

    net, cnet, meta = _load_with_meta(args, args.batch)
    data = recorded_data(net, args.checkpoint, meta, args.data, training=False,
                         allow_other_data=args.allow_other_data)  # fmt: skip
    loss = LOSS_NAMES[loss_kind(net)]
    crops = net.train["test_crops"]
    splits = {k: s for k, s in (("validation", data.val), ("test", data.test)) if s is not None}
    workers = args.workers
    if workers is None:
        workers = max(default_workers(s.images) for s in splits.values())
    streams = {k: (s.images, s.transform(crops)) for k, s in splits.items()}
    with Loader(streams, cnet.batch, workers=workers) as loader:
        results = {k: evaluate(cnet, s, crops=crops, loader=loader, stream=k)
                   for k, s in splits.items()}  # fmt: skip
    for label, split in splits.items():
        r = results[label]
        print(f"{label}: {len(split.y):,} images  {loss} loss {r['loss']:.4f}  "
              f"top-1 error {100 * r['top1_error']:.2f}%  "
              f"top-5 error {100 * r['top5_error']:.2f}%  "
              f"accuracy {100 * (1 - r['top1_error']):.2f}%")  # fmt: skip
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from .. import load
    from ..errors import DataError
    from .paths import show_path
    from .predict import image_batches, predict_inputs, scores_of
    from .trainer import _softmax

    net0 = load(args.file)  # parsing only: bad images are found before compiling
    inputs = predict_inputs(args.images, net0)
    net, cnet, meta = _load_with_meta(args, batch=min(256, inputs.count))
    record = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    names = record.get("class_names")
    crops = args.crops or net.train["test_crops"]
    for labels, x in image_batches(inputs, net, record, cnet.batch):
        probs = scores_of(cnet, x, crops, _softmax)
        bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        if bad.size:  # the images are finite (the readers check): the weights are not
            raise DataError(f"{show_path(args.checkpoint)}: the network's scores for image "
                            f"{labels[int(bad[0])]} are not finite; the checkpoint's weights "
                            "hold NaN or infinite values (did its training diverge?)")  # fmt: skip
        for label, p in zip(labels, probs, strict=True):
            top = np.argsort(-p)[: args.top]
            print(f"{label}\t" + "\t".join(f"{_class_name(names, k)} ({p[k]:.3f})" for k in top))
    return 0


def _class_name(names, k: int) -> str:
    """A class's name from the run's data record, else its number."""
    if isinstance(names, list) and 0 <= k < len(names):
        return str(names[k])
    return str(k)


def cmd_bench(args) -> int:
    from .bench import bench_file

    if args.torch and args.device != "cpu":
        print("netdsl bench: error: --torch compares CPU times: use it with --device cpu",
              file=sys.stderr)  # fmt: skip
        return 2
    print(
        bench_file(
            args.file, batch=args.batch, iters=args.iters, device=args.device, torch=args.torch
        )
    )
    return 0


def cmd_plot(args) -> int:
    from ..errors import NetdslError
    from .plot import load_run, plot_runs

    if len(args.runs) > 1 and not args.output:
        print("netdsl plot: error: give -o OUT.png to plot several runs into one figure",
              file=sys.stderr)  # fmt: skip
        return 2
    for run in args.runs:
        load_run(run)  # every folder checked (and named) before matplotlib is loaded
    out = Path(args.output) if args.output else Path(args.runs[0]) / "metrics.png"
    if out.is_dir():
        out = out / "metrics.png"
    elif not out.suffix:
        out = out.with_name(out.name + ".png")  # what matplotlib would write: say so
    try:
        plot_runs(args.runs, out)
    except ImportError as e:
        cause = e.__cause__ or e
        name = getattr(cause, "name", None) or "matplotlib"
        missing = isinstance(cause, ModuleNotFoundError) and name.split(".")[0] == "matplotlib"
        why = "matplotlib is not installed" if missing else f"matplotlib cannot load ({cause})"
        raise NetdslError(f"plotting needs matplotlib, but {why}; install it with: "
                          "pip install 'netdsl[plot]'") from None  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)
    return 0
