"""`--pytorch OUT.py`: a standalone PyTorch module source generated from the IR.

Each layer type writes its own module constructor and forward expression (the export hooks
of netdsl/ops/base.py); what PyTorch has no module for (maxout, LeNet's subsampling,
connection tables, pools whose padding PyTorch refuses) comes as a small function or class
in the file, written only when the net uses it. The module's state_dict has netdsl's
tensor names ("<layer>.<name>"; a dotted layer name is a nested module), so
`load_state_dict(safetensors.torch.load_file(W))` takes what `--safetensors` wrote.
"""

from __future__ import annotations

import keyword
import os
import re
import textwrap
from typing import Any

from ..errors import NetdslError
from ..files import write_atomic
from ..ir import Layer, Network
from ..ops import activations, registry
from .common import fresh_name

_RESERVED = {"x", "self", "F", "torch", "nn", "math"}


class TorchSource:
    """The builder the layer types' torch hooks write into.

    t.x(layer, i, rank) an input's expression at a rank (4: NCHW, 2: (N, K)); t.mod(layer)
    the layer's module (`self.c1`); t.helper(name, source) adds a function or class to the
    file once; t.num / t.pair / t.ints format values as Python source.
    """

    def __init__(self, net: Network) -> None:
        self.net = net
        self.var: dict[str, str] = {}  # layer name -> its local variable in forward
        self.rank: dict[str, int] = {}
        self.helpers: dict[str, str] = {}
        self._used = set(_RESERVED)

    # ---- formatting
    @staticmethod
    def num(v: float) -> str:
        """A float as exact Python source (repr round-trips)."""
        return repr(float(v))

    @staticmethod
    def pair(v) -> str:
        """(3, 3) -> "3", (3, 2) -> "(3, 2)"."""
        return str(v[0]) if v[0] == v[1] else f"({v[0]}, {v[1]})"

    @staticmethod
    def ints(v) -> str:
        return "(" + ", ".join(str(int(i)) for i in v) + ("," if len(v) == 1 else "") + ")"

    # ---- pieces
    def helper(self, name: str, source: str) -> str:
        """Add a top-level function or class to the file (once); its name."""
        self.helpers.setdefault(name, textwrap.dedent(source).strip("\n"))
        return name

    def mod(self, layer: Layer) -> str:
        """The expression of the layer's module: self.c1, self.layer1a.conv1."""
        return "self." + layer.name

    def x(self, layer: Layer, i: int = 0, rank: int | None = None) -> str:
        """Input i of `layer` at `rank` (as it is when None)."""
        v, have = self.var[layer.inputs[i]], self.rank[layer.inputs[i]]
        if rank is None or rank == have:
            return v
        if rank == 2:
            return f"{v}.flatten(1)"
        c, h, w = layer.in_shapes[i]
        return f"{v}.view({v}.shape[0], {c}, {h}, {w})"

    def rank_of(self, layer: Layer, i: int = 0) -> int:
        return self.rank[layer.inputs[i]]

    def local(self, name: str) -> str:
        """A fresh local variable name from a layer name."""
        base = re.sub(r"\W", "_", name)
        if not base or base[0].isdigit() or keyword.iskeyword(base):
            base = "v_" + base
        return fresh_name(base, self._used)


def class_name(net: Network) -> str:
    """The module's class name from the network's: lenet5 -> Lenet5, my-net -> MyNet."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", net.name) if p]
    name = "".join(p[0].upper() + p[1:] for p in parts) or "Net"
    return name if name[0].isalpha() else "Net" + name


def _check_names(net: Network) -> None:
    """Every dot-separated part of a layer with a module must be a Python name that is not
    an nn.Module attribute (a layer named `forward` or `eval` would replace the method)."""
    try:
        import torch.nn as nn

        taken = set(dir(nn.Module))
    except ImportError:  # the source can be written without torch; these are the likely ones
        taken = {
            "forward",
            "train",
            "training",
            "eval",
            "state_dict",
            "parameters",
            "to",
            "modules",
            "children",
            "apply",
            "cuda",
            "cpu",
            "float",
            "half",
            "type",
        }
    for lyr in net.layers:
        for part in lyr.name.split("."):
            if not part.isidentifier() or keyword.iskeyword(part) or part in taken:
                raise lyr.error(f"cannot export layer {lyr.name} to PyTorch: {part!r} is not "
                                "usable as an nn.Module attribute name", None,
                                "rename the layer")  # fmt: skip


def generate(net: Network, weights: str | None = None) -> tuple[str, str]:
    """The Python source of a PyTorch nn.Module computing `net`'s forward in eval mode, and
    the module's class name."""
    import netdsl

    t = TorchSource(net)
    init: list[str] = []
    body: list[str] = []
    containers: set[str] = set()
    with_module: set[str] = set()
    for lyr in net.layers:
        lt = registry.of(lyr)
        if lt.source:
            t.var[lyr.name], t.rank[lyr.name] = "x", 4
            continue
        ctor = lt.torch_module_lines(lyr, t)
        if ctor is not None:
            parts = lyr.name.split(".")
            for k in range(1, len(parts)):  # containers of a dotted name: nn.Module()
                prefix = ".".join(parts[:k])
                if prefix not in containers and prefix not in with_module:
                    containers.add(prefix)
                    init.append(f"self.{prefix} = nn.Module()")
            if lyr.name in containers:  # `a` after `a.b`: it would replace a's container
                raise lyr.error(f"cannot export layer {lyr.name} to PyTorch: its name is also "
                                "the prefix of an earlier layer's dotted name", None,
                                "rename the layer")  # fmt: skip
            with_module.add(lyr.name)
            init.append(f"self.{lyr.name} = {ctor}")
        expr, rank = lt.torch_forward_expr(lyr, t)
        act = lyr.attrs.get("activation")
        if act and act[0] != "linear":
            expr = activations.get(act[0]).torch_expr(expr, activations.params_of(act))
        if expr == t.var.get(lyr.inputs[0] if lyr.inputs else "", None):
            t.var[lyr.name], t.rank[lyr.name] = expr, rank  # the identity: no new variable
            continue
        v = t.local(lyr.name)
        body.append(f"{v} = {expr}" + (f"  # {lyr.name}" if v != lyr.name else ""))
        t.var[lyr.name], t.rank[lyr.name] = v, rank
    if init:
        _check_names(net)
    last = [lyr for lyr in net.layers if not registry.of(lyr).is_loss][-1]
    out = t.var[last.name]
    if last.out_shape[1:] == (1, 1) and t.rank[last.name] == 4:
        out = f"{out}.flatten(1)"
    c, h, w = net.input.out_shape
    cls = class_name(net)
    while cls in t.helpers:  # a network called `subsample` is not the helper Subsample
        cls += "Net"
    oc, oh, ow = last.out_shape
    shape_out = f"(N, {oc})" if (oh, ow) == (1, 1) else f"(N, {oc}, {oh}, {ow})"
    weights_file = weights or f"{net.name}.safetensors"
    lines = [
        f'"""PyTorch module of the network {net.name} ({os.path.basename(net.file)}), '
        f"generated by netdsl {netdsl.__version__}.",
        "",
        f"Input (N, {c}, {h}, {w}) float32; output {shape_out}: the scores of the last layer "
        "before the loss.",
        "Its state_dict is what `netdsl export --safetensors` writes:",
        "",
        "    import safetensors.torch",
        f"    model = {cls}()",
        f'    model.load_state_dict(safetensors.torch.load_file("{weights_file}"))',
        "    model.eval()",
        '"""',
        "",
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        "",
    ]
    for src in t.helpers.values():
        lines += ["", src, ""]
    lines += ["", f"class {cls}(nn.Module):", "    def __init__(self):",
              "        super().__init__()"]  # fmt: skip
    lines += ["        " + s.replace("\n", "\n        ") for s in init]
    lines += ["", "    def forward(self, x):"]
    lines += [f"        {s}" for s in body]
    lines += [f"        return {out}", ""]
    source = "\n".join(lines)
    if "torch." not in source.split("import torch.nn.functional as F", 1)[1]:
        source = source.replace("import torch\n", "", 1)  # only nn and F are used
    return source, cls


def save_pytorch(net: Network, path: str | os.PathLike, weights: str | None = None) -> str:
    """Write the generated module source atomically; returns the module's class name."""
    source, cls = generate(net, weights)
    try:
        compile(source, str(path), "exec")  # a generator bug must not leave a broken file
    except SyntaxError as e:
        raise NetdslError(f"internal error: generated PyTorch source does not parse: {e}") from e
    write_atomic(path, source.encode("utf-8"))
    return cls


def load_generated(path: str | os.PathLike) -> Any:
    """Import a generated file and return an instance of its module (the last class)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("netdsl_generated_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    classes = [v for v in vars(mod).values()
               if isinstance(v, type) and v.__module__ == mod.__name__]  # fmt: skip
    return classes[-1]()
