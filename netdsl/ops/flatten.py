"""Flatten: CxHxW maps as one vector per image. The bytes do not move (both are C-contiguous
(N, C*H*W) memory), so the runner is a copy forward and a copy of the gradient back."""

from __future__ import annotations

import numpy as np

from netdsl.backends.cpu import Runner

# ---------------------------------------------------------------------------------------------
# CPU runner (netdsl/backends/cpu.py): this op bound to the plan's buffers
# ---------------------------------------------------------------------------------------------


class FlattenCPURunner(Runner):
    def forward(self, train):
        np.copyto(self.y.reshape(-1), self.x[0].reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            np.copyto(self.dx[0].reshape(-1), self.dy.reshape(-1))
