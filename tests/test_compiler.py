"""Whole-network checks: the float64 reference executor against finite differences, and
the compiled float32 CPU plan against the reference (loss, every gradient, forward)."""

from __future__ import annotations

import numpy as np
import pytest

import netdsl
from netdsl import reference
from netdsl.compiler import CompiledNet
from tests.opcheck import HAVE_TORCH, assert_close, assert_net_matches_torch, rel_error

NETS = {
    # groups, stride, dilation, asymmetric 'same' padding, maxout, LRN, ceil avg pooling
    "grouped": """
        input image: 4x9x8
        conv c1: 8 filters 3x3, stride 2, pad same, groups 2, leaky(0.1)
        lrn  n1: size 3, k 2, alpha 0.01, beta 0.75
        conv c2: 12 filters 3x2, pad 2, dilation 2, groups 2
        maxout m1: 2 pieces
        pool p1: avg 3x3, stride 2, ceil
        fc   out: 5
        loss cross_entropy
    """,
    # LeNet-1998 style: connection table, trainable subsampling, tanh, MSE
    "lenet_table": """
        input image: 3x10x10
        conv c1: 4 filters 3x3, connect [[0], [0,1], [1,2], [0,1,2]], tanh
        subsample s2: 2x2, sigmoid
        pool p2: max 2x2, stride 1
        fc out: 6, tanh
        loss mse
    """,
    # residual add with fan-out, batch norm, concat, sum pooling, softmax
    "dag": """
        input image: 3x6x6
        conv c1: 4 filters 3x3, pad 1, bias off
        bn   b1: relu
        conv c2: 4 filters 3x3, pad 1
        bn   b2
        add  r(b2, b1): relu
        conv c3(b1): 2 filters 1x1
        concat j(r, c3)
        pool g: sum, global
        fc   f: 4, sigmoid
        fc   out: 3
        loss cross_entropy
    """,
    "dropout": """
        input image: 2x5x5
        fc   f1: 16, relu
        dropout d1: 0.5
        fc   out: 4
        loss cross_entropy
    """,
}


def compiled(name: str, batch: int = 3, seed: int = 0) -> CompiledNet:
    net = netdsl.loads(NETS[name], f"{name}.net")
    return CompiledNet(net, batch=batch, seed=seed)


def data(cn: CompiledNet, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cn.batch, *cn.net.input.out_shape)).astype(np.float32)
    k = cn.net.loss.in_shapes[0][0]
    return x, rng.integers(0, k, cn.batch)


def dropout_masks(cn: CompiledNet) -> dict[str, np.ndarray]:
    return {r.layer.name: r.mask for r in cn.runners if r.layer.type == "dropout"}


@pytest.mark.parametrize("name", list(NETS))
def test_reference_gradients_match_finite_differences(name):
    cn = compiled(name)
    x, y = data(cn)
    cn.loss_and_grads(x, y)  # draws dropout masks
    masks = dropout_masks(cn)
    params = {k: v.astype(np.float64) for k, v in cn.params.items()}
    _, grads = reference.loss_and_grads(cn.net, params, x, y, masks, cn.masks)
    rng = np.random.default_rng(2)
    eps = 1e-6
    for key, p in params.items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = reference.loss_and_grads(cn.net, params, x, y, masks, cn.masks)
            flat[i] = old - eps
            lm, _ = reference.loss_and_grads(cn.net, params, x, y, masks, cn.masks)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            got = grads[key].reshape(-1)[i]
            assert abs(got - num) <= 1e-6 * max(1.0, abs(num)), (key, i, got, num)


@pytest.mark.parametrize("name", list(NETS))
def test_compiled_matches_reference(name):
    cn = compiled(name)
    x, y = data(cn)
    loss, grads = cn.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.loss_and_grads(
        cn.net, cn.params, x.astype(np.float64), y, dropout_masks(cn), cn.masks
    )
    assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
    assert set(grads) == set(ref_grads)
    for k in grads:
        assert_close(grads[k], ref_grads[k], 1e-4, k)


def test_connection_table_weights_stay_masked():
    cn = compiled("lenet_table")
    x, y = data(cn)
    _, grads = cn.loss_and_grads(x, y)
    mask = cn.masks["c1"][:, :, 0, 0]
    assert np.all(cn.params["c1.weight"][mask == 0] == 0)
    assert np.all(grads["c1.weight"][mask == 0] == 0)
    assert np.any(grads["c1.weight"][mask == 1] != 0)


def test_params_use_pytorch_layouts_and_set_params_round_trips():
    cn = CompiledNet(netdsl.load("nets/lenet5.net"), batch=2)
    shapes = {k: v.shape for k, v in cn.params.items()}
    assert shapes["c1.weight"] == (6, 1, 5, 5) and shapes["f5.weight"] == (120, 400)
    new = {k: np.full(v.shape, 0.5, np.float32) for k, v in cn.params.items()}
    cn.set_params(new)
    assert all(np.all(v == 0.5) for v in cn.params.values())
    with pytest.raises(ValueError, match="expected shape"):
        cn.set_params({**new, "c1.weight": np.zeros((6, 2, 5, 5))})


def test_forward_is_eval_mode_and_handles_partial_batches():
    cn = compiled("dropout", batch=4)
    x, _ = data(cn)
    full = cn.forward(x)
    part = cn.forward(x[:3])
    assert full.shape == (4, 4) and part.shape == (3, 4)
    assert np.array_equal(full[:3], part)  # no dropout in eval, rows independent
    ref = x.reshape(4, -1).astype(np.float64) @ cn.params["f1.weight"].T + cn.params["f1.bias"]
    ref = np.maximum(ref, 0) @ cn.params["out.weight"].T + cn.params["out.bias"]
    assert rel_error(full, ref) < 1e-5


def test_same_seed_same_init_other_seed_differs():
    a, b, c = (CompiledNet(netdsl.load("nets/lenet5.net"), batch=2, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, c.theta)


def test_alexnet_init_follows_the_file():
    from types import SimpleNamespace

    from netdsl.init import init_params

    net = netdsl.load("nets/alexnet.net")
    cn = SimpleNamespace(net=net)  # lay out parameters only: AlexNet's activations are large
    CompiledNet._layout(cn)
    init_params(net, cn.slots, cn.theta, np.random.default_rng(0), {})
    p = {s.key: CompiledNet.param_view(s, cn.theta) for s in cn.slots}
    assert np.all(p["conv2.bias"] == 1) and np.all(p["fc6.bias"] == 1)
    assert np.all(p["conv1.bias"] == 0) and np.all(p["conv3.bias"] == 0)
    assert abs(float(p["fc6.weight"].std()) - 0.01) < 1e-3


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("path", ["nets/lenet5.net", "nets/lenet5-1998.net", "nets/cifar10.net"])
def test_whole_net_matches_pytorch(path):

    cn = CompiledNet(netdsl.load(path), batch=4, seed=1)
    x, y = data(cn)
    assert_net_matches_torch(cn, x, y)


def _base(a: np.ndarray) -> np.ndarray:
    return a.base if a.base is not None else a


def test_gradient_buffers_share_memory_only_between_disjoint_lifetimes():
    from netdsl.compiler import gradient_buffers

    net = netdsl.load("nets/resnet18.net")
    consumers = {lyr.name: [] for lyr in net.layers}
    for lyr in net.layers:
        for src in lyr.inputs:
            consumers[src].append(lyr.name)
    dout = gradient_buffers(net, consumers, 1)
    rev = {lyr.name: i for i, lyr in enumerate(reversed(net.layers))}
    # live from the first consumer's backward (reverse order) to the layer's own backward
    life = {n: (min(rev[c] for c in cs), rev[n])
            for n, cs in consumers.items() if cs and n != net.input.name}  # fmt: skip
    names = list(life)
    shared = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if _base(dout[a]) is _base(dout[b]):
                shared += 1
                (a0, a1), (b0, b1) = life[a], life[b]
                assert a1 < b0 or b1 < a0, (a, life[a], b, life[b])
    assert shared > 0
    total = sum(v.nbytes for v in dout.values())
    unique = sum({id(_base(v)): _base(v).nbytes for v in dout.values()}.values())
    assert unique < 0.6 * total  # measured 10.4 of 22.6 MiB per image


def test_a_dead_end_branch_gets_zero_gradient():
    src = """
        input image: 2x6x6
        conv c1: 3 filters 3x3, relu
        conv unused(c1): 4 filters 1x1
        fc   out(c1): 3
        loss cross_entropy
    """
    cn = CompiledNet(netdsl.loads(src, "dead.net"), batch=3)
    x, y = data(cn)
    cn.loss_and_grads(x, y)  # once, so a reused buffer would hold old values
    loss, grads = cn.loss_and_grads(x, y)
    ref_loss, ref = reference.loss_and_grads(cn.net, cn.params, x.astype(np.float64), y)
    assert np.all(grads["unused.weight"] == 0)
    for k in grads:
        assert_close(grads[k], ref[k], 1e-4, k)
