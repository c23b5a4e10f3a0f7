"""Reports: the summary table (like Keras' summary and Darknet's layer table), JSON, Graphviz DOT.

Conventions, stated once: MACs count the multiply-accumulates of conv and fc layers;
FLOPs = 2 x MACs. Activation memory counts every layer's float32 output (the input
included, the loss excluded); a training batch keeps those for the backward pass and
the same again for their gradients, so it is 2 x batch x the per-image figure.
"""

from __future__ import annotations

import json
from typing import Any

from .ir import Layer, Network
from .ops import registry
from .ops.base import activation_text
from .passes.placement import BYTES, exchange_bytes, per_gpu


def _geometry(layer: Layer) -> str:
    return registry.of(layer).kernel_text(layer)


def _type(layer: Layer) -> str:
    return registry.of(layer).type_text(layer)


def _count(n: int) -> str:
    return f"{n:,}" if n else "-"


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if n else "-"


def human_bytes(n: float) -> str:
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{int(n)} B"


def _elems(shape) -> int:
    return shape[0] * shape[1] * shape[2]


def totals(net: Network, batch: int | None = None) -> dict[str, Any]:
    """The figures below the table, as a dict (the JSON report's "totals")."""
    batch = batch or net.train["batch"]
    params = sum(lyr.n_params for lyr in net.layers)
    state = sum(n for lyr in net.layers for s in lyr.state.values() for n in s)
    macs = sum(lyr.macs for lyr in net.layers)
    act = sum(_elems(lyr.out_shape) for lyr in net.layers if registry.of(lyr).keeps_output)
    act *= BYTES
    out: dict[str, Any] = {
        "params": params,
        "non_trainable": state,
        "param_bytes": (params + state) * BYTES,
        "macs": macs,
        "flops": 2 * macs,
        "activation_bytes_per_image": act,
        "batch": batch,
        "training_activation_bytes": 2 * act * batch,
        "layers": len(net.layers),
    }
    if net.gpus > 1:
        out["gpus"] = net.gpus
        out["per_gpu"] = [
            {
                "gpu": i,
                "params": d["params"],
                "activation_bytes_per_image": d["activations"] * BYTES,
            }  # fmt: skip
            for i, d in enumerate(per_gpu(net))
        ]
        out["exchange_bytes_per_step"] = exchange_bytes(net, batch)
    return out


def layer_rows(net: Network) -> list[dict[str, Any]]:
    """One dict per layer (the JSON report's "layers")."""
    rows = []
    for i, lyr in enumerate(net.layers):
        rows.append({
            "index": i,
            "name": lyr.name,
            "type": lyr.type,
            "activation": (activation_text(lyr.attrs["activation"])
                           if "activation" in lyr.attrs else None),  # fmt: skip
            "geometry": _geometry(lyr),
            "inputs": list(lyr.inputs),
            "input_shapes": [list(s) for s in lyr.in_shapes],
            "output_shape": list(lyr.out_shape),
            "params": lyr.n_params,
            "param_shapes": {k: list(v) for k, v in lyr.params.items()},
            "macs": lyr.macs,
            "activation_bytes": (_elems(lyr.out_shape) * BYTES
                                 if registry.of(lyr).keeps_output else 0),  # fmt: skip
            "receptive_field": _exact(lyr.rf[0]),
            "jump": _exact(lyr.rf[1]),
            "gpus": list(lyr.gpus),
            "exchange_elements": lyr.exchange,
            "line": lyr.loc.line,
        })  # fmt: skip
    return rows


def _exact(v):
    """An RF or jump for JSON: an int, or a float where an upsample made it a fraction
    (the text table prints the exact fraction, "1/2")."""
    return int(v) if v == int(v) else float(v)


def summary_json(net: Network, batch: int | None = None) -> str:
    """The summary as JSON; the schema is documented in docs/language.md."""
    doc = {"network": net.name, "file": net.file, "gpus": net.gpus,
           "layers": layer_rows(net), "totals": totals(net, batch)}  # fmt: skip
    return json.dumps(doc, indent=2)


def summary_text(net: Network, batch: int | None = None, ascii_only: bool = False) -> str:
    """The summary table and totals, for a terminal; ``ascii_only`` draws the rules with
    '-', marks exchanges '<>' and cuts long cells with '...', for a terminal whose
    encoding has no box-drawing characters."""
    rule_char, exchange, cut = ("-", "<>", "...") if ascii_only else ("─", "⇄", "…")
    head = ["#", "name", "type", "kernel", "input", "output", "params", "MACs", "memory",
            "RF", "jump"]  # fmt: skip
    multi = net.gpus > 1
    if multi:
        head.append("gpu")
    rows = []
    for r, lyr in zip(layer_rows(net), net.layers):
        inp = ",".join("x".join(map(str, s)) for s in r["input_shapes"]) or "-"
        if len(inp) > 20:
            inp = inp[: 20 - len(cut)] + cut
        row = [str(r["index"]), r["name"], _type(lyr), r["geometry"] or "", inp,
               "x".join(map(str, r["output_shape"])), _count(r["params"]), _human(r["macs"]),
               human_bytes(r["activation_bytes"]) if r["activation_bytes"] else "-",
               str(lyr.rf[0]), str(lyr.rf[1])]  # fmt: skip
        if multi:
            g = lyr.gpus
            row.append("all" if registry.of(lyr).source else ",".join(map(str, g)) +
                       (f" {exchange}" if lyr.exchange else ""))  # fmt: skip
        rows.append(row)
    right = {0, 6, 7, 8, 9, 10}
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # fmt: skip

    rule = rule_char * len(line(head))
    t = totals(net, batch)
    out = [f"network {net.name}  ({net.file})", rule, line(head), rule]
    out += [line(r) for r in rows]
    out.append(rule)
    out += [
        f"trainable parameters       {t['params']:>16,}",
        f"non-trainable (BN stats)   {t['non_trainable']:>16,}",
        f"parameter memory           {human_bytes(t['param_bytes']):>16}   (float32)",
        f"MACs per image             {t['macs']:>16,}   ({_human(t['macs'])})",
        f"FLOPs per image            {t['flops']:>16,}   (2 x MACs: conv and fc)",
        f"activations per image      {human_bytes(t['activation_bytes_per_image']):>16}",
        f"training batch of {t['batch']:<4}     "
        f"{human_bytes(t['training_activation_bytes']):>16}   (forward maps + their gradients)",
    ]
    if multi:
        out.append(f"GPUs                       {net.gpus:>16}")
        for d in t["per_gpu"]:
            out.append(
                f"  gpu {d['gpu']}: {d['params']:>14,} params, "
                f"{human_bytes(d['activation_bytes_per_image'])} activations per image"
            )
        out.append(f"exchanged between GPUs     {human_bytes(t['exchange_bytes_per_step']):>16}"
                   f"   per training step ({t['exchange_bytes_per_step']:,} bytes; "
                   f"{exchange} marks the layers)")  # fmt: skip
    return "\n".join(out)


def graph_dot(net: Network) -> str:
    """Graphviz DOT: one node per layer with its shape; GPU groups as clusters."""

    def q(s: str) -> str:
        return '"' + s.replace('"', '\\"') + '"'

    lines = [f"digraph {q(net.name)} {{", "  rankdir=TB;",
             '  node [shape=record, fontname="Helvetica", fontsize=10];']  # fmt: skip

    def node(lyr: Layer) -> str:
        shape = "x".join(map(str, lyr.out_shape))
        geo = _geometry(lyr)
        label = f"{{{lyr.name}|{_type(lyr)}{(' ' + geo) if geo else ''}|{shape}}}"
        label = label.replace("<", "\\<").replace(">", "\\>")
        fill = registry.of(lyr).colour
        return f"  {q(lyr.name)} [label={q(label)}, style=filled, fillcolor={q(fill)}];"

    if net.gpus > 1:
        shared = [lyr for lyr in net.layers
                  if len(lyr.gpus) != net.gpus or registry.of(lyr).source]  # fmt: skip
        split = [lyr for lyr in net.layers if lyr not in shared]
        lines.append('  subgraph "cluster_gpus" {')
        lines.append(f'    label="split across {net.gpus} GPUs (channels 1/{net.gpus} each)";')
        lines.append("    style=dashed;")
        lines += ["  " + node(lyr) for lyr in split]
        lines.append("  }")
        lines += [node(lyr) for lyr in shared]
    else:
        lines += [node(lyr) for lyr in net.layers]
    for lyr in net.layers:
        for src in lyr.inputs:
            attr = ' [color="red", label="exchange"]' if lyr.exchange else ""
            lines.append(f"  {q(src)} -> {q(lyr.name)}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"
