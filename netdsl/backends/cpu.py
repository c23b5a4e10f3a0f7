"""CPU backend: one runner per layer, binding the op kernels to preallocated buffers.

A runner's forward reads its inputs' output buffers and writes its own; its backward
reads the gradient of its output (`dy`) and writes the gradients of its parameters
and of its inputs. Buffers are owned by the plan (netdsl/compiler.py); runners keep
only the per-layer workspaces their kernels need.
"""

from __future__ import annotations

import numpy as np

from ..ir import Layer
from ..ops import activation, add, batchnorm, concat, dropout, loss, lrn, maxout, softmax
from ..ops.conv import PARALLEL_MIN_WORK, ConvCPU, Workers, num_threads, split
from ..ops.fc import FcCPU
from ..ops.pool import PoolCPU
from ..ops.subsample import SubsampleCPU


class Runner:
    """Base runner: `x` are the input buffers, `y` the output, `dx`/`dy` their gradients."""

    def __init__(self, layer: Layer, plan) -> None:
        self.layer = layer
        self.plan = plan
        self.x = [plan.out[n] for n in layer.inputs]  # (N, C, H, W) each
        self.y = plan.out[layer.name]  # (N, C, H, W)
        self.p = plan.layer_params(layer.name)  # name -> view into the flat parameters
        self.g = plan.layer_grads(layer.name)  # name -> view into the flat gradients
        act = layer.attrs.get("activation") or ("linear", 0.0)
        self.act_code = activation.ACT_CODE[act[0]]
        self.act_slope = np.float32(act[1])
        self.fused_act = act[0] != "linear"

    # the plan sets these before backward: where dx goes (None: not needed)
    dx: list[np.ndarray | None]
    dy: np.ndarray

    def forward(self, train: bool) -> None:
        raise NotImplementedError

    def backward(self) -> None:
        raise NotImplementedError

    def _act_forward(self) -> None:
        if self.fused_act:
            v = self.y.reshape(-1)
            activation.act_forward(v, v, self.act_code, self.act_slope)

    def _act_backward(self, scratch: np.ndarray) -> np.ndarray:
        """Gradient before the fused activation (into `scratch`), or dy itself."""
        if not self.fused_act:
            return self.dy
        activation.act_backward(self.dy.reshape(-1), self.y.reshape(-1), scratch.reshape(-1),
                                self.act_code, self.act_slope)  # fmt: skip
        return scratch


class InputRunner(Runner):
    def forward(self, train):
        pass

    def backward(self):
        pass


class ConvRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        n, (c, h, w), o = plan.batch, layer.in_shapes[0], layer.out_shape[0]
        self.op = ConvCPU(n, c, h, w, o, *a["kernel"], a["stride"], a["pad_tl"], a["dilation"],
                          a["groups"], a["out_hw"], a["bias"])  # fmt: skip
        self.mask = plan.masks.get(layer.name)  # (O, C, 1, 1) for a connection table
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p.get("bias"), self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        self.op.backward(dz, self.x[0], self.p["weight"], self.dx[0], self.g["weight"],
                         self.g.get("bias"))  # fmt: skip
        if self.mask is not None:
            self.g["weight"] *= self.mask  # links absent from the table get no gradient


class FcRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n, o = plan.batch, layer.out_shape[0]
        c, h, w = layer.in_shapes[0]
        self.op = FcCPU(n, c * h * w, o, layer.attrs["bias"])
        self.x2 = self.x[0].reshape(n, -1)  # (N, F) view: the implicit flatten
        self.y2 = self.y.reshape(n, o)  # (N, O) view
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        self.op.forward(self.x2, self.p["weight"], self.p.get("bias"), self.y2)
        self._act_forward()

    def backward(self):
        n = self.plan.batch
        dz = self._act_backward(self.dz).reshape(n, -1)
        dx = None if self.dx[0] is None else self.dx[0].reshape(n, -1)
        self.op.backward(dz, self.x2, self.p["weight"], dx, self.g["weight"], self.g.get("bias"))


class PoolRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = PoolCPU(plan.batch, c, h, w, a["mode"], a["kernel"], a["stride"], a["pad_tl"],
                          a["out_hw"])  # fmt: skip

    def forward(self, train):
        self.op.forward(self.x[0], self.y)

    def backward(self):
        if self.dx[0] is not None:
            self.op.backward(self.dy, self.dx[0])


class SubsampleRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        c, h, w = layer.in_shapes[0]
        self.op = SubsampleCPU(plan.batch, c, h, w, a["kernel"], a["stride"], a["pad_tl"],
                               a["out_hw"])  # fmt: skip
        self.dz = np.empty_like(self.y) if self.fused_act else None
        self.no_dx = np.empty_like(self.x[0])

    def forward(self, train):
        self.op.forward(self.x[0], self.p["weight"], self.p["bias"], self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        dx = self.no_dx if self.dx[0] is None else self.dx[0]
        self.op.backward(dz, self.x[0], self.p["weight"], dx, self.g["weight"], self.g["bias"])


class ActRunner(Runner):
    def forward(self, train):
        activation.act_forward(self.x[0].reshape(-1), self.y.reshape(-1), self.act_code,
                               self.act_slope)  # fmt: skip

    def backward(self):
        if self.dx[0] is not None:
            activation.act_backward(
                self.dy.reshape(-1),
                self.y.reshape(-1),
                self.dx[0].reshape(-1),
                self.act_code,
                self.act_slope,
            )


class MaxoutRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.k = layer.attrs["pieces"]
        self.idx = np.zeros(self.y.shape, np.int32)  # (N, C/k, H, W) winning piece

    def forward(self, train):
        maxout.maxout_forward(self.x[0], self.y, self.idx, self.k)

    def backward(self):
        if self.dx[0] is not None:
            maxout.maxout_backward(self.dy, self.idx, self.dx[0], self.k)


class LrnRunner(Runner):
    """Images are independent, so the batch is split over the layer's worker threads."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        a = layer.attrs
        self.args = (a["size"], np.float32(a["k"]), np.float32(a["alpha"]), np.float32(a["beta"]))
        self.scale = np.zeros_like(self.y)  # (N, C, H, W) k + alpha*sum(a^2), for backward
        work = self.y.size * a["size"]
        self.workers = Workers(num_threads() if work >= PARALLEL_MIN_WORK else 1)
        self.slices = [slice(lo, hi) for lo, hi in split(plan.batch, self.workers.n) if hi > lo]

    def forward(self, train):
        x, y, s = self.x[0], self.y, self.scale
        self.workers.run(lrn.lrn_forward, [(x[b], y[b], s[b], *self.args) for b in self.slices])

    def backward(self):
        if self.dx[0] is not None:
            x, y, s, dy, dx = self.x[0], self.y, self.scale, self.dy, self.dx[0]
            jobs = [(dy[b], x[b], y[b], s[b], dx[b], *self.args) for b in self.slices]
            self.workers.run(lrn.lrn_backward, jobs)


class DropoutRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.p_drop = layer.attrs["p"]
        self.scale = np.float32(dropout.keep_scale(self.p_drop))
        self.mask = np.ones(self.y.shape, np.uint8)  # (N, C, H, W) 1 = kept

    def forward(self, train):
        if train and self.p_drop > 0:
            self.mask = dropout.make_mask(self.plan.rng, self.y.shape, self.p_drop)
            dropout.dropout_forward(self.x[0], self.mask, self.y, self.scale)
        else:
            np.copyto(self.y, self.x[0])

    def backward(self):
        if self.dx[0] is not None:
            dropout.dropout_backward(self.dy, self.mask, self.dx[0], self.scale)


class BnRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        c = layer.out_shape[0]
        self.eps = np.float32(layer.attrs["eps"])
        self.momentum = np.float32(layer.attrs["momentum"])
        self.rm = plan.state[f"{layer.name}.running_mean"]  # (C,)
        self.rv = plan.state[f"{layer.name}.running_var"]  # (C,)
        self.mean = np.zeros(c, np.float32)  # (C,) batch mean, saved for backward
        self.invstd = np.zeros(c, np.float32)  # (C,) 1/sqrt(var + eps), saved for backward
        self.xhat_src = self.x[0]
        self.dz = np.empty_like(self.y) if self.fused_act else None
        self.no_dx = np.empty_like(self.x[0])

    def forward(self, train):
        if train:
            batchnorm.bn_forward_train(self.x[0], self.p["weight"], self.p["bias"], self.y,
                                       self.mean, self.invstd, self.rm, self.rv, self.eps,
                                       self.momentum)  # fmt: skip
        else:
            batchnorm.bn_forward_eval(self.x[0], self.p["weight"], self.p["bias"], self.rm,
                                      self.rv, self.y, self.eps)  # fmt: skip
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        dx = self.no_dx if self.dx[0] is None else self.dx[0]
        batchnorm.bn_backward(dz, self.x[0], self.p["weight"], self.mean, self.invstd, dx,
                              self.g["weight"], self.g["bias"])  # fmt: skip


class SoftmaxRunner(Runner):
    def forward(self, train):
        n = self.plan.batch
        softmax.softmax_forward(self.x[0].reshape(n, -1), self.y.reshape(n, -1))

    def backward(self):
        if self.dx[0] is not None:
            n = self.plan.batch
            softmax.softmax_backward(self.dy.reshape(n, -1), self.y.reshape(n, -1),
                                     self.dx[0].reshape(n, -1))  # fmt: skip


class FlattenRunner(Runner):
    def forward(self, train):
        np.copyto(self.y.reshape(-1), self.x[0].reshape(-1))

    def backward(self):
        if self.dx[0] is not None:
            np.copyto(self.dx[0].reshape(-1), self.dy.reshape(-1))


class AddRunner(Runner):
    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        self.dz = np.empty_like(self.y) if self.fused_act else None

    def forward(self, train):
        add.add_forward(self.x[0], self.x[1], self.y)
        for extra in self.x[2:]:
            add.add_forward(self.y, extra, self.y)
        self._act_forward()

    def backward(self):
        dz = self._act_backward(self.dz)
        for dx in self.dx:  # d(a + b)/da = 1: every input gets dy
            if dx is not None:
                np.copyto(dx, dz)


class ConcatRunner(Runner):
    def forward(self, train):
        concat.concat_forward(self.x, self.y)

    def backward(self):
        if all(d is not None for d in self.dx):
            concat.concat_backward(self.dy, self.dx)
        else:
            c0 = 0
            for x, d in zip(self.x, self.dx):
                if d is not None:
                    np.copyto(d, self.dy[:, c0 : c0 + x.shape[1]])
                c0 += x.shape[1]


class LossRunner(Runner):
    """Loss forward and backward together; `labels` is set by the plan before a step."""

    def __init__(self, layer, plan):
        super().__init__(layer, plan)
        n = plan.batch
        self.kind = layer.attrs["kind"]
        self.z = self.x[0].reshape(n, -1)  # (N, K) class scores
        self.probs = np.zeros_like(self.z)  # (N, K) softmax of the scores
        self.dz_own = np.zeros_like(self.z)  # (N, K) used when dx is not bound
        self.value = 0.0

    def forward(self, train):
        n = self.plan.batch
        dz = self.dz_own if self.dx[0] is None else self.dx[0].reshape(n, -1)
        labels = self.plan.labels
        if self.kind == "cross_entropy":
            self.value = loss.xent_forward_backward(self.z, labels, dz, self.probs)
        else:
            self.value = loss.mse_forward_backward(self.z, labels, dz)

    def backward(self):
        pass  # the gradient was written by forward
