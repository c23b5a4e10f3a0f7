"""`act a1: relu`, or the activation's own word as the type: `relu r1`, `leaky l1: 0.1`.

Every spelling makes an `act` layer; the activation itself is applied by the pipeline, as
for any layer with a fused activation, so this layer's own forward is the identity."""

from __future__ import annotations

from ...schema import ACT_FLAGS, ACT_OPTS, ACTIVATIONS, Opt, Schema, read_float
from ..base import LayerType, activation_text


class Act(LayerType):
    name = "act"
    schema = Schema({**ACT_OPTS}, flags=ACT_FLAGS)

    def spellings(self):
        words = {self.name: self.schema}
        for a in ACTIVATIONS:  # `relu r1`, `leaky l1: 0.1`
            words[a] = Schema(
                {"slope": Opt(read_float(), 0.01)} if a == "leaky" else {},
                positional_num="slope" if a == "leaky" else None,
            )
        return words

    def canonical(self, spelling, attrs, locs, loc):
        if spelling == self.name:
            return attrs
        slope = attrs.pop("slope", 0.01)
        locs["activation"] = loc
        return {"activation": (spelling, slope if spelling == "leaky" else 0.0)}

    def kernel_text(self, layer):
        return activation_text(layer.attrs["activation"])

    def type_text(self, layer):
        return self.name

    def ref_forward(self, layer, xs, p, ctx):
        return xs[0]

    def ref_backward(self, layer, dy, xs, y, p, grads, ctx):
        return [dy]

    def torch_forward(self, layer, ins, model, F, torch):  # noqa: N803
        return ins[0]

    def cpu_runner(self):
        from ..activation import ActCPURunner

        return ActCPURunner

    def cuda_runner(self):
        from ..activation import ActCUDARunner

        return ActCUDARunner


LAYER = Act()
