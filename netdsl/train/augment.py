"""AlexNet-style data augmentation on float32 ``N x C x H x W`` batches.

All randomness comes from the :class:`numpy.random.Generator` passed in, so a run is
reproducible from its seed and resumable from a saved generator state. Every function
returns a new array and leaves its input untouched; all are vectorised over the batch.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.zeros((8, 3, 32, 32), np.float32)
>>> hflip(random_crop(x, 28, rng), rng).shape
(8, 3, 28, 28)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "center_crop",
    "hflip",
    "pca_lighting",
    "pca_of_batches",
    "pca_of_pixels",
    "random_crop",
    "ten_crop",
]

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _check_batch(x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) batch; got shape {x.shape}")


def _check_fits(x: np.ndarray, h: int, w: int, pad: int = 0) -> None:
    H, W = x.shape[2] + 2 * pad, x.shape[3] + 2 * pad
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"crop {h}x{w} does not fit in {H}x{W} images (pad {pad})")


def random_crop(x: np.ndarray, size: Size, rng: np.random.Generator, pad: int = 0) -> np.ndarray:
    """Crop a random ``size`` window from each image, after zero-padding by ``pad``.

    ``pad`` gives CIFAR-style padded crops (pad 4, crop 32); the padding is zeros,
    which is the mean once images are normalised.

    >>> rng = np.random.default_rng(0)
    >>> random_crop(np.ones((2, 3, 32, 32), np.float32), 32, rng, pad=4).shape
    (2, 3, 32, 32)
    """
    _check_batch(x)
    h, w = _hw(size)
    _check_fits(x, h, w, pad)
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, H, W = x.shape
    top = rng.integers(0, H - h + 1, size=n)
    left = rng.integers(0, W - w + 1, size=n)
    # One gather for the whole batch: per-image row and column index windows
    # broadcast against batch and channel indices give an (N, C, h, w) result.
    rows = top[:, None] + np.arange(h)  # (N, h)
    cols = left[:, None] + np.arange(w)  # (N, w)
    return x[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def center_crop(x: np.ndarray, size: Size) -> np.ndarray:
    """Crop the central ``size`` window of every image (top-left rounding on odd slack).

    >>> center_crop(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
    [[5.0, 6.0], [9.0, 10.0]]
    """
    _check_batch(x)
    h, w = _hw(size)
    _check_fits(x, h, w)
    top = (x.shape[2] - h) // 2
    left = (x.shape[3] - w) // 2
    return x[:, :, top : top + h, left : left + w].copy()


def hflip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability ``p``.

    >>> rng = np.random.default_rng(0)
    >>> hflip(np.arange(3.0).reshape(1, 1, 1, 3), rng, p=1.0).ravel().tolist()
    [2.0, 1.0, 0.0]
    """
    _check_batch(x)
    flip = rng.random(x.shape[0]) < p
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def pca_of_pixels(x: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the channel covariance of all pixels in ``x``.

    Returns ``(eigval (C,), eigvec (C, C))`` sorted by decreasing eigenvalue, with
    ``eigvec[:, i]`` the i-th principal direction. uint8 input is scaled by 1/255 (the
    scale of :func:`netdsl.train.data.to_float`); pass the same representation that
    :func:`pca_lighting` will be applied to. Sums in float64 over chunks of images.

    >>> rng = np.random.default_rng(0)
    >>> val, vec = pca_of_pixels(rng.random((4, 3, 8, 8)))
    >>> val.shape, vec.shape, bool(val[0] >= val[1] >= val[2])
    ((3,), (3, 3), True)
    """
    _check_batch(x)
    return pca_of_batches(x[start : start + chunk] for start in range(0, len(x), chunk))


def pca_of_batches(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pca_of_pixels` over batches of images read one at a time (streaming: a
    data set too large for memory is never held whole).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((6, 3, 4, 4))
    >>> a, b = pca_of_batches([x[:2], x[2:]]), pca_of_pixels(x)
    >>> bool(np.allclose(a[0], b[0]))
    True
    """
    total: np.ndarray | None = None
    outer: np.ndarray | None = None
    count = 0
    for x in batches:
        _check_batch(x)
        c = x.shape[1]
        scale = 1 / 255 if x.dtype == np.uint8 else 1.0
        # (pixels, C) of this batch
        p = x.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, c)
        p *= scale
        if total is None or outer is None:
            total, outer = np.zeros(c), np.zeros((c, c))
        total += p.sum(axis=0)
        outer += p.T @ p
        count += p.shape[0]
    if count < 2 or total is None or outer is None:
        raise ValueError("need at least two pixels to estimate a covariance")
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return np.maximum(eigval[order], 0.0), eigvec[:, order]


def pca_lighting(
    x: np.ndarray,
    rng: np.random.Generator,
    std: float,
    eigval: np.ndarray,
    eigvec: np.ndarray,
) -> np.ndarray:
    """AlexNet's lighting noise: add ``sum_i alpha_i * lambda_i * p_i`` to every pixel.

    One ``alpha ~ N(0, std)`` per image and principal component (Krizhevsky et al.
    2012, section 4.1; they used std 0.1). ``eigval``/``eigvec`` come from
    :func:`pca_of_pixels` on the training set.

    >>> rng = np.random.default_rng(0)
    >>> x = np.zeros((2, 3, 4, 4), np.float32)
    >>> y = pca_lighting(x, rng, 0.1, np.ones(3), np.eye(3))
    >>> y.shape, y.dtype, bool((y[:, :, 0, 0][:, :, None, None] == y).all())
    ((2, 3, 4, 4), dtype('float32'), True)
    """
    _check_batch(x)
    n, c = x.shape[:2]
    eigval = np.asarray(eigval, dtype=np.float64).reshape(-1)
    eigvec = np.asarray(eigvec, dtype=np.float64)
    if eigval.shape != (c,) or eigvec.shape != (c, c):
        raise ValueError(f"eigval {eigval.shape} / eigvec {eigvec.shape} do not match {c} channels")
    alpha = rng.normal(0.0, std, size=(n, c))
    # delta[n, ch] = sum_i eigvec[ch, i] * alpha[n, i] * eigval[i]
    delta = (alpha * eigval) @ eigvec.T
    return (x + delta[:, :, None, None]).astype(x.dtype, copy=False)


def ten_crop(x: np.ndarray, size: Size) -> np.ndarray:
    """The ten test-time crops: 4 corners and centre, then the same five mirrored.

    Returns ``(10, N, C, h, w)`` in the order top-left, top-right, bottom-left,
    bottom-right, centre, and their horizontal flips in the same order (as
    torchvision's ``TenCrop``). Average the network's predictions over axis 0.

    >>> ten_crop(np.zeros((2, 3, 32, 32), np.float32), 28).shape
    (10, 2, 3, 28, 28)
    """
    _check_batch(x)
    h, w = _hw(size)
    _check_fits(x, h, w)
    H, W = x.shape[2:]
    ct, cl = (H - h) // 2, (W - w) // 2
    corners = [(0, 0), (0, W - w), (H - h, 0), (H - h, W - w), (ct, cl)]
    five = np.stack([x[:, :, t : t + h, l : l + w] for t, l in corners])
    return np.concatenate([five, five[..., ::-1]])
