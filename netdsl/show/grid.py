"""Tile a conv layer's kernels (or a layer's feature maps) into one image array.

The layout, which tests/test_show.py reads back tile by tile:
  * every tile is one kernel (kh x kw), with PAD background pixels before each tile and
    after the last, across and down;
  * RGB mode (3 input channels): one tile per filter, its three channels as colour;
    the tiles of a column block fill rows of `per_row` tiles, filter by filter; kernels
    of one input channel are laid out the same way, in grey;
  * channel mode: one row per filter, one grey tile per input channel;
  * with `columns` > 1 (a net with `gpus N`), the filters GPU g owns, the output channels
    [ceil(g*O/N), ceil((g+1)*O/N)) as netdsl/passes/placement.py splits them, form block
    g; the blocks stand side by side, GAP background pixels apart.
Values are rescaled into [0, 1] by one affine map for the whole layer (scale="layer": the
kernels' relative strengths stay visible) or one per filter (scale="filter": each filter's
pattern at full contrast); the background is 1 (white).
"""

from __future__ import annotations

import math

import numpy as np

PAD = 1  # background pixels around each tile
GAP = 4  # background pixels between GPU column blocks
BACKGROUND = 1.0


def gpu_ranges(count: int, columns: int) -> list[tuple[int, int]]:
    """The [lo, hi) filter ranges of each GPU column (placement.py's split of channels)."""
    return [(-(-g * count // columns), -(-(g + 1) * count // columns)) for g in range(columns)]


def rescale(weights: np.ndarray, scale: str = "layer") -> np.ndarray:
    """weights (O, ...) mapped into [0, 1]: (w - min) / (max - min) over the layer, or
    over each filter with scale="filter"; a constant range maps to 0.5."""
    w = np.asarray(weights, np.float64)
    axes = tuple(range(1, w.ndim)) if scale == "filter" else None
    lo = w.min(axis=axes, keepdims=True)
    span = w.max(axis=axes, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (w - lo) / safe, 0.5)


def filter_grid(weights: np.ndarray, columns: int = 1, rgb: bool | None = None,
                scale: str = "layer", per_row: int | None = None) -> np.ndarray:  # fmt: skip
    """The kernels of a conv layer, weights (O, C, kh, kw), as an image array in [0, 1]:
    (H, W, 3) in RGB mode (default when C == 3), (H, W) otherwise (see the module's
    layout). `columns`: GPU column blocks; `per_row`: RGB tiles per row of a block
    (default: about square)."""
    w = np.asarray(weights)
    if w.ndim != 4:
        raise ValueError(f"expected conv weights (O, C, kh, kw), got shape {w.shape}")
    o, c, kh, kw = w.shape
    rgb = c == 3 if rgb is None else rgb
    if rgb and c != 3:
        raise ValueError(f"RGB mode needs 3 input channels, the kernels have {c}")
    scaled = rescale(w, scale)
    ranges = gpu_ranges(o, max(1, columns))
    square = rgb or c == 1  # one tile per filter
    if square:
        width = max(hi - lo for lo, hi in ranges)
        per_row = per_row or max(1, math.ceil(math.sqrt(width)))
        rows, cols = math.ceil(width / per_row), min(per_row, width)
    else:
        rows, cols = max(hi - lo for lo, hi in ranges), c
    block_h, block_w = PAD + rows * (kh + PAD), PAD + cols * (kw + PAD)
    height = block_h
    total_w = len(ranges) * block_w + (len(ranges) - 1) * GAP
    out = np.full((height, total_w, 3) if rgb else (height, total_w), BACKGROUND)
    for g, (lo, hi) in enumerate(ranges):
        x0 = g * (block_w + GAP)
        for j, f in enumerate(range(lo, hi)):
            if square:
                r, col = divmod(j, per_row)
                top, left = PAD + r * (kh + PAD), x0 + PAD + col * (kw + PAD)
                tile = scaled[f].transpose(1, 2, 0) if rgb else scaled[f, 0]
                out[top : top + kh, left : left + kw] = tile
            else:
                top = PAD + j * (kh + PAD)
                for ch in range(c):
                    left = x0 + PAD + ch * (kw + PAD)
                    out[top : top + kh, left : left + kw] = scaled[f, ch]
    return out


def map_grid(maps: np.ndarray, per_row: int | None = None) -> np.ndarray:
    """Feature maps (C, H, W) as one (rows*(H+PAD)+PAD, cols*(W+PAD)+PAD) array, about
    square, the maps in channel order; values are kept (NaN background, which a colour
    map leaves blank), so the caller chooses the colour scale."""
    maps = np.asarray(maps, np.float64)
    c, h, w = maps.shape
    per_row = per_row or max(1, math.ceil(math.sqrt(c * h / w)))
    per_row = min(per_row, c)
    rows = math.ceil(c / per_row)
    out = np.full((PAD + rows * (h + PAD), PAD + per_row * (w + PAD)), np.nan)
    for i in range(c):
        r, col = divmod(i, per_row)
        top, left = PAD + r * (h + PAD), PAD + col * (w + PAD)
        out[top : top + h, left : left + w] = maps[i]
    return out
