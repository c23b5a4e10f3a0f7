"""What every `show` command shares: the net and its checkpoint, data, forward passes
that keep chosen layers' outputs, and PNG output written atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, NetdslError
from ..ir import Layer, Network
from ..ops import registry
from ..train.paths import show_path

# Class names of the data sets that have well-known ones (their files carry none).
KNOWN_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],  # fmt: skip
}


class ShowUsageError(NetdslError):
    """A bad argument of a show command found after parsing (an unknown layer): exit 2."""

    exit_code = 2


# ---------------------------------------------------------------- matplotlib, PNGs


def figure_class():
    """matplotlib's Figure with an Agg canvas attached by `new_figure`; a NetdslError
    naming the extra when matplotlib is missing."""
    try:
        # Figure + Agg canvas, not pyplot: no global figure state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("matplotlib")
        why = "matplotlib is not installed" if missing else f"matplotlib cannot load ({e})"
        raise NetdslError(f"drawing pictures needs matplotlib, but {why}; install it with: "
                          "pip install 'netdsl[plot]'") from None  # fmt: skip
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    """A matplotlib Figure of width x height inches, ready to save."""
    figure, canvas = figure_class()
    fig = figure(figsize=(width, height))
    canvas(fig)
    return fig


def output_path(given: str | None, default: Path) -> Path:
    """Where to write the PNG: -o (a folder gets the default name; no suffix gets .png)."""
    if not given:
        return default
    out = Path(given)
    if out.is_dir():
        return out / default.name
    if not out.suffix:
        return out.with_name(out.name + ".png")
    if out.suffix.lower() != ".png":
        raise ShowUsageError(f"{show_path(out)}: show writes PNG pictures; name the output "
                             "file .png")  # fmt: skip
    return out


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Write `fig` to `path` whole or not at all (netdsl.files): a failed write never
    leaves a partial picture that looks complete."""
    from ..files import atomic_output

    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=dpi)


def picture_path(args: Any, summary: dict[str, Any], name: str) -> Path | None:
    """With --json, `summary` is printed first. The PNG's path (-o, or `name` beside the
    checkpoint), or None when --json alone was asked for (no picture)."""
    if args.json:
        print_json(summary)
        if not args.output:
            return None
    return output_path(args.output, Path(args.checkpoint).parent / name)


def wrote(path: Path) -> None:
    """Tell the user where the picture went (stderr: stdout may carry --json)."""
    print(f"wrote {path}", file=sys.stderr)


def print_json(obj: dict[str, Any]) -> None:
    """The --json output, one object, floats rounded to what a reader needs; a list of
    numbers (a shape, a matrix row) and a short record stay on one line."""
    print(_dumps(_rounded(obj), ""))


def _dumps(v: Any, indent: str) -> str:
    inner = indent + "  "
    flat = json.dumps(v)
    if (
        indent
        and isinstance(v, dict)
        and len(flat) <= 90
        and not any(isinstance(x, (dict, list)) for x in v.values())
    ):  # a short record of numbers (a confused pair): one line
        return flat
    if isinstance(v, dict) and v:
        items = [f"{inner}{json.dumps(k)}: {_dumps(x, inner)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
        return "[\n" + ",\n".join(inner + _dumps(x, inner) for x in v) + f"\n{indent}]"
    return json.dumps(v)


def _rounded(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(f"{float(v):.6g}") + 0.0  # no -0.0 (a ReLU output's minimum)
    return v


# ---------------------------------------------------------------- net, checkpoint


def load_net(path: str) -> Network:
    """The checked .net file (a mistake raises NetError, file:line:col, exit 2)."""
    from .. import load

    return load(path)


def checkpoint_params(net: Network, path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The checkpoint's parameters by "<layer>.<name>" and its meta, checked against the
    net without compiling it: a DataError naming the file when they do not fit."""
    from ..train.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path)
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param.")}
    where = show_path(path)
    for layer in net.layers:
        for name, shape in layer.params.items():
            key = f"{layer.name}.{name}"
            if key not in params:
                raise DataError(f"{where}: does not fit this network: it has no {key} "
                                f"(the network {net.name} needs one of shape "
                                f"{tuple(shape)})")  # fmt: skip
            if tuple(params[key].shape) != tuple(shape):
                raise DataError(f"{where}: does not fit this network: {key} is "
                                f"{tuple(params[key].shape)}, the network {net.name} needs "
                                f"{tuple(shape)}")  # fmt: skip
    needed = {f"{lyr.name}.{name}" for lyr in net.layers for name in lyr.params}
    extra = sorted(set(params) - needed)
    if extra:
        raise DataError(f"{where}: does not fit this network: it has {extra[0]}, which the "
                        f"network {net.name} has no place for")  # fmt: skip
    return arrays, meta


def compiled(net: Network, arrays: dict[str, np.ndarray], path: str, batch: int,
             every_map: bool = False):  # fmt: skip
    """The net compiled for the CPU at `batch`, holding the checkpoint's weights. With
    `every_map`, no standalone activation is folded into its producer, so every layer's
    output is its own map (a folded producer's would be the activation's)."""
    from ..backends import compile_network
    from ..compiler import CompiledNet
    from ..train.trainer import load_weights

    if every_map:
        cnet = type("Unfolded", (CompiledNet,), {"fold_activations": False})(net, batch=batch)
    else:
        cnet = compile_network(net, device="cpu", batch=batch)
    load_weights(cnet, arrays, show_path(path))
    return cnet


def layer_named(net: Network, name: str, valid: list[str], what: str) -> Layer:
    """The layer `name` if it is among `valid`; else a usage error listing the valid ones."""
    if name in valid:
        return net.layer(name)
    known = {lyr.name for lyr in net.layers}
    problem = "has no layer" if name not in known else f"cannot show {what} of layer"
    raise ShowUsageError(f"{net.name} {problem} {name!r}; {what} can be shown for: "
                         f"{', '.join(valid) or '(no layer)'}")  # fmt: skip


def spatial_layers(net: Network) -> list[str]:
    """The layers with feature maps (more than 1x1 per channel), the input excluded."""
    return [lyr.name for lyr in net.layers
            if not registry.of(lyr).source and not registry.of(lyr).is_loss
            and len(lyr.out_shape) == 3 and lyr.out_shape[1] * lyr.out_shape[2] > 1]  # fmt: skip


def hidden_layers(net: Network) -> list[str]:
    """Every layer whose output can serve as a feature vector (all but input and loss)."""
    return [lyr.name for lyr in net.layers
            if not registry.of(lyr).source and not registry.of(lyr).is_loss]  # fmt: skip


def output_layer(net: Network) -> Layer:
    """The layer giving the class scores (the last before the loss)."""
    layers = net.layers
    return layers[-2] if registry.of(layers[-1]).is_loss else layers[-1]


def last_hidden(net: Network) -> str:
    """The last hidden layer before the classifier: the output layer's input, looking
    through parameter-free layers that keep its shape (dropout: fc7, not drop7)."""
    layer = net.layer(output_layer(net).inputs[0])
    while (len(layer.inputs) == 1 and not layer.params
           and not registry.of(net.layer(layer.inputs[0])).source
           and net.layer(layer.inputs[0]).out_shape == layer.out_shape):  # fmt: skip
        layer = net.layer(layer.inputs[0])
    return layer.name


# ---------------------------------------------------------------- data, forward


def load_data(net: Network, checkpoint: str, meta: dict[str, Any], spec: str | None,
              allow_other_data: bool):  # fmt: skip
    """The data the checkpoint was trained on (or --data), normalised as in training."""
    from ..train.trainer import recorded_data

    return recorded_data(net, checkpoint, meta, spec, training=False,
                         allow_other_data=allow_other_data)  # fmt: skip


def eval_split(data) -> tuple[Any, str]:
    """The test split, or the validation split when the data has no test split."""
    if data.test is not None:
        return data.test, "test"
    return data.val, "validation"


def fit_views(net: Network, x: np.ndarray) -> np.ndarray:
    """Images as the net sees them at test time: padded up or centre-cropped to its input."""
    from ..train import augment
    from ..train.trainer import _fit_to_input

    x = _fit_to_input(np.asarray(x, np.float32), net, train=False)
    shape = net.input.out_shape
    if x.shape[2:] != shape[1:]:
        x = augment.center_crop(x, shape[1:])
    return x


def forward_layers(cnet, x: np.ndarray, layers: list[str],
                   flatten: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Eval-mode outputs of `layers` for every image of x (N, C, H, W), in batches of the
    compiled batch: name -> (N, C, H, W) float32 (or (N, F) with flatten)."""
    x = fit_views(cnet.net, x)
    n = len(x)
    outs: dict[str, np.ndarray] = {}
    for name in layers:
        shape = cnet.net.layer(name).out_shape
        outs[name] = np.empty((n, int(np.prod(shape))) if flatten else (n, *shape), np.float32)
    for i in range(0, n, cnet.batch):
        xb = x[i : i + cnet.batch]
        cnet.forward(xb)
        for name in layers:
            y = cnet.layer_output(name, len(xb))
            outs[name][i : i + len(xb)] = y.reshape(len(xb), -1) if flatten else y
    return outs


def class_names(data, dataset_name: str | None, k: int) -> list[str]:
    """Names of the k classes: the data's own when it has them, a known data set's, else
    the class numbers."""
    names = getattr(data, "class_names", None) or (data.record or {}).get("class_names")
    if not names:
        names = KNOWN_CLASS_NAMES.get((dataset_name or "").lower())
    if names and len(names) == k:
        return [str(s) for s in names]
    return [str(i) for i in range(k)]


def to_display(img: np.ndarray) -> np.ndarray:
    """One image (C, H, W) as matplotlib shows it: (H, W, 3) for RGB, (H, W) else,
    stretched to [0, 1] (the normalised pixels have no fixed range)."""
    img = np.asarray(img, np.float64)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.shape[0] == 3:
        return img.transpose(1, 2, 0)
    return img[0]
