"""The kernel-using commands: compile, train, eval, predict, bench, plot.

Imported by netdsl/cli.py only to register the commands; each handler imports the
compiler (and so numba) only when it runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_commands(sub) -> None:
    """Register the training commands on the CLI's subparsers."""
    c = sub.add_parser("compile", help="build the execution plan, warm the kernels, print it")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--batch", type=int)
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    c.set_defaults(func=cmd_compile)

    t = sub.add_parser("train", help="train with the file's train section; flags override it")
    t.add_argument("file", metavar="FILE")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float, help="base learning rate")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    t.add_argument("--data", help="dataset: mnist, cifar10:DIR, an IDX directory or a .npz")
    t.add_argument("--out", help="output folder (default runs/NETWORK)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (deletes its checkpoint, metrics and run.json; "
                        "other files stay)")  # fmt: skip
    t.add_argument("--validate", type=int, metavar="N",
                   help="hold out the last N training images for validation (overrides the "
                        "file's `validate`; 0: none)")  # fmt: skip
    t.add_argument("--allow-other-data", action="store_true",
                   help="with --resume: continue on data that differs from the data the run "
                        "recorded")  # fmt: skip
    t.add_argument("--limit", type=int, help="use only the first N training images")
    t.add_argument("--quiet", action="store_true", help="one line per epoch, no live bar")
    t.add_argument("--distributed", choices=["none", "mpi"],
                   help="data-parallel over MPI ranks (mpiexec -n N netdsl train FILE); default: "
                        "mpi when launched as more than one rank, else none")  # fmt: skip
    t.add_argument("--cuda-aware-mpi", action="store_true",
                   help="with a GPU: give device buffers to MPI directly instead of staging "
                        "them in pinned host memory")  # fmt: skip
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    e.add_argument("file", metavar="FILE")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    e.add_argument("--data")
    e.add_argument("--batch", type=int)
    e.add_argument("--allow-other-data", action="store_true",
                   help="evaluate on data that differs from the data the checkpoint recorded")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify images (.npz with x, .npy, or IDX)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("images", metavar="IMAGES")
    p.add_argument("--top", type=int, default=1, help="print the top K classes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.set_defaults(func=cmd_predict)

    b = sub.add_parser("bench", help="forward and backward time per layer and per step")
    b.add_argument("file", metavar="FILE")
    b.add_argument("--batch", type=int)
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    b.set_defaults(func=cmd_bench)

    pl = sub.add_parser("plot", help="plot a run's metrics.jsonl to PNG (needs matplotlib)")
    pl.add_argument("run", metavar="RUN_DIR")
    pl.add_argument("-o", "--output")
    pl.set_defaults(func=cmd_plot)


def cmd_compile(args) -> int:
    import numpy as np

    from .. import load
    from ..compiler import compile_network

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
    from .trainer import fit_file

    if args.resume and args.overwrite:
        print("error: --resume continues the run in the output folder and --overwrite "
              "replaces it: give one of them", file=sys.stderr)  # fmt: skip
        return 2
    if args.validate is not None and args.validate < 0:
        print(f"error: --validate must be 0 or more images, not {args.validate}",
              file=sys.stderr)  # fmt: skip
        return 2
    comm = setup(args.distributed, cuda_aware=args.cuda_aware_mpi)
    with abort_on_error(comm, debug=getattr(args, "debug", False)):  # no rank left hanging
        r = fit_file(args.file, epochs=args.epochs, batch=args.batch, lr=args.lr,
                     device=args.device, data=args.data, out=args.out, seed=args.seed,
                     resume=args.resume, quiet=args.quiet, limit=args.limit,
                     comm=comm, overwrite=args.overwrite, validate=args.validate,
                     allow_other_data=args.allow_other_data)  # fmt: skip
    if comm.is_root and "epoch" in r:
        print(f"done: {closing_figures(r)} after {r['epoch']} epochs, "
              f"{r['wall_seconds']:.1f}s; checkpoint {r['out']}/checkpoint.npz")  # fmt: skip
    return 0


def closing_figures(r: dict) -> str:
    """"validation accuracy 97.10% (cross-entropy 0.0912), test accuracy ..." of a result."""
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
    from ..compiler import compile_network
    from .checkpoint import load_checkpoint
    from .trainer import load_weights

    net = load(args.file)
    arrays, meta = load_checkpoint(args.checkpoint)  # before compiling: a bad file fails fast
    cnet = compile_network(net, device=args.device, batch=batch or net.train["batch"])
    load_weights(cnet, arrays, args.checkpoint)
    return net, cnet, meta


def cmd_eval(args) -> int:
    from .trainer import LOSS_NAMES, evaluate, loss_kind, recorded_data

    net, cnet, meta = _load_with_meta(args, args.batch)
    data = recorded_data(net, args.checkpoint, meta, args.data, training=False,
                         allow_other_data=args.allow_other_data)  # fmt: skip
    loss = LOSS_NAMES[loss_kind(net)]
    for label, split in (("validation", data.val), ("test", data.test)):
        if split is None:
            continue
        r = evaluate(cnet, split, crops=net.train["test_crops"])
        print(f"{label}: {len(split.y):,} images  {loss} loss {r['loss']:.4f}  "
              f"top-1 error {100 * r['top1_error']:.2f}%  "
              f"top-5 error {100 * r['top5_error']:.2f}%  "
              f"accuracy {100 * (1 - r['top1_error']):.2f}%")  # fmt: skip
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from ..errors import DataError
    from .data import read_idx, read_npz, to_float
    from .trainer import _fit_to_input, _softmax

    path = Path(args.images)
    if path.suffix == ".npz":
        x, _ = read_npz(path)
    elif path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read: {e}") from None
    else:
        x = read_idx(path)
    if x.ndim == 3:
        x = x[:, None]
    net, cnet = _load_checkpointed(args, batch=min(256, len(x)))
    norm = net.train["normalize"] or {"mean": [0.0], "std": [1.0]}
    x = _fit_to_input(to_float(x, norm["mean"], norm["std"]), net, train=False)
    shape = net.input.out_shape
    if x.shape[1:] != shape:
        raise DataError(f"{path}: images are {'x'.join(map(str, x.shape[1:]))}, the network "
                        f"takes {'x'.join(map(str, shape))}")  # fmt: skip
    for i in range(0, len(x), cnet.batch):
        probs = _softmax(cnet.forward(x[i : i + cnet.batch]).astype(np.float64))
        for j, p in enumerate(probs):
            top = np.argsort(-p)[: args.top]
            print(f"{i + j}\t" + "\t".join(f"{k} ({p[k]:.3f})" for k in top))
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_file

    print(bench_file(args.file, batch=args.batch, iters=args.iters, device=args.device))
    return 0


def cmd_plot(args) -> int:
    from .metrics import METRICS_FILE, plot_metrics

    run = Path(args.run)
    out = args.output or str(run / "metrics.png")
    plot_metrics(run / METRICS_FILE, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
