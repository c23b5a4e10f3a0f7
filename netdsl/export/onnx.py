"""ONNX export: one graph from the IR, each layer type emitting its own nodes.

The graph takes `input` (N, C, H, W) float32 with a free batch size N and gives `scores`:
the output of the last layer before the loss, (N, K) for class scores, exactly what
CompiledNet.forward returns (with `probabilities`: a Softmax after them, `probabilities`).
Layers hand tensors on at rank 4 (NCHW) or 2 ((N, K) after fc, flatten, softmax); a layer
asks for its inputs at the rank it needs and OnnxGraph reshapes between the two.
GPU groups (`gpus N`) need nothing: the IR is the single-device graph, the placement only
annotates it, so the exported graph is that graph.
"""

from __future__ import annotations

import os
from typing import Any

from ..files import write_atomic
from ..ir import Layer, Network
from ..ops import activations, registry
from .common import fresh_name, need, own

OPSET = 17  # onnxruntime >= 1.12 runs it; every op used here exists there unchanged


class OnnxGraph:
    """The builder the layer types' onnx_nodes(layer, g) write into.

    g.x(layer, i, rank) an input's tensor name; g.node(op, inputs, **attrs) adds a node and
    returns its output name; g.param(layer, pname) / g.const(array) add initialisers;
    g.tensors(layer) is the layer's own weights by name (float32 numpy arrays).
    """

    def __init__(self, net: Network, tensors: dict[str, Any]) -> None:
        from onnx import helper

        self.helper = helper
        self.net = net
        self._tensors = tensors
        self.nodes: list = []
        self.initializers: list = []
        self.outputs: dict[str, tuple[str, int]] = {}  # layer name -> (tensor, rank)
        self.rank: dict[str, int] = {}
        self._used: set[str] = set()
        self._converted: dict[tuple[str, int], str] = {}
        self.layer: Layer | None = None  # the layer being emitted (names its nodes)

    # ---- names
    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet, from `base`."""
        return fresh_name(base, self._used)

    # ---- tensors
    def tensors(self, layer: Layer) -> dict[str, Any]:
        """The layer's weights, {"weight": array, ...}, float32."""
        return own(layer, self._tensors)

    def const(self, array: Any, name: str | None = None) -> str:
        """An initialiser holding `array` (float32 unless it is an integer array)."""
        import numpy as np
        from onnx import numpy_helper

        a = np.asarray(array)
        a = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)
        base = name or f"{self.layer.name if self.layer else 'const'}.const"
        tname = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(a, tname))
        return tname

    def param(self, layer: Layer, pname: str, array: Any = None) -> str:
        """The initialiser `<layer>.<pname>` (the weight itself, or `array` made from it)."""
        value = self.tensors(layer)[pname] if array is None else array
        return self.const(value, f"{layer.name}.{pname}")

    def x(self, layer: Layer, i: int = 0, rank: int | None = None) -> str:
        """Input i of `layer`, reshaped to `rank` (4: (N, C, H, W), 2: (N, C*H*W)) if given."""
        tensor, have = self.outputs[layer.inputs[i]]
        return self.at_rank(tensor, have, rank, layer.in_shapes[i])

    def at_rank(self, tensor: str, have: int, rank: int | None, shape) -> str:
        if rank is None or rank == have:
            return tensor
        key = (tensor, rank)
        if key not in self._converted:
            if rank == 2:
                out = self.node("Flatten", [tensor], name=f"{tensor}.flat", axis=1, rank=2)
            else:
                dims = self.const([0, *shape], f"{tensor}.shape4")
                out = self.node("Reshape", [tensor, dims], name=f"{tensor}.nchw", rank=4)
            self._converted[key] = out
        return self._converted[key]

    def node(self, op: str, inputs: list[str], name: str | None = None, rank: int | None = None,
             **attrs: Any) -> str:  # fmt: skip
        """Add an `op` node reading `inputs`; its one output's name (rank: that of its first
        input unless given)."""
        base = name or (self.layer.name if self.layer else op)
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        self.rank[out] = rank if rank is not None else self.rank.get(inputs[0], 4)
        return out

    # ---- the graph
    def build(self, probabilities: bool = False) -> Any:
        """The ModelProto of the whole network."""
        from onnx import TensorProto, helper

        import netdsl

        net = self.net
        c, h, w = net.input.out_shape
        for reserved in ("input", "scores", "probabilities"):
            self.fresh(reserved)
        self.rank["input"] = 4
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])
        last = None
        for lyr in net.layers:
            lt = registry.of(lyr)
            self.layer = lyr
            if lt.source:
                self.outputs[lyr.name] = ("input", 4)
                continue
            out, rank = lt.onnx_nodes(lyr, self)
            act = lyr.attrs.get("activation")
            if act and act[0] != "linear":
                out = activations.get(act[0]).onnx(self, out, activations.params_of(act))
            self.rank[out] = rank
            self.outputs[lyr.name] = (out, rank)
            if not lt.is_loss:
                last = lyr
        self.layer = None
        out, rank = self.outputs[last.name]
        oc, oh, ow = last.out_shape
        vector = (oh, ow) == (1, 1)
        if vector:
            out = self.at_rank(out, rank, 2, last.out_shape)
        final = "probabilities" if probabilities else "scores"
        if probabilities:
            if not vector:
                raise netdsl.NetdslError(
                    f"--probabilities needs a network that ends in class scores; {last.name} "
                    f"gives {oc}x{oh}x{ow} maps"
                )
            out = self.node("Softmax", [out], name="softmax", axis=1)
        self.nodes.append(helper.make_node("Identity", [out], [final], name=final))
        dims = ["N", oc] if vector else ["N", oc, oh, ow]
        result = helper.make_tensor_value_info(final, TensorProto.FLOAT, dims)
        graph = helper.make_graph(self.nodes, net.name, [inp], [result], self.initializers)
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(graph, opset_imports=opset, producer_name="netdsl",
                                  producer_version=netdsl.__version__)  # fmt: skip
        model.ir_version = 8  # what opset 17 needs; older runtimes read it too
        model.doc_string = f"{net.name} from {os.path.basename(net.file)}"
        return model


def build_model(net: Network, tensors: dict[str, Any], probabilities: bool = False) -> Any:
    """The checked ONNX ModelProto of `net` with weights `tensors` ("<layer>.<name>" ->
    array, as CompiledNet.params plus .buffers or a checkpoint's)."""
    need("onnx", "ONNX export")
    import onnx

    model = OnnxGraph(net, tensors).build(probabilities)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_onnx(net: Network, tensors: dict[str, Any], path: str | os.PathLike,
              probabilities: bool = False) -> Any:  # fmt: skip
    """Build, check and write (atomically) the ONNX model; returns it."""
    from ..errors import DataError
    from ..train.paths import show_path

    model = build_model(net, tensors, probabilities)
    size = model.ByteSize()
    if size >= 2**31:  # protobuf's limit for one message
        raise DataError(f"{show_path(path)}: the model is {size / 2**30:.1f} GiB, over "
                        "ONNX's 2 GiB limit for one file")  # fmt: skip
    write_atomic(path, model.SerializeToString())
    return model
