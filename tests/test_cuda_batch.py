"""CUDA kernels that read the batch size from the arrays: batch norm, PReLU, subsample, local,
softmax and the loss run two batch sizes on ONE compiled kernel each (issue 13: cap the
number of distinct kernels a plan needs), with the float64 reference's numbers at both; a
whole CUDA plan built for a second batch size adds only conv's and fc's GEMM kernels.

Runs in Numba's CUDA simulator (tests/conftest.py), which compiles nothing: "one compiled
kernel" is checked as what decides a compilation on a GPU. Every launch is recorded
(cudakit.recording: module, factory, configuration, kernel, argument types) and the two
batch sizes must make the same launches, through the same kernel objects, without the
factories being asked for a new configuration nor a kernel module generated or loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numba import cuda
from opcheck import assert_close

import netdsl
from netdsl.backends import compile_network
from netdsl.ops import (
    activation,
    batchnorm,
    codegen,
    cudakit,
    local,
    loss,
    prelu,
    softmax,
    subsample,
)

cudakit.fast_simulator_barrier()

BATCHES = (2, 5)  # 5: past the simulator's grid (2 blocks of 32 threads), grid-stride loops
TOL = 1e-4


def dev(a: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(a))


def nans(shape, dtype=np.float32):
    """A device array every element of which the kernel must write."""
    return cuda.to_device(np.full(shape, np.nan, dtype))


def f32(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


def _launches(op) -> list[cudakit.Launch]:
    return [v for v in vars(op).values() if isinstance(v, cudakit.Launch)]


def _memo_sizes(op) -> dict[str, int]:
    """Configurations each of the op's factories has built in this process."""
    return {f"{l.factory.__module__}.{l.factory.__name__}": len(l.factory.__dict__.get("_memo", ()))
            for l in _launches(op)}  # fmt: skip


def assert_one_kernel_for_both_batches(run: Callable[[int], object]) -> None:
    """run(n) builds the op for batch n, runs it and checks it against the reference; the
    second batch size must reuse every kernel of the first."""
    seen = []
    for i, n in enumerate(BATCHES):
        events = len(codegen.EVENTS)
        with cudakit.recording() as rec:
            op = run(n)
        launched = {(m, f, cfg, name, args) for m, f, cfg, name, args in rec}
        kernels = {id(l.kernel) for l in _launches(op)}
        seen.append((launched, kernels, _memo_sizes(op), op))
        if i:
            assert len(codegen.EVENTS) == events, codegen.EVENTS[events:]  # nothing generated
    (rec0, ker0, memo0, op0), (rec1, ker1, memo1, op1) = seen
    assert rec0 and rec0 == rec1, rec0 ^ rec1  # same configurations, kernels and types
    assert ker0 == ker1  # the very same kernel objects (one dispatcher each)
    assert memo1 == memo0  # the factories built no further configuration
    assert {l.cfg for l in _launches(op0)} == {l.cfg for l in _launches(op1)}


# -------------------------------------------------------------------------------- the ops


def test_batchnorm_one_kernel_for_two_batches():
    c, h, w, act = 3, 4, 3, "relu"

    def run(n):
        shape = (n, c, h, w)
        x = f32(shape, n, 2.0) + np.arange(c, dtype=np.float32)[None, :, None, None]
        gamma, beta, dy = f32(c, 1) + 1.5, f32(c, 2), f32(shape, n + 1)
        rm0, rv0 = f32(c, 3), np.abs(f32(c, 4)) + 0.5
        op = batchnorm.BnCUDA(n, c, h * w, 1e-5, 0.1, activation.ACT_CODE[act], 0.0)
        rm, rv, y = dev(rm0), dev(rv0), nans(x.size)
        op.forward_train(dev(x).reshape(-1), dev(gamma), dev(beta), y, rm, rv)
        y_ref, mean, var = batchnorm.ref_forward_train(f64(x), gamma, beta)
        assert_close(y.copy_to_host().reshape(shape), activation.ref_forward(y_ref, act), TOL)
        rm_ref, rv_ref = batchnorm.ref_update_running(rm0, rv0, mean, var, n * h * w, 0.1)
        assert_close(rm.copy_to_host(), rm_ref, TOL, "running mean")
        assert_close(rv.copy_to_host(), rv_ref, TOL, "running var")
        dx, dg, db = nans(x.size), nans(c), nans(c)
        op.backward(dev(dy).reshape(-1), y, dev(x).reshape(-1), dev(gamma), dx, dg, db)
        dz = activation.ref_backward(f64(dy), f64(y.copy_to_host()).reshape(shape), act)
        rdx, rdg, rdb = batchnorm.ref_backward(dz, f64(x), gamma)
        assert_close(dx.copy_to_host().reshape(shape), rdx, TOL, f"dx, batch {n}")
        assert_close(dg.copy_to_host(), rdg, TOL, "dgamma")
        assert_close(db.copy_to_host(), rdb, TOL, "dbeta")
        op.forward_eval(dev(x).reshape(-1), dev(gamma), dev(beta), rm, rv, y)
        ref = batchnorm.ref_forward_eval(f64(x), gamma, beta, rm.copy_to_host(),
                                         rv.copy_to_host())  # fmt: skip
        assert_close(y.copy_to_host().reshape(shape), activation.ref_forward(ref, act), TOL)
        return op

    assert_one_kernel_for_both_batches(run)


@pytest.mark.parametrize("slopes", [3, 1])
def test_prelu_one_kernel_for_two_batches(slopes):
    c, h, w = 3, 4, 3

    def run(n):
        x, dy = f32((n, c, h, w), n), f32((n, c, h, w), n + 1)
        a = np.random.default_rng(5).uniform(-0.5, 1.0, slopes).astype(np.float32)
        op = prelu.PReLUCUDA(n, c, h, w, slopes)
        y, dx, da = nans(x.shape), nans(x.shape), nans(slopes)
        op.forward(dev(x), dev(a), y)
        assert_close(y.copy_to_host(), prelu.ref_forward(f64(x), f64(a)), TOL, "forward")
        op.backward(dev(dy), dev(x), dev(a), dx, da)
        dx_ref, da_ref = prelu.ref_backward(f64(dy), f64(x), f64(a))
        assert_close(dx.copy_to_host(), dx_ref, TOL, "dx")
        assert_close(da.copy_to_host(), da_ref, TOL, f"da, batch {n}")
        return op

    assert_one_kernel_for_both_batches(run)


def test_subsample_one_kernel_for_two_batches():
    c, h, w, k, s, p, act = 3, 5, 4, (2, 2), (2, 2), (0, 0), "sigmoid"
    ho, wo = 2, 2

    def run(n):
        x, dy = f32((n, c, h, w), n), f32((n, c, ho, wo), n + 1)
        coef, bias = f32(c, 6), f32(c, 7)
        op = subsample.SubsampleCUDA(n, c, h, w, k, s, p, (ho, wo), activation.ACT_CODE[act])
        y = nans(dy.shape)
        op.forward(dev(x), dev(coef), dev(bias), y)
        ref = subsample.ref_forward(f64(x), coef, bias, k, s, p, (ho, wo))
        assert_close(y.copy_to_host(), activation.ref_forward(ref, act), TOL, "forward")
        dx, dc, db = nans(x.shape), nans(c), nans(c)
        op.backward(dev(dy), dev(x), dev(coef), dx, dc, db)
        rdx, rdc, rdb = subsample.ref_backward(f64(dy), f64(x), coef, k, s, p, (ho, wo))
        assert_close(dx.copy_to_host(), rdx, TOL, "dx")
        assert_close(dc.copy_to_host(), rdc, TOL, f"dcoef, batch {n}")
        assert_close(db.copy_to_host(), rdb, TOL, f"dbias, batch {n}")
        return op

    assert_one_kernel_for_both_batches(run)


def test_local_one_kernel_for_two_batches():
    c, h, w, o, k, s, p, out_hw, g = 4, 5, 4, 4, (3, 2), (2, 1), (1, 1), (3, 4), 2

    def run(n):
        x, dy = f32((n, c, h, w), n), f32((n, o, *out_hw), n + 1)
        wt, b = f32((o, *out_hw, c // g, *k), 8), f32((o, *out_hw), 9)
        op = local.LocalCUDA(n, c, h, w, o, *k, s, p, g, out_hw, True)
        y = nans((n, o, *out_hw))
        op.forward(dev(x), dev(wt), dev(b), y)
        assert_close(y.copy_to_host(), local.ref_forward(f64(x), f64(wt), f64(b), s, p, g), TOL)
        dx, dw, db = nans(x.shape), nans(wt.shape), nans(b.shape)
        op.backward(dev(dy), dev(x), dev(wt), dx, dw, db)
        dx_ref, dw_ref, db_ref = local.ref_backward(f64(dy), f64(x), f64(wt), s, p, g)
        assert_close(dx.copy_to_host(), dx_ref, TOL, "dx")
        assert_close(dw.copy_to_host(), dw_ref, TOL, f"dw (a sum over the batch of {n})")
        assert_close(db.copy_to_host(), db_ref, TOL, f"db (a sum over the batch of {n})")
        return op

    assert_one_kernel_for_both_batches(run)


def test_softmax_one_kernel_for_two_batches():
    classes = 6

    def run(n):
        x, dy = f32((n, classes), n, 3.0), f32((n, classes), n + 1)
        op = softmax.SoftmaxCUDA(n, classes)
        y, dx = nans(x.shape), nans(x.shape)
        op.forward(dev(x), y)
        assert_close(y.copy_to_host(), softmax.ref_forward(f64(x)), TOL, "forward")
        op.backward(dev(dy), y, dx)
        ref = softmax.ref_backward(f64(dy), f64(y.copy_to_host()))
        assert_close(dx.copy_to_host(), ref, TOL, f"backward, batch {n}")
        return op

    assert_one_kernel_for_both_batches(run)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_loss_one_kernel_for_two_batches(kind):
    classes = 4

    def run(n):
        z = f32((n, classes), n, 2.0)
        labels = np.random.default_rng(n).integers(0, classes, n)
        op = loss.LossCUDA(kind, n, classes)
        dz = nans(z.shape)
        op.forward_backward(dev(z), dev(labels.astype(np.int64)), dz)
        value, wrong, bad = op.stats.copy_to_host()
        ref_value, ref_dz = (loss.ref_xent if kind == "cross_entropy" else loss.ref_mse)(
            f64(z), labels
        )
        # the mean over the batch: 1/N is this batch's, not the first one's
        assert abs(value - ref_value) < TOL * max(1.0, abs(ref_value)), (n, value, ref_value)
        assert_close(dz.copy_to_host(), ref_dz, TOL, f"gradient, batch {n}")
        assert wrong == loss.topk_errors(z, labels, 1) and bad == 0
        return op

    assert_one_kernel_for_both_batches(run)


# ---------------------------------------------------------------------------- a whole plan

NET = """network mix
input image: 2x8x8
conv  c1: 4 filters 3x3, pad 1
bn    b1: relu
prelu a1
subsample s1: 2x2, sigmoid
local l1: 3 filters 2x2
fc    out: 5
softmax sm
loss  mse
"""

# the GEMMs' tiles and tables depend on N: their kernels are generated per batch size
GEMM_MODULES = {"netdsl.ops.conv", "netdsl.ops.fc"}
GEMM_KINDS = {"conv", "convd", "fc"}  # their generated modules' name prefixes


def _plan_launches(n: int) -> tuple[set[tuple], list[str]]:
    """(module, factory, cfg, kernel, argument types) of a training step and an evaluation
    forward of NET at batch n, and the kernel modules generated or loaded meanwhile."""
    events = len(codegen.EVENTS)
    rng = np.random.default_rng(n)
    with cudakit.recording() as rec:
        cn = compile_network(netdsl.loads(NET, "mix.net"), device="cuda", batch=n, seed=0)
        x = rng.standard_normal((n, 2, 8, 8)).astype(np.float32)
        value = cn.step_grads(x, rng.integers(0, 5, n))
        out = cn.forward(x)
    assert np.isfinite(value) and out.shape == (n, 5) and np.isfinite(out).all()
    return set(rec), [name for name, _, _ in codegen.EVENTS[events:]]


def test_a_second_batch_size_adds_only_gemm_kernels():
    first, _ = _plan_launches(BATCHES[0])
    second, loaded = _plan_launches(BATCHES[1])
    ops = {r[0] for r in first}
    assert {"netdsl.ops.batchnorm", "netdsl.ops.prelu", "netdsl.ops.subsample",
            "netdsl.ops.local", "netdsl.ops.softmax", "netdsl.ops.loss"} <= ops  # fmt: skip
    added = second - first
    assert added and {r[0] for r in added} <= GEMM_MODULES, sorted({r[:2] for r in added})
    # everything else launches the same kernels (configuration and argument types alike)
    assert {r for r in first if r[0] not in GEMM_MODULES} == {
        r for r in second if r[0] not in GEMM_MODULES
    }
    assert {name.rsplit("_", 1)[0] for name in loaded} <= GEMM_KINDS, loaded
