"""Caffe prototxt (NetParameter, and a SolverParameter with --solver) into an ImportedNet.

The file is parsed by netdsl/interop/prototxt.py (grammars/prototxt.lark) into Msgs that
keep every field's place, so errors point into the prototxt. What belongs to the format
lives here: blobs (bottom/top names) and in-place layers (a ReLU folded into the layer
before as its activation, BatchNorm + Scale folded into one bn), Split/Silence/Accuracy,
phases (a train_val file keeps its TRAIN layers) and the data layers (input shape, crop,
mirror, mean, batch); the solver is netdsl/interop/caffe_solver.py. What one layer becomes
is its netdsl layer type's business (`caffe_types` and `import_caffe` in
netdsl/ops/layers/<type>.py); the helpers they share (windows, fillers,
`param { lr_mult decay_mult }`) are at the end of this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Location, NetError
from ..source import Source
from . import ForeignLayer, ImportContext, ImportedNet, NetLine, import_one, net_name, number
from .prototxt import Msg, Word, parse_prototxt

# ------------------------------------------------------------------------ net -> ForeignLayers

# Repeated fields of Caffe's messages (a list even when written once).
REPEATED = frozenset(
    ("bottom", "top", "param", "include", "exclude", "kernel_size", "stride", "pad", "dilation",
     "dim", "shape", "coeff", "mean_value", "blobs_lr", "weight_decay", "stage", "not_stage",
     "loss_weight", "propagate_down", "stepvalue")
)  # fmt: skip


def to_params(msg: Msg, prefix: str = "", locs: dict | None = None) -> tuple[dict, dict]:
    """A message as ForeignLayer.params (nested messages as dicts, repeated fields as lists)
    and the place of each option by its dotted path (`convolution_param.pad`; `param.1` for
    the second value of a repeated field)."""
    locs = {} if locs is None else locs
    out: dict[str, Any] = {}
    for f in msg.fields:
        path = prefix + f.key
        if isinstance(f.value, Msg):
            i = len(out.get(f.key, [])) if f.key in REPEATED else None
            sub_path = f"{path}.{i}." if i is not None else path + "."
            value, _ = to_params(f.value, sub_path, locs)
        else:
            value = f.value
        if f.key in REPEATED:
            i = len(out.setdefault(f.key, []))
            out[f.key].append(value)
            locs.setdefault(path, f.vloc if not isinstance(f.value, Msg) else f.loc)
            locs[f"{path}.{i}"] = f.vloc if not isinstance(f.value, Msg) else f.loc
        else:
            out[f.key] = value
            locs[path] = f.vloc if not isinstance(f.value, Msg) else f.loc
    return out, locs


# The old `layers { type: CONVOLUTION }` enum words, as the current type strings.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU",
    "SIGMOID": "Sigmoid", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}  # fmt: skip
DATA_TYPES = ("Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "DummyData")
DROPPED = ("Accuracy", "Silence")  # netdsl reports accuracy itself; nothing to silence


def foreign_layer(msg: Msg, old_form: bool) -> ForeignLayer:
    """One `layer { }` (or old `layers { }`) message as a ForeignLayer; the old form's enum
    type and its `blobs_lr`/`weight_decay` become the current type and `param { }`s."""
    params, locs = to_params(msg)
    kind_f = msg.one("type")
    if kind_f is None:
        raise NetError("this layer has no type", msg.loc, hint='e.g. type: "Convolution"')
    kind = str(kind_f.value)
    if old_form or isinstance(kind_f.value, Word):
        kind = V1_TYPES.get(kind, kind)
    if "blobs_lr" in params or "weight_decay" in params:  # V1: one value per blob
        lrs, decays = params.pop("blobs_lr", []), params.pop("weight_decay", [])
        ps = []
        for i in range(max(len(lrs), len(decays))):
            p = {}
            if i < len(lrs):
                p["lr_mult"] = lrs[i]
                locs[f"param.{i}.lr_mult"] = locs["blobs_lr." + str(i)]
            if i < len(decays):
                p["decay_mult"] = decays[i]
                locs[f"param.{i}.decay_mult"] = locs["weight_decay." + str(i)]
            ps.append(p)
        params["param"] = ps
    name = str(params.get("name", ""))
    loc = msg.loc
    locs["type"] = kind_f.loc  # `type:` (an unsupported type is shown there)
    return ForeignLayer(kind, name, params, loc, locs)


def _rule_meets(rule: dict) -> bool:
    """Caffe's NetState rule against the state of training: phase TRAIN, level 0, no
    stages."""
    if "phase" in rule and str(rule["phase"]) != "TRAIN":
        return False
    if "min_level" in rule and 0 < rule["min_level"]:
        return False
    if "max_level" in rule and 0 > rule["max_level"]:
        return False
    return not rule.get("stage")  # a required stage is never in the state


def in_train_phase(layer: ForeignLayer) -> bool:
    """Whether Caffe builds the layer for training (NetState phase TRAIN)."""
    inc, exc = layer.params.get("include", []), layer.params.get("exclude", [])
    if inc:
        return any(_rule_meets(r) for r in inc)
    return not any(_rule_meets(r) for r in exc)


# ------------------------------------------------------------------------------ the importer

_ACT_OK = ("conv", "fc", "bn", "add", "subsample")  # layer types with a fused activation


@dataclass
class _Blob:
    line: str  # the .net layer that holds it now
    readers: int = 0  # layers that read it since that layer wrote it


@dataclass
class _State:
    ctx: ImportContext
    blobs: dict[str, _Blob] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)  # header notes
    lines_by_name: dict[str, NetLine] = field(default_factory=dict)
    bn_from: dict[str, ForeignLayer] = field(default_factory=dict)  # bn line -> its BatchNorm
    source_of: dict[str, ForeignLayer] = field(default_factory=dict)  # line -> its layer
    global_stats: list[str] = field(default_factory=list)  # BatchNorms with use_global_stats
    data: ForeignLayer | None = None


def read(path: str, opts) -> ImportedNet:
    """A Caffe NetParameter prototxt as an ImportedNet (NetError at SOURCE:line:col)."""
    src = Source.from_file(path)
    top = parse_prototxt(src)
    layer_fields = [f for f in top.fields if f.key in ("layer", "layers")]
    if not layer_fields:
        raise NetError(f"{path}: no `layer {{ }}` in this file: is it a Caffe net?",
                       hint="a solver file goes with --solver")  # fmt: skip
    name = net_name(opts.name or str(top.get("name", "")) or Path(path).stem, set())
    net = ImportedNet(name=name, source=path, fmt="caffe", input_shape=(1, 1, 1))
    st = _State(ImportContext("caffe", net))
    layers = [foreign_layer(f.value, f.key == "layers") for f in layer_fields
              if isinstance(f.value, Msg)]  # fmt: skip
    kept = []
    for lyr in layers:
        if not in_train_phase(lyr):
            st.dropped.append(f"{lyr.name or lyr.kind} ({lyr.kind}, TEST phase only)")
        else:
            kept.append(lyr)
    _input(top, kept, st, opts, src)
    for lyr in kept:
        if lyr.kind in DATA_TYPES or lyr.kind == "Input" or lyr is st.data:
            continue
        _layer(lyr, st)
    if not net.lines:
        raise NetError(f"{path}: the net has no layers after its input")
    losses = [ln for ln in net.lines if ln.type == "loss"]
    if len(losses) > 1:
        raise NetError(f"a second loss ({len(losses)} in all); netdsl trains one",
                       st.source_of[losses[1].name].loc, hint="keep one loss layer")  # fmt: skip
    if losses and net.lines[-1] is not losses[0]:
        after = net.lines[net.lines.index(losses[0]) + 1]
        raise NetError(f"a layer after the loss {losses[0].name}; netdsl's loss is the last "
                       "layer", st.source_of[after.name].loc)  # fmt: skip
    net.header = _header(st)
    if st.data is not None:
        _train_from_data(st.data, net)
    if opts.solver:
        from . import caffe_solver

        caffe_solver.apply(opts.solver, net, st.data)
    return net


def _header(st: _State) -> list[str]:
    out = []
    if st.dropped:
        out.append("Dropped: " + ", ".join(st.dropped) + ".")
    if st.global_stats:
        n = len(st.global_stats)
        out.append(f"{n} BatchNorm layer{'s' if n > 1 else ''} ({st.global_stats[0]}"
                   f"{', ...' if n > 1 else ''}) use global stats: Caffe normalises with the "
                   "stored statistics in training too; netdsl's bn uses the batch's in "
                   "training, the stored ones in evaluation (the same in a deploy net)."
                   )  # fmt: skip
    import textwrap

    return [w for note in out for w in textwrap.wrap(note, 88, break_on_hyphens=False)]


def _input(top: Msg, layers: list[ForeignLayer], st: _State, opts, src: Source) -> None:
    """The input: `input:` with `input_dim`/`input_shape`, an Input layer, or a data layer."""
    net = st.ctx.net
    shape: tuple[int, ...] | None = None
    where: Location = top.loc
    name = None
    inputs = top.all("input")
    if len(inputs) > 1:
        raise NetError("the net has several inputs; netdsl takes one", inputs[1].loc)
    if inputs:
        name, where = str(inputs[0].value), inputs[0].loc
        dims = top.values("input_dim")
        dim_f = (top.all("input_dim") or [None])[0]
        if top.one("input_shape") is not None:
            shp = top.one("input_shape")
            dims, dim_f = shp.value.values("dim"), shp
        if dims:
            shape = _dims(dims, dim_f.loc)
    inp = [lyr for lyr in layers if lyr.kind == "Input"]
    data = [lyr for lyr in layers if lyr.kind in DATA_TYPES]
    if len(inp) + len(data) + len(inputs) > 1:
        extra = (inp + data)[1 if not inputs else 0]
        raise NetError("the net has several inputs; netdsl takes one", extra.loc)
    if inp:
        lyr = inp[0]
        tops = lyr.params.get("top", [])
        name, where = (str(tops[0]) if tops else lyr.name), lyr.loc
        shapes = lyr.params.get("input_param", {}).get("shape", [])
        if shapes:
            shape = _dims(shapes[0].get("dim", []), lyr.at("input_param.shape"))
    if data:
        lyr = st.data = data[0]
        tops = lyr.params.get("top", [])
        name, where = (str(tops[0]) if tops else lyr.name), lyr.loc
        shape = _data_shape(lyr, opts)
        for extra in tops[1:]:  # the labels: read by the loss, not a layer of the net
            st.blobs[str(extra)] = _Blob("<labels>")
    if name is None:
        raise NetError(f"{src.name}: the net states no input (`input:`, an Input layer or a "
                       "data layer)", hint="netdsl needs one input")  # fmt: skip
    if shape is None:
        if opts.input_shape is None:
            what = f"the size of the input '{name}' is not in the file"
            if st.data is not None:
                source = _source(st.data)
                what = (f"the {st.data.kind} layer reads its images from {source or 'a file'}; "
                        f"their size is not in the prototxt")  # fmt: skip
            raise NetError(what, where, hint=f"give it with --input CxHxW, e.g. --input "
                           f"{_example_shape(st.data)}")  # fmt: skip
        shape = opts.input_shape
    elif opts.input_shape is not None and tuple(opts.input_shape) != tuple(shape):
        c, h, w = shape
        raise NetError(f"--input {'x'.join(map(str, opts.input_shape))} differs from the "
                       f"file's input {c}x{h}x{w}", where)  # fmt: skip
    net.input_shape = shape
    net.input_name = net_name(name, st.taken)
    st.blobs[name] = _Blob(net.input_name)


def _example_shape(data: ForeignLayer | None) -> str:
    """An --input for the hint: the crop's size, or the known data set's images."""
    known = known_data(data)
    crop = data.params.get("transform_param", {}).get("crop_size") if data else None
    if crop:
        return f"{known[3].split('x')[0] if known else 3}x{crop}x{crop}"
    return known[3] if known else "3x224x224"


def _dims(dims: list, loc: Location) -> tuple[int, int, int]:
    """N, C, H, W as C, H, W (N is the batch)."""
    if len(dims) != 4 or not all(isinstance(d, int) and d >= 1 for d in dims):
        raise NetError(f"expected an input shape of 4 dimensions N, C, H, W, got {len(dims)}",
                       loc, hint="netdsl's input is an image C x H x W")  # fmt: skip
    return int(dims[1]), int(dims[2]), int(dims[3])


def _data_shape(lyr: ForeignLayer, opts) -> tuple[int, int, int] | None:
    """The shape a data layer delivers, where its file states it (else None: --input)."""
    p = lyr.params
    crop = p.get("transform_param", {}).get("crop_size")
    if lyr.kind == "MemoryData":
        m = p.get("memory_data_param", {})
        if all(k in m for k in ("channels", "height", "width")):
            c, h, w = m["channels"], m["height"], m["width"]
            return (c, crop, crop) if crop else (c, h, w)
    if lyr.kind == "ImageData":
        m = p.get("image_data_param", {})
        c = 3 if str(m.get("is_color", "true")) == "true" else 1
        if crop:
            return c, crop, crop
        if "new_height" in m and "new_width" in m:
            return c, m["new_height"], m["new_width"]
    if crop and opts.input_shape is not None and opts.input_shape[1:] != (crop, crop):
        raise NetError(
            f"--input {'x'.join(map(str, opts.input_shape))} differs from the "
            f"crop_size {crop} of this data layer",
            lyr.at("transform_param.crop_size"),
        )
    return None


def _inputs(lyr: ForeignLayer, st: _State) -> list[str]:
    """The .net names of a layer's bottoms (the label blob left out)."""
    out = []
    for i, b in enumerate(lyr.params.get("bottom", [])):
        blob = st.blobs.get(str(b))
        if blob is None:
            raise NetError(f"layer {lyr.name}: bottom '{b}' is not the top of any layer before",
                           lyr.at(f"bottom.{i}"))  # fmt: skip
        if blob.line == "<labels>":
            continue
        out.append(blob.line)
    return out


def _layer(lyr: ForeignLayer, st: _State) -> None:
    net = st.ctx.net
    bottoms = [str(b) for b in lyr.params.get("bottom", [])]
    tops = [str(t) for t in lyr.params.get("top", [])]
    if lyr.kind in DROPPED:
        st.dropped.append(f"{lyr.name} ({lyr.kind})")
        return
    ins = _inputs(lyr, st)
    if lyr.kind == "Split":  # every top is the bottom under another name
        for t in tops:
            st.blobs[t] = st.blobs[bottoms[0]]
        return
    in_place = bool(bottoms) and tops[:1] == bottoms[:1]
    if (in_place or lyr.kind == "Scale") and _fold(lyr, st):
        st.blobs[tops[0]] = st.blobs[bottoms[0]]
        return
    name = net_name(lyr.name or lyr.kind.lower(), st.taken)
    before = net.lines[-1].name if net.lines else net.input_name
    inputs = None if ins == [before] else ins
    new = import_one("caffe", lyr, inputs, name, st.ctx)
    for ln in new:
        ln.src = ln.src or lyr.loc
        net.lines.append(ln)
        st.lines_by_name[ln.name] = ln
        st.source_of[ln.name] = lyr
    for b in bottoms:
        if b in st.blobs:
            st.blobs[b].readers += 1
    if len(tops) > 1:
        raise NetError(f"layer {lyr.name} has {len(tops)} tops; netdsl layers have one output",
                       lyr.at("top.1"))  # fmt: skip
    if lyr.kind == "BatchNorm":
        st.bn_from[new[-1].name] = lyr
        if str(lyr.params.get("batch_norm_param", {}).get("use_global_stats")) == "true":
            st.global_stats.append(lyr.name)
    for t in tops:
        st.blobs[t] = _Blob(new[-1].name)


def _fold(lyr: ForeignLayer, st: _State) -> bool:
    """An in-place layer folded into the line that wrote its blob: an activation (ReLU,
    Sigmoid, TanH) becomes that line's activation, a Scale after a BatchNorm its gamma and
    beta. False when it cannot be folded (it then becomes a line of its own)."""
    blob = st.blobs[str(lyr.params["bottom"][0])]
    line = st.lines_by_name.get(blob.line)
    if line is None or blob.readers:  # another layer read the value before this one
        return False
    if lyr.kind == "Scale" and line.name in st.bn_from:
        _fold_scale(line, st.bn_from.pop(line.name), lyr)
        return True
    if lyr.kind not in ("ReLU", "Sigmoid", "TanH", "ELU") or line.type not in _ACT_OK:
        return False
    if any(_is_activation(o) for o in line.options):
        return False
    act = import_one("caffe", lyr, None, "_", st.ctx)[-1]
    word = act.type if not act.options else f"{act.type}({act.options[0]})"
    line.options.append(word)
    note = f"{lyr.name} ({lyr.kind}) folded in"
    line.comment = f"{line.comment}; {note}" if line.comment else note
    return True


def _fold_scale(line: NetLine, bn: ForeignLayer, scale: ForeignLayer) -> None:
    """A Scale after a BatchNorm: the bn's gamma and beta, learned as the Scale's `param`s
    say (Caffe decays them by default; netdsl's bn does not, so decay_mult is written)."""
    p = scale.params.get("scale_param", {})
    if str(p.get("bias_term", "false")) != "true":
        raise NetError("a Scale without bias_term after a BatchNorm is not supported: "
                       "netdsl's bn learns a shift too", scale.at("scale_param.bias_term")
                       if "bias_term" in p else scale.loc)  # fmt: skip
    check_axis(scale, "scale_param")
    if p.get("num_axes", 1) != 1:
        raise NetError("Scale over more than the channel axis is not supported",
                       scale.at("scale_param.num_axes"))  # fmt: skip
    params = scale.params.get("param", [])
    mults = [(q.get("lr_mult", 1.0), q.get("decay_mult", 1.0)) for q in params]
    mults += [(1.0, 1.0)] * (2 - len(mults))
    if mults[0] != mults[1]:
        raise NetError("different lr_mult/decay_mult for the Scale's gamma and beta are not "
                       "supported; netdsl's bn has one pair", scale.at("param.1"))  # fmt: skip
    line.options.remove("lr_mult 0")
    lr, decay = mults[0]
    if lr != 1:
        line.options.append(f"lr_mult {number(lr)}")
    if decay != 0:
        line.options.append(f"decay_mult {number(decay)}")
    notes = [n for n in line.comment.split("; ") if n and not n.startswith("Caffe's BatchNorm")]
    line.comment = "; ".join([*notes, f"{bn.name} (BatchNorm) + {scale.name} (Scale)"])


def _is_activation(option: str) -> bool:
    from ..ops import activations

    return option.split("(")[0].split(" ")[0] in activations.kinds()


# -------------------------------------------------------------------- the data layer's train


# Caffe's example scripts create these data bases; their sizes are the data sets'.
KNOWN_SOURCES = {
    "mnist_train": ("MNIST", 60000, "mnist", "1x28x28"),
    "cifar10_train": ("CIFAR-10", 50000, None, "3x32x32"),
    "ilsvrc12_train": ("ILSVRC-2012", 1281167, None, "3x224x224"),
}


def known_data(lyr: ForeignLayer | None) -> tuple[str, int, str | None, str] | None:
    """(name, training images, netdsl `data` value, image shape) of a data layer reading one
    of Caffe's example data bases (examples/mnist/mnist_train_lmdb ...), else None."""
    if lyr is None:
        return None
    stem = Path(_source(lyr) or "").name
    for prefix, info in KNOWN_SOURCES.items():
        if stem.startswith(prefix):
            return info
    return None


def _data_param(lyr: ForeignLayer) -> dict:
    """The data layer's own message (data_param, image_data_param ...)."""
    for k in ("data_param", "image_data_param", "memory_data_param", "hdf5_data_param",
              "window_data_param"):  # fmt: skip
        if k in lyr.params:
            return lyr.params[k]
    return {}


def _source(lyr: ForeignLayer) -> str | None:
    source = _data_param(lyr).get("source")
    return None if source is None else str(source)


def _train_from_data(lyr: ForeignLayer, net: ImportedNet) -> None:
    """batch, data, normalize and augment from the TRAIN data layer."""
    p = lyr.params
    param = _data_param(lyr)
    source = param.get("source")
    known = known_data(lyr)
    if known and known[2]:
        net.train.append(f"data {known[2]}  # Caffe reads {source}, taken to be {known[0]}")
    elif source:
        net.train_comments.append(
            f"data: Caffe reads {source} ({lyr.kind}); give netdsl's `data` here or --data"
        )
    if "batch_size" in param:
        net.train.append(f"batch {param['batch_size']}")
    t = p.get("transform_param", {})
    scale, means = t.get("scale", 1.0), t.get("mean_value", [])
    if "mean_file" in t:
        net.train_comments.append(f"normalize: Caffe subtracts the mean image {t['mean_file']}"
                                  "; netdsl's normalize takes per-channel means")  # fmt: skip
    if means or scale != 1.0 and "mean_file" not in t:
        # Caffe: (pixel - mean) * scale on 0..255; netdsl: (pixel/255 - m) / s
        m = [number(round(v / 255, 6)) for v in means] or ["0"]
        s = number(float(f"{1 / (255 * scale):.6g}"))
        mtext = m[0] if len(m) == 1 else "[" + ", ".join(m) + "]"
        what = ", ".join(([f"mean_value {', '.join(number(v) for v in means)}"] if means else [])
                         + ([f"scale {number(scale)}"] if scale != 1.0 else []))  # fmt: skip
        net.train.append(f"normalize mean={mtext}, std={s}  # Caffe's {what} on 0..255 pixels")
    aug = []
    if "crop_size" in t:
        aug.append(f"crop({t['crop_size']})")
    if str(t.get("mirror", "false")) == "true":
        aug.append("flip")
    if aug:
        net.train.append("augment " + ", ".join(aug))


# --------------------------------------------------- helpers for the layer types' import_caffe


def pair(lyr: ForeignLayer, msg: str, base: str, default: int | None) -> tuple[int, int] | None:
    """Caffe's `kernel_size`/`kernel_h`+`kernel_w` (also stride, pad, dilation) of message
    `msg` as (h, w); default when none is given."""
    p = lyr.params.get(msg, {})
    h, w = p.get(f"{base}_h"), p.get(f"{base}_w")
    vals = p.get(base if base != "kernel" else "kernel_size", [])
    key = base if base != "kernel" else "kernel_size"
    if not isinstance(vals, list):
        vals = [vals]
    if h is not None or w is not None:
        if vals:
            raise NetError(f"give {key} or {base}_h and {base}_w, not both",
                           lyr.at(f"{msg}.{base}_h"))  # fmt: skip
        if base == "pad":  # Caffe's pad_h and pad_w default to 0 on their own
            h, w = h or 0, w or 0
        if h is None or w is None:
            missing = f"{base}_w" if w is None else f"{base}_h"
            raise NetError(f"{missing} is missing", lyr.at(f"{msg}.{base}_h" if w is None
                                                          else f"{msg}.{base}_w"))  # fmt: skip
        return int(h), int(w)
    if not vals:
        return None if default is None else (default, default)
    if len(vals) > 2:
        raise NetError(f"{key} has {len(vals)} values; netdsl's windows are 2-D",
                       lyr.at(f"{msg}.{key}.2"))  # fmt: skip
    return (int(vals[0]), int(vals[-1]))


def size_text(hw: tuple[int, int], square_as_one: bool = True) -> str:
    """(3, 3) -> "3" (or "3x3"), (3, 1) -> "3x1"."""
    if hw[0] == hw[1] and square_as_one:
        return str(hw[0])
    return f"{hw[0]}x{hw[1]}"


def check_axis(lyr: ForeignLayer, msg: str, key: str = "axis", want: int = 1) -> None:
    """A located error when `msg.key` is given and is not `want` (netdsl works on channels)."""
    v = lyr.params.get(msg, {}).get(key)
    if v is not None and v != want and not (want == 1 and v == -3):
        raise NetError(f"{lyr.kind} along axis {v} is not supported; netdsl's is the channel "
                       f"axis ({key}: {want})", lyr.at(f"{msg}.{key}"))  # fmt: skip


def learn_options(lyr: ForeignLayer, blobs: int, defaults=((1, 1), (1, 1))) -> list[str]:
    """`param { lr_mult decay_mult }` (weights, then bias) as netdsl's lr_mult, decay_mult,
    bias_lr_mult, bias_decay_mult; only those that differ from netdsl's defaults."""
    params = lyr.params.get("param", [])
    if len(params) > blobs:
        raise NetError(f"layer {lyr.name} has {len(params)} param blocks but {blobs} learned "
                       f"blob{'s' if blobs > 1 else ''}", lyr.at(f"param.{blobs}"))  # fmt: skip
    out = []
    for i, (prefix, (dlr, ddecay)) in enumerate(zip(("", "bias_"), defaults)):
        p = params[i] if i < len(params) else {}
        lr, decay = p.get("lr_mult", 1.0), p.get("decay_mult", 1.0)
        if i >= blobs:
            break
        for key, v, d in (("lr_mult", lr, dlr), ("decay_mult", decay, ddecay)):
            if v < 0:
                raise NetError(f"{key} {v} is negative", lyr.at(f"param.{i}.{key}"))
            if v != d:
                out.append(f"{prefix}{key} {number(v)}")
    return out


def filler(lyr: ForeignLayer, key: str, fans: tuple[float, float] | None) -> tuple[str, str]:
    """A Caffe filler (`weight_filler { type: "xavier" }`) of the layer's `*_param` message
    as a netdsl initialiser, and a comment ("" when exact); ("", note) when netdsl has none.
    `fans` are Caffe's (fan_in, fan_out) of the weight (None for a bias)."""
    msg = next((k for k in lyr.params if k.endswith("_param")
                and key in lyr.params[k]), None)  # fmt: skip
    if msg is None:
        return "", ""
    f = lyr.params[msg][key]
    kind = str(f.get("type", "constant"))
    if kind == "constant":
        v = f.get("value", 0.0)
        if fans is None:  # a bias: netdsl's `bias_init 0.1`; 0 is its default
            return ("", "") if v == 0 else (number(v), "")
        return f"constant({number(v)})", ""
    if kind == "gaussian":
        std, mean = f.get("std", 1.0), f.get("mean", 0.0)
        if "sparse" in f:
            return "", f"{key} gaussian with sparse {f['sparse']} not converted"
        args = f"std={number(std)}" + (f", mean={number(mean)}" if mean else "")
        return f"gaussian({args})", ""
    if kind == "uniform":
        lo, hi = f.get("min", 0.0), f.get("max", 1.0)
        if lo == -hi:
            return f"uniform(scale={number(hi)})", ""
        return "", f"{key} uniform({number(lo)}, {number(hi)}) not converted (not symmetric)"
    if kind in ("xavier", "msra") and fans is not None:
        norm = str(f.get("variance_norm", "FAN_IN"))
        n = {"FAN_IN": fans[0], "FAN_OUT": fans[1], "AVERAGE": (fans[0] + fans[1]) / 2}[norm]
        if kind == "msra":
            if norm == "FAN_IN":
                return "he", ""
            return f"gaussian(std={number(float(f'{math.sqrt(2 / n):.6g}'))})", (
                f"Caffe's msra filler, variance_norm {norm}: std sqrt(2/{number(n)})"
            )
        scale = float(f"{math.sqrt(3 / n):.6g}")
        return f"uniform(scale={number(scale)})", (
            f"Caffe's xavier filler: uniform(+-sqrt(3/{number(n)}))"
        )
    return "", f"{key} {kind} not converted (netdsl has no such initialiser)"


def init_options(lyr: ForeignLayer, fans: tuple[float, float]) -> tuple[list[str], list[str]]:
    """`init ...`, `bias_init ...` from weight_filler and bias_filler, and comments."""
    opts, notes = [], []
    for key, word, f in (("weight_filler", "init", fans), ("bias_filler", "bias_init", None)):
        text, note = filler(lyr, key, f)
        if text:
            opts.append(f"{word} {text}")
        if note:
            notes.append(note)
    return opts, notes


def needs_fans(lyr: ForeignLayer) -> bool:
    """Whether the layer's weight filler depends on the weight's fans (xavier, msra)."""
    for k, v in lyr.params.items():
        if k.endswith("_param") and isinstance(v, dict):
            if str(v.get("weight_filler", {}).get("type", "")) in ("xavier", "msra"):
                return True
    return False
