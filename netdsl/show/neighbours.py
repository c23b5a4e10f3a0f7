"""`netdsl show neighbours`: for a few test images, the training images whose feature
vectors at one layer are nearest (Euclidean), one row per query (AlexNet's Figure 4).

Every training image's features come from batched forward passes; the search is
||a||^2 + ||b||^2 - 2 a.b by matrix products over chunks of the training set, keeping
each query's best candidates, whose distances are then computed exactly (a - b), so an
image's distance to itself is exactly 0.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import Network
from . import common

CHUNK = 8192  # training vectors per matrix product: (Q x CHUNK) distances at a time
MAX_DRAWN = (32, 64)  # neighbours and queries a picture can show legibly


def nearest(queries: np.ndarray, base: np.ndarray, k: int,
            chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The k rows of base (N, F) nearest each row of queries (Q, F): indices (Q, k) and
    Euclidean distances (Q, k), nearest first (ties: the lower index first)."""
    q = np.asarray(queries, np.float64)
    k = min(k, len(base))
    extra = min(len(base), k + 8)  # candidates kept per chunk; re-ranked exactly below
    qn = np.einsum("ij,ij->i", q, q)[:, None]
    best_d = np.empty((len(q), 0))
    best_i = np.empty((len(q), 0), np.int64)
    for lo in range(0, len(base), chunk):
        b = np.asarray(base[lo : lo + chunk], np.float64)
        d2 = qn + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (q @ b.T)
        take = min(extra, d2.shape[1])
        part = np.argpartition(d2, take - 1, axis=1)[:, :take]
        best_d = np.concatenate([best_d, np.take_along_axis(d2, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + lo], axis=1)
        if best_d.shape[1] > extra:  # keep the running candidate list short
            keep = np.argpartition(best_d, extra - 1, axis=1)[:, :extra]
            best_d = np.take_along_axis(best_d, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    # exact distances of the candidates, then nearest first, the lower index on a tie
    diff = np.asarray(base[best_i], np.float64) - q[:, None, :]
    exact = np.sqrt(np.einsum("qcf,qcf->qc", diff, diff))
    order = np.lexsort((best_i, exact), axis=1)[:, :k]
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(exact, order, 1)


def query_indices(n: int, count: int) -> np.ndarray:
    """`count` image indices spread evenly over 0..n-1 (all of them when count >= n)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def run(args) -> int:
    """The command's handler."""
    net = common.load_net(args.file)
    valid = common.hidden_layers(net)
    layer = common.layer_named(net, args.layer or common.last_hidden(net), valid, "neighbours")
    drawing = not args.json or args.output
    if drawing and (args.k > MAX_DRAWN[0] or args.queries > MAX_DRAWN[1]):
        raise common.ShowUsageError(f"a picture holds at most {MAX_DRAWN[0]} neighbours (--k) "
                                    f"of {MAX_DRAWN[1]} queries (--queries); ask --json for "
                                    "more")  # fmt: skip
    arrays, meta = common.checkpoint_params(net, args.checkpoint)
    data = common.load_data(net, args.checkpoint, meta, args.data, args.allow_other_data)
    if args.query_split == "train":
        split, split_name = data.train, "training"
    else:
        split, split_name = common.eval_split(data)
    qi = query_indices(len(split.y), args.queries)
    cnet = common.compiled(net, arrays, args.checkpoint, batch=min(256, len(data.train.y)))
    t0 = time.perf_counter()
    base = common.forward_layers(cnet, data.train.x, [layer.name], flatten=True)[layer.name]
    t1 = time.perf_counter()
    q = common.forward_layers(cnet, split.x[qi], [layer.name], flatten=True)[layer.name]
    idx, dist = nearest(q, base, args.k)
    t2 = time.perf_counter()
    print(f"features of {len(base):,} training images at {layer.name} ({base.shape[1]:,} "
          f"values each): {t1 - t0:.1f}s; the {idx.shape[1]} nearest to {len(qi)} queries: "
          f"{t2 - t1:.2f}s", file=sys.stderr)  # fmt: skip
    names = common.class_names(data, (data.record or {}).get("name"), data.num_classes)
    summary = {
        "layer": layer.name,
        "features": int(base.shape[1]),
        "training_images": len(base),
        "query_split": split_name,
        "queries": [
            {
                "index": int(i),
                "label": int(split.y[i]),
                "neighbours": idx[r].tolist(),
                "labels": data.train.y[idx[r]].tolist(),
                "distances": dist[r].tolist(),
            }
            for r, i in enumerate(qi)
        ],
    }
    out = common.picture_path(args, summary, f"neighbours-{layer.name}.png")
    if out is None:
        return 0
    draw(net, split.x, data.train.x, summary, names, out)
    common.wrote(out)
    return 0


def draw(net: Network, queries: np.ndarray, train: np.ndarray, summary: dict[str, Any],
         names: list[str], out: Path) -> None:  # fmt: skip
    """One row per query: the query, a gap, then its neighbours, nearest first; a
    neighbour's caption is red when its class differs from the query's."""
    rows = summary["queries"]
    k = max(len(r["neighbours"]) for r in rows)
    cell = 1.15
    fig = common.new_figure(cell * (k + 1.3), cell * len(rows) + 0.5)
    fig.suptitle(f"{net.name}: nearest training images at {summary['layer']} "
                 f"({summary['features']:,} features, Euclidean)", fontsize=9)  # fmt: skip
    top = 1 - 0.55 / (cell * len(rows) + 0.5)  # room for the title
    grid = fig.add_gridspec(len(rows), k + 2, width_ratios=[1, 0.3] + [1] * k, left=0.01,
                            right=0.99, bottom=0.01, top=top, hspace=0.45, wspace=0.08)  # fmt: skip
    for r, row in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        _image(ax, queries[row["index"]])
        ax.set_title(f"{summary['query_split'][:5]} {row['index']}: {names[row['label']]}",
                     fontsize=7)  # fmt: skip
        for j, (i, lab, d) in enumerate(zip(row["neighbours"], row["labels"], row["distances"])):
            ax = fig.add_subplot(grid[r, j + 2])
            _image(ax, train[i])
            ax.set_title(f"{names[lab]} d={d:.3g}", fontsize=7,
                         color="black" if lab == row["label"] else "red")  # fmt: skip
    common.save_png(fig, out, dpi=80)


def _image(ax, img: np.ndarray) -> None:
    shown = common.to_display(img)
    ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", interpolation="nearest")
    ax.set_axis_off()
