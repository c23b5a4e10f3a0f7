"""Image folders (ImageNet's layout) and decoding JPEG/PNG files with Pillow.

A folder ``DIR`` holds ``train/`` and ``val/`` (or ``test/``), each with one subfolder
per class of image files; the class names are the training subfolders' names, sorted,
and a class's label is its place in that order. The training images come in a fixed
shuffled order (seed 0, the same every time), so that ``--limit N`` and ``validate N``
(the last N) take images of every class; the test images in listing order. Images are
decoded as AlexNet prepared ImageNet: the shorter side resized to ``size`` and the
centre ``size x size`` square cut out. The folder's size, unless given, is 256, or the
largest shorter side of a sample of its images when that is smaller (a folder of 28x28
digits stays 28x28: images are never enlarged by default). A folder is one or three
channels: one when every sampled image is grey, else three; a grey image in a three-
channel folder becomes RGB and a colour image in a one-channel folder becomes grey.
CMYK, palette and YCbCr images become RGB, alpha is dropped, 16-bit images become 8-bit
(value / 257).

What cannot be decoded (a corrupt or truncated file, a format Pillow does not read) is
reported with the file's name: :func:`decode_file` raises a DataError naming it (so
training straight from a folder stops there, naming the file: fix or remove it and
``--resume``), and ``netdsl pack`` lists and skips such files and records them in the
store's manifest. Files whose extension is not an image's are skipped with a count.

Pillow is an optional extra: ``pip install 'netdsl[images]'``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from .paths import show_path
from .sources import normalize_index

__all__ = [
    "DEFAULT_SIZE",
    "IMAGE_EXTENSIONS",
    "FolderSource",
    "ImageFolder",
    "decode_file",
    "find_image_files",
    "is_image_folder",
    "require_pillow",
    "scan_image_folder",
]

DEFAULT_SIZE = 256  # AlexNet's: the shorter side of every image, then a 256x256 centre crop
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
)
TEST_SPLITS = ("val", "test")
_GREY_MODES = frozenset(("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"))
SHUFFLE_SEED = 0  # the fixed order of a folder's training images (see scan_image_folder)


def require_pillow():
    """The PIL.Image module; a NetdslError naming the extra to install when it is missing."""
    try:
        from PIL import Image
    except ImportError as e:
        raise NetdslError(
            f"reading JPEG/PNG images needs Pillow, but it cannot be imported ({e}); "
            "install it with: pip install 'netdsl[images]'"
        ) from None
    return Image


# ------------------------------------------------------------------ one image


def _open(path: str | os.PathLike):
    """The opened (not yet decoded) image; DataError naming the file when it is none."""
    Image = require_pillow()
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{show_path(path)}: cannot decode image: {_why(e)}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{show_path(path)}: refused: {e}") from None


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.replace(f"{getattr(e, 'filename', '')!r}", "").strip()


def _to_mode(img, channels: int, path):
    """``img`` as 8-bit "L" (channels 1) or "RGB" (channels 3)."""
    from PIL import Image

    mode = img.mode
    if mode == "F":
        raise DataError(f"{show_path(path)}: 32-bit floating-point images are not read (their "
                        "value range is unknown); save them as 8- or 16-bit")  # fmt: skip
    if mode.startswith("I"):
        # 16-bit (or 32-bit integer) grey: 0..65535 to 0..255, as a viewer shows it
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8))
        mode = "L"
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # a palette may hold transparency; dropped next
        mode = "RGBA"
    target = "L" if channels == 1 else "RGB"
    return img if mode == target else img.convert(target)


def decode_file(path: str | os.PathLike, size: int, channels: int = 3) -> np.ndarray:
    """The image in ``path`` as uint8 ``(channels, size, size)``: the shorter side resized
    to ``size`` (bilinear, antialiased) and the centre square cut out.

    JPEGs are decoded at a reduced scale first when they are at least twice ``size``
    (libjpeg's DCT scaling through Pillow's ``draft``), which makes large photos several
    times faster to decode. Raises DataError naming the file when it cannot be decoded.
    """
    if channels not in (1, 3):
        raise DataError(f"{show_path(path)}: images are read as 1 or 3 channels, not {channels}")
    Image = require_pillow()
    with _open(path) as img:
        try:
            if img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()
            img = _to_mode(img, channels, path)
            w, h = img.size
            if w < 1 or h < 1:
                raise DataError(f"{show_path(path)}: the image is empty ({w}x{h})")
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            if (nw, nh) != (size, size):
                img = img.crop((left, top, left + size, top + size))
            a = np.asarray(img, dtype=np.uint8)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise DataError(f"{show_path(path)}: cannot decode image: {_why(e)}") from None
        except Image.DecompressionBombError as e:
            raise DataError(f"{show_path(path)}: refused: {e}") from None
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a)


def _probe(path: str | os.PathLike) -> tuple[int, bool] | None:
    """(shorter side, is grey) of an image from its header alone; None if unreadable."""
    try:
        with require_pillow().open(path) as img:
            return min(img.size), img.mode in _GREY_MODES
    except Exception:  # a bad sample must not stop the scan: decoding names it later
        return None


# ------------------------------------------------------------------ a folder


@dataclass
class ImageFolder:
    """What :func:`scan_image_folder` found: files and labels per split, class names,
    the chosen size and channel count, and notes for the user (skipped files...)."""

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, tuple[list[str], np.ndarray]]  # "train"/"test": (relative paths, labels)
    size: int
    channels: int
    test_dir: str | None
    notes: list[str] = field(default_factory=list)

    def source(self, split: str) -> FolderSource:
        files, _ = self.splits[split]
        return FolderSource(self.root, files, self.size, self.channels)

    def labels(self, split: str) -> np.ndarray:
        return self.splits[split][1]

    def fingerprint(self) -> str:
        """A hash of the listing (names, labels, size, channels), not of the pixels:
        cheap for a million files, but blind to a file changed in place."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"folder;{self.size};{self.channels};{'/'.join(self.class_names)};".encode())
        for split in ("train", "test"):
            files, labels = self.splits.get(split, ([], np.zeros(0, np.int64)))
            h.update(f"{split}:{len(files)};".encode())
            for f, y in zip(files, labels.tolist(), strict=True):
                h.update(f"{f}\0{y}\n".encode("utf-8", "surrogateescape"))
        return "blake2b:" + h.hexdigest()


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` looks like an image folder: it holds a ``train/`` folder."""
    return (path / "train").is_dir()


def find_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (recursively, sorted) and the other files skipped."""
    images, other = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # .DS_Store and friends: not worth a note
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    return images, other


def scan_image_folder(root: str | os.PathLike, size: int | None = None,
                      channels: int | None = None) -> ImageFolder:  # fmt: skip
    """List an image folder (``train/CLASS/*.jpg``, ``val/CLASS/*.jpg`` or ``test/``).

    Raises DataError naming the folder when ``train/`` has no class folders, no images at
    all, or a test class folder has no training counterpart. Empty class folders are kept
    (so labels follow the folder names) and named in a note; so are skipped files.
    """
    root = Path(root)
    train = root / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{show_path(train)}: no class folders; an image folder holds "
                        "train/CLASS/IMAGE files, one folder per class")  # fmt: skip
    index = {c: i for i, c in enumerate(classes)}
    notes: list[str] = []
    test_dir = next((d for d in TEST_SPLITS if (root / d).is_dir()), None)
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for split, sub in (("train", "train"), ("test", test_dir)):
        if sub is None:
            continue
        base = root / sub
        loose = [p.name for p in base.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            notes.append(f"{show_path(base)}: skipped {len(loose)} file(s) outside the class "
                         f"folders (e.g. {loose[0]})")  # fmt: skip
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{show_path(base / unknown[0])}: class folder "
                            f"{unknown[0]!r} has no counterpart in {show_path(train)} (the "
                            "training folders name the classes)")  # fmt: skip
        files: list[str] = []
        labels: list[int] = []
        empty, skipped = [], []
        for name in names:
            images, other = find_image_files(base / name)
            skipped += other
            if not images:
                empty.append(name)
            files += [str(p.relative_to(root)) for p in images]
            labels += [index[name]] * len(images)
        if empty:
            notes.append(f"warning: {show_path(base)}: {len(empty)} empty class folder(s): "
                         f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")  # fmt: skip
        if skipped:
            exts = sorted({p.suffix.lower() or "(none)" for p in skipped})
            notes.append(f"{show_path(base)}: skipped {len(skipped)} file(s) that are not "
                         f"images by their extension ({', '.join(exts[:8])})")  # fmt: skip
        if not files:
            raise DataError(f"{show_path(base)}: no image files (extensions: "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))})")  # fmt: skip
        y = np.asarray(labels, dtype=np.int64)
        if split == "train":
            # a fixed shuffle, so that --limit and `validate N` (the last N images) take
            # every class, not the last classes of the listing
            order = np.random.default_rng(SHUFFLE_SEED).permutation(len(files))
            files, y = [files[i] for i in order], y[order]
        splits[split] = (files, y)
    if size is None or channels is None:
        s, c = _sample_shape(root, splits["train"])
        size = size if size is not None else s
        channels = channels if channels is not None else c
    return ImageFolder(root, tuple(classes), splits, int(size), int(channels), test_dir, notes)


def _sample_shape(root: Path, train: tuple[list[str], np.ndarray]) -> tuple[int, int]:
    """(size, channels) from the first image of each class: the default size unless every
    sampled image is smaller, one channel only when every sampled image is grey."""
    files, labels = train
    firsts = np.unique(labels, return_index=True)[1][:1000]  # at most 1,000 files opened
    probes = [p for p in (_probe(root / files[i]) for i in firsts) if p is not None]
    if not probes:
        return DEFAULT_SIZE, 3
    size = min(DEFAULT_SIZE, max(side for side, _ in probes))
    return size, 1 if all(grey for _, grey in probes) else 3


# ------------------------------------------------------------------ the source


class FolderSource:
    """The images of one split of an image folder, decoded when read (an image source,
    see :mod:`netdsl.train.sources`). Pickles as its root, names, size and channels."""

    def __init__(self, root: str | os.PathLike, files: Sequence[str], size: int,
                 channels: int) -> None:  # fmt: skip
        self.root = str(root)
        self.files = list(files)
        self.size = int(size)
        self.channels = int(channels)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, self.size, self.size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        """The file of image ``i``."""
        return Path(self.root) / self.files[i]

    def __getitem__(self, idx: Any) -> np.ndarray:
        ids = normalize_index(idx, len(self.files))
        out = np.empty((len(ids), self.channels, self.size, self.size), np.uint8)
        for k, i in enumerate(ids.tolist()):
            try:
                out[k] = decode_file(self.path(i), self.size, self.channels)
            except DataError as e:
                raise DataError(f"{e} (image {i} of {show_path(self.root)}; `netdsl pack` "
                                "lists and skips undecodable files)") from None  # fmt: skip
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def print_notes(notes: Sequence[str], stream=None) -> None:
    """Print scan notes (skipped files, empty class folders) to stderr."""
    for n in notes:
        print(n if n.startswith("warning:") else f"note: {n}", file=stream or sys.stderr)
