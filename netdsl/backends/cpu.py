"""CPU backend: the base of the runners that bind an op's kernels to preallocated buffers.

A runner's forward reads its inputs' output buffers and writes its own; its backward
reads the gradient of its output (`dy`) and writes the gradients of its parameters
and of its inputs. Buffers are owned by the plan (netdsl/compiler.py); runners keep
only the per-layer workspaces their kernels need. Each op's runner lives with its
kernels (netdsl/ops/<op>.py, `*CPURunner`); its layer type names it (cpu_runner).
"""

from __future__ import annotations

import numpy as np

from ..ir import Layer


class Runner:
    """Base runner: `x` are the input buffers, `y` the output, `dx`/`dy` their gradients."""

    def __init__(self, layer: Layer, plan) -> None:
        self.layer = layer
        self.plan = plan
        self.x = [plan.out[n] for n in layer.inputs]  # (N, C, H, W) each
        self.y = plan.out[layer.name]  # (N, C, H, W)
        self.p = plan.layer_params(layer.name)  # name -> view into the flat parameters
        self.g = plan.layer_grads(layer.name)  # name -> view into the flat gradients
        from ..ops import activation, activations  # whose module defines a runner on this base

        act = layer.attrs.get("activation") or ("linear", 0.0)
        self.act_code = activation.ACT_CODE[act[0]]
        self.act_params = tuple(np.float32(v) for v in activations.kernel_params(act))
        self.fused_act = act[0] != "linear"
        self._act = activation  # its kernels, looked up once (not on every step)

    # the plan sets these before backward: where dx goes (None: not needed)
    dx: list[np.ndarray | None]
    dy: np.ndarray

    def forward(self, train: bool) -> None:
        raise NotImplementedError

    def backward(self) -> None:
        raise NotImplementedError

    def _act_forward(self) -> None:
        if self.fused_act:
            fwd, _ = self._act.in_place_kernels(self.act_code)
            fwd(self.y.reshape(-1), self.act_code, *self.act_params)

    # dz = dy * act'(y) overwrites dy: the plan's dy buffer has no reader after this layer's
    # backward (netdsl/compiler.py, gradient_buffers), so the runners' `dz` scratch, allocated
    # with np.empty_like, is never touched and costs no resident memory. The plan turns this
    # off for a dead end, whose dy is a zero buffer that must stay zero.
    act_grad_in_place = True
    _dead_end_dz: np.ndarray | None = None  # a dead end's dz, when its runner keeps none

    def _act_backward(self, scratch: np.ndarray | None = None) -> np.ndarray:
        """Gradient before the fused activation (into dy, or `scratch`), or dy itself."""
        if not self.fused_act:
            return self.dy
        if self.act_grad_in_place:
            _, bwd = self._act.in_place_kernels(self.act_code)
            bwd(self.dy.reshape(-1), self.y.reshape(-1), self.act_code, *self.act_params)
            return self.dy
        if scratch is None:
            if self._dead_end_dz is None:
                self._dead_end_dz = np.empty_like(self.dy)
            scratch = self._dead_end_dz
        self._act.act_backward(self.dy.reshape(-1), self.y.reshape(-1), scratch.reshape(-1),
                                self.act_code, *self.act_params)  # fmt: skip
        return scratch


class SourceRunner(Runner):
    """The network's input: the plan loads its output buffer; nothing to compute."""

    def forward(self, train):
        pass

    def backward(self):
        pass


class FoldedRunner(Runner):
    """A standalone activation folded into its producer (CompiledNet._activation_folds): the
    producer's runner applies it and writes this layer's output; nothing is left to do."""

    def forward(self, train):
        pass

    def backward(self):
        pass
