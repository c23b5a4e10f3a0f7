"""Losses: reference vs finite differences, kernels vs reference, reference vs torch; top-k."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import HAVE_TORCH, assert_close, numerical_grad

from netdsl.ops import loss

N, K = 5, 7


def make(seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, K)) * scale, rng.integers(0, K, N)


@pytest.mark.parametrize("fn", [loss.ref_xent, loss.ref_mse], ids=["xent", "mse"])
def test_reference_grad(fn) -> None:
    z, labels = make(0)
    _, grad = fn(z, labels)
    num = numerical_grad(lambda: fn(z, labels)[0], z)
    assert_close(grad, num, 1e-6, "grad")


def test_reference_values() -> None:
    z = np.array([[0.0, np.log(3.0)], [5.0, 5.0]])
    value, _ = loss.ref_xent(z, np.array([1, 0]))
    assert value == pytest.approx((-np.log(0.75) - np.log(0.5)) / 2, rel=1e-14)
    value, grad = loss.ref_mse(np.array([[0.5, 0.0, 2.0]]), np.array([2]))
    assert value == pytest.approx(0.5 * (0.25 + 1.0))
    np.testing.assert_allclose(grad, [[0.5, 0.0, 1.0]])
    with pytest.raises(ValueError):
        loss.ref_xent(z, np.array([0, 2]))


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("scale", [2.0, 60.0])  # 60: unshifted exp would overflow float32
def test_xent_kernel_matches_reference(label_dtype: type, scale: float) -> None:
    z64, labels = make(1, scale)
    z = z64.astype(np.float32)
    labels = labels.astype(label_dtype)
    dz = np.full_like(z, np.nan)
    probs = np.full_like(z, np.nan)
    value = loss.xent_forward_backward(z, labels, dz, probs)
    value_ref, dz_ref = loss.ref_xent(z, labels)
    assert isinstance(value, float)
    assert value == pytest.approx(value_ref, rel=1e-5, abs=1e-6)
    assert_close(dz, dz_ref, 1e-5, "dz")
    assert_close(probs, dz_ref * N + loss._onehot(labels, K), 1e-5, "probs")

    z2 = z.copy()  # dz written over the scores
    assert loss.xent_forward_backward(z2, labels, z2, probs) == pytest.approx(value, rel=1e-6)
    np.testing.assert_array_equal(z2, dz)


def test_mse_kernel_matches_reference() -> None:
    o64, labels = make(2)
    o = o64.astype(np.float32)
    do = np.full_like(o, np.nan)
    value = loss.mse_forward_backward(o, labels, do)
    value_ref, do_ref = loss.ref_mse(o, labels)
    assert value == pytest.approx(value_ref, rel=1e-5)
    assert_close(do, do_ref, 1e-5, "do")


def test_kernels_reject_bad_labels() -> None:
    z = np.zeros((2, 3), np.float32)
    for bad in ([0, 3], [-1, 0]):
        labels = np.array(bad, np.int64)
        with pytest.raises(ValueError):
            loss.xent_forward_backward(z, labels, np.empty_like(z), np.empty_like(z))
        with pytest.raises(ValueError):
            loss.mse_forward_backward(z, labels, np.empty_like(z))


def test_topk_errors() -> None:
    z = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # label 1: top-1 right
            [0.1, 0.9, 0.5, 0.2],  # label 2: second: top-1 wrong, top-2 right
            [0.1, 0.9, 0.5, 0.2],  # label 0: last: wrong up to top-3
            [0.0, 0.0, 0.0, 0.0],  # label 3: ties rank by index, so 4th
            [np.nan, 1.0, 0.0, 0.0],  # label 0: NaN score is always wrong
        ]
    )
    labels = np.array([1, 2, 0, 3, 0])
    assert [loss.topk_errors(z, labels, k) for k in (1, 2, 3, 4)] == [4, 3, 3, 1]
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    assert loss.topk_errors(z, labels, 1) == int((z.argmax(axis=1) != labels).sum())
    top5 = np.argsort(-z, axis=1)[:, :5]
    assert loss.topk_errors(z, labels, 5) == int((top5 != labels[:, None]).all(axis=1).sum())


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_reference_matches_torch() -> None:
    import torch
    import torch.nn.functional as F

    z, labels = make(4)
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt, torch.tensor(labels))
    lt.backward()
    value, grad = loss.ref_xent(z, labels)
    assert value == pytest.approx(lt.item(), rel=1e-12)
    assert_close(grad, zt.grad.numpy(), 1e-12, "xent grad")

    ot = torch.tensor(z, requires_grad=True)
    target = F.one_hot(torch.tensor(labels), K).double()
    mt = F.mse_loss(ot, target, reduction="sum") / (2 * N)  # 1/2 sum over k, mean over n
    mt.backward()
    value, grad = loss.ref_mse(z, labels)
    assert value == pytest.approx(mt.item(), rel=1e-12)
    assert_close(grad, ot.grad.numpy(), 1e-12, "mse grad")
