"""netdsl: a declarative network-definition compiler for convolutional neural networks.

The pipeline, in module order: source -> parse -> ast -> elaborate (ir) -> passes
(shapes, counts, placement) -> ops -> backends -> compile -> train -> report -> cli.

>>> import netdsl
>>> net = netdsl.load("nets/lenet5.net")            # parse and check; no numba import
>>> net.layers[1].out_shape
(6, 28, 28)
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError, Location, NetdslError, NetError
from .ir import Layer, Network

__version__ = "0.1.0"
__all__ = ["load", "loads", "compile", "Network", "Layer", "NetError", "DataError",
           "NetdslError", "Location"]  # fmt: skip


def load(path: str | Path) -> Network:
    """Parse, elaborate and check a `.net` file; raises NetError at file:line:col."""
    from .elaborate import elaborate
    from .parse import parse_file
    from .passes import run_passes

    return run_passes(elaborate(parse_file(path)))


def loads(text: str, name: str = "<string>") -> Network:
    """Like load, from a string (includes resolve against the current directory)."""
    from .elaborate import elaborate
    from .parse import parse_source
    from .passes import run_passes
    from .source import Source

    return run_passes(elaborate(parse_source(Source(name, text))))


def compile(
    path: str | Path, device: str = "cpu", batch: int | None = None, seed: int = 0, **kwargs
):  # noqa: A001 - the public name the issue asks for
    """Compile a `.net` file into a runnable network (see netdsl.compiler.CompiledNet)."""
    from .backends import compile_network

    return compile_network(load(path), device=device, batch=batch, seed=seed, **kwargs)
