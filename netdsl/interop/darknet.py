"""Darknet `.cfg` files (pjreddie/darknet's parser.c semantics) as .net files.

The structure is Darknet's: a `[net]` section (input size and training settings), then
one section per layer, numbered from 0 in file order; a layer reads the one before it,
except `[route]` (`layers=-1,8`: the concatenation of those layers; a single layer is
simply read again) and `[shortcut]` (`from=-3`: the sum with the layer before). Relative
numbers count back from the route's own number. What one section becomes is the business
of the netdsl layer type that lists its word in `darknet_types` (netdsl/ops/layers/); a
section netdsl cannot express exactly is a NetError at the section in the .cfg file.

Each layer's .net name is its Darknet word and number (`conv0`, `maxpool1`, `route9`), so
the numbers routes use stay readable in the .net file.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import NetError
from ..source import Source
from . import (
    ForeignLayer,
    ImportContext,
    ImportedNet,
    NetLine,
    import_one,
    net_name,
    number,
    write_net,
)
from .cfgfile import Section, check_in_source, float_value, int_value, read_sections, relocated

# Darknet's other spellings of a section word (string_to_layer_type in parser.c).
ALIASES = {"conv": "convolutional", "conn": "connected", "max": "maxpool", "avg": "avgpool",
           "soft": "softmax", "lrn": "normalization", "deconv": "deconvolutional",
           "network": "net"}  # fmt: skip

# The short word of each .net name.
_SHORT = {"convolutional": "conv", "connected": "fc", "normalization": "lrn"}

# Darknet's activation words and the .net activation each is (None: linear).
ACTIVATIONS = {"linear": None, "relu": "relu", "leaky": "leaky(0.1)", "logistic": "sigmoid",
               "tanh": "tanh", "elu": "elu"}  # fmt: skip


def read(path: str, opts) -> ImportedNet:
    """The ImportedNet of a Darknet .cfg file (see the module docstring)."""
    return _build(path, opts)[0]


def _build(path: str, opts) -> tuple[ImportedNet, list[tuple[Section, list[NetLine]]]]:
    """The ImportedNet, and each layer section with the .net lines it became."""
    src = Source.from_file(path)
    sections = read_sections(src, what="Darknet cfg file", repeats="first")
    if not sections:
        raise NetError(f"{path}: no sections; a Darknet cfg starts with [net]")
    first = sections[0]
    if _word(first) != "net":
        raise NetError("a Darknet cfg starts with a [net] or [network] section", first.loc,
                       hint="its height, width and channels are the input size")  # fmt: skip
    net = ImportedNet(
        name=net_name(opts.name, set()) if opts.name else _stem_name(path),
        source=path,
        fmt="darknet",
        input_shape=_input_shape(first, opts),
        input_name="data",
    )
    net.header.append("Darknet numbers its layers from 0: the number in a name (conv0, route9)")
    net.header.append("is that layer's number, the one routes and shortcuts count with.")
    if opts.input_shape is not None:
        net.header.append(f"The input size is --input {'x'.join(map(str, opts.input_shape))}.")
    _train(first, net)
    for sec in sections:
        for key, value, loc in sec.repeats:
            net.header.append(f"{key}={value} at line {loc.line} repeats an option of "
                              f"[{sec.header}]: Darknet uses the first, {key}="
                              f"{sec.values[key]}")  # fmt: skip
    ctx = ImportContext("darknet", net)
    taken = {net.input_name}
    outputs: list[str] = []  # Darknet layer number -> the .net name holding its output
    origin = {}  # .net name -> the section it came from
    produced: list[tuple[Section, list[NetLine]]] = []
    layers = sections[1:]
    for idx, sec in enumerate(layers):
        try:
            if _section(idx, sec, layers, net, ctx, taken, outputs, origin, produced):
                break
        except NetError as e:  # a shape query found an earlier line netdsl rejects
            raise relocated(e, origin) from None
    check_in_source(net, origin)
    return net, produced


def _section(idx: int, sec: Section, layers: list[Section], net: ImportedNet,
             ctx: ImportContext, taken: set[str], outputs: list[str],
             origin: dict, produced: list) -> bool:  # fmt: skip
    """Import layer section `idx`; True when it ends the net (a final softmax)."""
    word = _word(sec)
    if word == "net":
        raise NetError("a second [net] section; only the first section is [net]", sec.loc)
    fl = ForeignLayer(word, str(idx), sec.values, sec.loc, sec.value_locs)
    current = outputs[-1] if outputs else net.input_name
    last_line = net.lines[-1].name if net.lines else net.input_name
    if word == "route":
        refs = _refs(sec, "layers", idx, outputs)
        if len(refs) == 1:  # reading one earlier layer again: no layer of its own
            outputs.append(refs[0])
            return False
        _same_size(sec, "layers", refs, ctx)
        inputs = refs
    elif word == "shortcut":
        (ref,) = _refs(sec, "from", idx, outputs, single=True)
        a, b = ctx.shape(current), ctx.shape(ref)
        if a != b:
            raise NetError(
                f"shortcut {idx} adds layer {ref} ({_fmt(b)}) to the layer before "
                f"({_fmt(a)}); netdsl's add needs equal shapes",
                sec.at("from"),
                hint="Darknet samples or pads a mismatched shortcut; netdsl does not",
            )
        inputs = [current, ref]
    else:
        inputs = None if current == last_line else [current]
    if word == "cost" and idx + 1 < len(layers):
        raise NetError("a [cost] before other layers; netdsl's loss is the last layer",
                       sec.loc)  # fmt: skip
    name = net_name(f"{_SHORT.get(word, word)}{idx}", taken)
    if word == "softmax" and all(_word(s) == "cost" for s in layers[idx + 1 :]):
        lines = _final_softmax(fl, inputs, name, ctx, layers[idx + 1 :])
        origin[name] = sec.loc
        produced.append((sec, lines))
        net.lines += lines
        outputs.append(lines[-1].name)
        return True
    lines = import_one("darknet", fl, inputs, name, ctx)
    for ln in lines:
        taken.add(ln.name)
        origin[ln.name] = sec.loc
    produced.append((sec, lines))
    net.lines += lines
    outputs.append(lines[-1].name)
    return False


def _word(sec: Section) -> str:
    word = sec.header.strip().lower()
    return ALIASES.get(word, word)


def _stem_name(path: str) -> str:
    stem = re.sub(r"[^A-Za-z_0-9.]", "_", Path(path).stem) or "net"
    return stem if stem[0].isalpha() or stem[0] == "_" else "n" + stem


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def _input_shape(sec: Section, opts) -> tuple[int, int, int]:
    """C, H, W from [net] (height, width, channels), or --input, which wins."""
    if opts.input_shape is not None:
        return opts.input_shape
    dims = [int_opt(sec, k, 0, lo=0) for k in ("channels", "height", "width")]
    for k, v in zip(("channels", "height", "width"), dims):
        if v > 999_999:  # what --input accepts
            raise NetError(f"{k}={v} is larger than netdsl's input sizes (at most 999999)",
                           sec.at(k))  # fmt: skip
    if min(dims) < 1:
        raise NetError(
            "the [net] section does not state the input size (channels, height, width)",
            sec.loc,
            hint="give it with --input CxHxW, e.g. --input 3x224x224",
        )
    c, h, w = dims
    return c, h, w


# Option readers (a Section or a ForeignLayer; errors at the value), named as the layer
# modules (netdsl/ops/layers/) import them.
int_opt = int_value
float_opt = float_value


def activation(src: ForeignLayer, default: str = "logistic") -> str | None:
    """The .net activation of `activation=` (Darknet's default for conv and connected
    layers is logistic); None for linear; one netdsl lacks is an error at the value."""
    word = src.params.get("activation", default).strip()
    if word not in ACTIVATIONS:
        raise NetError(
            f"activation '{word}' has no netdsl equivalent",
            src.at("activation"),
            hint="netdsl's activations from Darknet: " + ", ".join(ACTIVATIONS),
        )
    return ACTIVATIONS[word]


def refuse(src: ForeignLayer, keys: dict[str, float]) -> None:
    """An error at the first of `keys` written with a value other than its default (a
    Darknet option netdsl has no spelling for)."""
    for key, default in keys.items():
        if key in src.params and float_opt(src, key, default) != default:
            raise NetError(
                f"{key}={src.params[key]} in [{src.kind}] has no netdsl equivalent",
                src.at(key),
                hint=f"only {key}={number(default)} (Darknet's default) can be imported",
            )


def lr_options(src: ForeignLayer, bias: bool = True) -> list[str]:
    """A layer's own `learning_rate=` (a scale on the net's rate) as lr multipliers."""
    if "learning_rate" not in src.params:
        return []
    scale = float_opt(src, "learning_rate", 1.0)
    if scale < 0:
        raise NetError("learning_rate must be at least 0", src.at("learning_rate"))
    if scale == 1:
        return []
    out = [f"lr_mult {number(scale)}"]
    return out + [f"bias_lr_mult {number(scale)}"] if bias else out


def _refs(sec: Section, key: str, idx: int, outputs: list[str], single: bool = False):
    """The .net names of the layers a route (`layers=`) or shortcut (`from=`) names; a
    negative number counts back from this layer's own number `idx`."""
    if key not in sec.values:
        raise NetError(f"[{sec.header}] needs `{key}=`", sec.loc)
    parts = [p.strip() for p in sec.values[key].split(",")]
    if single and len(parts) != 1:
        raise NetError(f"{key}= names one layer", sec.at(key))
    names = []
    for p in parts:
        try:
            k = int(p)
        except ValueError:
            raise NetError(f"{key}= takes layer numbers, got '{p}'", sec.at(key)) from None
        n = idx + k if k < 0 else k
        if not 0 <= n < idx:
            raise NetError(
                f"layer {p} is not a layer before this one (layer {idx})",
                sec.at(key),
                hint="Darknet numbers layers from 0 after [net]; -1 is the layer before",
            )
        names.append(outputs[n])
    return names


def _same_size(sec: Section, key: str, refs: list[str], ctx: ImportContext) -> None:
    shapes = [ctx.shape(r) for r in refs]
    for r, s in zip(refs[1:], shapes[1:]):
        if s[1:] != shapes[0][1:]:
            raise NetError(
                f"the route joins {refs[0]} ({_fmt(shapes[0])}) and {r} ({_fmt(s)}), which "
                f"differ in height and width; Darknet makes its output empty",
                sec.at(key),
                hint="a route concatenates maps of the same size",
            )


def _final_softmax(src: ForeignLayer, inputs, name: str, ctx: ImportContext,
                   costs: list[Section]) -> list[NetLine]:  # fmt: skip
    """The [softmax] that ends a net: in training Darknet's softmax layer is its own
    cross-entropy loss (softmax_x_ent), which is netdsl's `loss cross_entropy`."""
    from ..ops import registry

    lines = registry.get("loss").import_darknet(src, inputs, name, ctx)
    if costs:
        sec = costs[0]
        kind = sec.values.get("type", "sse")
        lines[-1].comment = (
            f"+ [cost] type={kind}: Darknet's softmax passes the cost's gradient through "
            "unchanged, doubling cross-entropy's"
        )
    return lines


def _train(sec: Section, net: ImportedNet) -> None:
    """[net]'s training settings as the train section; what netdsl cannot say (Darknet
    counts updates, not epochs; burn-in; per-update schedules) is written as comments."""
    batch = int_opt(sec, "batch", 1, lo=1)
    subdiv = int_opt(sec, "subdivisions", 1, lo=1)
    lr = float_opt(sec, "learning_rate", 0.001)
    momentum = float_opt(sec, "momentum", 0.9)
    decay = float_opt(sec, "decay", 0.0001)
    if lr <= 0:
        raise NetError("learning_rate must be positive", sec.at("learning_rate"))
    if not 0 <= momentum < 1:
        raise NetError("momentum must be at least 0 and below 1", sec.at("momentum"))
    if decay < 0:
        raise NetError("decay must be at least 0", sec.at("decay"))
    t, notes = net.train, net.train_comments
    t.append(f"batch {batch}")
    if subdiv > 1:
        notes.append(f"subdivisions={subdiv} only splits each batch of {batch} for memory")
    if int_opt(sec, "adam", 0):
        b1, b2 = float_opt(sec, "B1", 0.9), float_opt(sec, "B2", 0.999)
        eps = float_opt(sec, "eps", 1e-7)
        t.append(f"optimizer adam(lr={number(lr)}, beta1={number(b1)}, beta2={number(b2)}, "
                 f"eps={number(eps)}, weight_decay={number(decay)})")  # fmt: skip
    else:
        t.append(f"optimizer sgd(lr={number(lr)}, momentum={number(momentum)}, "
                 f"weight_decay={number(decay)})")  # fmt: skip
        notes.append("Darknet's momentum keeps the rate outside the velocity; the same "
                     "steps at a constant rate")  # fmt: skip
    max_batches = int_opt(sec, "max_batches", 0, lo=0)
    if max_batches:
        notes.append(f"max_batches={max_batches}: Darknet counts updates of {batch} "
                     f"image{'s' if batch != 1 else ''}; "
                     f"set epochs = {max_batches} x {batch} / your data set's size")  # fmt: skip
    policy = sec.values.get("policy", "constant")
    burn_in = int_opt(sec, "burn_in", 0, lo=0)
    power = float_opt(sec, "power", 4.0)
    if policy == "poly":
        if power < 0:
            raise NetError("power must be at least 0", sec.at("power"))
        t.append(f"schedule poly(power={number(power)})")
        notes.append("poly runs over max_batches updates in Darknet, over the epochs here")
    elif policy != "constant":
        said = ", ".join(f"{k}={sec.values[k]}" for k in ("steps", "scales", "step", "scale",
                         "gamma") if k in sec.values)  # fmt: skip
        said = f" ({said})" if said else ""
        notes.append(f"policy={policy}{said} counts updates, netdsl's schedules count "
                     "epochs: not converted, the rate is constant")  # fmt: skip
    if burn_in:
        notes.append(f"burn_in={burn_in}: Darknet ramps the rate up as (update/{burn_in})^"
                     f"{number(power)} first; netdsl has no warm-up")  # fmt: skip
    known = {"batch", "subdivisions", "learning_rate", "momentum", "decay", "adam", "B1", "B2",
             "eps", "max_batches", "policy", "burn_in", "power", "steps", "scales", "step",
             "scale", "gamma", "height", "width", "channels", "inputs"}  # fmt: skip
    rest = [f"{k}={v}" for k, v in sec.values.items() if k not in known]
    if rest:
        notes.append("not converted (data augmentation and the like): " + ", ".join(rest))


def softmax_checks(src: ForeignLayer, inputs: list[str] | None, ctx: ImportContext) -> None:
    """Darknet's softmax and cost run over all of their input; netdsl's over a vector."""
    c, h, w = ctx.input_shape(inputs)
    if (h, w) != (1, 1):
        raise NetError(
            f"this {src.kind} reads a {c}x{h}x{w} map; netdsl's softmax and loss read a "
            "vector (Kx1x1)",
            src.loc,
            hint="pool the map to 1x1 first ([avgpool]), as Darknet's classifiers do",
        )


# ---------------------------------------------------------------------------- .weights


def read_weights(cfg: str, weights: str, opts) -> tuple[ImportedNet, dict]:
    """The imported net of `cfg` and the arrays of a Darknet `.weights` file for it, keyed
    as netdsl's checkpoints key them (`param.conv0.weight`, `state.conv0_bn.running_mean`).

    The layout is Darknet's (load_weights_upto in parser.c): a header of three int32
    (major, minor, revision) and the images seen (a uint64 from version 0.2, else an
    int32), then float32 values layer by layer in cfg order: a conv's biases, with
    batch_normalize its scales, rolling means and rolling variances, then its weights
    (filters, channels/groups, size, size: PyTorch's layout); a connected layer's biases,
    weights (outputs, inputs; stored transposed when major or minor exceed 1000), then
    the batch-norm values; a [batchnorm] layer's scales, means and variances. A file too
    short is a DataError naming it; values left over are reported (Darknet ignores them).
    """
    import sys

    import numpy as np

    from .. import loads
    from ..errors import DataError

    net, produced = _build(cfg, opts)
    shapes = {lyr.name: lyr for lyr in loads(write_net(net), name=f"<import of {cfg}>").layers}
    try:
        with open(weights, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{weights}: cannot read it ({e.strerror})") from None
    if len(data) < 16:
        raise DataError(f"{weights}: {len(data)} bytes, too short for a Darknet weights header")
    major, minor, _ = (int(v) for v in np.frombuffer(data, "<i4", 3))
    big_seen = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    head = 12 + (8 if big_seen else 4)
    if (len(data) - head) % 4:
        raise DataError(f"{weights}: {len(data) - head} bytes after the header, not whole "
                        "float32 values")  # fmt: skip
    values = np.frombuffer(data, "<f4", offset=head)
    transpose = major > 1000 or minor > 1000
    arrays: dict[str, np.ndarray] = {}
    at = 0

    def take(n: int, what: str) -> np.ndarray:
        nonlocal at
        if at + n > values.size:
            raise DataError(f"{weights}: ends after {values.size:,} values; {what} needs "
                            f"{n:,} from value {at:,} (is it the weights of {cfg}?)")  # fmt: skip
        at += n
        return values[at - n : at].astype(np.float32)

    for sec, lines in produced:
        word, main = _word(sec), lines[0]
        if word not in ("convolutional", "connected", "batchnorm"):
            continue
        bn = lines[-1] if lines[-1].type == "bn" else None
        out = shapes[bn.name if bn else main.name].out_shape[0]
        what = f"layer {sec.header} at line {sec.loc.line}"
        if word == "batchnorm":
            arrays[f"param.{main.name}.weight"] = take(out, what)
            arrays[f"param.{main.name}.bias"] = np.zeros(out, np.float32)  # never stored
            arrays[f"state.{main.name}.running_mean"] = take(out, what)
            arrays[f"state.{main.name}.running_var"] = take(out, what)
            continue
        biases = take(out, what)
        wshape = shapes[main.name].params["weight"]
        if word == "connected":
            w = take(int(np.prod(wshape)), what)
            w = w.reshape(wshape[::-1]).T if transpose else w.reshape(wshape)
        if bn:
            arrays[f"param.{bn.name}.bias"] = biases
            arrays[f"param.{bn.name}.weight"] = take(out, what)
            arrays[f"state.{bn.name}.running_mean"] = take(out, what)
            arrays[f"state.{bn.name}.running_var"] = take(out, what)
        else:
            arrays[f"param.{main.name}.bias"] = biases
        if word == "convolutional":
            w = take(int(np.prod(wshape)), what).reshape(wshape)
        arrays[f"param.{main.name}.weight"] = np.ascontiguousarray(w)
    if at < values.size:
        print(f"warning: {weights}: {values.size - at:,} values left after the last layer "
              f"of {cfg} (Darknet ignores them too)", file=sys.stderr)  # fmt: skip
    return net, arrays
