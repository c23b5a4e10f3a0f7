"""The hand-written PyTorch modules of benchmarks/torch_nets.py compute netdsl's nets: loaded
with netdsl's weights, on random input at batch 2 (eval mode), netdsl's float32 output and
the module's are each within 1.5e-6 of the largest score of the module run in float64, so
they differ by float32 rounding only (at most 3e-6 from each other: VGG-16's 16 layers take
1.95e-6, 0.90e-6 of it netdsl's and 1.37e-6 PyTorch's). So the benchmark races the same net.
"""

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


def outputs(name: str, batch: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """netdsl's scores, the module's in float32 and the module's in float64."""
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
        exact = model.double()(torch.from_numpy(x).double()).numpy()
    return ours, theirs, exact


@pytest.mark.parametrize("name", SMALL + [pytest.param(n, marks=pytest.mark.slow) for n in BIG])
def test_module_computes_the_net(name):
    ours, theirs, exact = outputs(name)
    assert ours.shape == theirs.shape == exact.shape
    scale = np.abs(exact).max()
    ours_err = np.abs(ours - exact).max() / scale
    theirs_err = np.abs(theirs - exact).max() / scale
    both = np.abs(ours - theirs).max() / scale
    assert ours_err <= 1.5e-6, f"{name}: netdsl is {ours_err:.3g} from float64"
    assert theirs_err <= 1.5e-6, f"{name}: the PyTorch module is {theirs_err:.3g} from float64"
    assert both <= 3e-6, f"{name}: netdsl and PyTorch differ by {both:.3g}"


def test_names_must_match():
    model = torch_nets.build("lenet5")
    with pytest.raises(KeyError, match="unexpected"):
        torch_nets.load_netdsl(model, {"c9.weight": np.zeros((1,), np.float32)})


def test_one_column_alexnet_has_the_same_sizes():
    one, two = torch_nets.AlexNet(groups=1), torch_nets.AlexNet(groups=2)
    x = torch.zeros(1, 3, 227, 227)
    with torch.no_grad():
        assert one(x).shape == two(x).shape == (1, 1000)
