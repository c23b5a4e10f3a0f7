"""The hand-written PyTorch modules of benchmarks/torch_nets.py compute netdsl's nets: loaded
with netdsl's weights they give netdsl's forward output (eval mode) within 1.5e-6 of its
largest score, on random input at batch 2. So the benchmark races the same net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import netdsl

torch = pytest.importorskip("torch")
from benchmarks import torch_nets  # noqa: E402  (needs torch)

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["lenet5", "lenet5-1998", "cifar10"]
BIG = ["alexnet", "vgg16", "resnet18"]


def outputs(name: str, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    cnet = netdsl.compile(str(ROOT / "nets" / f"{name}.net"), device="cpu", batch=batch, seed=3)
    rng = np.random.default_rng(1)
    if name == "resnet18":  # batch-norm statistics other than the initial 0 and 1
        for k, v in cnet.state.items():
            v[...] = rng.uniform(0.5, 1.5, v.shape) if "var" in k else rng.normal(0, 0.2, v.shape)
    x = rng.standard_normal((batch, *cnet.net.input.out_shape)).astype(np.float32)
    ours = cnet.forward(x)
    model = torch_nets.build(name)
    torch_nets.load_netdsl(model, cnet.params, cnet.buffers)
    model.eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    return ours, theirs


@pytest.mark.parametrize("name", SMALL + [pytest.param(n, marks=pytest.mark.slow) for n in BIG])
def test_module_computes_the_net(name):
    ours, theirs = outputs(name)
    assert ours.shape == theirs.shape
    err = np.abs(ours - theirs).max() / np.abs(ours).max()
    assert err <= 1.5e-6, f"{name}: relative difference {err:.3g}"


def test_names_must_match():
    model = torch_nets.build("lenet5")
    with pytest.raises(KeyError, match="unexpected"):
        torch_nets.load_netdsl(model, {"c9.weight": np.zeros((1,), np.float32)})


def test_one_column_alexnet_has_the_same_sizes():
    one, two = torch_nets.AlexNet(groups=1), torch_nets.AlexNet(groups=2)
    x = torch.zeros(1, 3, 227, 227)
    with torch.no_grad():
        assert one(x).shape == two(x).shape == (1, 1000)
