"""The training loop: data, shuffling by seed, augmentation, steps, evaluation, checkpoints.

One epoch: permute the training set with the run's generator, take full batches,
augment, forward + backward, update; then evaluate on the test (or validation) set,
append a line to metrics.jsonl and atomically write checkpoint.npz. A resumed run
restores the weights, optimizer, schedule and both generators, so on the CPU it
reaches bit-for-bit the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from ..ir import Network
from ..ops.loss import topk_errors
from . import augment
from .checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from .data import Dataset, load_dataset, to_float
from .distributed import Communicator, NullStream, local_batch, shard_bounds
from .metrics import MetricsWriter
from .optimizer import Optimizer
from .progress import ProgressBar, format_count
from .schedule import Schedule

CHECKPOINT = "checkpoint.npz"


class TrainingDiverged(NetdslError):
    """The loss became NaN or infinite; training stopped and the last checkpoint stands."""

    exit_code = 3


@dataclass
class Split:
    x: np.ndarray  # (N, C, H, W) float32, normalised
    y: np.ndarray  # (N,) int64


@dataclass
class Data:
    train: Split
    test: Split  # the test set, or the held-out validation images with `validate N`
    test_name: str
    num_classes: int
    pca: tuple[np.ndarray, np.ndarray] | None = None  # eigenvalues, eigenvectors for lighting


def prepare_data(net: Network, spec: str | None = None, limit: int | None = None) -> Data:
    """Load the dataset of the train section (or `spec`), normalised and fitted to the input."""
    t = net.train
    base = Path(net.file).parent
    if not (spec or t["data"]):
        raise DataError(f"{net.file}: no dataset: add `data mnist` (or a path) to the train "
                        "section, or pass --data")  # fmt: skip
    ds: Dataset = load_dataset(spec or t["data"], base_dir=base)
    norm = t["normalize"] or {"mean": [0.0], "std": [1.0]}
    c = net.input.out_shape[0]
    if ds.x_train.shape[1] != c:
        raise DataError(f"{ds.name}: images have {ds.x_train.shape[1]} channels but the input "
                        f"layer {net.input.name} takes {c}")  # fmt: skip

    def prep(x: np.ndarray) -> np.ndarray:
        return _fit_to_input(to_float(x, norm["mean"], norm["std"]), net, train=True)

    x_train, y_train = ds.x_train, ds.y_train
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if t["validate"]:
        n_val = t["validate"]
        if n_val >= len(x_train):
            raise DataError(f"{ds.name}: validate {n_val} leaves no training images")
        test = Split(prep(x_train[-n_val:]), y_train[-n_val:].astype(np.int64))
        x_train, y_train, name = x_train[:-n_val], y_train[:-n_val], "val"
    else:
        if not ds.has_test:
            raise DataError(f"{ds.name}: no test set; add `validate N` to the train section "
                            "to hold out N training images")  # fmt: skip
        test, name = Split(prep(ds.x_test), ds.y_test.astype(np.int64)), "test"
    train = Split(prep(x_train), y_train.astype(np.int64))
    k = net.loss.in_shapes[0][0] if net.loss else ds.num_classes
    if int(max(train.y.max(), test.y.max())) >= k:
        raise DataError(f"{ds.name}: labels go up to {int(train.y.max())} but the network "
                        f"has {k} outputs")  # fmt: skip
    pca = None
    if any(a["kind"] == "lighting" for a in t["augment"]):
        pca = augment.pca_of_pixels(train.x)
    return Data(train, test, name, k, pca)


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


def augment_batch(x: np.ndarray, specs, shape, rng: np.random.Generator, pca) -> np.ndarray:
    """Random crop to the input size, flip, lighting, in the order written."""
    _, h, w = shape
    cropped = False
    for a in specs:
        if a["kind"] == "crop":
            x = augment.random_crop(x, (h, w), rng, pad=a["pad"])
            cropped = True
        elif a["kind"] == "flip":
            x = augment.hflip(x, rng, p=a["p"])
        elif a["kind"] == "lighting":
            x = augment.pca_lighting(x, rng, a["std"], *pca)
    if not cropped and x.shape[2:] != (h, w):
        x = augment.center_crop(x, (h, w))
    return x


def evaluate(cnet, split: Split, crops: int = 1, comm=None) -> dict[str, float]:
    """Loss, top-1 and top-5 error over a split (eval mode; ten views with crops=10).

    With a communicator each rank takes a contiguous share of the split and the sums
    are added over the ranks.
    """
    shape = cnet.net.input.out_shape
    n, b = len(split.y), cnet.batch
    lo, hi = (0, n) if comm is None else shard_bounds(comm.rank, comm.size, n)
    loss_sum, err1, err5 = 0.0, 0, 0
    for i in range(lo, hi, b):
        xb, yb = split.x[i : min(i + b, hi)], split.y[i : min(i + b, hi)]
        if crops == 10 and xb.shape[2:] != shape[1:]:
            views = augment.ten_crop(xb, shape[1:])
            probs = np.mean([_softmax(cnet.forward(v)) for v in views], axis=0)
            scores = np.log(np.maximum(probs, 1e-30))
        else:
            if xb.shape[2:] != shape[1:]:
                xb = augment.center_crop(xb, shape[1:])
            scores = cnet.forward(xb).astype(np.float64)
        logp = scores - _logsumexp(scores)
        loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
        err1 += topk_errors(scores, yb, 1)
        err5 += topk_errors(scores, yb, min(5, scores.shape[1]))
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
                 quiet: bool = False, stream=None,
                 comm: Communicator | None = None) -> None:  # fmt: skip
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
        self.optimizer = Optimizer(
            opt, cnet.slots, cnet.theta.size, device=cnet.device, like=cnet.theta
        )
        self.schedule = Schedule(t["schedule"], opt["lr"], epochs)
        self.rng = np.random.default_rng(cnet.seed)  # shuffling and augmentation
        self.epoch = 0  # epochs completed
        self.quiet, self.stream = quiet, stream
        self.history: list[dict[str, Any]] = []

    # ---- checkpoints
    def save(self) -> Path | None:
        c = self.cnet
        dropout_rngs = self.comm.gather_obj(rng_state(c.rng))
        if not self.comm.is_root:
            return None
        arrays = {f"param.{k}": v for k, v in c.params.items()}
        arrays.update({f"state.{k}": v for k, v in c.buffers.items()})  # host copies
        arrays.update(self.optimizer.state_arrays())
        meta = {"network": self.net.name, "epoch": self.epoch, "optim_t": self.optimizer.t,
                "rng": rng_state(self.rng), "dropout_rng": dropout_rngs[0],
                "schedule": self.schedule.state, "batch": self.global_batch, "seed": c.seed,
                "history": self.history}  # fmt: skip
        if self.comm.size > 1:
            meta["dropout_rngs"] = dropout_rngs  # one per rank
        path = self.out / CHECKPOINT
        save_checkpoint(path, arrays, meta)
        return path

    def resume(self, path: str | Path | None = None) -> None:
        path = Path(path or self.out / CHECKPOINT)
        arrays, meta = load_checkpoint(path)
        if meta.get("network") != self.net.name:
            raise DataError(f"{path}: checkpoint is of network '{meta.get('network')}', "
                            f"not '{self.net.name}'")  # fmt: skip
        if meta.get("batch") != self.global_batch:
            raise DataError(f"{path}: checkpoint was trained with batch {meta.get('batch')}; "
                            f"resume with --batch {meta.get('batch')}")  # fmt: skip
        load_weights(self.cnet, arrays, path)
        self.optimizer.load_state(arrays, int(meta["optim_t"]))
        self.rng = restore_rng(meta["rng"], path)
        self.cnet.rng = restore_rng(meta["dropout_rng"], path)
        if self.comm.size > 1:
            rank, states = self.comm.rank, meta.get("dropout_rngs") or []
            if len(states) == self.comm.size:
                self.cnet.rng = restore_rng(states[rank], path)
            else:  # saved with another number of ranks: a fresh stream per rank
                self.cnet.rng = np.random.default_rng([self.cnet.seed, rank, int(meta["epoch"])])
        self.schedule.state.update(meta["schedule"])
        self.epoch = int(meta["epoch"])
        self.history = list(meta.get("history", []))

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        """Train until `epochs` are done; returns the last epoch's metrics."""
        # overflow shows up as a NaN/Inf loss, which _diverged reports; numpy's warnings
        # about it on the way would only be noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        c, t, comm = self.cnet, self.net.train, self.comm
        if comm.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
        train, gb = self.data.train, self.global_batch
        steps = len(train.y) // gb
        if steps == 0:
            raise DataError(f"{len(train.y)} training images make no full batch of {gb}")
        shape = self.net.input.out_shape
        last: dict[str, Any] = self.history[-1] if self.history else {}
        # every rank starts from rank 0's weights, batch-norm statistics and optimizer state
        comm.broadcast_(c.theta, *c.state.values(), self.optimizer.v, self.optimizer.m)
        writer = MetricsWriter(self.out) if comm.is_root else nullcontext(_NoMetrics())
        with writer as metrics:
            while self.epoch < self.epochs:
                e = self.epoch
                bar = ProgressBar(steps, e + 1, self.epochs, stream=self.stream,
                                  is_tty=False if self.quiet else None)  # fmt: skip
                order = self.rng.permutation(len(train.y))
                t0 = time.perf_counter()
                loss_sum, wrong, seen = 0.0, 0, 0
                comm_before = comm.comm_seconds
                # A step's loss is read one step late: while the GPU runs step s the host
                # reads, augments and uploads batch s+1 (on the CPU nothing changes).
                pending: tuple[int, float, int] | None = None  # (step, lr, images) unread
                for s in range(steps + 1):
                    if s < steps:
                        xb, yb = self._rank_batch(order[s * gb : (s + 1) * gb], shape)
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
                        if not self.quiet:
                            elapsed = time.perf_counter() - t0
                            bar.update(ps, loss_sum / (ps + 1), 1 - wrong / seen,
                                       seen * comm.size / elapsed, plr)  # fmt: skip
                    pending = (s, lr, len(yb)) if s < steps else None
                train_time = time.perf_counter() - t0
                if comm.size > 1:  # the epoch's sums over every rank's share of the batches
                    comm.average_state_(c.state)  # batch-norm running statistics
                    loss_sum, wrong, seen = comm.reduce_sums([loss_sum / comm.size, wrong, seen])
                    wrong, seen = int(wrong), int(seen)
                ev = evaluate(c, self.data.test, crops=t["test_crops"],
                              comm=comm if comm.size > 1 else None)  # fmt: skip
                cut = self.schedule.observe(ev["top1_error"])
                self.epoch += 1
                last = {"epoch": self.epoch, "train_loss": loss_sum / steps,
                        "train_err": wrong / seen, f"{self.data.test_name}_loss": ev["loss"],
                        f"{self.data.test_name}_err": ev["top1_error"],
                        f"{self.data.test_name}_top5_err": ev["top5_error"], "lr": lr,
                        "images_per_s": seen / train_time, "seconds": train_time}  # fmt: skip
                if comm.size > 1:
                    last.update(ranks=comm.size, allreduce_s_per_step=(
                        comm.comm_seconds - comm_before) / steps)  # fmt: skip
                self.history.append(last)
                self.save()  # before the metrics line: a resumed run never repeats a line
                metrics.write(last)
                summary = {
                    "loss": last["train_loss"],
                    "train_err": last["train_err"],
                    "test_err": ev["top1_error"],
                    "lr": lr,
                    "images_per_s": last["images_per_s"],
                    "seconds": train_time,
                }
                if self.data.test_name == "val":
                    summary["val_err"] = summary.pop("test_err")
                bar.close(summary)
                if cut and not self.quiet:
                    print(f"  validation error stopped improving: learning rate x"
                          f"{t['schedule']['factor']:g}", file=self.stream)  # fmt: skip
        return last

    def _rank_batch(self, idx: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
        """This rank's slice [r*b/W, (r+1)*b/W) of the global batch idx, augmented.

        Random augmentation runs over the whole global batch on every rank (then sliced),
        so every rank's generator draws the same numbers and W ranks see exactly the
        images one process would; without it only this rank's images are read.
        """
        t, train = self.net.train, self.data.train
        lo, hi = self.shard
        if t["augment"]:
            xb = augment_batch(train.x[idx], t["augment"], shape, self.rng, self.data.pca)
            return xb[lo:hi], train.y[idx[lo:hi]]
        idx = idx[lo:hi]
        xb = augment_batch(train.x[idx], t["augment"], shape, self.rng, self.data.pca)
        return xb, train.y[idx]

    def _diverged(self, loss: float, epoch: int, step: int, lr: float) -> None:
        ck = self.out / CHECKPOINT
        where = (f"the last good checkpoint is {ck} (epoch {self.epoch})" if ck.exists()
                 else "no checkpoint was written yet")  # fmt: skip
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {epoch + 1}, step {step + 1} (learning rate "
            f"{lr:g}); training stopped. {where}. Try a smaller learning rate (--lr)."
        )


class _NoMetrics:
    """The metrics log of ranks other than 0: only rank 0 writes."""

    def write(self, record) -> None:
        pass


def load_weights(cnet, arrays: dict[str, np.ndarray], path) -> None:
    """Load `param.*` and `state.*` arrays of a checkpoint into a compiled net."""
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param.")}
    params.update({k[6:]: v for k, v in arrays.items() if k.startswith("state.")})
    try:
        cnet.set_params(params)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: does not fit this network: {e}") from None


def fit_file(path: str | Path, *, epochs: int | None = None, batch: int | None = None,
             lr: float | None = None, device: str = "cpu", data: str | None = None,
             out: str | Path | None = None, seed: int | None = None, resume: bool = False,
             quiet: bool = False, limit: int | None = None, stream=None,
             comm: Communicator | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a .net file as `netdsl train` does; flags override the train section.

    With an MPI communicator (distributed.py) the batch is the global batch, split
    evenly over the ranks; only rank 0 prints and writes.

    >>> fit_file("nets/lenet5.net", epochs=1, out="runs/lenet5")  # doctest: +SKIP
    """
    from .. import load
    from ..compiler import compile_network, resolve_device

    net = load(path)
    t = net.train
    seed = t["seed"] if seed is None else seed
    comm = comm or Communicator()
    if not comm.is_root:
        quiet, stream = True, NullStream()
    global_batch = batch or t["batch"]
    if comm.size > 1 and resolve_device(device) == "cuda":
        comm.select_gpu()  # one rank per GPU, before any device memory is allocated
    cnet = compile_network(net, device=device, batch=local_batch(global_batch, comm.size),
                           seed=seed)  # fmt: skip
    ds = prepare_data(net, data, limit=limit)
    out = Path(out or Path("runs") / net.name)
    trainer = Trainer(cnet, ds, out, epochs or t["epochs"], lr=lr, quiet=quiet, stream=stream,
                      comm=comm)  # fmt: skip
    if resume:
        if not (out / CHECKPOINT).exists():
            raise DataError(f"{out / CHECKPOINT}: no checkpoint to resume from")
        trainer.resume()
        if not quiet:
            print(f"resuming {net.name} after epoch {trainer.epoch} from {out / CHECKPOINT}",
                  file=stream)  # fmt: skip
    elif not quiet:
        ranks = f" ({cnet.batch} on each of {comm.size} MPI ranks)" if comm.size > 1 else ""
        print(f"training {net.name}: {format_count(len(ds.train.y))} images, batch "
              f"{global_batch}{ranks}, {trainer.epochs} epochs, {cnet.device}, output {out}/",
              file=stream)  # fmt: skip
    t0 = time.perf_counter()
    result = trainer.fit()
    result = dict(result, wall_seconds=time.perf_counter() - t0, out=str(out))
    if comm.is_root:
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
