"""The training loop: data, shuffling by seed, augmentation, steps, evaluation, checkpoints.

One epoch: permute the training set with the run's generator, take full batches,
augment, forward + backward, update; then evaluate on the validation set (`validate N`)
or else the test set (with both, the test set once more after the last epoch), append
a line to metrics.jsonl and atomically write checkpoint.npz, in that order. A NaN or
infinite loss, evaluation or weight stops the run (TrainingDiverged, exit 3) before
anything of that epoch is written.

A resumed run restores the weights, optimizer, schedule and both generators, so on the
CPU it reaches bit-for-bit the weights of an uninterrupted run, and it makes
metrics.jsonl agree with the checkpoint (lines of later epochs dropped, lost lines
rewritten from the checkpoint's history), so the folder ends as an uninterrupted run's.
The run folder, run.json and the data record are described in runinfo.py.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from ..ir import Network
from ..ops.loss import topk_errors
from . import augment
from .checkpoint import (
    check_training_checkpoint,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .data import Dataset, load_dataset
from .distributed import Communicator, NullStream, local_batch, shard_bounds
from .loader import Job, Loader, Transform, default_workers
from .metrics import METRICS_FILE, LogTee, MetricsWriter, StepLog, read_metrics, write_metrics
from .optimizer import Optimizer
from .paths import show_path
from .progress import (
    ProgressBar,
    format_count,
    format_duration,
    launcher_terminal,
    plural,
    terminal_columns,
)
from .runinfo import (
    RUN_FILE,
    check_run_dir,
    clear_run_files,
    command_line,
    data_differences,
    describe_data,
    file_sha256,
    now_iso,
    read_run_info,
    resolve_spec,
    write_json_atomic,
)
from .schedule import Schedule
from .sources import subset, take

CHECKPOINT = "checkpoint.npz"
# a first step slower than this compiled the kernels (loading them from numba's disk
# cache takes about a second at most), and the run says so
COMPILE_NOTE_S = 2.0


class TrainingDiverged(NetdslError):
    """The loss became NaN or infinite; training stopped and the last checkpoint stands."""

    exit_code = 3


@dataclass
class Split:
    """A split's raw images (an image source, loader.py: uint8 or float32, never converted
    whole), its labels and how its batches are made."""

    images: Any  # (N, C, H, W) image source as the reader gives it
    y: np.ndarray  # (N,) int64
    prep: Transform  # normalise, fit to the input, centre crop (evaluation)

    @property
    def x(self) -> np.ndarray:
        """The whole split normalised and fitted to the input, float32 (in memory: for
        small sets only; training and evaluation read batches)."""
        return self.prep.fit(take(self.images, np.arange(len(self.y))))

    def transform(self, crops: int = 1) -> Transform:
        """How evaluation batches are made: the centre crop, or whole images for ten views."""
        return replace(self.prep, mode="ten" if crops == 10 else "center")


@dataclass
class Data:
    train: Split
    test: Split | None  # the data set's test split; None when it has none
    num_classes: int
    pca: tuple[np.ndarray, np.ndarray] | None = None  # eigenvalues, eigenvectors for lighting
    val: Split | None = None  # the held-out training images of `validate N`
    record: dict[str, Any] | None = None  # what was loaded (runinfo): spec, fingerprint, ...

    @property
    def test_name(self) -> str:
        """The split evaluated after every epoch: "val" with `validate N`, else "test"."""
        return "val" if self.val is not None else "test"

    @property
    def monitored(self) -> Split:
        """The split evaluated after every epoch (validation, else test)."""
        split = self.val if self.val is not None else self.test
        assert split is not None  # prepare_data refuses data with neither
        return split


def prepare_data(net: Network, spec: str | None = None, limit: int | None = None,
                 validate: int | None = None) -> Data:  # fmt: skip
    """Load the dataset of the train section (or `spec`) for training batch by batch.

    The images stay as the reader gives them (uint8, a memory-mapped store, ...): each
    batch is normalised and fitted to the input when it is made (loader.py), so no
    float32 copy of the data set is made. `validate` (default: the train section's)
    holds out the last N training images (after `limit`) for validation. Pixels that
    normalisation would make infinite are refused. The PCA of `lighting` comes from the
    data set's stats when it has them, else from one streaming pass over the training
    images. The result's `record` describes the data (runinfo.py) for run.json and
    checkpoints.
    """
    t = net.train
    base = Path(net.file).parent
    spec = spec or t["data"]
    if not spec:
        raise DataError(f"{net.file}: no dataset: add `data mnist` (or a path) to the train "
                        "section, or pass --data")  # fmt: skip
    ds: Dataset = load_dataset(spec, base_dir=base)
    resolved = resolve_spec(spec, base)
    train_file, test_file = _split_files(resolved)
    norm = t["normalize"] or {"mean": [0.0], "std": [1.0]}
    c = net.input.out_shape[0]
    if ds.x_train.shape[1] != c:
        raise DataError(f"{ds.name}: images have {ds.x_train.shape[1]} channels but the input "
                        f"layer {net.input.name} takes {c}")  # fmt: skip
    # the readers (data.py) refuse NaN/inf pixels; what normalisation makes infinite is checked
    n_val = t["validate"] if validate is None else validate
    prep = Transform(mean=tuple(np.ravel(norm["mean"])), std=tuple(np.ravel(norm["std"])),
                     input_shape=tuple(net.input.out_shape),
                     image_shape=tuple(ds.x_train.shape[1:]))  # fmt: skip

    def split(x: Any, y: np.ndarray, where: str, what: str) -> Split:
        _check_normalised(where, x, prep, what,
                          f" after normalize mean={norm['mean']}, std={norm['std']} (a std "
                          "too small for the pixel values?)")  # fmt: skip
        return Split(x, y.astype(np.int64), prep)

    x_train, y_train = ds.x_train, ds.y_train
    if limit:
        x_train, y_train = subset(x_train, 0, limit), y_train[:limit]
    val = None
    n = len(y_train)
    if n_val:
        if n_val >= n:
            raise DataError(f"{ds.name}: validate {n_val} leaves no training images")
        val = split(subset(x_train, n - n_val, n), y_train[-n_val:], train_file, "validation")
        x_train, y_train = subset(x_train, 0, n - n_val), y_train[:-n_val]
    test = None
    if ds.has_test:
        test = split(ds.x_test, ds.y_test, test_file, "test")
    elif val is None:
        raise DataError(f"{ds.name}: no test set; add `validate N` to the train section "
                        "(or pass --validate N) to hold out N training images")  # fmt: skip
    train = split(x_train, y_train, train_file, "training")
    k = net.loss.in_shapes[0][0] if net.loss else ds.num_classes
    top = max(int(s.y.max()) for s in (train, val, test) if s is not None)
    if top >= k:
        raise DataError(f"{ds.name}: labels go up to {top} but the network "
                        f"has {k} outputs")  # fmt: skip
    pca = None
    if any(a["kind"] == "lighting" for a in t["augment"]):
        pca = _pca(getattr(ds, "stats", None), train, prep)
    fingerprint = ds.fingerprint()  # a packed store knows its own: nothing is read
    record = {
        "spec": resolved,
        "name": ds.name,
        "fingerprint": fingerprint,
        "images": {"train": int(len(ds.y_train)), "test": int(len(ds.y_test))},
        "image_shape": list(ds.image_shape),
        "classes": int(k),
        "class_names": list(ds.class_names) if ds.class_names else None,  # images/store
        "normalize": {
            "mean": [float(v) for v in np.ravel(norm["mean"])],
            "std": [float(v) for v in np.ravel(norm["std"])],
        },  # fmt: skip
        "limit": int(limit) if limit else None,
        "validate": int(n_val or 0),
    }
    return Data(train, test, k, pca, val=val, record=record)


CHUNK = 1024  # images per read when a split is scanned whole (statistics, checks)


def _chunks(images: Any, prep: Transform) -> Iterator[np.ndarray]:
    """A split's images normalised and fitted, CHUNK at a time."""
    for start in range(0, len(images), CHUNK):
        yield prep.fit(take(images, np.arange(start, min(start + CHUNK, len(images)))))


def _pca(stats: Any, train: Split, prep: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the normalised pixels' channel covariance for
    `lighting`: from a store's stats (of [0, 1] pixels, rescaled by the normalisation's
    std) when it has them, else one streaming pass over the training images."""
    eigval, eigvec = _stat(stats, "eigval"), _stat(stats, "eigvec")
    if eigval is None or eigvec is None:
        return augment.pca_of_batches(_chunks(train.images, prep))
    c = len(eigval)
    scale = 1.0 / np.resize(np.asarray(prep.std, np.float64), c)
    cov = (np.asarray(eigvec) * np.asarray(eigval)) @ np.asarray(eigvec).T
    cov = cov * scale[:, None] * scale[None, :]
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    return np.maximum(val[order], 0.0), vec[:, order]


def _stat(stats: Any, name: str) -> np.ndarray | None:
    """A statistic of a store's stats (an object or a mapping), or None."""
    if stats is None:
        return None
    v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
    return None if v is None else np.asarray(v, np.float64)


def _check_normalised(where: str, images: Any, prep: Transform, what: str,
                      cause: str) -> None:  # fmt: skip
    """Refuse images that normalisation makes NaN or infinite (a tiny std), as
    data.check_finite words it. Normalising is monotone per channel, so only each
    channel's extreme pixels are checked (uint8: 0 and 255, read from no file); the
    images are scanned only to report the bad ones."""
    c = prep.image_shape[0]
    if images.dtype == np.uint8:
        lo, hi = np.zeros(c), np.ones(c)
    else:
        lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
        for start in range(0, len(images), CHUNK):
            part = take(images, np.arange(start, min(start + CHUNK, len(images))))
            lo = np.minimum(lo, part.min(axis=(0, 2, 3)))
            hi = np.maximum(hi, part.max(axis=(0, 2, 3)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ends = prep.normalise(np.stack([lo, hi]).astype(np.float32)[:, :, None, None])
        if np.isfinite(ends).all():
            return
        nan = inf = 0
        first = -1
        for start, x in zip(range(0, len(images), CHUNK), _chunks(images, prep), strict=True):
            bad = ~np.isfinite(x)
            if bad.any():
                n_nan = int(np.isnan(x).sum())
                nan, inf = nan + n_nan, inf + int(bad.sum()) - n_nan
                if first < 0:
                    first = start + int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
    if nan or inf:
        counts = " and ".join(f"{n:,} {kind} value{'s' if n != 1 else ''}"
                              for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)  # fmt: skip
        raise DataError(f"{show_path(where)}: the {what} images hold {counts}{cause} (the first "
                        f"in image {first}); training needs finite pixels: fix or drop those "
                        "images")  # fmt: skip


def _split_files(resolved: str) -> tuple[str, str]:
    """The files (or folder) of a resolved spec holding the training and the test images."""
    parts = resolved.split(",")
    return (parts[0], parts[1]) if len(parts) == 2 else (resolved, resolved)


def _fit_to_input(x: np.ndarray, net: Network, train: bool) -> np.ndarray:
    """Zero-pad images smaller than the input (LeNet's 32x32 field); leave larger ones for crops."""
    _, h, w = net.input.out_shape
    ih, iw = x.shape[2], x.shape[3]
    if ih < h or iw < w:
        top, left = (h - ih) // 2, (w - iw) // 2
        out = np.zeros((x.shape[0], x.shape[1], max(h, ih), max(w, iw)), np.float32)
        out[:, :, top : top + ih, left : left + iw] = x
        return out
    return x


def loss_kind(net: Network) -> str:
    """The net's declared loss: "cross_entropy" or "mse" (cross-entropy without a loss layer)."""
    return net.loss.attrs["kind"] if net.loss is not None else "cross_entropy"


LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "mse"}


def evaluate(cnet, split: Split, crops: int = 1, comm=None, loader: Loader | None = None,
             stream: str | None = None) -> dict[str, float]:  # fmt: skip
    """The net's own loss (cross-entropy or mse), top-1 and top-5 error over a split
    (eval mode; ten views with crops=10).

    The mse loss is the training loss's, ``1/2 sum_k (onehot_k - o_k)^2`` per image, and
    its errors rank the outputs. With a communicator each rank takes a contiguous share
    of the split and the sums are added over the ranks. Batches come from `loader`'s
    `stream` (made with split.transform(crops)), else are made in this process.
    """
    shape = cnet.net.input.out_shape
    mse = loss_kind(cnet.net) == "mse"
    n, b = len(split.y), cnet.batch
    lo, hi = (0, n) if comm is None else shard_bounds(comm.rank, comm.size, n)
    loss_sum, err1, err5 = 0.0, 0, 0
    starts = range(lo, hi, b)
    jobs = [Job(np.arange(i, min(i + b, hi))) for i in starts]
    own = loader is None
    if own:
        stream = "eval"
        loader = Loader({stream: (split.images, split.transform(crops))}, b, workers=0)
    assert loader is not None and stream is not None
    try:
        for i, xb in zip(starts, loader.run(stream, jobs), strict=True):
            yb = split.y[i : min(i + b, hi)]
            if xb.shape[2:] != shape[1:]:  # whole images: the ten views
                views = [cnet.forward(v).astype(np.float64)
                         for v in augment.ten_crop(xb, shape[1:])]  # fmt: skip
                if mse:
                    scores = np.mean(views, axis=0)
                else:
                    probs = np.mean([_softmax(v) for v in views], axis=0)
                    scores = np.log(np.maximum(probs, 1e-30))
            else:
                scores = cnet.forward(xb).astype(np.float64)
            if mse:
                t = np.zeros_like(scores)
                t[np.arange(len(yb)), yb] = 1.0
                loss_sum += float(0.5 * np.square(t - scores).sum())
            else:
                logp = scores - _logsumexp(scores)
                loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
            err1 += topk_errors(scores, yb, 1)
            err5 += topk_errors(scores, yb, min(5, scores.shape[1]))
    finally:
        if own:
            loader.close()
    if comm is not None:
        loss_sum, err1, err5 = comm.reduce_sums([loss_sum, err1, err5])
    return {"loss": loss_sum / n, "top1_error": err1 / n, "top5_error": err5 / n}


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Trainer:
    """Trains a compiled net on prepared data, writing metrics and checkpoints to `out`."""

    def __init__(self, cnet, data: Data, out: str | Path, epochs: int, lr: float | None = None,
                 quiet: bool = False, stream=None, comm: Communicator | None = None,
                 workers: int | None = None) -> None:  # fmt: skip
        self.cnet, self.data = cnet, data
        # data-parallel ranks (distributed.py): cnet.batch is this rank's share of the batch
        self.comm = comm or Communicator()
        self.global_batch = cnet.batch * self.comm.size
        self.shard = shard_bounds(self.comm.rank, self.comm.size, self.global_batch)
        if self.comm.size > 1:  # a dropout stream per rank
            cnet.rng = np.random.default_rng([cnet.seed, self.comm.rank])
        self.net: Network = cnet.net
        self.out = Path(out)
        self.epochs = epochs
        t = self.net.train
        opt = dict(t["optimizer"])
        if lr is not None:
            opt["lr"] = lr
        # grad.size, not theta.size: on the CPU theta waits until the parameters are drawn
        # (a thread: compiler.InitInThread), which the first step's forward overlaps
        like = None if cnet.device_kind == "cpu" else cnet.theta  # sharded CUDA state only
        self.optimizer = Optimizer(opt, cnet.slots, cnet.grad.size, device=cnet.device, like=like)
        self.schedule = Schedule(t["schedule"], opt["lr"], epochs)
        self.rng = np.random.default_rng(cnet.seed)  # shuffling
        # augmentation: a generator per batch from (seed, epoch, batch), loader.py
        self.augment_seed = cnet.seed
        # loader processes (loader.py); None: as many as the machine and the data suit
        self.workers = (default_workers(data.train.images, self.comm.size)
                        if workers is None else workers)  # fmt: skip
        self.epoch = 0  # epochs completed
        self.quiet, self.stream = quiet, stream
        self.history: list[dict[str, Any]] = []
        self.checkpoint_epoch: int | None = None  # of the checkpoint this run wrote or resumed
        self.resumed = False
        self.stepped = False  # whether this process ran a step yet (compiling the kernels)
        self.is_tty, self.terminal = self._find_terminal()
        # more logs of rank 0 (tensorboard.py), each given every line metrics.jsonl gets
        self.loggers: list[Any] = []
        self.loader: Loader | None = None  # while fit() runs

    def _find_terminal(self) -> tuple[bool | None, str | None]:
        """(is_tty for the progress bar, the launcher's terminal under mpiexec).

        Rank 0 of an MPI run writes into a pipe to mpiexec; when mpiexec writes to a
        terminal, rank 0 draws the live bar as a single process does.
        """
        if self.quiet:
            return False, None
        if self.comm.size > 1 and self.comm.is_root:
            stream = self.stream if self.stream is not None else sys.stdout
            try:
                own = bool(stream.isatty())
            except (AttributeError, ValueError):
                own = False
            if not own and (path := launcher_terminal()) is not None:
                return True, path
        return None, None

    # ---- checkpoints
    def weights(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters and the batch-norm statistics, named as saved."""
        c = self.cnet
        arrays = {f"param.{k}": v for k, v in c.params.items()}
        arrays.update({f"state.{k}": v for k, v in c.buffers.items()})
        return arrays

    def save(self, weights: dict[str, np.ndarray] | None = None) -> Path | None:
        """Write OUT/checkpoint.npz (rank 0) of the epochs done; `weights` from weights()."""
        c = self.cnet
        dropout_rngs = self.comm.gather_obj(rng_state(c.rng))
        self.checkpoint_epoch = self.epoch
        if not self.comm.is_root:
            return None
        arrays = dict(weights if weights is not None else self.weights())
        arrays.update(self.optimizer.state_arrays())
        meta = {"network": self.net.name, "epoch": self.epoch, "optim_t": self.optimizer.t,
                "rng": rng_state(self.rng), "dropout_rng": dropout_rngs[0],
                "schedule": self.schedule.state, "batch": self.global_batch, "seed": c.seed,
                "history": self.history, "loss": loss_kind(self.net),
                "data": self.data.record}  # fmt: skip
        if self.comm.size > 1:
            meta["dropout_rngs"] = dropout_rngs  # one per rank
        path = self.out / CHECKPOINT
        save_checkpoint(path, arrays, meta)
        return path

    def resume(self, path: str | Path | None = None,
               loaded: tuple[dict, dict] | None = None) -> None:  # fmt: skip
        """Continue from a checkpoint (default OUT/checkpoint.npz; `loaded`: its
        load_checkpoint result, to read it once)."""
        path = Path(path or self.out / CHECKPOINT)
        arrays, meta = loaded if loaded is not None else load_checkpoint(path)
        if meta.get("network") != self.net.name:
            raise DataError(f"{path}: checkpoint is of network '{meta.get('network')}', "
                            f"not '{self.net.name}'")  # fmt: skip
        if meta.get("batch") != self.global_batch:
            raise DataError(f"{path}: checkpoint was trained with batch {meta.get('batch')}; "
                            f"resume with --batch {meta.get('batch')}")  # fmt: skip
        # every field read below, present and of the right type and shape, named if not
        check_training_checkpoint(path, arrays, meta, n_params=self.cnet.theta.size,
                                  optimizer=self.optimizer.kind)  # fmt: skip
        load_weights(self.cnet, arrays, path)
        self.optimizer.load_state(arrays, int(meta["optim_t"]))
        self.rng = restore_rng(meta["rng"], path)
        if isinstance(meta.get("seed"), int):  # the run's augmentation, whatever --seed says
            self.augment_seed = int(meta["seed"])
        self.cnet.rng = restore_rng(meta["dropout_rng"], path)
        if self.comm.size > 1:
            rank, states = self.comm.rank, meta.get("dropout_rngs") or []
            if len(states) == self.comm.size:
                self.cnet.rng = restore_rng(states[rank], path)
            else:  # saved with another number of ranks: a fresh stream per rank
                self.cnet.rng = np.random.default_rng([self.cnet.seed, rank, int(meta["epoch"])])
        self.schedule.state.update(meta["schedule"])
        self.epoch = int(meta["epoch"])
        history = meta.get("history")
        self.history = list(history) if isinstance(history, list) else []
        self.checkpoint_epoch = self.epoch
        self.resumed = True

    def _reconcile_metrics(self) -> None:
        """Make metrics.jsonl hold the records of epochs 1..E of the resumed checkpoint,
        as an uninterrupted run's does: lines of later epochs (written before a crash
        lost their checkpoint) go, and missing lines come back from the checkpoint's
        history."""
        path = self.out / METRICS_FILE
        try:
            records = read_metrics(path) if path.exists() else []
        except DataError as e:
            print(f"warning: {e}; rewriting it from {self.out / CHECKPOINT}", file=sys.stderr)
            records = []

        def epoch_of(r: dict[str, Any]) -> float:
            v = r.get("epoch")
            return v if isinstance(v, int | float) and not isinstance(v, bool) else 0

        kept = [r for r in records if epoch_of(r) <= self.epoch]
        have = {epoch_of(r) for r in kept}
        kept += [h for h in self.history if isinstance(h, dict)
                 and 0 < epoch_of(h) <= self.epoch and epoch_of(h) not in have]  # fmt: skip
        kept.sort(key=epoch_of)  # stable: the file's own order otherwise
        if kept != records:
            write_metrics(path, kept)

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        """Train until `epochs` are done; returns the last epoch's metrics."""
        # overflow shows up as a NaN/Inf loss, which _diverged reports; numpy's warnings
        # about it on the way would only be noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        comm = self.comm
        if comm.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resumed:
                self._reconcile_metrics()
        train, gb = self.data.train, self.global_batch
        steps = len(train.y) // gb
        if steps == 0:
            raise DataError(f"{len(train.y)} training images make no full batch of {gb}")
        last: dict[str, Any] = self.history[-1] if self.history else {}
        # every rank starts from rank 0's weights, batch-norm statistics and optimizer state
        comm.broadcast_(self.cnet.theta, *self.cnet.state.values(), self.optimizer.v,
                        self.optimizer.m)  # fmt: skip
        writer = MetricsWriter(self.out) if comm.is_root else nullcontext(_NoMetrics())
        if comm.is_root and self.loggers:
            writer = LogTee(writer, *self.loggers)
        overhead = 0.0  # seconds an epoch spends evaluating and saving, for the run's ETA
        # closed on every way out (an error, Ctrl-C): no worker or shared memory outlives it
        with writer as metrics, self._make_loader() as self.loader:
            while self.epoch < self.epochs:
                width = terminal_columns(self.terminal) if self.terminal else None
                bar = ProgressBar(steps, self.epoch + 1, self.epochs, stream=self.stream,
                                  is_tty=self.is_tty, width=width,
                                  epoch_overhead=overhead)  # fmt: skip
                t0 = time.perf_counter()
                sums, lr = self._train_epoch(bar, steps)
                train_time = time.perf_counter() - t0
                last = self._end_epoch(metrics, bar, sums, lr, steps, train_time)
                overhead = time.perf_counter() - t0 - train_time
        return last

    def _make_loader(self) -> Loader:
        """The loader of this run's splits: training batches augmented as the train
        section says, evaluation batches centre-cropped (or whole, for ten views)."""
        t, data = self.net.train, self.data
        train = replace(data.train.prep, mode="train", augment=tuple(t["augment"]),
                        pca=data.pca, seed=self.augment_seed)  # fmt: skip
        streams = {"train": (data.train.images, train)}
        for name, split in (("val", data.val), ("test", data.test)):
            if split is not None:
                streams[name] = (split.images, split.transform(t["test_crops"]))
        return Loader(streams, self.cnet.batch, workers=self.workers)

    def epoch_jobs(self, order: np.ndarray, steps: int, epoch: int) -> list[Job]:
        """This rank's share [r*b/W, (r+1)*b/W) of each global batch of an epoch's order.

        Random augmentation is drawn for the whole global batch from (seed, epoch, batch)
        and then cut to the share, so W ranks see exactly the images one process would
        while each reads only its own.
        """
        gb, (lo, hi) = self.global_batch, self.shard
        augmented = bool(self.net.train["augment"])
        return [Job(order[s * gb : (s + 1) * gb][lo:hi], (epoch, s) if augmented else None,
                    lo, gb) for s in range(steps)]  # fmt: skip

    def _train_epoch(self, bar: ProgressBar, steps: int) -> tuple[dict[str, Any], float]:
        """One pass over the training set: (sums of loss, errors, images), last lr."""
        c, comm, e = self.cnet, self.comm, self.epoch
        order = self.rng.permutation(len(self.data.train.y))
        jobs = self.epoch_jobs(order, steps, e)
        batches = self.loader.run("train", jobs)
        compiling = not self.stepped
        if compiling:
            bar.message(f"epoch {e + 1}/{self.epochs}  compiling kernels for {self.net.name} "
                        "(cached after the first run)…")  # fmt: skip
        t0 = time.perf_counter()
        first: tuple[float, int] | None = None  # (time, images) after the first step
        loss_sum, wrong, seen = 0.0, 0, 0
        curve = StepLog(steps)  # the loss within the epoch, for the epoch's line
        comm_before = comm.comm_seconds
        # A step's loss is read one step late: while the GPU runs step s the host
        # reads, augments and uploads batch s+1 (on the CPU nothing changes).
        pending: tuple[int, float, int] | None = None  # (step, lr, images) unread
        lr = self.schedule.lr(e, 0.0)
        for s in range(steps + 1):
            if s < steps:
                xb, yb = next(batches), self.data.train.y[jobs[s].idx]
                lr = self.schedule.lr(e, s / steps)
                c.start_step(xb, yb)
                comm.average_(c.grad)  # one Allreduce: the mean gradient over the ranks
                self.optimizer.step(c.theta, c.grad, lr)
            if pending is not None:
                ps, plr, n_img = pending
                loss, errs = c.finish_step()  # top-1 errors counted on the device
                if not math.isfinite(loss):
                    self._diverged(loss, e, ps, plr)
                wrong += errs
                loss_sum += loss
                seen += n_img
                curve.add(loss, errs, n_img, plr)
                now = time.perf_counter()
                if first is None:
                    first = (now, seen)
                    self.stepped = True
                    if compiling and now - t0 > COMPILE_NOTE_S and not self.quiet:
                        bar.print_line(f"compiled the kernels for {self.net.name} in "
                                       f"{format_duration(now - t0)} (cached on disk: later "
                                       "runs start at once)")  # fmt: skip
                if not self.quiet:
                    # the rate leaves out the first step, which may have compiled
                    rate = None  # unknown until a step after the first one
                    if seen > first[1]:
                        rate = (seen - first[1]) * comm.size / max(now - first[0], 1e-9)
                    bar.update(ps, loss_sum / (ps + 1), err=wrong / seen, images_per_s=rate,
                               lr=plr)  # fmt: skip
            pending = (s, lr, len(yb)) if s < steps else None
        for _ in batches:  # the end of the epoch's batches (the loader's slots are free)
            pass
        if comm.size > 1:  # the epoch's sums over every rank's share of the batches
            comm.average_state_(c.state)  # batch-norm running statistics
            loss_sum, wrong, seen = comm.reduce_sums([loss_sum / comm.size, wrong, seen])
            wrong, seen = int(wrong), int(seen)
        curve.reduce(comm)
        sums = {"loss_sum": loss_sum, "wrong": wrong, "seen": seen,
                "comm_s": comm.comm_seconds - comm_before, "steps": curve.record()}  # fmt: skip
        return sums, lr

    def _evaluate(self, split: Split, name: str) -> dict[str, float]:
        """Evaluate a split; a NaN or infinite loss stops the run (exit 3), unsaved."""
        ev = evaluate(self.cnet, split, crops=self.net.train["test_crops"],
                      comm=self.comm if self.comm.size > 1 else None, loader=self.loader,
                      stream=name)  # fmt: skip
        if not math.isfinite(ev["loss"]):
            what = {"val": "validation", "test": "test"}[name]
            raise TrainingDiverged(
                f"the {what} loss ({LOSS_NAMES[loss_kind(self.net)]}) became {ev['loss']} "
                f"after epoch {self.epoch + 1}; training stopped and that epoch's checkpoint "
                f"was not saved. {self._last_good()}. Try a smaller learning rate (--lr)."
            )
        return ev

    def _check_weights(self, weights: dict[str, np.ndarray]) -> None:
        bad = [k.split(".", 1)[1] for k, v in weights.items() if not np.isfinite(v).all()]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise TrainingDiverged(
                f"the weights became NaN or infinite in epoch {self.epoch + 1} "
                f"({', '.join(bad[:3])}{more}); training stopped and that epoch's checkpoint "
                f"was not saved. {self._last_good()}. Try a smaller learning rate (--lr)."
            )

    def _end_epoch(self, metrics, bar: ProgressBar, sums: dict[str, Any], lr: float,
                   steps: int, train_time: float) -> dict[str, Any]:  # fmt: skip
        """Evaluate, then log the epoch's line and write its checkpoint, in that order: a
        crash between the two leaves a line that a resumed run drops."""
        t, data = self.net.train, self.data
        name = data.test_name
        ev = self._evaluate(data.monitored, name)
        final = {}
        if data.val is not None and data.test is not None and self.epoch + 1 == self.epochs:
            final = self._evaluate(data.test, "test")  # the test set, once, at the end
        weights = self.weights()
        self._check_weights(weights)
        cut = self.schedule.observe(ev["top1_error"])
        self.epoch += 1
        seen = sums["seen"]
        last = {"epoch": self.epoch, "train_loss": sums["loss_sum"] / steps,
                "train_err": sums["wrong"] / seen, f"{name}_loss": ev["loss"],
                f"{name}_err": ev["top1_error"], f"{name}_top5_err": ev["top5_error"]}  # fmt: skip
        if final:
            last.update(test_loss=final["loss"], test_err=final["top1_error"],
                        test_top5_err=final["top5_error"])  # fmt: skip
        last.update(lr=lr, images_per_s=seen / train_time, seconds=train_time)
        if self.comm.size > 1:
            last.update(ranks=self.comm.size, allreduce_s_per_step=sums["comm_s"] / steps)
        last["steps"] = sums["steps"]
        self.history.append(last)
        metrics.write(last)  # first the line, then the checkpoint (see the docstring)
        self.save(weights)
        summary = {"loss": last["train_loss"], "train_err": last["train_err"]}
        for key in ("val_err", "test_err"):
            if key in last:
                summary[key] = last[key]
        summary.update(lr=lr, images_per_s=last["images_per_s"], seconds=train_time)
        bar.close(summary)
        if cut and not self.quiet:
            print(f"  validation error stopped improving: learning rate x"
                  f"{t['schedule']['factor']:g}", file=self.stream)  # fmt: skip
        return last

    def _last_good(self) -> str:
        """Names the checkpoint this run wrote or resumed from, never an older run's."""
        if self.checkpoint_epoch is None:
            return "This run has written no checkpoint yet"
        return (f"The last good checkpoint is {self.out / CHECKPOINT} "
                f"(epoch {self.checkpoint_epoch})")  # fmt: skip

    def _diverged(self, loss: float, epoch: int, step: int, lr: float) -> None:
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {epoch + 1}, step {step + 1} (learning rate "
            f"{lr:g}); training stopped. {self._last_good()}. Try a smaller learning rate "
            "(--lr)."
        )


class _NoMetrics:
    """The metrics log of ranks other than 0: only rank 0 writes."""

    def write(self, record) -> None:
        pass


def load_weights(cnet, arrays: dict[str, np.ndarray], path) -> None:
    """Load `param.*` and `state.*` arrays of a checkpoint into a compiled net.

    Refuses (DataError naming the file and the arrays) weights that are NaN or infinite:
    a diverged run's, which would only give NaN outputs.
    """
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param.")}
    params.update({k[6:]: v for k, v in arrays.items() if k.startswith("state.")})
    bad = [k for k, v in params.items()
           if np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()]  # fmt: skip
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{path}: the weights are NaN or infinite ({', '.join(bad[:3])}{more}): "
                        "the checkpoint of a diverged run cannot be used")  # fmt: skip
    try:
        cnet.set_params(params)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: does not fit this network: {e}") from None


def recorded_data(net: Network, checkpoint: str | Path, meta: dict[str, Any],
                  spec: str | None = None, limit: int | None = None,
                  validate: int | None = None, allow_other_data: bool = False,
                  training: bool = True, warn=None) -> Data:  # fmt: skip
    """The data for continuing (training=True) or evaluating a checkpoint's run.

    Without `spec` (--data) the data set recorded in the checkpoint is loaded, with the
    recorded --limit and validate unless given; the file's own data when the checkpoint
    records none (an older netdsl: a warning says the data cannot be verified). Data
    whose fingerprint, normalisation or class count (and for training: limit, validate)
    differ from the record is refused with a DataError saying what differs, unless
    `allow_other_data` (then a warning). Warnings go to `warn` (default stderr).
    """
    warn = sys.stderr if warn is None else warn
    recorded = meta.get("data")
    if not isinstance(recorded, dict):
        data = prepare_data(net, spec, limit, validate)
        print(f"warning: {checkpoint} records no data set (written by an older netdsl): "
              f"cannot verify that {describe_data(data.record or {})} is the data it was "
              "trained on", file=warn)  # fmt: skip
        return data
    from_record = spec is None
    if from_record:
        spec = recorded.get("spec") if isinstance(recorded.get("spec"), str) else None
    if validate is None and isinstance(recorded.get("validate"), int):
        validate = recorded["validate"]
    if training and limit is None and isinstance(recorded.get("limit"), int):
        limit = recorded["limit"]
    try:
        data = prepare_data(net, spec, limit if training else None, validate)
    except DataError as e:
        if from_record:
            raise DataError(f"{e}\n(the data set recorded in {checkpoint}; if it moved, give "
                            "its new place with --data)") from None  # fmt: skip
        raise
    diffs = data_differences(recorded, data.record or {}, training=training)
    if diffs:
        if not allow_other_data:
            raise DataError(f"{checkpoint}: the run was trained on other data: "
                            f"{'; '.join(diffs)}. Give the recorded data (or leave out "
                            "--data), or pass --allow-other-data to use this data "
                            "anyway")  # fmt: skip
        print(f"warning: {checkpoint}: using other data than the run was trained on "
              f"(--allow-other-data): {'; '.join(diffs)}", file=warn)  # fmt: skip
    return data


def fit_file(path: str | Path, *, epochs: int | None = None, batch: int | None = None,
             lr: float | None = None, device: str = "cpu", data: str | None = None,
             out: str | Path | None = None, seed: int | None = None, resume: bool = False,
             quiet: bool = False, limit: int | None = None, stream=None,
             comm: Communicator | None = None, overwrite: bool = False,
             validate: int | None = None, allow_other_data: bool = False,
             tensorboard: str | Path | bool | None = None, init_from: str | Path | None = None,
             init_partial: bool = False, workers: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a .net file as `netdsl train` does; flags override the train section.

    The output folder belongs to one run: a folder holding another run's files
    (runinfo.RUN_FILES) is refused (DataError) unless `resume` continues that run or
    `overwrite` deletes those files first (other files stay). `resume` uses the data
    set recorded in the checkpoint unless `data` is given, and refuses other data unless
    `allow_other_data`. `validate` overrides the train section's `validate N`.
    `tensorboard` (a folder, or True for OUT/tensorboard) also logs every metrics line
    and the first conv layer's filters for TensorBoard (tensorboard.py; needs tensorboardX).
    `workers` loader processes make the batches (loader.py; default: by the data's kind
    and the machine's cores; 0: in this process).

    With an MPI communicator (distributed.py) the batch is the global batch, split
    evenly over the ranks; only rank 0 prints and writes.

    >>> fit_file("nets/lenet5.net", epochs=1, out="runs/lenet5")  # doctest: +SKIP
    """
    from .. import __version__, load
    from ..backends import compile_network, resolve_device
    from ..passes.lint import print_warnings
    from ..trainconf import check_lr_against_schedule

    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    net = load(path)
    if lr is not None:  # --lr must keep the schedule's min_lr below it, as the file's lr must
        check_lr_against_schedule(net.train, lr, "--lr")
    t = net.train
    seed = t["seed"] if seed is None else seed
    comm = comm or Communicator()
    if comm.is_root:
        print_warnings(net)  # the same located warnings `netdsl check` prints, even with --quiet
    if not comm.is_root:
        quiet, stream = True, NullStream()
    out = Path(out or Path("runs") / net.name)
    if comm.is_root:
        check_run_dir(out, resume=resume, overwrite=overwrite)  # before any slow work
    if tensorboard:
        from .tensorboard import check_board_dir

        tensorboard = out / "tensorboard" if tensorboard is True else Path(tensorboard)
        if comm.is_root:
            check_board_dir(tensorboard, resume=resume, overwrite=overwrite)
    loaded = load_checkpoint(out / CHECKPOINT) if resume else None
    global_batch = batch or t["batch"]
    if comm.size > 1 and resolve_device(device) == "cuda":
        comm.select_gpu()  # one rank per GPU, before any device memory is allocated
    cnet = compile_network(net, device=device, batch=local_batch(global_batch, comm.size),
                           seed=seed)  # fmt: skip
    warn = sys.stderr if comm.is_root else NullStream()
    if init_from is not None:  # a safetensors state_dict; all must fit unless init_partial
        from ..export.safetensors import init_compiled

        init_compiled(cnet, init_from, init_partial, warn=warn)
    if loaded is not None:
        ds = recorded_data(net, out / CHECKPOINT, loaded[1], data, limit, validate,
                           allow_other_data=allow_other_data, warn=warn)  # fmt: skip
    else:
        ds = prepare_data(net, data, limit=limit, validate=validate)
    trainer = Trainer(cnet, ds, out, epochs or t["epochs"], lr=lr, quiet=quiet, stream=stream,
                      comm=comm, workers=workers)  # fmt: skip
    info = {"netdsl": __version__, "started": now_iso(), "command": command_line(),
            "network": net.name, "net_file": str(Path(path).resolve()),
            "net_sha256": file_sha256(path), "loss": loss_kind(net), "seed": seed,
            "batch": global_batch, "epochs": trainer.epochs,
            "lr": trainer.schedule.base_lr, "device": cnet.device,
            "ranks": comm.size, "data": ds.record}  # fmt: skip
    if loaded is not None:
        trainer.resume(out / CHECKPOINT, loaded=loaded)
        if comm.is_root:
            _note_resume(out, info, trainer.epoch)
        if not quiet:
            how = "" if data else f"; data {describe_data(ds.record or {})}, as recorded"
            print(f"resuming {net.name} after epoch {trainer.epoch} from {out / CHECKPOINT}"
                  f"{how}", file=stream)  # fmt: skip
    else:
        if comm.is_root:
            gone = clear_run_files(out) if overwrite else []
            if gone and not quiet:
                print(f"--overwrite: removed {', '.join(gone)} from {out}/", file=stream)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / RUN_FILE, info)
        if not quiet:
            ranks = f" ({cnet.batch} on each of {comm.size} MPI ranks)" if comm.size > 1 else ""
            held = (f" (+{format_count(len(ds.val.y))} held out for validation)"
                    if ds.val is not None else "")  # fmt: skip
            print(f"training {net.name}: {format_count(len(ds.train.y))} images{held}, batch "
                  f"{global_batch}{ranks}, {plural(trainer.epochs, 'epoch')}, {cnet.device}, "
                  f"output {out}/", file=stream)  # fmt: skip
    if tensorboard and comm.is_root:
        from .tensorboard import TensorBoardLogger

        trainer.loggers.append(TensorBoardLogger(tensorboard, cnet, overwrite=overwrite))
    t0 = time.perf_counter()
    result = {k: v for k, v in trainer.fit().items() if k != "steps"}  # result.json: no curve
    result = dict(result, wall_seconds=time.perf_counter() - t0, out=str(out),
                  loss_kind=loss_kind(net))  # fmt: skip
    if comm.is_root:
        write_json_atomic(out / "result.json", result)
    return result


def _note_resume(out: Path, info: dict[str, Any], epoch: int) -> None:
    """Add this resumption to OUT/run.json (written anew when an older run lacks one)."""
    old = read_run_info(out)
    entry = {"time": info["started"], "after_epoch": epoch, "command": info["command"],
             "epochs": info["epochs"]}  # fmt: skip
    if old is None:
        old = dict(info, started=None)  # the start was not recorded
    elif old.get("data") != info["data"]:
        entry["data"] = info["data"]  # continued on other data (--allow-other-data)
    old.setdefault("resumed", []).append(entry)
    write_json_atomic(out / RUN_FILE, old)
