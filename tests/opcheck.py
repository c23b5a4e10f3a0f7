"""Shared helpers for op tests: finite differences, tolerances, optional PyTorch.

Every op test follows one recipe (after Chainer's check_backward and tinygrad's
helper_test_op):
  1. the float64 NumPy reference backward agrees with central finite differences of
     the reference forward (relative error < 1e-6);
  2. each kernel (CPU float32; CUDA in the simulator) agrees with the reference,
     forward and backward, within 1e-4;
  3. where PyTorch is installed, the reference agrees with PyTorch too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def load_script(path, name: str):
    """The module of a script that is not a package module (benchmarks/*.py, .ci/*.py),
    registered in sys.modules under `name` (dataclasses look their module up there)."""
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar f() with respect to x (modified in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a-b| / max(1, max|b|): relative for large values, absolute near zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def assert_close(a: np.ndarray, b: np.ndarray, tol: float, what: str = "") -> None:
    err = rel_error(a, b)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:.3g}"


def square_conv(k: int, n, c, h, w, o, p=None, extra=None, g=1, bias=True, scratch=None):
    """A k x k stride-1 CPU conv layer (netdsl.ops.conv.ConvCPU) with top/left padding p and
    bottom/right padding extra (both k // 2 unless given), and its geometry for
    conv.ref_forward / check_conv_layer."""
    from netdsl.ops import conv

    p = (k // 2, k // 2) if p is None else p
    extra = (k // 2, k // 2) if extra is None else extra
    out_hw = (h + p[0] + extra[0] - (k - 1), w + p[1] + extra[1] - (k - 1))
    layer = conv.ConvCPU(n, c, h, w, o, k, k, (1, 1), p, (1, 1), g, out_hw, bias, scratch)
    return layer, ((1, 1), p, (1, 1), g, out_hw)


def square_conv_data(k: int, geo, n, c, h, w, o, g=1, bias=True, seed=0):
    """Random x, k x k filters, bias (or None) and dy for a layer of square_conv."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    dy = rng.standard_normal((n, o, *geo[4])).astype(np.float32)
    return x, wt, b, dy


def check_conv_layer(layer, geo, x, wt, b, dy, tol: float, want_dx: bool = True) -> None:
    """A CPU conv layer (netdsl.ops.conv.ConvCPU) against the float64 reference: forward,
    then backward twice (no workspace may carry state); geo = conv.ref_forward's geometry."""
    from netdsl.ops import conv

    y = np.full(dy.shape, np.nan, np.float32)  # NaN: every element must be written
    layer.forward(x, wt, b, y)
    assert_close(y, conv.ref_forward(x, wt, b, *geo), tol, "forward")
    dx_ref, dw_ref, db_ref = conv.ref_backward(dy, x, wt, *geo)
    for _ in range(2):
        dx = np.full_like(x, np.nan) if want_dx else None
        dw = np.full_like(wt, np.nan)
        db = np.full(wt.shape[0], np.nan, np.float32) if b is not None else None
        layer.backward(dy, x, wt, dx, dw, db)
        assert_close(dw, dw_ref, tol, "dw")
        if dx is not None:
            assert_close(dx, dx_ref, tol, "dx")
        if db is not None:
            assert_close(db, db_ref, tol, "db")


def check_reference_grad(
    forward: Callable[..., np.ndarray],
    backward: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    inputs: list[np.ndarray],
    seed: int = 0,
    tol: float = 1e-6,
) -> None:
    """Check backward(dy) -> grads of `inputs` against finite differences of sum(forward * dy)."""
    rng = np.random.default_rng(seed)
    y = forward(*inputs)
    dy = rng.standard_normal(y.shape)
    grads = backward(dy)
    for k, (x, g) in enumerate(zip(inputs, grads)):
        num = numerical_grad(lambda: float(np.sum(forward(*inputs) * dy)), x)
        assert_close(g, num, tol, f"input {k}")


def assert_net_matches_torch(cn, x: np.ndarray, y: np.ndarray, tol: float = 1e-4) -> None:
    """A compiled net's train-mode loss and every gradient equal its PyTorch twin's
    (netdsl/torch_ref.py, in float64) on the batch (x, y)."""
    import torch

    from netdsl.torch_ref import build

    loss, grads = cn.loss_and_grads(x, y)
    model = build(cn.net).double()
    model.load_numpy({**cn.params, **cn.buffers})
    model.train()
    t_loss = model.loss(model(torch.from_numpy(x).double()), torch.from_numpy(y))
    t_loss.backward()
    tg = model.grads_numpy()
    assert abs(loss - t_loss.item()) < tol * max(1.0, abs(t_loss.item())), (loss, t_loss.item())
    for k in grads:
        assert_close(grads[k], tg[k], tol, k)
