"""`netdsl show maps`: the feature maps one image produces after each chosen layer.

One panel per layer (the input first), each layer's maps tiled in channel order and
coloured on that layer's own scale, as the CNN explainers draw them. The maps are the
compiled net's eval-mode layer outputs (CompiledNet.layer_output), so they are what
`netdsl predict` computes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..ir import Network
from ..train.paths import show_path
from . import common
from .grid import map_grid

INDEX = re.compile(r"(test|train):(\d+)$")


def read_image(net: Network, spec: str, args, meta) -> tuple[np.ndarray, dict[str, Any]]:
    """The image named by IMAGE, normalised as in training: (1, C, H, W) float32, and
    what to say about it (its source, and its label when it comes from the data)."""
    m = INDEX.match(spec.strip())
    if m:
        return _from_data(net, m.group(1), int(m.group(2)), spec, args, meta)
    return _from_file(net, spec, meta), {"image": spec}


def _from_data(net: Network, split: str, i: int, spec: str, args, meta):
    data = common.load_data(net, args.checkpoint, meta, args.data, args.allow_other_data)
    part, name = (data.train, "training") if split == "train" else common.eval_split(data)
    if i >= len(part.y):
        raise common.ShowUsageError(f"{spec}: the {name} set has {len(part.y):,} images, "
                                    f"numbered 0 to {len(part.y) - 1}")  # fmt: skip
    names = common.class_names(data, (data.record or {}).get("name"), data.num_classes)
    label = int(part.y[i])
    return part.x[i : i + 1], {"image": spec, "label": label, "label_name": names[label]}


def _from_file(net: Network, path: str, meta: dict[str, Any]) -> np.ndarray:
    """One image from a file, normalised: a picture (PNG, JPEG ...) gets exactly the
    test-time preprocessing of `netdsl predict` (the run's decode size, the centre crop of
    the input); an .npy / .npz / IDX array is taken as it is."""
    from ..train.augment import center_crop
    from ..train.data import read_images, to_float
    from ..train.predict import PredictInputs, image_batches

    c, h, w = net.input.out_shape
    suffix = Path(path).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"):
        record = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        _, x = next(image_batches(PredictInputs([(path, path)]), net, record, 1))
        return center_crop(x, (h, w)) if x.shape[2:] != (h, w) else x
    x = read_images(path, channels=c)[:1]
    if x.shape[1] != c:
        raise DataError(f"{show_path(path)}: the image has {x.shape[1]} channel(s), the "
                        f"network takes {c}")  # fmt: skip
    norm = net.train["normalize"] or {"mean": [0.0], "std": [1.0]}
    return to_float(x, norm["mean"], norm["std"])


def layer_stats(net: Network, name: str, y: np.ndarray) -> dict[str, Any]:
    """A layer's output for one image, in numbers (--json)."""
    return {
        "layer": name,
        "type": net.layer(name).type,
        "shape": list(y.shape),
        "min": float(y.min()),
        "max": float(y.max()),
        "mean": float(y.mean()),
        "zero_fraction": float(np.mean(y == 0)),
    }


def run(args) -> int:
    """The command's handler."""
    net = common.load_net(args.file)
    valid = common.hidden_layers(net)
    names = args.layers or common.spatial_layers(net)
    for name in names:
        common.layer_named(net, name, valid, "maps")
    if not names:
        raise common.ShowUsageError(f"{net.name} has no layer with feature maps; name "
                                    f"some with --layers: {', '.join(valid)}")  # fmt: skip
    arrays, meta = common.checkpoint_params(net, args.checkpoint)
    x, about = read_image(net, args.image, args, meta)
    cnet = common.compiled(net, arrays, args.checkpoint, batch=1, every_map=True)
    scores_layer = common.output_layer(net).name
    outs = common.forward_layers(cnet, x, list(dict.fromkeys([*names, scores_layer])))
    scores = outs[scores_layer][0].reshape(-1)
    about["prediction"] = int(np.argmax(scores))
    about["layers"] = [layer_stats(net, n, outs[n][0]) for n in names]
    out = common.picture_path(args, about, "maps.png")
    if out is None:
        return 0
    draw(net, common.fit_views(net, x)[0], {n: outs[n][0] for n in names}, about,
         args.max_maps, out)  # fmt: skip
    common.wrote(out)
    return 0


def draw(net: Network, image: np.ndarray, maps: dict[str, np.ndarray], about: dict[str, Any],
         max_maps: int, out: Path) -> None:  # fmt: skip
    """The input and one panel per layer, at most five panels a row."""
    panels = 1 + len(maps)
    rows = math.ceil(panels / 5)
    cols = math.ceil(panels / rows)
    height = 3.5 * rows + 0.85
    fig = common.new_figure(3.2 * cols, height)
    cells = fig.add_gridspec(rows, cols, left=0.01, right=0.99, bottom=0.01,
                             top=1 - 0.85 / height, hspace=0.3, wspace=0.05)  # fmt: skip
    label = f", label {about['label_name']}" if "label" in about else ""
    fig.suptitle(f"{net.name}: feature maps of {about['image']}{label}, predicted class "
                 f"{about['prediction']}", fontsize=10, y=1 - 0.1 / height, va="top")  # fmt: skip
    ax = fig.add_subplot(cells[0, 0])
    shown = common.to_display(image)
    ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", interpolation="nearest")
    ax.set_title(f"input {'x'.join(map(str, image.shape))}", fontsize=9)
    ax.set_axis_off()
    from matplotlib import colormaps

    colours = colormaps["viridis"].with_extremes(bad="white")  # the gaps between maps
    for k, (name, y) in enumerate(maps.items(), start=1):
        ax = fig.add_subplot(cells[divmod(k, cols)])
        if y.ndim == 1 or y.shape[1:] == (1, 1):  # a vector: its values as a strip of cells
            v = y.reshape(-1)
            side = math.ceil(math.sqrt(len(v)))
            tile = np.full(side * side, np.nan)
            tile[: len(v)] = v
            grid, count = tile.reshape(side, side), f"{len(v)} values"
        else:
            n = min(len(y), max_maps)
            grid = map_grid(y[:n])
            count = f"{n} of {len(y)} maps" if n < len(y) else f"{len(y)} maps"
        lo, hi = float(np.nanmin(grid)) + 0.0, float(np.nanmax(grid)) + 0.0  # no -0
        ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=lo, vmax=hi if hi > lo else lo + 1,
                  interpolation="nearest")  # fmt: skip
        size = "x".join(map(str, y.shape[1:])) if count.endswith("maps") else ""
        ax.set_title(f"{name} ({net.layer(name).type}) {count} {size}\n"
                     f"range {lo:.3g} to {hi:.3g}", fontsize=8)  # fmt: skip
        ax.set_axis_off()
    common.save_png(fig, out, dpi=80)
