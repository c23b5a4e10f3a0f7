"""`netdsl show filters`: a conv layer's learned kernels as one picture (AlexNet's Figure 3).

Needs no compiling: the kernels are the checkpoint's arrays, checked against the net.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..ir import Network
from . import common
from .grid import GAP, PAD, filter_grid, gpu_ranges


def kernel_layers(net: Network) -> list[str]:
    """The layers with kernels to show: a 4-D weight (O, C/groups, kh, kw)."""
    return [lyr.name for lyr in net.layers if len(lyr.params.get("weight", ())) == 4]


def filters_summary(net: Network, layer: str, weight: np.ndarray, columns: int,
                    rgb: bool, scale: str) -> dict[str, Any]:  # fmt: skip
    """The numbers behind the picture (--json)."""
    lyr = net.layer(layer)
    return {
        "layer": layer,
        "type": lyr.type,
        "shape": list(weight.shape),
        "groups": int(lyr.attrs.get("groups", 1) or 1),
        "mode": "rgb" if rgb else "grey" if weight.shape[1] == 1 else "channels",
        "scale": scale,
        "min": float(weight.min()),
        "max": float(weight.max()),
        "mean_abs": float(np.abs(weight).mean()),
        "gpu_columns": [list(r) for r in gpu_ranges(weight.shape[0], columns)],
    }


def run(args) -> int:
    """The command's handler."""
    net = common.load_net(args.file)
    valid = kernel_layers(net)
    if not valid:
        raise common.ShowUsageError(f"{net.name} has no layer with kernels (conv) to show")
    layer = common.layer_named(net, args.layer or valid[0], valid, "filters")
    arrays, _ = common.checkpoint_params(net, args.checkpoint)
    weight = np.asarray(arrays[f"param.{layer.name}.weight"], np.float64)
    if not np.isfinite(weight).all():
        raise common.DataError(f"{common.show_path(args.checkpoint)}: the weights of "
                               f"{layer.name} are NaN or infinite (did its training "
                               "diverge?)")  # fmt: skip
    columns = net.gpus if net.gpus > 1 and len(layer.gpus) == net.gpus else 1
    # colour only for kernels over the input's three channels (a grouped layer's three
    # channels per group are feature maps, not red, green and blue)
    rgb = (weight.shape[1] == 3 and net.input.out_shape[0] == 3 and not args.channels
           and layer.inputs == [net.input.name])  # fmt: skip
    summary = filters_summary(net, layer.name, weight, columns, rgb, args.scale)
    out = common.picture_path(args, summary, f"filters-{layer.name}.png")
    if out is None:
        return 0
    grid = filter_grid(weight, columns=columns, rgb=rgb, scale=args.scale)
    draw(grid, summary, weight.shape, columns, out)
    common.wrote(out)
    return 0


def draw(grid: np.ndarray, summary: dict[str, Any], shape, columns: int, out: Path) -> None:
    """The grid, magnified to whole pixels, under a title (and GPU labels)."""
    h, w = grid.shape[:2]
    zoom = max(1, min(12, 900 // max(h, w)))
    dpi = 100
    top = 0.55 if columns > 1 else 0.4  # inches for the title (and GPU labels)
    top += 0.2  # a second title line
    width, height = max(w * zoom / dpi, 6.0), h * zoom / dpi + top
    fig = common.new_figure(width, height)
    ax = fig.add_axes((0, 0, 1, (height - top) / height))
    ax.imshow(grid, cmap=None if grid.ndim == 3 else "gray", vmin=0, vmax=1,
              interpolation="nearest")  # fmt: skip
    ax.set_axis_off()
    o, c, kh, kw = shape
    if summary["mode"] == "rgb":
        what = "in colour"
    elif summary["mode"] == "grey":
        what = "one tile per filter"
    else:
        what = "one row per filter, one column per input channel"
    if summary["groups"] > 1:
        what += f" (groups {summary['groups']}: each filter sees {c} input maps)"
    fig.suptitle(f"{summary['layer']}: {o} filters {c}x{kh}x{kw}\n{what}, "
                 f"{summary['scale']}-scaled from {summary['min']:.3g} to "
                 f"{summary['max']:.3g}", fontsize=9, y=1 - 0.05 / height, va="top")  # fmt: skip
    if columns > 1:
        block = (w - (columns - 1) * GAP) / columns
        for g, (lo, hi) in enumerate(summary["gpu_columns"]):
            ax.text(g * (block + GAP) + block / 2, -PAD, f"GPU {g}: filters {lo}-{hi - 1}",
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    common.save_png(fig, out, dpi=dpi)
