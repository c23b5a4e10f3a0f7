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
    """Load the dataset named in the train section (or `spec`), normalised and fitted to the input."""
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


def evaluate(cnet, split: Split, crops: int = 1) -> dict[str, float]:
    """Loss, top-1 and top-5 error over a split (eval mode; ten views with crops=10)."""
    shape = cnet.net.input.out_shape
    n, b = len(split.y), cnet.batch
    loss_sum, err1, err5 = 0.0, 0, 0
    for i in range(0, n, b):
        xb, yb = split.x[i : i + b], split.y[i : i + b]
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
                 quiet: bool = False, stream=None) -> None:  # fmt: skip
        self.cnet, self.data = cnet, data
        self.net: Network = cnet.net
        self.out = Path(out)
        self.epochs = epochs
        t = self.net.train
        opt = dict(t["optimizer"])
        if lr is not None:
            opt["lr"] = lr
        self.optimizer = Optimizer(opt, cnet.slots, cnet.theta.size)
        self.schedule = Schedule(t["schedule"], opt["lr"], epochs)
        self.rng = np.random.default_rng(cnet.seed)  # shuffling and augmentation
        self.epoch = 0  # epochs completed
        self.quiet, self.stream = quiet, stream
        self.history: list[dict[str, Any]] = []

    # ---- checkpoints
    def save(self) -> Path:
        c = self.cnet
        arrays = {f"param.{k}": v for k, v in c.params.items()}
        arrays.update({f"state.{k}": v for k, v in c.state.items()})
        arrays.update(self.optimizer.state_arrays())
        meta = {"network": self.net.name, "epoch": self.epoch, "optim_t": self.optimizer.t,
                "rng": rng_state(self.rng), "dropout_rng": rng_state(c.rng),
                "schedule": self.schedule.state, "batch": c.batch, "seed": c.seed,
                "history": self.history}  # fmt: skip
        path = self.out / CHECKPOINT
        save_checkpoint(path, arrays, meta)
        return path

    def resume(self, path: str | Path | None = None) -> None:
        path = Path(path or self.out / CHECKPOINT)
        arrays, meta = load_checkpoint(path)
        if meta.get("network") != self.net.name:
            raise DataError(f"{path}: checkpoint is of network '{meta.get('network')}', "
                            f"not '{self.net.name}'")  # fmt: skip
        if meta.get("batch") != self.cnet.batch:
            raise DataError(f"{path}: checkpoint was trained with batch {meta.get('batch')}; "
                            f"resume with --batch {meta.get('batch')}")  # fmt: skip
        load_weights(self.cnet, arrays, path)
        self.optimizer.load_state(arrays, int(meta["optim_t"]))
        self.rng = restore_rng(meta["rng"], path)
        self.cnet.rng = restore_rng(meta["dropout_rng"], path)
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
        c, t = self.cnet, self.net.train
        self.out.mkdir(parents=True, exist_ok=True)
        train = self.data.train
        steps = len(train.y) // c.batch
        if steps == 0:
            raise DataError(f"{len(train.y)} training images make no full batch of {c.batch}")
        shape = self.net.input.out_shape
        last: dict[str, Any] = self.history[-1] if self.history else {}
        with MetricsWriter(self.out) as metrics:
            while self.epoch < self.epochs:
                e = self.epoch
                bar = ProgressBar(steps, e + 1, self.epochs, stream=self.stream,
                                  is_tty=False if self.quiet else None)  # fmt: skip
                order = self.rng.permutation(len(train.y))
                t0 = time.perf_counter()
                loss_sum, wrong, seen = 0.0, 0, 0
                for s in range(steps):
                    idx = order[s * c.batch : (s + 1) * c.batch]
                    xb = augment_batch(train.x[idx], t["augment"], shape, self.rng, self.data.pca)
                    yb = train.y[idx]
                    lr = self.schedule.lr(e, s / steps)
                    loss = c.step_grads(xb, yb)
                    if not math.isfinite(loss):
                        self._diverged(loss, e, s, lr)
                    self.optimizer.step(c.theta, c.grad, lr)
                    wrong += topk_errors(c.scores(), yb, 1)
                    loss_sum += loss
                    seen += len(yb)
                    if not self.quiet:
                        elapsed = time.perf_counter() - t0
                        bar.update(s, loss_sum / (s + 1), 1 - wrong / seen, seen / elapsed, lr)
                train_time = time.perf_counter() - t0
                ev = evaluate(c, self.data.test, crops=t["test_crops"])
                cut = self.schedule.observe(ev["top1_error"])
                self.epoch += 1
                last = {"epoch": self.epoch, "train_loss": loss_sum / steps,
                        "train_err": wrong / seen, f"{self.data.test_name}_loss": ev["loss"],
                        f"{self.data.test_name}_err": ev["top1_error"],
                        f"{self.data.test_name}_top5_err": ev["top5_error"], "lr": lr,
                        "images_per_s": seen / train_time, "seconds": train_time}  # fmt: skip
                self.history.append(last)
                self.save()  # before the metrics line: a resumed run never repeats a line
                metrics.write(last)
                summary = {"loss": last["train_loss"], "train_err": last["train_err"],
                           "test_err": ev["top1_error"], "lr": lr,
                           "images_per_s": last["images_per_s"], "seconds": train_time}
                if self.data.test_name == "val":
                    summary["val_err"] = summary.pop("test_err")
                bar.close(summary)
                if cut and not self.quiet:
                    print(f"  validation error stopped improving: learning rate x"
                          f"{t['schedule']['factor']:g}", file=self.stream)  # fmt: skip
        return last

    def _diverged(self, loss: float, epoch: int, step: int, lr: float) -> None:
        ck = self.out / CHECKPOINT
        where = (f"the last good checkpoint is {ck} (epoch {self.epoch})" if ck.exists()
                 else "no checkpoint was written yet")  # fmt: skip
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {epoch + 1}, step {step + 1} (learning rate "
            f"{lr:g}); training stopped. {where}. Try a smaller learning rate (--lr).")


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
             quiet: bool = False, limit: int | None = None, stream=None) -> dict[str, Any]:
    """Train a .net file as `netdsl train` does; flags override the train section.

    >>> fit_file("nets/lenet5.net", epochs=1, out="runs/lenet5")  # doctest: +SKIP
    """
    from .. import load
    from ..compiler import compile_network

    net = load(path)
    t = net.train
    seed = t["seed"] if seed is None else seed
    cnet = compile_network(net, device=device, batch=batch or t["batch"], seed=seed)
    ds = prepare_data(net, data, limit=limit)
    out = Path(out or Path("runs") / net.name)
    trainer = Trainer(cnet, ds, out, epochs or t["epochs"], lr=lr, quiet=quiet, stream=stream)
    if resume:
        if not (out / CHECKPOINT).exists():
            raise DataError(f"{out / CHECKPOINT}: no checkpoint to resume from")
        trainer.resume()
        if not quiet:
            print(f"resuming {net.name} after epoch {trainer.epoch} from {out / CHECKPOINT}",
                  file=stream)  # fmt: skip
    elif not quiet:
        print(f"training {net.name}: {format_count(len(ds.train.y))} images, batch {cnet.batch}, "
              f"{trainer.epochs} epochs, {cnet.device}, output {out}/", file=stream)
    t0 = time.perf_counter()
    result = trainer.fit()
    result = dict(result, wall_seconds=time.perf_counter() - t0, out=str(out))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
