"""The reference nets written by hand in idiomatic PyTorch: the competitor of the benchmarks.

What a PyTorch user would write: nn.Conv2d with its own padding, nn.MaxPool2d/AvgPool2d
with ceil_mode, in-place ReLU, nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, and
torch.optim.SGD with the file's momentum and weight decay. Not netdsl/torch_ref.py (a
generic interpreter of netdsl's IR, kept for numerical tests) and not the module
`netdsl export --pytorch` generates: these are written once, by hand, per net.

Every module's state_dict uses netdsl's tensor names ("<layer>.weight", a dotted layer
name a nested module) and PyTorch layouts, which are netdsl's own, so netdsl's weights load
with `load_netdsl(model, cnet.params, cnet.buffers)`; tests/test_torch_nets.py checks that
each module then computes netdsl's forward.

    from benchmarks.torch_nets import build, sgd
    model = build("resnet18")
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812


class LeNet5(nn.Module):
    """nets/lenet5.net: ReLU, max pooling, 1x28x28."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.s2 = nn.MaxPool2d(2, 2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.MaxPool2d(2, 2)
        self.f5 = nn.Linear(16 * 5 * 5, 120)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.relu(self.c1(x)))
        x = self.s4(self.relu(self.c3(x)))
        x = self.relu(self.f5(x.flatten(1)))
        x = self.relu(self.f6(x))
        return self.out(x)


def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    """LeCun's squashing function, 1.7159 tanh(2x/3)."""
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsample(nn.Module):
    """LeNet-5 (1998)'s S layers: each 2x2 window's sum times a trainable coefficient, plus a
    bias, one of each per map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.avg_pool2d(x, 2, divisor_override=1)  # the window sums
        return s * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


# LeCun et al. 1998, Table I: the S2 maps each C3 map reads
TABLE_I = ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
           (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
           (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5), (0, 1, 2, 3, 4, 5))  # fmt: skip


class MaskedConv2d(nn.Conv2d):
    """A convolution with a connection table, as a user writes one: a dense weight times a
    fixed 0/1 mask of the links that exist."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, table) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        mask = torch.zeros(out_channels, in_channels, 1, 1)
        for o, row in enumerate(table):
            mask[o, list(row)] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class LeNet5_1998(nn.Module):  # noqa: N801
    """nets/lenet5-1998.net: scaled tanh, trainable subsampling, C3's Table I, 1x32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = Subsample(6)
        self.c3 = MaskedConv2d(6, 16, 5, TABLE_I)
        self.s4 = Subsample(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = scaled_tanh(self.s2(scaled_tanh(self.c1(x))))
        x = scaled_tanh(self.s4(scaled_tanh(self.c3(x))))
        x = scaled_tanh(self.c5(x))
        return self.out(scaled_tanh(self.f6(x.flatten(1))))


class Cifar10(nn.Module):
    """nets/cifar10.net: cuda-convnet's layers-18pct."""

    def __init__(self) -> None:
        super().__init__()
        # PyTorch's LRN divides alpha by the window size; netdsl's alpha is the paper's
        lrn = dict(size=3, alpha=5e-5 * 3, beta=0.75, k=1.0)
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.rnorm1 = nn.LocalResponseNorm(**lrn)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False)
        self.rnorm2 = nn.LocalResponseNorm(**lrn)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool3 = nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False)
        self.fc10 = nn.Linear(64 * 4 * 4, 10)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rnorm1(self.relu(self.pool1(self.conv1(x))))
        x = self.rnorm2(self.pool2(self.relu(self.conv2(x))))
        x = self.pool3(self.relu(self.conv3(x)))
        return self.fc10(x.flatten(1))


class AlexNet(nn.Module):
    """nets/alexnet.net: groups=2 is the paper's two-GPU net (netdsl's file); groups=1 the
    one-column version with the same layer sizes."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        lrn = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.norm1 = nn.LocalResponseNorm(**lrn)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=groups)
        self.norm2 = nn.LocalResponseNorm(**lrn)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=groups)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=groups)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, 1000)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.relu(self.conv1(x))))
        x = self.pool2(self.norm2(self.relu(self.conv2(x))))
        x = self.relu(self.conv3(x))
        x = self.relu(self.conv4(x))
        x = self.pool5(self.relu(self.conv5(x)))
        x = self.drop6(self.relu(self.fc6(x.flatten(1))))
        x = self.drop7(self.relu(self.fc7(x)))
        return self.fc8(x)


class VggStage(nn.Module):
    """n 3x3 convs with ReLU, then 2x2 max pooling: conv_1 ... conv_n, pool."""

    def __init__(self, c_in: int, c: int, n: int) -> None:
        super().__init__()
        self.n = n
        for i in range(n):
            self.add_module(f"conv_{i + 1}", nn.Conv2d(c_in if i == 0 else c, c, 3, padding=1))
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            x = self.relu(getattr(self, f"conv_{i + 1}")(x))
        return self.pool(x)


class VGG16(nn.Module):
    """nets/vgg16.net: configuration D."""

    def __init__(self) -> None:
        super().__init__()
        self.s1 = VggStage(3, 64, 2)
        self.s2 = VggStage(64, 128, 2)
        self.s3 = VggStage(128, 256, 3)
        self.s4 = VggStage(256, 512, 3)
        self.s5 = VggStage(512, 512, 3)
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, 1000)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s5(self.s4(self.s3(self.s2(self.s1(x)))))
        x = self.drop6(self.relu(self.fc6(x.flatten(1))))
        x = self.drop7(self.relu(self.fc7(x)))
        return self.fc8(x)


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convs with batch norm; a 1x1 projection (proj, proj_bn) when the
    block halves the size."""

    def __init__(self, c_in: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = stride != 1 or c_in != c
        if self.down:
            self.proj = nn.Conv2d(c_in, c, 1, stride=stride, bias=False)
            self.proj_bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y += self.proj_bn(self.proj(x)) if self.down else x
        return self.relu(y)


class ResNet18(nn.Module):
    """nets/resnet18.net."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, 2, padding=1)
        self.layer1a, self.layer1b = BasicBlock(64, 64), BasicBlock(64, 64)
        self.layer2a, self.layer2b = BasicBlock(64, 128, 2), BasicBlock(128, 128)
        self.layer3a, self.layer3b = BasicBlock(128, 256, 2), BasicBlock(256, 256)
        self.layer4a, self.layer4b = BasicBlock(256, 512, 2), BasicBlock(512, 512)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.bn1(self.c1(x))))
        x = self.layer2b(self.layer2a(self.layer1b(self.layer1a(x))))
        x = self.layer4b(self.layer4a(self.layer3b(self.layer3a(x))))
        return self.fc(self.gap(x).flatten(1))


NETS: dict[str, Any] = {
    "lenet5": LeNet5,
    "lenet5-1998": LeNet5_1998,
    "cifar10": Cifar10,
    "alexnet": AlexNet,
    "vgg16": VGG16,
    "resnet18": ResNet18,
}


def build(name: str) -> nn.Module:
    """The module of nets/<name>.net."""
    return NETS[name]()


def loss_fn(name: str):
    """The file's loss: LeNet-5 (1998) trains on squared error (netdsl's mse: half the
    squared distance to the one-hot target, summed over classes, mean over the batch)."""
    if name == "lenet5-1998":

        def mse(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            onehot = F.one_hot(labels, scores.shape[1]).to(scores.dtype)
            return 0.5 * ((scores - onehot) ** 2).sum(dim=1).mean()

        return mse
    return F.cross_entropy


def sgd(model: nn.Module, optimizer: dict) -> torch.optim.SGD:
    """torch.optim.SGD with the train section's settings (netdsl's `optimizer sgd(...)`)."""
    return torch.optim.SGD(model.parameters(), lr=optimizer["lr"],
                           momentum=optimizer.get("momentum", 0.0),
                           weight_decay=optimizer.get("weight_decay", 0.0),
                           nesterov=bool(optimizer.get("nesterov", False)))  # fmt: skip


def load_netdsl(model: nn.Module, params: dict, buffers: dict | None = None) -> None:
    """Copy netdsl's tensors (CompiledNet.params and .buffers: numpy arrays under netdsl's
    names, PyTorch layouts) into the module; every one must find its place, and only the
    counters PyTorch keeps and netdsl does not (num_batches_tracked) may be left over."""
    import numpy as np

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
    state.update({k: torch.from_numpy(np.ascontiguousarray(v))
                  for k, v in (buffers or {}).items()})  # fmt: skip
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"netdsl's names do not match the module's: missing {missing}, "
                       f"unexpected {unexpected}")  # fmt: skip
