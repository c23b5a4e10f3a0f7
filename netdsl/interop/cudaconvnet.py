"""cuda-convnet and cuda-convnet2 layer files (+ their layer-params files) as .net files.

A layer file has one `[name]` section per layer with its `type=` and `inputs=`; the
layer-params file (`--params`) adds, by the same names, what may change while training:
learning rates `epsW`/`epsB`, momenta `momW`/`momB`, weight decay `wc`, and the norms'
`scale`/`pow`. Keys are read as Python's ConfigParser reads them (case does not matter).

The structure is handled here, with cuda-convnet's own rules (layer.py): `type=data`
layers are the input (`dataIdx=0`) and the labels; a `neuron=` on a layer that takes no
activation becomes a separate activation layer named `NAME_neuron`, as cuda-convnet
detaches it; a `[neuron]` layer whose input nobody else reads is folded into it; the
softmax a `cost.logreg` reads is part of netdsl's cross-entropy loss. The input size is
not in these files (cuda-convnet takes it from its data provider): `--input CxHxW`.

Per-layer learning rates become `lr_mult`/`bias_lr_mult` against one base rate (the most
common `epsW`), weight decay `decay_mult` against the most common nonzero `wc`, stated in
the train section's comments. What one layer becomes is the business of the netdsl layer
type listing its word in `cudaconvnet_types` (netdsl/ops/layers/); the helpers below
(geometry, learning options) are shared by those mappings.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from math import ceil

from ..errors import NetError
from ..source import Source
from . import (
    ForeignLayer,
    ImportContext,
    ImportedNet,
    NetLine,
    import_one,
    layer_type_for,
    net_name,
    number,
    unsupported,
)
from .cfgfile import Section, check_in_source, int_value, read_sections

WEIGHT_TYPES = ("conv", "local", "fc")
COST_TYPES = ("cost.logreg", "cost.crossent")


@dataclass
class CudaConvnetContext(ImportContext):
    """ImportContext with the base rates the per-layer multipliers are relative to."""

    base_lr: float = 0.0  # 0: no layer-params file, no multipliers
    base_wd: float = 0.0
    notes: list[str] | None = None  # train-section comments the mappings add


def read(path: str, opts) -> ImportedNet:
    """The ImportedNet of a cuda-convnet layer file (see the module docstring)."""
    sections = read_sections(Source.from_file(path), fold_case=True, repeats="last",
                             what="cuda-convnet layer file")  # fmt: skip
    if not sections:
        raise NetError(f"{path}: no layers")
    by_name: dict[str, Section] = {}
    for sec in sections:
        if sec.header in by_name:
            raise NetError(f"layer '{sec.header}' is defined twice", sec.loc,
                           notes=(("first defined here", by_name[sec.header].loc),))  # fmt: skip
        if "type" not in sec.values:
            raise NetError(f"layer '{sec.header}' has no `type=`", sec.loc)
        by_name[sec.header] = sec
    params = _merge_params(opts.params, by_name) if opts.params else {}
    data = [s for s in sections if s.values["type"] == "data"]
    if not data:
        raise NetError(f"{path}: no `type=data` layer (the images)", sections[0].loc)
    images = [s for s in data if s.values.get("dataidx", "0").strip() == "0"] or data[:1]
    if opts.input_shape is None:
        raise NetError(
            "cuda-convnet takes the input size from its data provider, not from the layer "
            "file: give it with --input CxHxW",
            images[0].loc,
            hint="e.g. --input 3x24x24 for the CIFAR-10 nets (24x24 crops), 3x227x227 for ImageNet",
        )
    c, h, w = opts.input_shape
    if h != w:
        raise NetError(f"cuda-convnet's images are square; --input gives {h}x{w}", images[0].loc)
    taken: set[str] = set()
    net = ImportedNet(
        name=net_name(opts.name, set()) if opts.name else _stem_name(path),
        source=path,
        fmt="cudaconvnet",
        input_shape=opts.input_shape,
        input_name=net_name(images[0].header, taken),
    )
    net.header.append(f"The input size is --input {c}x{h}x{w} (cuda-convnet's data provider).")
    if opts.params:
        net.header.append(f"Learning rates, momenta, decay and norm scales from {opts.params}.")
    for sec in [*sections, *params.values()]:
        for key, value, loc in sec.repeats:
            net.header.append(f"{key}={value} at {loc.file}:{loc.line} is given again in "
                              f"[{sec.header}]: cuda-convnet (ConfigParser) uses the last, "
                              f"{sec.values[key.lower()]}")  # fmt: skip
    ctx = CudaConvnetContext("cudaconvnet", net, notes=net.train_comments)
    ctx.names[images[0].header] = net.input_name
    labels = {s.header for s in data if s is not images[0]}
    readers = _readers(sections)
    origin = {}  # .net name -> the section it came from
    _train(sections, params, ctx)
    for sec in sections:
        kind = sec.values["type"]
        if kind == "data":
            continue
        values = {**sec.values, **params.get(sec.header, Section("", sec.loc)).values}
        locs = {**sec.value_locs, **params.get(sec.header, Section("", sec.loc)).value_locs}
        fl = ForeignLayer(kind, sec.header, values, sec.loc, locs)
        srcs = _inputs(sec)
        if kind in COST_TYPES:
            srcs = [s for s in srcs if s not in labels]
        for s in srcs:
            if s in labels:
                raise NetError(f"layer '{sec.header}' reads the labels '{s}'; only a cost "
                               "layer can", sec.at("inputs"))  # fmt: skip
        if kind in COST_TYPES:
            _cost(fl, sec, srcs, by_name, taken, ctx)
            origin[net.lines[-1].name] = sec.loc
            continue
        if (
            kind == "softmax"
            and readers[sec.header]
            and all(by_name[r].values["type"] in COST_TYPES for r in readers[sec.header])
        ):  # part of the loss: the cost reads the softmax's input
            (s,) = srcs
            ctx.names[sec.header] = ctx.names[s]
            continue
        if kind == "neuron" and _fold_neuron(fl, sec, srcs, readers, ctx):
            continue
        if layer_type_for("cudaconvnet", kind) is None:
            raise unsupported(replace(fl, loc=sec.at("type")), "cudaconvnet")
        inputs = [ctx.names[s] for s in srcs]
        last = net.lines[-1].name if net.lines else net.input_name
        name = net_name(sec.header, taken)
        lines = import_one("cudaconvnet", fl, None if inputs == [last] else inputs, name, ctx)
        for ln in lines:
            taken.add(ln.name)
            origin[ln.name] = sec.loc
        net.lines += lines
        ctx.names[sec.header] = lines[-1].name
        if kind != "neuron" and values.get("neuron", "").strip():
            _attach_neuron(fl, sec, lines[-1], taken, ctx)
            origin.setdefault(net.lines[-1].name, sec.loc)
    if not net.lines or net.lines[-1].type != "loss":
        net.header.append("No cost layer: the net has no loss line.")
    check_in_source(net, origin)
    return net


def _stem_name(path: str) -> str:
    from pathlib import Path

    stem = re.sub(r"[^A-Za-z_0-9.]", "_", Path(path).stem) or "net"
    return stem if stem[0].isalpha() or stem[0] == "_" else "n" + stem


def _inputs(sec: Section) -> list[str]:
    if "inputs" not in sec.values:
        raise NetError(f"layer '{sec.header}' has no `inputs=`", sec.loc)
    return [s.strip() for s in sec.values["inputs"].split(",") if s.strip()]


def _readers(sections: list[Section]) -> dict[str, list[str]]:
    """For each layer, the layers that read it."""
    readers: dict[str, list[str]] = {s.header: [] for s in sections}
    seen: set[str] = set()
    for sec in sections:
        if sec.values["type"] != "data":
            for s in _inputs(sec):
                if s not in seen:
                    raise NetError(f"layer '{sec.header}' reads '{s}', which is not a layer "
                                   "defined above it", sec.at("inputs"))  # fmt: skip
                readers[s].append(sec.header)
        seen.add(sec.header)
    return readers


def _merge_params(path: str, by_name: dict[str, Section]) -> dict[str, Section]:
    """The layer-params file's sections by layer name; one naming no layer is an error."""
    out = {}
    for sec in read_sections(Source.from_file(path), fold_case=True, repeats="last",
                             what="cuda-convnet layer-params file"):  # fmt: skip
        if sec.header not in by_name:
            raise NetError(f"the layer-params file sets layer '{sec.header}', which the layer "
                           "file does not define", sec.loc)  # fmt: skip
        out[sec.header] = sec
    return out


# ----------------------------------------------------------------------- options, numbers


def int_opt(src, key: str, default: int | None, lo: int | None = None) -> int:
    """Option `key` (any case: ConfigParser folds it) of a layer as a whole number;
    required if no default."""
    return int_value(src, key.lower(), default, lo)


def float_opt(src, key: str, default: float | None, what: str = "") -> float:
    """Option `key` of a layer as a number; a learning-rate schedule (`dexp[base=0.01;
    ...]`) gives its base. Required if no default (`what` says where it belongs)."""
    key = key.lower()
    if key not in src.params:
        if default is None:
            raise NetError(f"layer '{src.name}' (type={src.kind}) needs `{key}=`{what}",
                           src.loc)  # fmt: skip
        return default
    text = src.params[key].strip()
    if "," in text and "[" not in text and len({t.strip() for t in text.split(",")}) == 1:
        text = text.split(",")[0].strip()  # one value per input, all equal
    m = re.fullmatch(r"\w+\s*\[(.*)\]", text)
    if m:
        base = re.search(r"(?:^|;)\s*base\s*=\s*([^;\s]+)", m.group(1))
        text = base.group(1) if base else text
    try:
        v = float(text)
    except ValueError:
        raise NetError(f"{key} must be a number, got '{src.params[key]}'", src.at(key)) from None
    if v != v or abs(v) == float("inf"):
        raise NetError(f"{key} must be a finite number", src.at(key))
    return v


def one_input(src: ForeignLayer) -> None:
    """Weight layers of several inputs (a sum of one filter bank per input) do not map."""
    if "," in src.params.get("inputs", ""):
        raise NetError(
            f"layer '{src.name}' reads several inputs with a filter bank for each; netdsl's "
            f"{src.kind} reads one",
            src.at("inputs"),
            hint="concat the inputs first if one filter bank over all of them will do",
        )


def check_channels(src: ForeignLayer, c: int) -> None:
    """cuda-convnet layers state their input's channels; they must be the input's."""
    stated = int_opt(src, "channels", None, lo=1)
    if stated != c:
        raise NetError(f"layer '{src.name}' says channels={stated}, but its input has {c}",
                       src.at("channels"))  # fmt: skip


def window_geometry(src: ForeignLayer, inputs: list[str] | None,
                    ctx: ImportContext) -> tuple[int, int, int, int, int]:  # fmt: skip
    """(filters, filterSize, stride, padding, groups) of a conv or local layer, checked to
    give cuda-convnet's output size with netdsl's (symmetric, floor) window rule."""
    one_input(src)
    c, h, _ = ctx.input_shape(inputs)
    check_channels(src, c)
    fs = int_opt(src, "filterSize", None, lo=1)
    stride, pad = int_opt(src, "stride", 1, lo=1), int_opt(src, "padding", 0, lo=0)
    groups = int_opt(src, "groups", 1, lo=1)
    filters = int_opt(src, "filters", None, lo=1) * groups  # cuda-convnet: filters per group
    modules = int_opt(src, "modulesX", 0, lo=0) or 1 + ceil((2 * pad + h - fs) / stride)
    netdsl = (h + 2 * pad - fs) // stride + 1 if h + 2 * pad >= fs else 0
    if modules != netdsl:
        good = next(n for n in range(h, h + stride + 1) if (n + 2 * pad - fs) % stride == 0)
        raise NetError(
            f"cuda-convnet gives this {src.kind} {modules}x{modules} outputs on a {h}x{h} "
            f"input (its last windows reach past the padding into zeros); netdsl pads both "
            f"sides alike and gives {netdsl}x{netdsl}",
            src.at("filtersize"),
            hint=f"an input where the windows fit exactly gives the same net: "
            f"e.g. {good}x{good} here, with --input",
        )
    return filters, fs, stride, pad, groups


def window_options(src: ForeignLayer, inputs, ctx: ImportContext) -> list[str]:
    """The geometry of a conv or local layer as .net options."""
    filters, fs, stride, pad, groups = window_geometry(src, inputs, ctx)
    opts = [f"{filters} filters {fs}x{fs}"]
    opts += [f"stride {stride}"] if stride != 1 else []
    opts += [f"pad {pad}"] if pad else []
    return opts + ([f"groups {groups}"] if groups != 1 else [])


def learn_options(src: ForeignLayer, ctx: CudaConvnetContext) -> list[str]:
    """A weight layer's initialisation (initW: a Gaussian's std; initB: the biases) and
    its layer-params (epsW, epsB, wc) as multipliers of the train section's base rates.
    cuda-convnet decays weights only, never biases."""
    opts = [f"init gaussian(std={number(float_opt(src, 'initW', 0.01))})"]
    init_b = float_opt(src, "initB", 0.0)
    opts.append(f"bias_init {number(init_b)}")
    if "wball" in src.params and float_opt(src, "wball", 0.0) != 0:
        raise NetError("wball (a weight-ball constraint) has no netdsl equivalent",
                       src.at("wball"))  # fmt: skip
    if ctx.base_lr:
        need = " in the layer-params file (--params)"
        eps_w, eps_b = float_opt(src, "epsW", None, need), float_opt(src, "epsB", None, need)
        wc = float_opt(src, "wc", 0.0)
        for key, v in (("epsw", eps_w), ("epsb", eps_b), ("wc", wc)):
            if v < 0:
                raise NetError(f"{key} must be at least 0", src.at(key))
        if eps_w != ctx.base_lr:
            opts.append(f"lr_mult {_ratio(eps_w, ctx.base_lr)}")
        if eps_b != ctx.base_lr:
            opts.append(f"bias_lr_mult {_ratio(eps_b, ctx.base_lr)}")
        if ctx.base_wd:  # else the optimizer has no weight decay at all
            if wc != ctx.base_wd:
                opts.append(f"decay_mult {_ratio(wc, ctx.base_wd)}")
            opts.append("bias_decay_mult 0")
    return [o for o in opts if o]


def _ratio(a: float, b: float) -> str:
    """a/b as the .net file writes it: a short number when it is one, else `a/b`."""
    r = a / b
    short = f"{r:.6g}"
    return number(r) if float(short) == r else f"{number(a)}/{number(b)}"


# ------------------------------------------------------------------------------- neurons

_NEURON = re.compile(r"^\s*(\w+)\s*(?:\[([^\]]*)\])?\s*$")


def activation(src: ForeignLayer, key: str = "neuron") -> str | None:
    """A cuda-convnet neuron (`relu`, `logistic`, `tanh[a,b]` ...) as a .net activation
    (None: the identity); one netdsl lacks is an error at the value."""
    text = src.params.get(key, "").strip()
    m = _NEURON.match(text)
    word, args = (m.group(1), m.group(2)) if m else (text, None)
    vals: list[float] = []
    if args is not None:
        try:
            vals = [float(v) for v in args.split(",")]
        except ValueError:
            vals = [float("nan")]
    if word in ("ident", "") and not vals:
        return None
    if word == "relu" and not vals:
        return "relu"
    if word == "logistic" and not vals:
        return "sigmoid"
    if word == "tanh" and len(vals) == 2 and vals[0] > 0 and vals[1] != 0:
        a, b = vals[0], abs(vals[1])  # a*tanh(b*x) (cuda-convnet makes b positive too)
        return "tanh" if (a, b) == (1, 1) else f"scaled_tanh(A={number(a)}, S={number(b)})"
    if word == "linear" and vals == [1.0, 0.0]:
        return None
    raise NetError(
        f"neuron '{text}' has no netdsl activation",
        src.at(key),
        hint="netdsl's from cuda-convnet: ident, relu, logistic, tanh[a,b]",
    )


def _attach_neuron(src: ForeignLayer, sec: Section, line: NetLine, taken: set[str],
                   ctx: CudaConvnetContext) -> None:  # fmt: skip
    """`neuron=` on a layer: the layer's own activation when its type has one, else an
    activation layer NAME_neuron after it (cuda-convnet's own detached layer)."""
    from ..ops import registry

    act = activation(src)
    if act is None:
        return
    if "activation" in registry.get(line.type).schema.opts and not _has_activation(line):
        _add_activation(line, act)
        return
    name = net_name(f"{sec.header}_neuron", taken)
    note = f"{sec.header}'s neuron={src.params['neuron']}"
    ctx.net.lines.append(NetLine("act", name, [act], None, note))
    ctx.names[sec.header] = name


def _add_activation(line: NetLine, act: str) -> None:
    """The activation goes after the geometry, before init and the multipliers."""
    at = next((i for i, o in enumerate(line.options) if o.startswith("init ")),
              len(line.options))  # fmt: skip
    line.options.insert(at, act)


def _has_activation(line: NetLine) -> bool:
    from ..schema import ACTIVATIONS

    return any(o.split("(")[0].split(" ")[0] in ACTIVATIONS for o in line.options)


def _fold_neuron(src: ForeignLayer, sec: Section, srcs: list[str],
                 readers: dict[str, list[str]], ctx: CudaConvnetContext) -> bool:  # fmt: skip
    """A [neuron] layer folded into the layer it reads, when nothing else reads that layer
    and its line takes an activation it does not have yet."""
    from ..ops import registry

    if len(srcs) != 1 or readers.get(srcs[0]) != [sec.header]:
        return False
    target = ctx.names.get(srcs[0])
    line = next((ln for ln in ctx.net.lines if ln.name == target), None)
    if line is None or line is not ctx.net.lines[-1]:
        return False
    if "activation" not in registry.get(line.type).schema.opts or _has_activation(line):
        return False
    act = activation(src)
    if act:
        _add_activation(line, act)
    note = f"[{sec.header}] neuron={src.params.get('neuron', '')} folded in"
    line.comment = f"{line.comment}; {note}" if line.comment else note
    ctx.names[sec.header] = line.name
    return True


# --------------------------------------------------------------------------- cost, train


def _cost(src: ForeignLayer, sec: Section, srcs: list[str], by_name: dict[str, Section],
          taken: set[str], ctx: CudaConvnetContext) -> None:  # fmt: skip
    """A logistic-regression cost on a softmax: netdsl's cross-entropy loss, which takes
    the softmax's input (its own softmax included)."""
    if any(ln.type == "loss" for ln in ctx.net.lines):
        raise NetError("a second cost layer; a netdsl net has one loss", sec.loc)
    if len(srcs) != 1 or by_name[srcs[0]].values["type"] != "softmax":
        raise NetError(f"{src.kind} reads the labels and a softmax layer", sec.at("inputs"))
    coeff = float_opt(src, "coeff", 1.0)
    if coeff != 1:
        raise NetError(f"coeff={src.params['coeff']}: netdsl's loss has weight 1",
                       src.at("coeff"), hint="scale the learning rate instead")  # fmt: skip
    soft = ctx.names[srcs[0]]
    last = ctx.net.lines[-1].name if ctx.net.lines else ctx.net.input_name
    name = net_name(sec.header, taken)
    lines = import_one("cudaconvnet", src, None if soft == last else [soft], name, ctx)
    ctx.net.lines += lines


def _train(sections: list[Section], params: dict[str, Section],
           ctx: CudaConvnetContext) -> None:  # fmt: skip
    """The base rate and decay (the most common epsW and nonzero wc), one momentum, and
    comments on what cuda-convnet sets elsewhere (batch size, epochs on its command line;
    learning-rate schedules)."""
    notes, t = ctx.net.train_comments, ctx.net.train
    notes.append("cuda-convnet takes the minibatch size and the epochs from its command "
                 "line (--mini, --epochs): set batch and epochs")  # fmt: skip
    weight = [params[s.header] for s in sections
              if s.values["type"] in WEIGHT_TYPES and s.header in params]  # fmt: skip
    if not weight:
        return
    fl = [ForeignLayer(s.values.get("type", ""), s.header, s.values, s.loc, s.value_locs)
          for s in weight]  # fmt: skip
    need = " in the layer-params file (--params)"
    eps = [float_opt(f, "epsW", None, need) for f in fl]
    ctx.base_lr = Counter(eps).most_common(1)[0][0]
    if ctx.base_lr <= 0:
        ctx.base_lr = max(eps) or 1.0
    wcs = [float_opt(f, "wc", 0.0) for f in fl if float_opt(f, "wc", 0.0) > 0]
    ctx.base_wd = Counter(wcs).most_common(1)[0][0] if wcs else 0.0
    moms = {}
    for f in fl:
        for key in ("momW", "momB"):
            moms.setdefault(float_opt(f, key, 0.0), f.at(key.lower()))
    if len(moms) > 1:
        (m0, _), (m1, at) = list(moms.items())[:2]
        raise NetError(f"momentum {number(m1)} here, {number(m0)} elsewhere: netdsl has one "
                       "momentum for every parameter", at)  # fmt: skip
    mom = next(iter(moms))
    if not 0 <= mom < 1:
        raise NetError("momentum must be at least 0 and below 1", fl[0].at("momw"))
    t.append(f"optimizer sgd(lr={number(ctx.base_lr)}, momentum={number(mom)}, "
             f"weight_decay={number(ctx.base_wd)})")  # fmt: skip
    notes.append(f"base rate {number(ctx.base_lr)} = the most common epsW; each layer's "
                 "lr_mult = epsW/base, bias_lr_mult = epsB/base")  # fmt: skip
    if ctx.base_wd:
        notes.append(f"weight_decay {number(ctx.base_wd)} = the most common wc; decay_mult = "
                     "wc/that; cuda-convnet never decays biases")  # fmt: skip
    notes.append("cuda-convnet's update is this sgd's: v = mom*v - eps*(grad + wc*w), w += v")
    scheds = sorted({f.params[k] for f in fl for k in ("epsw", "epsb")
                     if k in f.params and "[" in f.params[k]
                     and not f.params[k].strip().startswith("const")})  # fmt: skip
    if scheds:
        notes.append(
            "schedules not converted (they run over cuda-convnet's --epochs; only "
            "their base rates are kept): " + ", ".join(scheds)
        )
