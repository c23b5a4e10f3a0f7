"""`netdsl show confusion`: the test-set confusion matrix and the most confused pairs.

Predictions are made as `netdsl eval` makes them (the ten views with `test_crops 10`), so
the matrix's diagonal gives the accuracy eval reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..ir import Network
from . import common


def predictions(cnet, x: np.ndarray, crops: int = 1) -> np.ndarray:
    """The predicted class of every image (N, C, H, W), as trainer.evaluate ranks them."""
    from ..train import augment
    from ..train.trainer import _softmax, loss_kind

    shape = cnet.net.input.out_shape
    mse = loss_kind(cnet.net) == "mse"
    out = np.empty(len(x), np.int64)
    for i in range(0, len(x), cnet.batch):
        xb = x[i : i + cnet.batch]
        if crops == 10 and xb.shape[2:] != shape[1:]:
            views = [cnet.forward(v).astype(np.float64) for v in augment.ten_crop(xb, shape[1:])]
            scores = np.mean(views if mse else [_softmax(v) for v in views], axis=0)
        else:
            scores = cnet.forward(common.fit_views(cnet.net, xb)).astype(np.float64)
        out[i : i + len(xb)] = np.argmax(scores, axis=1)
    return out


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """counts[true, predicted] (k, k) int64."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k).astype(np.int64)


def most_confused(counts: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The `top` largest off-diagonal cells as (true, predicted, count), largest first
    (ties: row then column order); cells of zero are left out."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(int(i // off.shape[1]), int(i % off.shape[1])) for i in flat]
    return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def run(args) -> int:
    """The command's handler."""
    net = common.load_net(args.file)
    arrays, meta = common.checkpoint_params(net, args.checkpoint)
    data = common.load_data(net, args.checkpoint, meta, args.data, args.allow_other_data)
    split, split_name = common.eval_split(data)
    cnet = common.compiled(net, arrays, args.checkpoint, batch=min(256, len(split.y)))
    k = data.num_classes
    counts = confusion_matrix(split.y, predictions(cnet, split.x, net.train["test_crops"]), k)
    names = common.class_names(data, (data.record or {}).get("name"), k)
    pairs = most_confused(counts, args.top)
    n = int(counts.sum())
    summary: dict[str, Any] = {
        "split": split_name,
        "images": n,
        "accuracy": float(np.trace(counts) / n),
        "classes": names,
        "matrix": counts.tolist(),
        "most_confused": [
            {
                "true": names[t],
                "predicted": names[p],
                "count": c,
                "fraction_of_true": c / int(counts[t].sum()),
            }  # fmt: skip
            for t, p, c in pairs
        ],
    }
    if not args.json:
        print(f"{split_name}: {n:,} images, accuracy {100 * summary['accuracy']:.2f}%")
        if pairs:
            print("most confused (true -> predicted):")
        for row in summary["most_confused"]:
            print(f"  {row['true']} -> {row['predicted']}: {row['count']:,} images "
                  f"({100 * row['fraction_of_true']:.1f}% of {row['true']})")  # fmt: skip
    out = common.picture_path(args, summary, "confusion.png")
    if out is None:
        return 0
    draw(net, counts, names, summary, out)
    common.wrote(out)
    return 0


def draw(net: Network, counts: np.ndarray, names: list[str], summary: dict[str, Any],
         out: Path) -> None:  # fmt: skip
    """Cells coloured by the fraction of the true class (rows sum to 1), counts written in."""
    k = len(names)
    rows = counts.sum(axis=1, keepdims=True)
    frac = counts / np.maximum(rows, 1)
    side = min(12.0, max(4.5, 0.5 * k + 2))
    fig = common.new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib.colors import PowerNorm

    # a power scale, so that a 1% confusion is visible beside a 99% diagonal
    img = ax.imshow(frac, cmap="Blues", norm=PowerNorm(0.4, vmin=0, vmax=1),
                    interpolation="nearest")  # fmt: skip
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        ticks = np.arange(k)
        ax.set_xticks(ticks, names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=8)
        ax.set_yticks(ticks, names, fontsize=8)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if counts[t, p]:
                    ax.text(p, t, f"{counts[t, p]:,}", ha="center", va="center", fontsize=7,
                            color="white" if frac[t, p] > 0.3 else "black")  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{net.name}: {summary['split']} confusion, {summary['images']:,} images, "
                 f"accuracy {100 * summary['accuracy']:.2f}%", fontsize=10)  # fmt: skip
    fig.tight_layout()
    common.save_png(fig, out, dpi=80)
