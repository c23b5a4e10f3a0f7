"""Augmentation: shapes, determinism from a seed, and exact crops on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from netdsl.train.augment import (
    center_crop,
    hflip,
    pca_lighting,
    pca_of_pixels,
    random_crop,
    ten_crop,
)


def batch(n: int = 6, c: int = 3, h: int = 8, w: int = 10) -> np.ndarray:
    return np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)


def test_random_crop_shape_determinism_and_content() -> None:
    x = batch()
    a = random_crop(x, (5, 7), np.random.default_rng(3))
    b = random_crop(x, (5, 7), np.random.default_rng(3))
    assert a.shape == (6, 3, 5, 7) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # every crop is a contiguous window of its own image, the same for all channels
    rng = np.random.default_rng(3)
    top = rng.integers(0, 8 - 5 + 1, size=6)
    left = rng.integers(0, 10 - 7 + 1, size=6)
    for i in range(6):
        np.testing.assert_array_equal(a[i], x[i, :, top[i] : top[i] + 5, left[i] : left[i] + 7])


def test_random_crop_offsets_vary() -> None:
    x = batch(n=64)
    a = random_crop(x, 4, np.random.default_rng(0))
    corners = {float(a[i, 0, 0, 0] - x[i, 0, 0, 0]) for i in range(64)}
    assert len(corners) > 5


def test_random_crop_with_padding() -> None:
    x = np.ones((50, 1, 4, 4), np.float32)
    a = random_crop(x, 4, np.random.default_rng(1), pad=2)
    assert a.shape == (50, 1, 4, 4)
    assert set(np.unique(a)) == {0.0, 1.0}  # some crops reach into the zero padding
    assert (a.reshape(50, -1).sum(axis=1) >= 4).all()  # each keeps >= a 2x2 of image


def test_random_crop_too_big() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(batch(), 9, np.random.default_rng(0))


def test_center_crop() -> None:
    x = np.arange(25.0, dtype=np.float32).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(center_crop(x, 3)[0, 0], x[0, 0, 1:4, 1:4])
    np.testing.assert_array_equal(center_crop(x, (2, 4))[0, 0], x[0, 0, 1:3, 0:4])


def test_hflip_is_seeded_and_flips_a_fraction() -> None:
    x = batch(n=200, h=2, w=3)
    a = hflip(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, hflip(x, np.random.default_rng(7)))
    flipped = (a != x).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(a[flipped], x[flipped][..., ::-1])
    np.testing.assert_array_equal(a[~flipped], x[~flipped])
    assert 60 < flipped.sum() < 140
    np.testing.assert_array_equal(hflip(x, np.random.default_rng(0), p=0.0), x)
    np.testing.assert_array_equal(hflip(x, np.random.default_rng(0), p=1.0), x[..., ::-1])
    assert a is not x


def test_pca_of_pixels_matches_numpy_cov() -> None:
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3], [0.0, 0.0, 0.4]])
    pix = rng.standard_normal((4 * 5 * 6, 3)) @ mix
    x = pix.reshape(4, 5, 6, 3).transpose(0, 3, 1, 2).astype(np.float32)
    val, vec = pca_of_pixels(x, chunk=3)
    ref_val, ref_vec = np.linalg.eigh(np.cov(x.transpose(0, 2, 3, 1).reshape(-1, 3).T))
    np.testing.assert_allclose(val, ref_val[::-1], rtol=1e-5)
    for i in range(3):  # eigenvectors up to sign
        assert abs(abs(vec[:, i] @ ref_vec[:, 2 - i]) - 1) < 1e-5
    assert val[0] >= val[1] >= val[2]


def test_pca_of_pixels_scales_uint8() -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    v8, _ = pca_of_pixels(x)
    vf, _ = pca_of_pixels(x.astype(np.float64) / 255)
    np.testing.assert_allclose(v8, vf, rtol=1e-9)


def test_pca_lighting_adds_one_color_shift_per_image() -> None:
    x = np.random.default_rng(2).random((4, 3, 8, 10), dtype=np.float32)
    eigval = np.array([0.5, 0.2, 0.1])
    eigvec = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0]
    out = pca_lighting(x, np.random.default_rng(5), 0.1, eigval, eigvec)
    assert out.shape == x.shape and out.dtype == np.float32
    alpha = np.random.default_rng(5).normal(0.0, 0.1, size=(4, 3))
    expect = np.einsum("ci,ni,i->nc", eigvec, alpha, eigval)
    shift = out - x
    np.testing.assert_allclose(shift, np.broadcast_to(expect[:, :, None, None], x.shape), atol=1e-6)
    np.testing.assert_array_equal(
        out, pca_lighting(x, np.random.default_rng(5), 0.1, eigval, eigvec)
    )
    with pytest.raises(ValueError, match="do not match 3 channels"):
        pca_lighting(x, np.random.default_rng(5), 0.1, eigval[:2], eigvec)


def test_ten_crop_exact() -> None:
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float32).reshape(2, 1, 4, 5)
    crops = ten_crop(x, (2, 3))
    assert crops.shape == (10, 2, 1, 2, 3)
    img = x[:, :, :, :]
    expected = [
        img[:, :, 0:2, 0:3],  # top-left
        img[:, :, 0:2, 2:5],  # top-right
        img[:, :, 2:4, 0:3],  # bottom-left
        img[:, :, 2:4, 2:5],  # bottom-right
        img[:, :, 1:3, 1:4],  # centre
    ]
    for k, e in enumerate(expected):
        np.testing.assert_array_equal(crops[k], e)
        np.testing.assert_array_equal(crops[k + 5], e[..., ::-1])
    # square crops of a real-sized batch
    assert ten_crop(np.zeros((3, 3, 32, 32), np.float32), 28).shape == (10, 3, 3, 28, 28)


def test_inputs_are_not_modified() -> None:
    x = batch()
    keep = x.copy()
    rng = np.random.default_rng(0)
    random_crop(x, 4, rng, pad=1)
    center_crop(x, 4)[:] = -1
    hflip(x, rng, p=1.0)[:] = -1
    pca_lighting(x, rng, 0.1, np.ones(3), np.eye(3))
    ten_crop(x, 4)[:] = -1
    np.testing.assert_array_equal(x, keep)


def test_rejects_non_batches() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        hflip(np.zeros((3, 4, 4)), np.random.default_rng(0))
