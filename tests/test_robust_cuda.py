"""CUDA backend: layers the CPU runs that the CUDA backend must run the same way.

A standalone `linear` activation (`linear l`, `act a: linear`) is the identity; the CUDA
runner once had no kernel for it (ActRunner.forward: op is None). Runs in Numba's CUDA
simulator (tests/conftest.py), so the nets are tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import assert_close

import netdsl
from netdsl.backends import compile_network
from tests.test_compiler import data

TOL = 1e-4

# a standalone identity in each position that matters: after a conv, as the only reader of
# a pool's producer, read by two layers (fan-out), and last before the loss
LINEAR = """
GPUS
input image: 2x4x4
conv c1: 4 filters 3x3, pad 1, relu
linear l1
act    a1: linear
pool   p1: max 2x2
conv   c2: 4 filters 1x1
act    a2: linear
add    s(a2, c2)
fc     f1: 4
linear l3
loss   cross_entropy
"""


@pytest.mark.parametrize("gpus", [1, 2])
def test_standalone_linear_runs_on_cuda_as_on_the_cpu(gpus, capsys):
    net = netdsl.loads(LINEAR.replace("GPUS", f"gpus {gpus}"), "linear.net")
    cpu = compile_network(net, device="cpu", batch=2, seed=0)
    gpu = compile_network(net, device="cuda", batch=2, seed=0)
    x, y = data(cpu)
    l1, g1 = cpu.loss_and_grads(x, y)
    l2, g2 = gpu.loss_and_grads(x, y)
    assert abs(l1 - l2) <= TOL * max(1.0, abs(l1)), (l1, l2)
    assert g1.keys() == g2.keys()
    for k in g1:  # every gradient flows through the identities
        assert_close(g2[k], g1[k], TOL, k)
        assert np.any(g1[k] != 0), k
    assert_close(gpu.forward(x), cpu.forward(x), TOL, "eval forward")
    capsys.readouterr()  # gpus 2 on one (simulated) GPU says so on stderr


def test_standalone_linear_is_the_identity_on_cuda():
    net = netdsl.loads(LINEAR.replace("GPUS", ""), "linear.net")
    gpu = compile_network(net, device="cuda", batch=2, seed=0)
    x, _ = data(gpu)
    gpu.forward(x)
    out = {n: gpu.out[n].copy_to_host() for n in ("c1", "l1", "a1", "c2", "a2", "f1", "l3")}
    assert np.array_equal(out["l1"], out["c1"])
    assert np.array_equal(out["a1"], out["l1"])
    assert np.array_equal(out["a2"], out["c2"])
    assert np.array_equal(out["l3"], out["f1"])


def test_the_grouped_cuda_plan_says_which_parameter_count_is_which(capsys):
    """Like the CPU plan: a connection table is stored dense, the summary counts links."""
    net = netdsl.loads(
        "gpus 2\ninput image: 2x6x6\nconv c1: 4 filters 3x3, connect [[0], [1], [0, 1], [1]]\n"
        "fc f1: 3\nloss cross_entropy\n",
        "table.net",
    )
    used = sum(lyr.n_params for lyr in net.layers)
    plan = compile_network(net, device="cuda", batch=2, seed=0)
    stored = plan.theta.size
    first = plan.describe().splitlines()[0]
    assert stored == used + 3 * 9  # three of the eight links are absent: 9 weights each
    why = "the connection table of c1 is stored dense, 27 weights held at zero"
    assert first.endswith(f", {used:,} parameters ({stored:,} stored in one flat buffer: {why})")
    capsys.readouterr()  # gpus 2 on one (simulated) GPU says so on stderr
