"""The checking passes, in the order they run. `NETDSL_DEBUG=1` prints the IR after each."""

from __future__ import annotations

import os
import sys

from ..ir import Network
from .lint import lint
from .placement import place
from .shapes import data_check, infer_shapes, receptive_fields

PASSES = (
    ("shapes", infer_shapes),  # shapes, parameters, MACs; every shape error is raised here
    ("data", data_check),  # input and class count against a known dataset
    ("receptive", receptive_fields),
    ("placement", place),  # GPU groups and the maps they exchange
    ("lint", lint),  # warnings (softmax before cross_entropy, ...): net.warnings, never errors
)


def run_passes(net: Network) -> Network:
    """Run every pass over `net` in order."""
    debug = os.environ.get("NETDSL_DEBUG")
    for name, fn in PASSES:
        net = fn(net)
        if debug:
            print(f"--- IR after pass '{name}'", file=sys.stderr)
            for layer in net.layers:
                print(f"  {layer.name:16} {layer.type:9} in={layer.inputs} out={layer.out_shape} "
                      f"params={layer.n_params} macs={layer.macs} rf={layer.rf} gpus={layer.gpus}",
                      file=sys.stderr)  # fmt: skip
    return net
