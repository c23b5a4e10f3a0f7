"""Importing other frameworks' network files into the .net language: the common part.

Each format has a module here that reads its files into ForeignLayers (a Lark grammar in
grammars/ where the format is a language of its own), and a little structure of its own
(Caffe's blobs and in-place layers, Darknet's relative routes, cuda-convnet's params file).
What one foreign layer becomes is the business of the netdsl layer type it maps to: each
module in netdsl/ops/layers/ lists the foreign type words it takes (`LayerType.caffe_types`,
`darknet_types`, `cudaconvnet_types`) and turns one such layer into .net lines
(`LayerType.import_caffe` ...). The format module calls `import_one`, which asks the type.

The result is an ImportedNet, written out by `write_net` as a .net file a person would
keep: a header naming the source, one layer per line, names kept, comments where a value
was converted. Mistakes are NetErrors located in the SOURCE file (its text is a Source), so
they render like .net errors: `deploy.prototxt:214:3: error: ...`, exit 2.

Nothing here imports numpy or numba: `netdsl import` answers at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import Location, NetError

FORMATS = ("caffe", "darknet", "cudaconvnet")


@dataclass
class ForeignLayer:
    """One layer of a source file, as its format wrote it."""

    kind: str  # the format's type word: "Convolution", "convolutional", "conv"
    name: str  # its name in the source ("" when the format has none; Darknet numbers them)
    params: dict[str, Any]  # its options, parsed; nested messages as dicts, repeats as lists
    loc: Location  # where the layer starts, for errors
    locs: dict[str, Location] = field(default_factory=dict)  # where each option is written

    def at(self, key: str) -> Location:
        """Where option `key` is written (the layer's start when it is not)."""
        return self.locs.get(key, self.loc)


@dataclass
class NetLine:
    """One layer line of the .net file: `TYPE NAME(INPUTS): OPTIONS  # COMMENT`."""

    type: str  # a netdsl type word: conv, pool, lrn ...
    name: str  # a .net name (see net_name)
    options: list[str] = field(default_factory=list)  # "96 filters 11x11", "stride 4", "relu"
    inputs: list[str] | None = None  # None: the layer before
    comment: str = ""  # why a value differs from the source's, where it does
    src: Location | None = None  # the source layer it came from (for netdsl's own errors)

    def text(self, type_width: int = 0) -> str:
        head = f"{self.type:<{type_width}} {self.name}"
        if self.inputs is not None:
            head += f"({', '.join(self.inputs)})"
        line = f"{head}: {', '.join(self.options)}" if self.options else head
        return f"{line}  # {self.comment}" if self.comment else line


@dataclass
class ImportedNet:
    """A whole imported net, ready to be written as a .net file."""

    name: str  # the `network` name
    source: str  # the file it came from, as the user named it
    fmt: str  # one of FORMATS
    input_shape: tuple[int, int, int]  # C, H, W
    input_name: str = "data"
    lines: list[NetLine] = field(default_factory=list)
    header: list[str] = field(default_factory=list)  # comment lines under the source line
    gpus: int = 1
    train: list[str] = field(default_factory=list)  # the train { } section's settings
    train_comments: list[str] = field(default_factory=list)  # notes on what was converted


@dataclass
class ImportContext:
    """What a layer type's import_layer may ask while a net is being imported."""

    fmt: str
    net: ImportedNet
    names: dict[str, str] = field(default_factory=dict)  # source name -> .net name

    _checked: tuple[str, Any] | None = None  # (.net text, its Network): the last one checked

    def shape(self, name: str) -> tuple[int, ...]:
        """The output shape (C, H, W) of .net layer `name` of the lines so far, computed by
        netdsl's own shape rules (so a format's conversions can depend on a size). The
        lines so far are checked once for as long as they stay the same."""
        from .. import loads

        text = write_net(self.net, with_loss=False)
        if self._checked is None or self._checked[0] != text:
            self._checked = (text, loads(text, name=f"<import of {self.net.source}>"))
        return tuple(self._checked[1].layer(name).out_shape)

    def input_shape(self, inputs: list[str] | None) -> tuple[int, ...]:
        """The shape (C, H, W) a layer being imported reads: its first input's, or (None)
        the line before's, or the network input's."""
        net = self.net
        name = inputs[0] if inputs else (net.lines[-1].name if net.lines else net.input_name)
        if name == net.input_name:
            return tuple(net.input_shape)
        return self.shape(name)


def layer_type_for(fmt: str, word: str):
    """The netdsl LayerType that imports `word` of format `fmt`, or None."""
    from ..ops import registry

    for lt in registry.types().values():
        if word in getattr(lt, f"{fmt}_types"):
            return lt
    return None


def import_one(fmt: str, src: ForeignLayer, inputs: list[str] | None, name: str,
               ctx: ImportContext) -> list[NetLine]:  # fmt: skip
    """The .net lines of one foreign layer, from the layer type that imports its word."""
    lt = layer_type_for(fmt, src.kind)
    if lt is None:
        raise unsupported(src, fmt)
    return getattr(lt, f"import_{fmt}")(src, inputs, name, ctx)


_NAME_BAD = re.compile(r"[^A-Za-z_0-9.]")


def net_name(raw: str, taken: set[str]) -> str:
    """A .net name for a source name: characters .net names cannot hold become `_` (Caffe's
    `conv1/7x7_s2` -> `conv1_7x7_s2`), a leading digit gets `l`, and a name already taken
    gets `_2`, `_3` ...; the result is added to `taken`."""
    name = _NAME_BAD.sub("_", raw) or "layer"
    if not (name[0].isalpha() or name[0] == "_"):
        name = "l" + name
    if name == "in":  # reserved for a block's input
        name = "in_"
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def number(v: float | int) -> str:
    """A number as the .net file writes it: 0.0001 -> 1e-4, 2.0 -> 2, 0.75 -> 0.75."""
    if isinstance(v, bool):
        raise TypeError("a bool is not a number")
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    text = repr(float(v))
    short = f"{float(v):.6g}"
    if float(short) == float(v):
        text = short
    return text.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def write_net(net: ImportedNet, with_loss: bool = True) -> str:
    """The .net text of an imported net. `with_loss=False` leaves out a trailing loss line
    and the train section (for ImportContext.shape on a net still being built)."""
    out = [f"# Imported by `netdsl import` from {net.source} ({_FORMAT_NAMES[net.fmt]})."]
    out += [f"# {h}" if h else "#" for h in net.header]
    out.append(f"network {net.name}")
    if net.gpus > 1:
        out.append(f"gpus {net.gpus}")
    lines = net.lines
    if not with_loss:
        lines = [ln for ln in lines if ln.type != "loss"]
    width = max([len(ln.type) for ln in lines] + [5])
    c, h, w = net.input_shape
    out.append(f"{'input':<{width}} {net.input_name}: {c}x{h}x{w}")
    out += [ln.text(width) for ln in lines]
    if with_loss and (net.train or net.train_comments):
        out += ["", "train {"]
        out += [f"  # {t}" for t in net.train_comments]
        out += [f"  {t}" for t in net.train]
        out.append("}")
    return "\n".join(out) + "\n"


_FORMAT_NAMES = {
    "caffe": "Caffe prototxt",
    "darknet": "Darknet cfg",
    "cudaconvnet": "cuda-convnet layer definitions",
}


def unsupported(src: ForeignLayer, fmt: str, why: str | None = None) -> NetError:
    """The error for a foreign layer netdsl cannot express, located at the layer."""
    from ..foreign import FOREIGN

    hint = why
    if hint is None and src.kind in FOREIGN:
        hint = FOREIGN[src.kind][2]
    return NetError(f"layer type '{src.kind}' is not supported", src.at("type"), hint=hint)
