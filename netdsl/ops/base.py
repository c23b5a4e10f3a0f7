"""What a layer type declares: the class each module in netdsl/ops/layers/ fills in once.

A layer type is one object, registered by netdsl/ops/registry.py. The pipeline asks it
everything that depends on the type, and never tests a layer-type name:

    elaborate     spellings(), aliases, canonical(), short_form, source
    shapes        infer() (shapes, parameters, MACs, located errors), receptive_field()
    placement     gathered, needed_interval(), channel_table()
    report        kernel_text(), type_text(), colour, keeps_output
    init/compile  fans(), init_spec(), param_mults(), state_init()
    reference     ref_forward() / ref_backward() (float64)
    torch_ref     torch_setup() / torch_forward()
    backends      cpu_runner() / cuda_runner() (imported on first use)

Declarations import neither numpy nor numba: `netdsl check` reads every one of them.
The runners and references they name are imported on first use from the op's kernel
module (netdsl/ops/<op>.py), where the float64 reference and the kernels live.
"""

from __future__ import annotations

from typing import Any

from ..ir import Layer, Shape
from ..schema import Schema

Range = tuple[Any, Any]  # (first, end) channel arrays, indexed like the GPU ids


class RefContext:
    """What the float64 executor (netdsl/reference.py) passes every reference: the batch x
    (N, C, H, W) and its size n, dropout keep-masks and connection-table masks by layer name,
    the labels, and `saved` (what a forward keeps for its backward, by layer name); a loss
    sets `value`."""

    def __init__(self, x: Any, masks: dict, table_masks: dict, labels: Any) -> None:
        self.x = x
        self.n = x.shape[0]
        self.masks = masks
        self.table_masks = table_masks
        self.labels = labels
        self.saved: dict[str, Any] = {}
        self.value = 0.0


class LayerType:
    """Defaults: one input, no options, output shape = input shape, no parameters, no MACs,
    an empty kernel column, channel i of the output read from channel i of the input."""

    name: str = ""
    schema: Schema = Schema({})
    aliases: tuple[str, ...] = ()  # other spellings of the type word: `batchnorm` for bn
    short_form: str | None = None  # option a bare layer name may give: `loss mse`
    source = False  # the network's input: no inputs, on every GPU, no gradient
    is_loss = False  # the last layer; its "output" is its input's scores, not a new map
    gathered = False  # on several GPUs it runs whole on GPU 0 (loss, softmax)
    keeps_output = True  # its output is a map counted in activation memory
    colour = "#ffffff"  # its node in `netdsl graph`
    # what the lint rules (netdsl/passes/lint.py) need to know of the layers before the loss
    reshapes_only = False  # the values pass unchanged, only the shape changes (flatten)
    identity_at_eval = False  # acts in training only; the identity at evaluation (dropout)
    normalises_scores = False  # turns scores into probabilities (softmax)

    # ---------------------------------------------------------------- language
    def spellings(self) -> dict[str, Schema]:
        """Type words that make this layer, with the options each accepts."""
        return {self.name: self.schema}

    def canonical(self, spelling: str, attrs: dict[str, Any], locs: dict, loc) -> dict[str, Any]:
        """The attributes of a layer written as `spelling` (a type word of spellings())."""
        return attrs

    # ---------------------------------------------------------------- shapes and counts
    def infer(self, layer: Layer) -> Shape:
        """The output shape (C, H, W) from layer.in_shapes; sets params, state, n_params and
        macs, and raises a located error for what cannot work."""
        return layer.in_shapes[0]

    def receptive_field(self, layer: Layer, r: int, j: int) -> tuple[int, int]:
        """(size, jump) of the output's receptive field from the widest input's (r, j)."""
        return r, j

    # ---------------------------------------------------------------- GPU placement
    def needed_interval(self, layer: Layer, lo, hi, cin: int, gpus: int) -> Range:
        """Input channels [a, b) (of the concatenated inputs) a GPU that owns output channels
        [lo, hi) reads; lo, hi and the result are arrays indexed by GPU."""
        return lo, hi

    def channel_table(self, layer: Layer) -> list[list[int]] | None:
        """For each output channel the input channels it reads, when they are scattered."""
        return None

    def unsplittable(self, layer: Layer, gpus: int) -> str | None:
        """Why the CUDA backend cannot split this layer over `gpus` GPUs, or None."""
        return None

    # How netdsl/backends/cuda_groups.py runs a share of the layer on one logical GPU:
    # "channels": one runner of the layer sliced to the GPU's output channels [lo, hi),
    # reading the hull of the input channels it needs (gathered when not all its own);
    # "elementwise": the same, but every input is read at the own channels (add);
    # "gather": no runner, the needed input channels are moved into the output (concat).
    split_mode = "channels"
    split_over_hull = False  # computed over the whole hull, own channels copied out (LRN)

    def split_hull(self, layer: Layer, cin: int, ivs: list[tuple[int, int]]) -> tuple[int, int]:
        """The input channels a share's sliced layer takes, from the intervals it reads."""
        return min(a for a, _ in ivs), max(b for _, b in ivs)

    def split_attrs(self, attrs: dict[str, Any], gpus: int) -> dict[str, Any]:
        """The attributes of a share's sliced layer (a grouped conv keeps groups/G groups)."""
        return attrs

    def cuda_share_runner(self) -> type:
        """The runner of one GPU's share; it is given `share` = (layer name, lo, hi)."""
        return self.cuda_runner()

    # ---------------------------------------------------------------- reports
    def kernel_text(self, layer: Layer) -> str:
        """The summary's "kernel" column: "3x3/1 p1", "max 2x2/2", "p=0.5"."""
        return ""

    def type_text(self, layer: Layer) -> str:
        """The summary's "type" column: the type, `+activation` when one is fused."""
        act = layer.attrs.get("activation")
        if act and act[0] != "linear":
            return f"{self.name}+{activation_text(act)}"
        return self.name

    # ---------------------------------------------------------------- parameters
    def fans(self, layer: Layer, weight: tuple[int, ...]) -> tuple[float, float]:
        """(fan_in, fan_out) of the weight, for xavier and he."""
        return 1.0, 1.0

    def init_spec(self, layer: Layer, pname: str, spec: dict, fan_in: float) -> dict:
        """The initialiser a parameter gets, given the one the file or the defaults chose."""
        return spec

    def param_mults(self, layer: Layer, pname: str) -> tuple[float, float]:
        """(lr_mult, decay_mult) of parameter `pname`."""
        a = layer.attrs
        if pname == "bias":
            return a.get("bias_lr_mult", 1.0), a.get("bias_decay_mult", 1.0)
        return a.get("lr_mult", 1.0), a.get("decay_mult", 1.0)

    def state_init(self, sname: str) -> float:
        """The starting value of a non-trainable state tensor."""
        return 0.0

    # ---------------------------------------------------------------- import (netdsl/interop/)
    # The type words of other frameworks' files this type imports, one tuple per format of
    # netdsl.interop.FORMATS, and one method per format turning such a layer into .net lines.
    caffe_types: tuple[str, ...] = ()  # "Convolution"
    darknet_types: tuple[str, ...] = ()  # "convolutional"
    cudaconvnet_types: tuple[str, ...] = ()  # "conv"

    # Each import_<format>(src, inputs, name, ctx) returns the .net lines
    # (netdsl.interop.NetLine) that foreign layer `src` (netdsl.interop.ForeignLayer) becomes,
    # named `name` and reading `inputs` (None: the layer before); when it is several lines,
    # the last one stands for the source layer (later layers read it). What cannot be
    # expressed is a NetError at the source (netdsl.interop.unsupported, or src.at(option)).
    def import_caffe(self, src: Any, inputs: list[str] | None, name: str, ctx: Any) -> list:
        """The .net lines of a Caffe layer (prototxt `layer { type: ... }`)."""
        from ..interop import unsupported

        raise unsupported(src, ctx.fmt)

    def import_darknet(self, src: Any, inputs: list[str] | None, name: str, ctx: Any) -> list:
        """The .net lines of a Darknet cfg section (`[convolutional]`)."""
        from ..interop import unsupported

        raise unsupported(src, ctx.fmt)

    def import_cudaconvnet(self, src: Any, inputs: list[str] | None, name: str,
                           ctx: Any) -> list:  # fmt: skip
        """The .net lines of a cuda-convnet layer (`[name]` with `type=conv`), its
        layer-params entries merged into src.params."""
        from ..interop import unsupported

        raise unsupported(src, ctx.fmt)

    # ---------------------------------------------------------------- execution
    def ref_forward(self, layer: Layer, xs: list, p: dict, ctx: RefContext):
        """Float64 forward, before the fused activation: (N, C, H, W) inputs -> output."""
        raise NotImplementedError(self.name)

    def ref_backward(self, layer: Layer, dy, xs: list, y, p: dict, grads: dict,
                     ctx: RefContext) -> list:  # fmt: skip
        """Float64 backward from dy (already through the fused activation): the gradient of
        each input; parameter gradients are added into grads[pname]."""
        raise NotImplementedError(self.name)

    def torch_setup(self, layer: Layer, model: Any, torch: Any) -> None:
        """Buffers and masks the PyTorch twin (netdsl/torch_ref.py) needs for this layer."""

    def torch_forward(self, layer: Layer, ins: list, model: Any, F: Any, torch: Any):  # noqa: N803
        """The PyTorch forward, before the fused activation."""
        raise NotImplementedError(self.name)

    def cpu_runner(self) -> type:
        """The CPU runner class (netdsl/backends/cpu.py's Runner), imported on first use."""
        raise NotImplementedError(self.name)

    def cuda_runner(self) -> type:
        """The CUDA runner class (netdsl/backends/cuda.py's Runner), imported on first use."""
        raise NotImplementedError(self.name)

    # ---------------------------------------------------------------- export (netdsl/export/)
    # ONNX nodes through netdsl/export/onnx.py's OnnxGraph `g`; the generated PyTorch source
    # through netdsl/export/pytorch.py's TorchSource `t`; tensors under PyTorch state_dict
    # names. Inputs come at the rank the layer asks for (4: NCHW, 2: (N, K)); each hook
    # returns its output and that output's rank. The fused activation is added by the driver.
    def onnx_nodes(self, layer: Layer, g: Any) -> tuple[str, int]:
        """Emit this layer's ONNX nodes into `g`: (output tensor name, its rank)."""
        raise cannot_export(self, layer, "ONNX")

    def torch_module_lines(self, layer: Layer, t: Any) -> str | None:
        """The constructor of this layer's nn.Module (`nn.Conv2d(1, 6, 5)`), None when the
        layer has no module (its forward is a function call)."""
        if layer.params or layer.state:
            raise cannot_export(self, layer, "PyTorch")
        return None

    def torch_forward_expr(self, layer: Layer, t: Any) -> tuple[str, int]:
        """A Python expression of this layer's forward in the generated module, and its rank."""
        raise cannot_export(self, layer, "PyTorch")

    def state_dict_items(self, layer: Layer, tensors: dict) -> list[tuple[str, str | None, Any]]:
        """(PyTorch state_dict name, netdsl tensor name or None, array) of this layer. The
        array is netdsl's own, or a reshape of it (--init-from reshapes back); None marks a
        tensor netdsl does not keep (batch norm's num_batches_tracked)."""
        if layer.params or layer.state:
            raise cannot_export(self, layer, "a PyTorch state_dict")
        return []


def cannot_export(lt: LayerType, layer: Layer, target: str):
    """The located error of a layer type without an export mapping to `target`."""
    return layer.error(f"cannot export layer type '{lt.name}' to {target}: the type declares "
                       "no mapping (netdsl/ops/base.py's export hooks)")  # fmt: skip


def activation_text(act: tuple) -> str:
    """A fused activation as the reports write it: "relu", "leaky(0.1)" (its kind's text)."""
    from . import activations

    return activations.get(act[0]).text(activations.params_of(act))


def fmt(shape) -> str:
    """A shape as the messages write it: 3x32x32."""
    return "x".join(str(d) for d in shape)
