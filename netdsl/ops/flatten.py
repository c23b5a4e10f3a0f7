"""Flatten: CxHxW maps as one vector per image. The bytes do not move (both are C-contiguous
(N, C*H*W) memory), so the runner is a copy forward and a copy of the gradient back."""

from __future__ import annotations

import numpy as np

from netdsl.backends import cuda_runner
from netdsl.backends.cpu import Runner
from netdsl.ops import add

# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class FlattenCPURunner(Runner):
    def forward(self, train):
        np.copyto(self.y.reshape(-1), self.x[0].reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            np.copyto(self.dx[0].reshape(-1), self.dy.reshape(-1))


# ---------------------------------------------------------------------------------------------
# CUDA runner (netdsl/backends/cuda.py): the launcher bound to the plan's device buffers
# ---------------------------------------------------------------------------------------------


class FlattenCUDARunner(cuda_runner.Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.op = add.AddCUDA(self.y.size)

    def forward(self, train):
        self.op.copy(self.x[0].reshape(-1), self.y.reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            self.op.copy(self.dy.reshape(-1), self.dx[0].reshape(-1))
