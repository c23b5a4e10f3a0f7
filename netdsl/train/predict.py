"""What `netdsl predict` classifies: image files, folders of them and arrays.

Arrays (.npz with ``x``, .npy, IDX) are read as they are and must be the input's size
(smaller ones are zero-padded, as in training). Image files (JPEG, PNG, ... decoded by
Pillow) get the test-time preprocessing of the run: the shorter side resized to the size
the run's images had (its data record's image shape; the input's size when the record
has none or a smaller one), the centre square cut out, the run's normalisation, then
the centre crop of the input's size or, with ten crops, the four corners and the centre
and their mirror images, whose class probabilities are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .paths import show_path

__all__ = ["PredictInputs", "image_batches", "predict_inputs", "scores_of"]


@dataclass
class PredictInputs:
    """The images to classify, in the order given: ``(label, array)`` for arrays already
    read, ``(label, path)`` for image files decoded when their batch comes."""

    items: list[tuple[str, np.ndarray | Path]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)


def predict_inputs(paths: list[str], net) -> PredictInputs:
    """Read the arrays and list the image files among ``paths`` (files and folders).

    Raises DataError naming the file for an array of the wrong channel count or size,
    an image file that does not exist and a folder without image files.
    """
    from . import data
    from .images import IMAGE_EXTENSIONS, find_image_files
    from .trainer import _fit_to_input

    shape = net.input.out_shape
    out = PredictInputs()
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files, other = find_image_files(path)
            if not files:
                raise DataError(f"{show_path(path)}: no image files in this folder")
            out.items += [(show_path(f), f) for f in files]
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            if not path.is_file():
                raise DataError(f"{show_path(path)}: no such image file")
            out.items.append((show_path(path), path))
            continue
        x = data.read_images(text, channels=shape[0])  # looked up now: tests replace it
        where = show_path(text)
        if x.shape[1] != shape[0]:
            raise DataError(f"{where}: images have {x.shape[1]} channel(s), the network takes "
                            f"{shape[0]}")  # fmt: skip
        padded = _fit_to_input(x[:1].astype(np.float32), net, train=False)
        if padded.shape[1:] != shape:
            raise DataError(f"{where}: images are {'x'.join(map(str, padded.shape[2:]))}, the "
                            f"network takes {'x'.join(map(str, shape[1:]))}")  # fmt: skip
        prefix = "" if len(paths) == 1 else f"{where}:"
        out.items += [(f"{prefix}{i}", x[i]) for i in range(len(x))]
    return out


def decode_size(net, record: dict[str, Any]) -> int:
    """The square size image files are decoded to: the run's image size when the data
    record has a square one at least the input's, else the input's larger side."""
    _, h, w = net.input.out_shape
    shape = record.get("image_shape")
    if isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2]:
        if isinstance(shape[1], int) and shape[1] >= max(h, w):
            return int(shape[1])
    return max(h, w)


def image_batches(inputs: PredictInputs, net, record: dict[str, Any],
                  batch: int) -> Iterator[tuple[list[str], np.ndarray]]:  # fmt: skip
    """``(labels, float32 images)`` in batches of at most ``batch``, normalised as in
    training; image files at :func:`decode_size`, arrays at the input's size."""
    from .data import to_float
    from .images import decode_file
    from .trainer import _fit_to_input

    c = net.input.out_shape[0]
    size = decode_size(net, record)
    norm = net.train["normalize"] or {"mean": [0.0], "std": [1.0]}
    items = inputs.items
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        arrays = [a for _, a in chunk if isinstance(a, np.ndarray)]
        files = [(i, p) for i, (_, p) in enumerate(chunk) if not isinstance(p, np.ndarray)]
        labels = [label for label, _ in chunk]
        if not files:  # arrays only: one stack (the same batches as before image files)
            x = _fit_to_input(to_float(np.stack(arrays), norm["mean"], norm["std"]), net,
                              train=False)  # fmt: skip
            yield labels, x
            continue
        if arrays:  # a mix: each kind on its own, order kept
            for label, a in chunk:
                one = PredictInputs([(label, a)])
                yield from image_batches(one, net, record, 1)
            continue
        raw = np.stack([decode_file(p, size, c) for _, p in files])
        yield labels, to_float(raw, norm["mean"], norm["std"])


def scores_of(cnet, x: np.ndarray, crops: int,
              softmax: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:  # fmt: skip
    """Class probabilities (n, K) of images at least the input's size: the image itself,
    its centre crop, or the mean over the ten views (``crops=10``)."""
    from . import augment

    shape = cnet.net.input.out_shape
    if x.shape[2:] == shape[1:]:
        return softmax(cnet.forward(x).astype(np.float64))
    if crops == 10:
        views = augment.ten_crop(x, shape[1:])
        return np.mean([softmax(cnet.forward(np.ascontiguousarray(v)).astype(np.float64))
                        for v in views], axis=0)  # fmt: skip
    crop = np.ascontiguousarray(augment.center_crop(x, shape[1:]))
    return softmax(cnet.forward(crop).astype(np.float64))
