"""The CPU's fused passes and memory plan (issue 15): each fusion gives what the separate
passes give, the gradients agree with netdsl's float64 reference (itself checked by finite
differences), and the plan keeps no buffer that no pass reads."""

from __future__ import annotations

import numpy as np
import pytest

import netdsl
from netdsl import reference
from netdsl.compiler import CompiledNet
from netdsl.ops import activation, activations, add, batchnorm, fc, fused
from tests.opcheck import assert_close, rel_error

# Every standalone activation here alone reads its producer: r1 a conv, r2 a max pool, r3 a
# bn, r4 an add; r3 then fans out to two convs (a fan-out gradient); avg pools with padding
# and ceil mode take the whole-window path; `dead` is read by nobody (a dead end).
FOLD_NET = """\
network fold
input image: 3x13x13
conv c1: 6 filters 3x3, pad 1
relu r1
pool p1: max 2x2, stride 2, ceil
tanh r2
bn   b1
relu r3
conv c2(r3): 6 filters 3x3, pad 1
conv c3(r3): 6 filters 1x1
add  s(c2, c3)
leaky r4: 0.1
conv dead(r4): 2 filters 1x1, relu
pool p2(r4): avg 3x3, stride 2, pad 1, ceil
bn   b2: elu
add  s2(b2, p2): relu
fc   f: 5
loss cross_entropy
"""


class UnfoldedNet(CompiledNet):
    """The same plan with every standalone activation run as its own pass."""

    fold_activations = False


def compiled(cls=CompiledNet, batch: int = 3, seed: int = 0) -> CompiledNet:
    return cls(netdsl.loads(FOLD_NET, "fold.net"), batch=batch, seed=seed)


def data(cn: CompiledNet, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cn.batch, *cn.net.input.out_shape)).astype(np.float32)
    return x, rng.integers(0, cn.net.loss.in_shapes[0][0], cn.batch)


def test_folds_are_the_ones_expected() -> None:
    cn = compiled()
    assert cn.folded == {"r1": "c1", "r2": "p1", "r3": "b1", "r4": "s"}
    assert compiled(UnfoldedNet).folded == {}
    assert "r2 is folded into p1" in cn.describe()


def test_folded_plan_matches_separate_passes() -> None:
    folded, plain = compiled(), compiled(UnfoldedNet)
    x, y = data(folded)
    for step in range(3):  # several SGD-free steps: buffers are reused step after step
        loss_f, grads_f = folded.loss_and_grads(x, y)
        loss_p, grads_p = plain.loss_and_grads(x, y)
        assert abs(loss_f - loss_p) <= 1e-6 * max(1.0, abs(loss_p)), step
        for key in grads_p:
            assert_close(grads_f[key], grads_p[key], 1e-6, f"step {step} {key}")
    assert_close(folded.forward(x), plain.forward(x), 1e-6, "eval forward")


def test_folded_plan_gradients_match_float64_reference() -> None:
    cn = compiled()
    x, y = data(cn)
    loss, grads = cn.loss_and_grads(x, y)
    params = {k: v.astype(np.float64) for k, v in cn.params.items()}
    ref_loss, ref_grads = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    for key in ref_grads:
        assert_close(grads[key], ref_grads[key], 1e-4, key)
    # and the reference's gradients are the loss's: central differences on a few weights
    rng = np.random.default_rng(2)
    eps = 1e-6
    for key in ("c1.weight", "b1.weight", "c3.weight", "b2.bias", "f.weight"):
        flat = params[key].reshape(-1)
        for i in rng.choice(flat.size, size=4, replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
            flat[i] = old - eps
            lm, _ = reference.loss_and_grads(cn.net, params, x, y, {}, cn.masks)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            got = ref_grads[key].reshape(-1)[i]
            assert abs(got - num) <= 1e-6 * max(1.0, abs(num)), (key, i, got, num)


def test_dead_end_gradient_stays_zero() -> None:
    """The in-place activation gradient must not write a dead end's zero dy."""
    cn = compiled()
    x, y = data(cn)
    for _ in range(2):
        cn.loss_and_grads(x, y)
    assert not cn.dout["dead"].any()
    assert not cn.layer_grads("dead")["weight"].any()


def test_plan_bytes_keep_no_unread_buffer() -> None:
    folded, plain = compiled(), compiled(UnfoldedNet)
    fb, pb = folded.plan_bytes(), plain.plan_bytes()
    per_image = {lyr.name: 4 * int(np.prod(lyr.out_shape)) for lyr in folded.net.layers}
    # each folded activation's output is its producer's: exactly those bytes are not kept
    saved = sum(per_image[a] for a in folded.folded) * folded.batch
    assert pb["outputs"] - fb["outputs"] == saved
    assert fb["gradients"] <= pb["gradients"]
    # fan-out scratch: one array for the largest layer's fan-outs, not one per fan-out
    # (r3 feeds c2 and c3, r4 dead and p2, p2 b2 and s2: the second reader of each accumulates)
    fanouts = [sum(s.nbytes for s, _ in r.adds) for r in folded.runners if r.adds]
    assert len(fanouts) == 3
    assert fb["scratch"] == max(fanouts)
    assert all(s.base is not None for r in folded.runners for s, _ in r.adds)


# ---------------------------------------------------------------------------------- kernels
KINDS = list(activations.kinds())


def _act_params(kind: str):
    return activation.kernel_params(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_add_act_one_pass_matches_separate_passes(kind: str) -> None:
    rng = np.random.default_rng(3)
    n = 1000
    a, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    code, (p0, p1) = np.int64(activation.ACT_CODE[kind]), _act_params(kind)
    k = add._cpu_kernels()
    y = np.empty(n, np.float32)
    fused.kernel_for(k, "add_act_range", code)(0, n, a, b, y, code, p0, p1)
    sep = np.empty(n, np.float32)
    add.add_forward(a, b, sep)
    activation.act_forward(sep, sep, code, p0, p1)
    assert rel_error(y, sep) < 1e-6
    dy = rng.standard_normal(n).astype(np.float32)
    d0, d1 = np.empty(n, np.float32), np.empty(n, np.float32)
    bwd = fused.kernel_for(k, "add_act_grad_range", code)
    bwd(0, 400, dy, y, d0, d1, True, True, code, p0, p1)  # two ranges, as two workers do
    bwd(400, n, dy, y, d0, d1, True, True, code, p0, p1)
    dz = np.empty(n, np.float32)
    activation.act_backward(dy, y, dz, code, p0, p1)
    assert rel_error(d0, dz) < 1e-6 and rel_error(d1, dz) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_bn_act_one_pass_matches_separate_passes(kind: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32) * 2 + 0.5
    g, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    code, (p0, p1) = np.int64(activation.ACT_CODE[kind]), _act_params(kind)
    k = batchnorm.cpu_kernels()

    def run(code_):
        y, mean, inv = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
        rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
        train = fused.kernel_for(k, "bn_train_range", code_)
        train(0, 2, x, g, b, y, mean, inv, rm, rv, np.float32(1e-5), np.float32(0.1), code_, p0,
              p1)  # fmt: skip
        train(2, 5, x, g, b, y, mean, inv, rm, rv, np.float32(1e-5), np.float32(0.1), code_, p0,
              p1)  # fmt: skip
        return y, mean, inv, rm, rv

    y, mean, inv, rm, rv = run(code)
    z, mean2, inv2, rm2, rv2 = run(np.int64(activation.LINEAR))
    sep = z.copy()
    activation.act_forward(sep, sep, code, p0, p1)
    assert rel_error(y, sep) < 1e-6
    for got, want in ((mean, mean2), (inv, inv2), (rm, rm2), (rv, rv2)):
        assert rel_error(got, want) == 0.0
    ref_y, ref_mean, ref_var = batchnorm.ref_forward_train(x, g, b)
    assert rel_error(z, ref_y) < 1e-5
    assert rel_error(mean, ref_mean) < 1e-6
    assert rel_error(inv, 1 / np.sqrt(ref_var + 1e-5)) < 1e-5

    # backward through the activation: in the kernel's loops, or act_backward then bn
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dg, db = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    fused.kernel_for(k, "bn_backward_range", code)(0, 5, dy, y, x, g, mean, inv, dx, dg, db,
                                                   True, code, p0, p1)  # fmt: skip
    dz = np.empty_like(dy)
    activation.act_backward(dy, y, dz, code, p0, p1)
    dx2, dg2, db2 = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    batchnorm.bn_backward(dz, x, g, mean, inv, dx2, dg2, db2)
    for got, want in ((dx, dx2), (dg, dg2), (db, db2)):
        assert rel_error(got, want) < 1e-6


def test_bn_one_pass_statistics_far_from_zero() -> None:
    """The one-pass (shifted) sums keep the variance of data whose mean is 1e4 times its
    spread, where E[x^2] - E[x]^2 in float32 would cancel to nothing."""
    rng = np.random.default_rng(5)
    x = (1000.0 + 0.1 * rng.standard_normal((4, 3, 5, 5))).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, mean, inv = np.empty_like(x), np.zeros(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    batchnorm.bn_forward_train(x, g, b, y, mean, inv, rm, rv, np.float32(1e-5), np.float32(0.1))
    ref_y, ref_mean, ref_var = batchnorm.ref_forward_train(x, g, b)
    assert rel_error(inv, 1 / np.sqrt(ref_var + 1e-5)) / np.max(inv) < 1e-5
    assert rel_error(y, ref_y) < 1e-3  # float32 x - mean near 1000 keeps ~1e-4 of 0.1


@pytest.mark.parametrize("shape", [(4, 300, 70), (16, 2000, 300)])
def test_fc_on_several_threads_matches_one(shape) -> None:
    n, f, o = shape
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, f)).astype(np.float32)
    w = (0.05 * rng.standard_normal((o, f))).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    outs = []
    for threads in (1, 3):
        op = fc.FcCPU(n, f, o, True, threads=threads)
        assert op.workers.n == threads
        y, dx, dw, db = (np.empty((n, o), np.float32), np.empty((n, f), np.float32),
                         np.empty((o, f), np.float32), np.empty(o, np.float32))  # fmt: skip
        op.forward(x, w, b, y)
        op.backward(dy, x, w, dx, dw, db)
        outs.append((y, dx, dw, db))
    for one, many in zip(*outs):
        assert rel_error(many, one) < 1e-6
    ref = fc.ref_forward(x, w, b)
    assert rel_error(outs[1][0], ref) < 1e-5
    ref_dx, ref_dw, ref_db = fc.ref_backward(dy, x, w)
    for got, want in zip(outs[1][1:], (ref_dx, ref_dw, ref_db)):
        assert rel_error(got, want) < 1e-5


def test_worker_threads_give_the_single_thread_result(monkeypatch) -> None:
    """add and bn split their passes over worker threads for big maps (fc: big GEMMs);
    forced on for this small net, the plan gives what one thread gives."""
    one = compiled()
    x, y = data(one)
    loss1, grads1 = one.loss_and_grads(x, y)
    from netdsl.ops import conv

    monkeypatch.setattr(conv, "num_threads", lambda: 3)
    monkeypatch.setattr(conv, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(add, "ELEMENTWISE_MIN", 0)
    monkeypatch.setattr(fc, "FC_PARALLEL_MIN", 0)
    many = compiled()
    kinds = {type(r).__name__: r for r in many.runners}
    for name in ("AddCPURunner", "BnCPURunner"):
        assert kinds[name].workers.n == 3, name
    assert kinds["FcCPURunner"].op.workers.n == 3
    loss3, grads3 = many.loss_and_grads(x, y)
    assert abs(loss3 - loss1) <= 1e-6 * max(1.0, abs(loss1))
    for key in grads1:
        assert_close(grads3[key], grads1[key], 1e-5, key)
