"""CUDA backend: every op's kernels (forward and backward) against the float64 reference and the
CPU kernels, whole nets against the CPU plan, the optimizer, GPU groups and PTX compilation.

Runs in Numba's CUDA simulator (tests/conftest.py) unless NETDSL_REAL_GPU=1; the simulator
runs each CUDA thread as a Python thread, so every shape here is tiny.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from numba import cuda
from opcheck import HAVE_TORCH, assert_close

import netdsl
from netdsl.backends import compile_network
from netdsl.ops import (
    activation,
    add,
    batchnorm,
    concat,
    conv,
    cudakit,
    dropout,
    fc,
    gemm_cuda,
    loss,
    lrn,
    maxout,
    optim,
    pool,
    softmax,
    subsample,
)
from netdsl.ops.cudakit import real_gpu_requested, simulator
from tests.test_compiler import NETS, data

cudakit.fast_simulator_barrier()  # op tests launch kernels before any net is compiled

N, C, H, W = 2, 3, 5, 5
RNG = np.random.default_rng(0)
TOL = 1e-4
# compiled for sm_90 by the PTX test; the thin tiles (LeNet's 32-row ones) are compiled
# through ptxas by tests/test_gpu_static.py (LeNet-5's tiles), so only the largest here
GPU_TILES = [(128, 128)]

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not real_gpu_requested() or simulator(),
                               reason="needs a real GPU (NETDSL_REAL_GPU=1)")  # fmt: skip


def dev(a: np.ndarray):
    """Upload a float32 (or integer) copy of a."""
    return cuda.to_device(np.ascontiguousarray(a))


def f32(shape, scale=1.0, seed=None) -> np.ndarray:
    rng = RNG if seed is None else np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def empty(shape, dtype=np.float32):
    return cuda.to_device(np.full(shape, np.nan if dtype == np.float32 else 0, dtype))


def host(d) -> np.ndarray:
    return d.copy_to_host()


# ------------------------------------------------------------------------------------ light ops


@pytest.mark.parametrize("kind", activation.ACTIVATIONS)
def test_activation(kind):
    x = f32((N, C, H, W), 2.0)
    dy = f32(x.shape)
    op = activation.ActCUDA(x.size, kind, 0.1)
    y, dx = empty(x.size), empty(x.size)
    op.forward(dev(x).reshape(-1), y)
    yh = host(y).reshape(x.shape)
    assert_close(yh, activation.ref_forward(x, kind, 0.1), TOL, "forward")
    y_cpu = np.empty_like(x)
    activation.act_forward(x.reshape(-1), y_cpu.reshape(-1), activation.ACT_CODE[kind],
                           *activation.kernel_params(kind, 0.1))  # fmt: skip
    assert_close(yh, y_cpu, 1e-6, "forward vs CPU")
    op.backward(dev(dy).reshape(-1), y, dx)
    ref = activation.ref_backward(dy, yh, kind, 0.1)
    assert_close(host(dx).reshape(x.shape), ref, TOL, "backward")


def test_add_accumulate_copy():
    a, b, c = f32((N, C, H, W)), f32((N, C, H, W)), f32((N, C, H, W))
    op = add.AddCUDA(a.size, activation.ACT_CODE["relu"], 0.0)
    y = empty(a.size)
    op.forward([dev(a).reshape(-1), dev(b).reshape(-1), dev(c).reshape(-1)], y)
    assert_close(host(y), np.maximum(add.ref_forward(a, b, c), 0).reshape(-1), TOL, "add")
    d = dev(a).reshape(-1)
    op.accumulate(d, dev(b).reshape(-1))
    assert_close(host(d), (a + b).reshape(-1), TOL, "accumulate")
    op.copy(dev(c).reshape(-1), d)
    assert np.array_equal(host(d), c.reshape(-1))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_maxout(k):
    x = f32((N, 2 * k, 3, 4))
    x[0, 0, 0, 0] = x[0, min(1, k - 1), 0, 0]  # a tie goes to the first piece
    dy = f32((N, 2, 3, 4))
    op = maxout.MaxoutCUDA(N, 2, 3, 4, k)
    y, idx, dx = empty(dy.size), empty(dy.size, np.int32), empty(x.size)
    op.forward(dev(x).reshape(-1), y, idx)
    assert_close(host(y).reshape(dy.shape), maxout.ref_forward(x, k), 1e-7, "forward")
    op.backward(dev(dy).reshape(-1), idx, dx)
    assert_close(host(dx).reshape(x.shape), maxout.ref_backward(dy, x, k), 1e-7, "backward")


@pytest.mark.parametrize("n,k,alpha,beta", [(5, 2.0, 0.1, 0.75), (3, 1.0, 0.5, 0.6)])
def test_lrn(n, k, alpha, beta):
    x, dy = f32((N, 7, 3, 2), 2.0), f32((N, 7, 3, 2))
    op = lrn.LrnCUDA(N, 7, 3, 2, n, k, alpha, beta)
    y, s, dx = empty(x.size), empty(x.size), empty(x.size)
    op.forward(dev(x).reshape(-1), y, s)
    assert_close(host(y).reshape(x.shape), lrn.ref_forward(x, n, k, alpha, beta), TOL, "fwd")
    op.backward(dev(dy).reshape(-1), dev(x).reshape(-1), y, s, dx)
    ref = lrn.ref_backward(dy, x, host(y).reshape(x.shape), n, k, alpha, beta)
    assert_close(host(dx).reshape(x.shape), ref, TOL, "backward")


def test_dropout():
    x, dy = f32((N, C, H, W)), f32((N, C, H, W))
    mask = dropout.make_mask(np.random.default_rng(3), x.shape, 0.4)
    op = dropout.DropoutCUDA(x.size, 0.4)
    y, dx = empty(x.size), empty(x.size)
    op.forward(dev(x).reshape(-1), dev(mask).reshape(-1), y)
    assert_close(host(y).reshape(x.shape), dropout.ref_forward(x, mask, 0.4), TOL, "forward")
    op.backward(dev(dy).reshape(-1), dev(mask).reshape(-1), dx)
    assert_close(host(dx).reshape(x.shape), dropout.ref_backward(dy, mask, 0.4), TOL, "bwd")


@pytest.mark.parametrize("shape", [(N, C, 4, 3), (5, 4, 1, 1)])
@pytest.mark.parametrize("act_kind", ["linear", "relu"])
def test_batchnorm(shape, act_kind):
    n, c, h, w = shape
    x = f32(shape, 2.0) + np.arange(c, dtype=np.float32)[None, :, None, None]
    gamma, beta = f32(c) + 1.5, f32(c)
    dy = f32(shape)
    rm0, rv0 = f32(c), np.abs(f32(c)) + 0.5
    code = activation.ACT_CODE[act_kind]
    op = batchnorm.BnCUDA(n, c, h * w, 1e-5, 0.1, code, 0.0)
    rm, rv, y = dev(rm0), dev(rv0), empty(x.size)
    op.forward_train(dev(x).reshape(-1), dev(gamma), dev(beta), y, rm, rv)
    y_ref, mean, var = batchnorm.ref_forward_train(x, gamma, beta)
    y_ref = activation.ref_forward(y_ref, act_kind)
    assert_close(host(y).reshape(shape), y_ref, TOL, "train forward")
    rm_ref, rv_ref = batchnorm.ref_update_running(rm0, rv0, mean, var, n * h * w, 0.1)
    assert_close(host(rm), rm_ref, TOL, "running mean")
    assert_close(host(rv), rv_ref, TOL, "running var")
    dx, dg, db = empty(x.size), empty(c), empty(c)
    op.backward(dev(dy).reshape(-1), y, dev(x).reshape(-1), dev(gamma), dx, dg, db)
    dz = activation.ref_backward(dy, host(y).reshape(shape), act_kind)
    rdx, rdg, rdb = batchnorm.ref_backward(dz, x, gamma)
    assert_close(host(dx).reshape(shape), rdx, TOL, "dx")
    assert_close(host(dg), rdg, TOL, "dgamma")
    assert_close(host(db), rdb, TOL, "dbeta")
    op.forward_eval(dev(x).reshape(-1), dev(gamma), dev(beta), rm, rv, y)
    ref = batchnorm.ref_forward_eval(x, gamma, beta, host(rm), host(rv))
    assert_close(host(y).reshape(shape), activation.ref_forward(ref, act_kind), TOL, "eval")


def test_softmax():
    x, dy = f32((4, 6), 3.0), f32((4, 6))
    op = softmax.SoftmaxCUDA(4, 6)
    y, dx = empty(x.shape), empty(x.shape)
    op.forward(dev(x), y)
    assert_close(host(y), softmax.ref_forward(x), TOL, "forward")
    op.backward(dev(dy), y, dx)
    assert_close(host(dx), softmax.ref_backward(dy, host(y)), TOL, "backward")


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_loss(kind):
    z = f32((5, 4), 2.0)
    z[1, :] = 0.5  # a tie: class 0 ranks first
    labels = np.array([0, 2, 3, 1, 2])
    op = loss.LossCUDA(kind, 5, 4)
    dz = empty(z.shape)
    op.forward_backward(dev(z), dev(labels.astype(np.int64)), dz)
    value, wrong, bad = host(op.stats)
    ref_value, ref_dz = (loss.ref_xent if kind == "cross_entropy" else loss.ref_mse)(z, labels)
    assert abs(value - ref_value) < TOL * max(1, abs(ref_value))
    assert_close(host(dz), ref_dz, TOL, "gradient")
    assert wrong == loss.topk_errors(z, labels, 1) and bad == 0
    op.forward_backward(dev(z), dev(np.array([0, 9, 3, -1, 2], np.int64)), dz)
    assert host(op.stats)[2] == 2


def test_concat():
    a, b = f32((N, 2, 3, 3)), f32((N, 3, 3, 3))
    op = concat.ConcatCUDA(N, [2, 3], 9)
    y = empty(N * 5 * 9)
    op.forward([dev(a).reshape(-1), dev(b).reshape(-1)], y)
    assert np.array_equal(host(y).reshape(N, 5, 3, 3), concat.ref_forward([a, b]))
    da, db = empty(a.size), empty(b.size)
    op.backward(y, [da, db])
    assert np.array_equal(host(da).reshape(a.shape), a)
    assert np.array_equal(host(db).reshape(b.shape), b)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_optimizer_kernel(kind):
    sizes, lrm, dm = [7, 3, 5], [1.0, 2.0, 0.5], [1.0, 0.0, 2.0]
    seg = optim.make_segments(sizes, lrm, dm)
    w, g = f32(15), f32(15)
    m, v = np.abs(f32(15)) * 0.1, np.abs(f32(15)) * 0.1
    op = optim.OptimCUDA(15, seg)
    wd, gd, md, vd = dev(w), dev(g), dev(m), dev(v)
    if kind == "adam":
        op.adam(wd, gd, md, vd, 0.01, 0.9, 0.999, 1e-8, 1e-3, 3)
        rw, rm, rv = optim.ref_adam_update(w, g, m, v, *seg, 0.01, 0.9, 0.999, 1e-8, 1e-3, 3)
        assert_close(host(md), rm, 1e-6, "m")
    else:
        op.sgd(wd, gd, vd, 0.1, 0.9, 5e-4, kind == "nesterov")
        rw, rv = optim.ref_sgd_update(w, g, v, *seg, 0.1, 0.9, 5e-4, kind == "nesterov")
    assert_close(host(wd), rw, 1e-6, "w")
    assert_close(host(vd), rv, 1e-6, "v")


# ------------------------------------------------------------------------------------ heavy ops

CONVS = [  # c, h, w, o, kh, kw, stride, pad, dilation, groups
    (3, 5, 5, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (4, 6, 5, 6, 3, 2, (2, 1), (0, 1), (1, 2), 2),
    (2, 7, 7, 3, 5, 5, (1, 1), (2, 2), (1, 1), 1),
    (4, 9, 8, 8, 3, 3, (2, 2), (1, 0), (1, 1), 4),
]


def conv_case(case, n=2, act_kind="linear"):
    c, h, w, o, kh, kw, st, pad, dil, g = case
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // st[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // st[1] + 1
    x, wt, b = f32((n, c, h, w)), f32((o, c // g, kh, kw)), f32(o)
    dy = f32((n, o, ho, wo))
    op = conv.ConvCUDA(n, c, h, w, o, kh, kw, st, pad, dil, g, (ho, wo), True,
                       activation.ACT_CODE[act_kind], 0.0)  # fmt: skip
    y = empty(dy.shape)
    op.forward(dev(x), dev(wt), dev(b), y)
    ref = activation.ref_forward(conv.ref_forward(x, wt, b, st, pad, dil, g, (ho, wo)), act_kind)
    assert_close(host(y), ref, TOL, "forward")
    dx, dw, db = empty(x.shape), empty(wt.shape), empty(o)
    op.backward(dev(dy), dev(x), dev(wt), dx, dw, db)
    rdx, rdw, rdb = conv.ref_backward(dy, x, wt, st, pad, dil, g, (ho, wo))
    assert_close(host(dx), rdx, TOL, "dx")
    assert_close(host(dw), rdw, TOL, "dw")
    assert_close(host(db), rdb, TOL, "db")
    return x, wt, b, host(y)


@pytest.mark.parametrize("case", CONVS)
def test_conv(case):
    x, wt, b, y = conv_case(case)
    c, h, w, o, kh, kw, st, pad, dil, g = case
    y_cpu = np.empty_like(y)
    conv.ConvCPU(2, c, h, w, o, kh, kw, st, pad, dil, g, y.shape[2:], True).forward(x, wt, b, y_cpu)
    assert_close(y, y_cpu, 1e-5, "forward vs CPU")


def test_conv_fused_activation_and_table_mask():
    conv_case(CONVS[0], act_kind="tanh")
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]], np.float32)[:, :, None, None]
    x, wt, dy = f32((2, 3, 5, 5)), f32((4, 3, 3, 3)) * mask, f32((2, 4, 5, 5))
    op = conv.ConvCUDA(2, 3, 5, 5, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1, (5, 5), False, mask=mask)
    dw = empty(wt.shape)
    op.backward(dev(dy), dev(x), dev(wt), None, dw, None)
    _, rdw, _ = conv.ref_backward(dy, x, wt, (1, 1), (1, 1), (1, 1), 1, (5, 5))
    assert_close(host(dw), rdw * mask, TOL, "masked dw")


def test_gpu_tile_configs_in_the_simulator(monkeypatch):
    """Tiles with 256 threads the GPU uses (the simulator picks small ones)."""
    tiles = gemm_cuda.TILES
    monkeypatch.setattr(cudakit, "pick_tile", lambda m, n: tiles[(64 if m > 32 else 32, 32)])
    conv_case((3, 4, 4, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1), n=2, act_kind="relu")
    fc_case(3, 10, 70, "relu")


def fc_case(n, f, o, act_kind):
    x, w, b, dy = f32((n, f)), f32((o, f)), f32(o), f32((n, o))
    op = fc.FcCUDA(n, f, o, True, activation.ACT_CODE[act_kind], 0.0)
    y = empty((n, o))
    op.forward(dev(x), dev(w), dev(b), y)
    assert_close(host(y), activation.ref_forward(fc.ref_forward(x, w, b), act_kind), TOL, "fwd")
    dx, dw, db = empty((n, f)), empty((o, f)), empty(o)
    op.backward(dev(dy), dev(x), dev(w), dx, dw, db)
    rdx, rdw, rdb = fc.ref_backward(dy, x, w)
    assert_close(host(dx), rdx, TOL, "dx")
    assert_close(host(dw), rdw, TOL, "dw")
    assert_close(host(db), rdb, TOL, "db")
    y_cpu = np.empty((n, o), np.float32)
    fc.FcCPU(n, f, o, True).forward(x, w, b, y_cpu)
    assert_close(host(y), activation.ref_forward(y_cpu, act_kind), 1e-5, "forward vs CPU")


@pytest.mark.parametrize("n,f,o,act_kind", [(2, 7, 5, "linear"), (3, 20, 21, "sigmoid")])
def test_fc(n, f, o, act_kind):
    fc_case(n, f, o, act_kind)


def out_size(size, k, s, p, rounding):
    v = size + 2 * p - k
    return (-(-v // s) if rounding == "ceil" else v // s) + 1


POOLS = [  # mode, kernel, stride, pad, H, W, rounding
    ("max", (2, 2), (2, 2), (0, 0), 5, 5, "floor"),
    ("max", (3, 3), (2, 2), (0, 0), 7, 6, "ceil"),
    ("avg", (3, 3), (2, 2), (1, 1), 5, 5, "floor"),
    ("sum", (2, 3), (1, 2), (0, 1), 4, 5, "ceil"),
    ("avg", (2, 2), (2, 2), (0, 0), 5, 5, "ceil"),
]


@pytest.mark.parametrize("case", POOLS)
def test_pool(case):
    mode, k, s, p, h, w, rnd = case
    ho, wo = out_size(h, k[0], s[0], p[0], rnd), out_size(w, k[1], s[1], p[1], rnd)
    x, dy = f32((2, 3, h, w)), f32((2, 3, ho, wo))
    x[0, 0, 0, :2] = 1.5  # a tie: the first maximum wins
    op = pool.PoolCUDA(2, 3, h, w, mode, k, s, p, (ho, wo))
    y, dx = empty(dy.shape), empty(x.shape)
    op.forward(dev(x), y)
    assert_close(host(y), pool.ref_forward(x, mode, k, s, p, (ho, wo)), 1e-5, "forward")
    op.backward(dev(dy), dx, dev(x))
    assert_close(host(dx), pool.ref_backward(dy, x, mode, k, s, p, (ho, wo)), 1e-5, "backward")
    cpu = pool.PoolCPU(2, 3, h, w, mode, k, s, p, (ho, wo))
    y_cpu, dx_cpu = np.empty_like(dy), np.empty_like(x)
    cpu.forward(x, y_cpu)
    cpu.backward(dy, dx_cpu)
    assert_close(host(y), y_cpu, 1e-6, "forward vs CPU")
    assert_close(host(dx), dx_cpu, 1e-6, "backward vs CPU")


@pytest.mark.parametrize("act", ["relu", "leaky", "tanh", "sigmoid"])
@pytest.mark.parametrize("case", [POOLS[0], POOLS[2]])
def test_pool_backward_takes_the_producers_activation(case, act):
    """With the producer's activation fused into its backward, the pool returns the gradient
    before that activation: the reference pool backward times act'(y), y = act(z) its input."""
    mode, k, s, p, h, w, rnd = case
    ho, wo = out_size(h, k[0], s[0], p[0], rnd), out_size(w, k[1], s[1], p[1], rnd)
    z, dy = f32((2, 3, h, w)), f32((2, 3, ho, wo))
    x = activation.ref_forward(z, act, 0.1).astype(np.float32)  # the producer's output
    op = pool.PoolCUDA(2, 3, h, w, mode, k, s, p, (ho, wo), act, 0.1)
    y, dz = empty(dy.shape), empty(x.shape)
    op.forward(dev(x), y)
    op.backward(dev(dy), dz, dev(x))
    dx = pool.ref_backward(dy, x, mode, k, s, p, (ho, wo))
    want = activation.ref_backward(dx, x, act, 0.1)
    assert_close(host(dz), want, 1e-5, f"{mode} + {act}")


@pytest.mark.parametrize("case", POOLS[:4])
def test_subsample(case):
    _, k, s, p, h, w, rnd = case
    ho, wo = out_size(h, k[0], s[0], p[0], rnd), out_size(w, k[1], s[1], p[1], rnd)
    x, coef, bias, dy = f32((2, 3, h, w)), f32(3), f32(3), f32((2, 3, ho, wo))
    op = subsample.SubsampleCUDA(2, 3, h, w, k, s, p, (ho, wo), activation.ACT_CODE["sigmoid"])
    y = empty(dy.shape)
    op.forward(dev(x), dev(coef), dev(bias), y)
    ref = activation.ref_forward(subsample.ref_forward(x, coef, bias, k, s, p, (ho, wo)),
                                 "sigmoid")  # fmt: skip
    assert_close(host(y), ref, 1e-5, "forward")
    dx, dc, db = empty(x.shape), empty(3), empty(3)
    op.backward(dev(dy), dev(x), dev(coef), dx, dc, db)
    rdx, rdc, rdb = subsample.ref_backward(dy, x, coef, k, s, p, (ho, wo))
    assert_close(host(dx), rdx, 1e-5, "dx")
    assert_close(host(dc), rdc, 1e-5, "dcoef")
    assert_close(host(db), rdb, 1e-5, "dbias")


# ----------------------------------------------------------------------------------- whole nets


def cpu_and_cuda(net, batch, seed=0):
    return (compile_network(net, device="cpu", batch=batch, seed=seed),
            compile_network(net, device="cuda", batch=batch, seed=seed))  # fmt: skip


def assert_same_step(cpu, gpu, x, y, tol=1e-4):
    l1, g1 = cpu.loss_and_grads(x, y)
    l2, g2 = gpu.loss_and_grads(x, y)
    assert abs(l1 - l2) <= tol * max(1.0, abs(l1)), (l1, l2)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert_close(g2[k], g1[k], tol, k)
    assert gpu.top1_errors(y) == cpu.top1_errors(y)
    assert gpu.buffers.keys() == cpu.buffers.keys()
    for k, v in cpu.buffers.items():  # batch-norm running statistics
        assert_close(gpu.buffers[k], v, tol, k)


@pytest.mark.parametrize("name", list(NETS))
def test_whole_net_matches_cpu(name):
    """Loss, every gradient, BN statistics and eval forward: CUDA (simulator) vs the CPU plan.

    The dropout net draws the same masks on both: the CUDA runner uses the plan's generator."""
    cpu, gpu = cpu_and_cuda(netdsl.loads(NETS[name], f"{name}.net"), batch=3)
    assert type(gpu).__name__ == "CudaNet" and gpu.device == "cuda"
    assert np.array_equal(gpu.params["out.weight"], cpu.params["out.weight"])  # same init
    x, y = data(cpu)
    assert_same_step(cpu, gpu, x, y)
    assert_close(gpu.forward(x), cpu.forward(x), TOL, "eval forward")
    assert_close(gpu.scores(), cpu.scores(), TOL, "scores")


def test_lenet5_matches_cpu():
    """LeNet-5 at batch 2: loss and gradients within 1e-4 relative (about 12 s simulated)."""
    cpu, gpu = cpu_and_cuda(netdsl.load("nets/lenet5.net"), batch=2)
    x, y = data(cpu)
    assert_same_step(cpu, gpu, x, y)


def test_cuda_api_host_side():
    net = netdsl.loads(NETS["dropout"], "dropout.net")
    gpu = compile_network(net, device="cuda", batch=4)
    x, y = data(gpu)
    full, part = gpu.forward(x), gpu.forward(x[:3])
    assert full.shape == (4, 4) and np.array_equal(full[:3], part)
    new = {k: np.full(v.shape, 0.25, np.float32) for k, v in gpu.params.items()}
    gpu.set_params(new)
    assert all(np.all(v == 0.25) for v in gpu.params.values())
    with pytest.raises(ValueError, match="expected shape"):
        gpu.set_params({**new, "f1.weight": np.zeros((2, 2))})
    assert all(np.all(v == 0.25) for v in gpu.params.values())  # unchanged after the error
    with pytest.raises(ValueError, match="labels must lie in"):
        gpu.step_grads(x, np.array([0, 1, 9, 2]))
    with pytest.raises(ValueError, match="full batches"):
        gpu.step_grads(x[:2], y[:2])
    assert "device cuda" in gpu.describe()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_queued_steps_answer_in_order(device):
    """start_step queues a step (on a GPU the host goes on at once, its uploads staged in
    pinned buffers used in turn); finish_step answers the oldest: two steps in flight give
    each one's own loss and error count, exactly as two step_grads calls do, and a bad label
    is still reported."""
    net = netdsl.loads(NETS["dropout"], "q.net")
    queued = compile_network(net, device=device, batch=2, seed=0)
    plain = compile_network(net, device=device, batch=2, seed=0)
    batches = [data(plain, seed=s) for s in (1, 2)]
    want = []
    for x, y in batches:
        want.append((plain.step_grads(x, y), plain.top1_errors(y)))
    for x, y in batches:
        queued.start_step(x, y)
    with pytest.raises(RuntimeError, match="already queued"):  # a third would reuse a buffer
        queued.start_step(*batches[0])
    got = [queued.finish_step(), queued.finish_step()]
    assert got == want and want[0] != want[1]
    grad = {cn: cn.grad.copy_to_host() if device == "cuda" else cn.grad for cn in (queued, plain)}
    assert np.array_equal(grad[queued], grad[plain])
    x, y = batches[0]
    with pytest.raises(ValueError, match="label"):  # the CPU says so at once, a GPU later
        queued.start_step(x, np.full_like(y, 99))
        queued.finish_step()


FUSED = """
network fused
input image: 2x8x8
conv c1: 4 filters 3x3, pad 1, leaky(0.2)   # only p1 reads it: p1 takes over leaky's backward
pool p1: max 2x2, stride 2
conv c2: 4 filters 3x3, pad 1, tanh         # read by p2 and c3: no fusion
pool p2: avg 2x2, stride 2
conv c3(c2): 4 filters 1x1
pool p3(c3): max 2x2, stride 2              # c3 has no activation: nothing to fuse
bn   b4(c2): tanh                           # bn applies act' in its own backward kernel
pool p4: max 2x2, stride 2
concat j(p2, p3, p4)
fc   out: 3
loss cross_entropy
"""


def test_pool_takes_over_its_producers_activation_backward():
    """On CUDA a pool that is the only reader of a layer with a fused activation computes that
    activation's backward (one elementwise pass and launch fewer); where the map fans out or
    has no activation nothing changes. Loss and gradients equal the CPU plan's."""
    net = netdsl.loads(FUSED, "fused.net")
    cpu, gpu = cpu_and_cuda(net, batch=2)
    r = {x.layer.name: x for x in gpu.runners}
    assert r["c1"].act_in_consumer and r["p1"].op.act_code == activation.ACT_CODE["leaky"]
    assert r["c1"].dz is None
    assert not r["c2"].act_in_consumer and r["p2"].op.act_code == activation.LINEAR
    assert not r["c3"].act_in_consumer and r["p3"].op.act_code == activation.LINEAR
    assert not r["b4"].act_in_consumer and r["p4"].op.act_code == activation.LINEAR
    x, y = data(cpu)
    assert_same_step(cpu, gpu, x, y)
    with cudakit.recording() as launches:
        gpu.step_grads(x, y)
    names = [rec[3] for rec in launches]
    assert names.count("act_backward") == 1  # c2's tanh; c1's leaky went into p1's backward


def test_device_names():
    from netdsl.backends import resolve_device

    assert resolve_device("cuda") == "cuda"  # the simulator counts as a CUDA device
    assert resolve_device("auto") == ("cpu" if simulator() else "cuda")  # never the simulator
    with pytest.raises(netdsl.NetError):
        resolve_device("tpu")


TINY = """
network tiny
input image: 1x6x6
conv c1: 3 filters 3x3, pad 1, relu
pool p1: max 2x2, stride 2
dropout d1: 0.25
fc   out: 3
loss cross_entropy
train {
  data "tiny.npz"
  batch 8
  epochs 2
  optimizer OPTIM
  seed 3
}
"""


def tiny_files(tmp_path, optim_spec):
    """TINY with `optim_spec` and its data: 2 batches to train on (2 steps an epoch), 1 to
    test on; kept that small because each step takes seconds in the simulator."""
    (tmp_path / "tiny.net").write_text(TINY.replace("OPTIM", optim_spec))
    rng = np.random.default_rng(0)
    for name, n in (("tiny.npz", 16), ("test.npz", 8)):
        yy = rng.integers(0, 3, n)
        xx = rng.normal(0.0, 0.3, (n, 1, 6, 6))
        for i, c in enumerate(yy):
            xx[i, 0, 2 * c : 2 * c + 2, :] += 2.0
        np.savez(tmp_path / name, x=xx.astype(np.float32), y=yy)
    return tmp_path / "tiny.net", f"{tmp_path}/tiny.npz,{tmp_path}/test.npz"


@pytest.mark.parametrize("spec, graphs",
                         [("sgd(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=true)", "1"),
                          ("adam(lr=0.01)", "0")])  # fmt: skip
def test_training_on_cuda_follows_the_cpu(tmp_path, monkeypatch, spec, graphs):
    """Two epochs of `netdsl train --device cuda`: metrics and weights track the CPU run, and a
    resumed CUDA run equals an uninterrupted one bit for bit (no atomics anywhere). With
    NETDSL_CUDA_GRAPHS=1 every step after the first replays the captured step (as on a GPU)."""
    from netdsl.train.checkpoint import load_checkpoint
    from netdsl.train.trainer import fit_file

    monkeypatch.setenv("NETDSL_CUDA_GRAPHS", graphs)
    path, ds = tiny_files(tmp_path, spec)
    runs = {}
    for dev_name in ("cpu", "cuda"):
        r = fit_file(path, data=ds, device=dev_name, out=tmp_path / dev_name, quiet=True)
        runs[dev_name] = (r, load_checkpoint(tmp_path / dev_name / "checkpoint.npz")[0])
    (rc, ac), (rg, ag) = runs["cpu"], runs["cuda"]
    assert abs(rc["train_loss"] - rg["train_loss"]) < 1e-4 and rc["train_err"] == rg["train_err"]
    for k in ac:
        assert_close(ag[k], ac[k], 1e-4, k)
    fit_file(path, data=ds, device="cuda", epochs=1, out=tmp_path / "part", quiet=True)
    from netdsl.cli import main

    args = ["train", str(path), "--data", ds, "--out", str(tmp_path / "part"), "--quiet"]
    assert main([*args, "--device", "cuda", "--resume"]) == 0  # the CLI path
    ap = load_checkpoint(tmp_path / "part" / "checkpoint.npz")[0]
    for k in ag:
        assert np.array_equal(ap[k], ag[k]), k


# ----------------------------------------------------------------------------------- GPU groups

GROUPED = """
network two_columns
gpus GPUS
input image: 3x6x6
conv c1: 8 filters 3x3, pad 1, relu                # reads the replicated input: no exchange
lrn  n1: size 3, k 2, alpha 0.1, beta 0.75         # halo of 1 map each way
conv c2: 8 filters 3x3, pad 1, groups 2, leaky(0.1)  # each GPU reads its own 4 maps
pool p2: max 2x2, stride 2
bn   b2: relu
dropout d2: 0.3
conv c3: 6 filters 3x3, pad 1, connect [[0,1],[2,3],[4,5],[6,7],[0,7],[3,4]]
maxout m3: 2 pieces                                # a group of 2 crosses the boundary
conv c4(b2): 3 filters 1x1                         # ungrouped: all 8 maps
concat j(m3, c4)                                   # channels change owner
fc   out: 5
loss cross_entropy
"""


def test_two_logical_gpus_equal_one_and_count_the_exchange():
    """gpus 2 runs every layer split by channels over 2 logical GPUs (one physical device
    here): the loss, every gradient, BN statistics and the eval output equal the 1-GPU plan,
    and the bytes moved between the GPUs in a training step are exactly what the placement
    model (and `netdsl summary`) reports."""
    from netdsl.backends.cuda_groups import GroupedCudaNet
    from netdsl.passes.placement import exchange_bytes

    one = netdsl.loads(GROUPED.replace("GPUS", "1"), "one.net")
    two = netdsl.loads(GROUPED.replace("GPUS", "2"), "two.net")
    a = compile_network(one, device="cuda", batch=2, seed=0)
    b = compile_network(two, device="cuda", batch=2, seed=0)
    assert isinstance(b, GroupedCudaNet) and not isinstance(a, GroupedCudaNet)
    x, y = data(a)
    la, ga = a.loss_and_grads(x, y)
    lb, gb = b.loss_and_grads(x, y)
    assert abs(la - lb) <= 1e-6 * max(1.0, abs(la))
    for k in ga:
        assert_close(gb[k], ga[k], 1e-5, k)
    for k, v in a.buffers.items():
        assert_close(b.buffers[k], v, 1e-6, k)
    assert b.bytes_moved == exchange_bytes(two, 2) > 0
    assert_close(b.forward(x), a.forward(x), 1e-5, "eval forward")
    text = b.describe()
    assert "c2           gpu 1  channels [4, 8)  in place" in text
    assert "n1           gpu 0  channels [0, 4)  gathers 5 ch, 288 B from other GPUs" in text


# ---------------------------------------------------------------------------------- CUDA graphs


def graphed_and_eager(src, batch=2):
    """Two CUDA plans of one net, same seed: one replays its captured step (the simulator's
    stand-in for a CUDA graph, netdsl/backends/cuda_graph.py), one launches eagerly."""
    from netdsl.backends.cuda_graph import StepGraph

    net = netdsl.loads(src, "g.net")
    graphed = compile_network(net, device="cuda", batch=batch, seed=0)
    eager = compile_network(net, device="cuda", batch=batch, seed=0)
    graphed.step_graph, eager.step_graph = StepGraph("replay"), StepGraph("off")
    return graphed, eager


def run_steps(a, b, steps=3):
    """Train both plans on the same changing batches with an update between steps; the largest
    relative difference of loss, gradients, errors and BN state over all steps."""
    worst = 0.0
    for s in range(steps):
        x, y = data(a, seed=s)
        la, lb = a.step_grads(x, y), b.step_grads(x, y)
        ga, gb = a.grad.copy_to_host(), b.grad.copy_to_host()
        worst = max(worst, abs(la - lb) / max(1.0, abs(lb)),
                    float(np.max(np.abs(ga - gb)) / max(1e-6, np.max(np.abs(gb)))),
                    float(a.top1_errors(y) != b.top1_errors(y)))  # fmt: skip
        for k, v in b.buffers.items():
            worst = max(worst, float(np.max(np.abs(a.buffers[k] - v))))
        for cn, g in ((a, ga), (b, gb)):  # the same SGD step on both, through the host
            p = cn.params
            cn.set_params({k: p[k] - 0.1 * v for k, v in
                           ((s.key, cn.param_view(s, g)) for s in cn.slots)})  # fmt: skip
    return worst


@pytest.mark.parametrize("name", ["dropout", "dag", "grouped"])
def test_graph_replay_equals_eager_steps(name):
    """From the second step on, the training step's captured launches are replayed: loss,
    gradients, top-1 errors and BN statistics equal eager launching, step after step, with
    new batches, new dropout masks and updated weights (nothing per-step frozen)."""
    graphed, eager = graphed_and_eager(NETS[name])
    assert run_steps(graphed, eager) == 0.0
    assert graphed.step_graph.replays == 2 and eager.step_graph.replays == 0
    assert len(graphed.step_graph.graph.launches) >= 2 * len(graphed.runners) - 2


def test_graph_replay_with_two_logical_gpus():
    """The split plan replays too, and still reports the bytes its step moves."""
    from netdsl.passes.placement import exchange_bytes

    graphed, eager = graphed_and_eager(GROUPED.replace("GPUS", "2"))
    assert run_steps(graphed, eager) == 0.0
    assert graphed.step_graph.replays == 2
    assert graphed.bytes_moved == eager.bytes_moved == exchange_bytes(graphed.net, 2) > 0


def test_graph_check_catches_host_work_inside_the_step(monkeypatch):
    """The check above can fail: a dropout runner that uploads its mask inside forward (host
    work the capture cannot hold) replays a stale mask, and the steps stop matching."""
    from netdsl.ops.dropout import DropoutCUDARunner

    prepare = DropoutCUDARunner.prepare

    def forward(self, train):  # the mask drawn and uploaded while launching
        prepare(self, train)
        self.op.forward(self.x[0].reshape(-1), self.mask_d, self.y.reshape(-1))

    monkeypatch.setattr(DropoutCUDARunner, "prepare", lambda self, train: None)
    monkeypatch.setattr(DropoutCUDARunner, "forward", forward)
    graphed, eager = graphed_and_eager(NETS["dropout"])
    assert run_steps(graphed, eager) > 1e-3


def test_graph_mode_from_the_environment(monkeypatch):
    from netdsl.backends.cuda_graph import graph_mode

    sim = simulator()
    monkeypatch.delenv("NETDSL_CUDA_GRAPHS", raising=False)
    assert graph_mode() == ("off" if sim else "cuda")  # the simulator: off unless asked
    monkeypatch.setenv("NETDSL_CUDA_GRAPHS", "0")
    assert graph_mode() == "off"
    monkeypatch.setenv("NETDSL_CUDA_GRAPHS", "1")
    assert graph_mode() == ("replay" if sim else "cuda")


def test_unsplittable_groups_run_on_one_gpu(capsys):
    src = GROUPED.replace("GPUS", "3")  # c2's 2 groups do not divide over 3 GPUs
    cn = compile_network(netdsl.loads(src, "odd.net"), device="cuda", batch=2)
    assert type(cn).__name__ == "CudaNet"
    assert "running on one GPU, unsplit" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ benchmark


def test_gpu_benchmark_dry_run_and_no_gpu_message():
    """benchmarks/gpu_vs_torch.py exits cleanly without a GPU, and --dry-run runs all of its
    logic (workers, medians, ratios, conv FLOP/s) on a tiny net in the simulator."""
    if real_gpu_requested():
        pytest.skip("a real GPU is present: the benchmark would run for real")
    script = [sys.executable, "benchmarks/gpu_vs_torch.py"]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(script, env=env, **pipes) as no_gpu:  # meanwhile, the dry run
        out = subprocess.run([*script, "--dry-run"], capture_output=True, text=True, timeout=300)
        stdout, stderr = no_gpu.communicate(timeout=120)
    assert no_gpu.returncode == 0 and "no CUDA GPU here" in stdout, stderr
    assert out.returncode == 0, out.stderr
    assert "tiny_lenet: netdsl" in out.stdout and "TFLOP/s" in out.stdout
    assert re.search(r"CUDA graph replayed [1-9]", out.stdout), out.stdout
    assert "netdsl without the graph" in out.stdout
    assert re.search(r"training loop .*: netdsl [0-9.]+ ms/step", out.stdout), out.stdout
    if HAVE_TORCH:
        assert "netdsl / torch time ratio" in out.stdout
        assert re.search(r"torch TF32 off [0-9.]+ ms/step, netdsl / torch", out.stdout)


# ------------------------------------------------------------------------ real CUDA compilation


def _nvvm_available() -> bool:
    code = "from cuda.pathfinder import load_nvidia_dynamic_lib as l; l('nvvm'); l('nvrtc')"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not simulator(), reason="records launches in the simulator")
def test_every_kernel_compiles_for_a_real_gpu(tmp_path):
    """The simulator runs kernels as Python; this compiles every kernel the whole-net runs
    launched (all layer types, both tile families; one layer geometry per kernel, tile config,
    layout and activation) to PTX for sm_90 with NVVM, in a process without the simulator
    (netdsl/backends/cuda_ptx.py). Needs the nvidia-nvvm and nvidia-cuda-nvrtc wheels (the
    `ptx` extra), not a GPU."""
    if not _nvvm_available():
        pytest.skip("NVVM / NVRTC libraries not installed (pip install '.[ptx]')")
    with cudakit.recording() as rec:
        sources = [NETS[name] for name in ("grouped", "lenet_table", "dag", "dropout")]
        for src in [*sources, GROUPED.replace("GPUS", "2")]:  # the last one split over 2 GPUs
            gpu = compile_network(netdsl.loads(src, "net.net"), device="cuda", batch=2)
            x, y = data(gpu)
            gpu.step_grads(x, y)
            gpu.forward(x)
        opt = optim.OptimCUDA(10, optim.make_segments([10], [1.0], [1.0]))
        w = dev(f32(10))
        opt.sgd(w, w, dev(f32(10)), 0.1, 0.9, 0.0, False)
        opt.adam(w, w, dev(f32(10)), dev(np.abs(f32(10))), 0.1, 0.9, 0.99, 1e-8, 0.0, 1)
        for key in GPU_TILES:  # the GPU's tile configs, not only the simulator's
            monkey = cudakit.pick_tile
            cudakit.pick_tile = lambda r, c, key=key: gemm_cuda.TILES[key]
            try:
                fc_case(2, 5, 3, "relu")
                conv_case(CONVS[0])
            finally:
                cudakit.pick_tile = monkey
    kernels = {(r[0], r[3]) for r in rec}
    assert len(kernels) >= 30, sorted(kernels)
    # conv's and fc's GEMMs are one generated text per tile: the GPU's tiles compile below,
    # the simulator's small tiles (the same generator, other constants) would only add
    # minutes of NVVM time; the kernels they launch must all be among the GPU tiles' launches
    sim = set(gemm_cuda.SIM_TILES.values())

    def sim_gemm(r) -> bool:
        if r[0] not in (conv.__name__, fc.__name__) or r[1] != "_cuda_kernels":
            return False
        geo = (conv if r[0] == conv.__name__ else fc)._cuda_kernels.geometry_args
        return tuple(r[2][geo : geo + 5]) in sim

    kept = [r for r in rec if not sim_gemm(r)]
    assert {(r[0], r[3]) for r in kept} == kernels, kernels - {(r[0], r[3]) for r in kept}
    rec = kept
    path = tmp_path / "launches.pkl"
    path.write_bytes(pickle.dumps(rec))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "netdsl.backends.cuda_ptx", str(path), "--jobs", "2"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    *lines, summary = out.stdout.splitlines()
    assert lines and all(line.startswith("ok") for line in lines), out.stdout
    # Kernels specialised on a layer's geometry are compiled for a few geometries of each
    # family only (cuda_ptx.compile_records), but every kernel at least once, and conv and fc
    # in each of the GPU's tile configs.
    labels = [line.split(None, 1)[1].partition("[") for line in lines]  # "module.kernel[cfg]"
    assert {name for name, _, _ in labels} == {f"{r[0].rsplit('.', 1)[-1]}.{r[3]}" for r in rec}
    for op in (conv, fc):
        geo, short = op._cuda_kernels.geometry_args, op.__name__.rsplit(".", 1)[-1] + "."
        cfgs = [ast.literal_eval(a + b) for name, a, b in labels if name.startswith(short)]
        tiles = {tuple(cfg[geo : geo + 5]) for cfg in cfgs}
        assert all(gemm_cuda.TILES[key] in tiles for key in GPU_TILES), (short, tiles)
    print(f"{summary}; PTX in {time.perf_counter() - t0:.1f}s")


def test_ptx_jobs_take_the_gemm_kernels_first():
    """`cuda_ptx --jobs N` hands its workers the costliest kernels first: the 128 x 128 GEMMs
    (conv's and fc's) take most of the PTX test's time, and a split by kernel name put them
    mostly into one job."""
    from netdsl.backends.cuda_ptx import estimated_cost

    tile = gemm_cuda.TILES[(128, 128)]
    fc_gemm = (fc.__name__, "_cuda_kernels", (2, 5, 3, *tile, True, False, 0, 1), "gemm", ())
    small = (fc.__name__, "_cuda_kernels", (2, 5, 3, *gemm_cuda.TILES[(32, 32)], True, False, 0,
                                            1), "gemm", ())  # fmt: skip
    fill = ("netdsl.ops.concat", "_cuda_fill", (), "fill", ())
    assert estimated_cost(fc_gemm) == 64 > estimated_cost(small) == 4 > estimated_cost(fill) == 1


# -------------------------------------------------------------------------------- real GPU only


@gpu
@needs_gpu
def test_real_gpu_lenet5_batch128_matches_cpu():
    """On a GPU (NETDSL_REAL_GPU=1), LeNet-5 at batch 128: CUDA vs the CPU plan. Speed is
    benchmarks/gpu_vs_torch.py's business, not a test's."""
    net = netdsl.load("nets/lenet5.net")
    cpu, g = cpu_and_cuda(net, batch=128)
    x, y = data(cpu)
    assert_same_step(cpu, g, x, y, tol=1e-3)


@gpu
@needs_gpu
@pytest.mark.parametrize("name", ["dropout", "dag"])
def test_real_gpu_cuda_graph_equals_eager(name):
    """A real CUDA graph (cuda.core's GraphBuilder) replays the step bit for bit: the same
    kernels on the same buffers, and no atomics anywhere."""
    from netdsl.backends.cuda_graph import StepGraph

    graphed, eager = graphed_and_eager(NETS[name])
    graphed.step_graph = StepGraph("cuda")
    assert run_steps(graphed, eager) == 0.0
    assert graphed.step_graph.mode == "cuda" and graphed.step_graph.replays == 2
