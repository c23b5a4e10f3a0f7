"""The typed IR: a network is an ordered list of layers (a DAG in definition order).

Elaboration (netdsl/elaborate.py) fills in names, inputs and attributes; the passes
(netdsl/passes/) fill in shapes, counts, receptive fields and GPU placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import Location, NetError

Shape = tuple[int, int, int]  # (C, H, W) per image; fc outputs are (K, 1, 1)


@dataclass
class Layer:
    """One layer after elaboration: block uses are expanded, constants evaluated."""

    name: str
    type: str
    inputs: list[str]
    attrs: dict[str, Any]
    loc: Location  # the statement (its type word)
    arg_locs: dict[str, Location] = field(default_factory=dict)  # option -> where it was written
    notes: tuple[tuple[str, Location], ...] = ()  # e.g. the block use that made this layer
    # filled by passes/shapes.py
    in_shapes: list[Shape] = field(default_factory=list)
    out_shape: Shape | None = None
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)  # trainable tensors
    state: dict[str, tuple[int, ...]] = field(default_factory=dict)  # non-trainable (BN stats)
    n_params: int = 0  # trainable parameters actually used (connection tables count only links)
    macs: int = 0  # multiply-accumulates per image (conv and fc only)
    # filled by passes/receptive.py and passes/placement.py
    rf: tuple[int, int] = (1, 1)  # receptive field (size, jump) in input pixels
    gpus: tuple[int, ...] = ()  # the GPUs holding this layer's maps
    exchange: int = 0  # elements per image received from other GPUs in the forward pass

    def where(self, key: str | None = None) -> Location:
        """Where option `key` was written, or the layer itself."""
        return self.arg_locs.get(key, self.loc) if key else self.loc

    def error(self, message: str, key: str | None = None, hint: str | None = None) -> NetError:
        return NetError(message, self.where(key), hint, self.notes)


@dataclass
class TrainConfig:
    """The train { } section, validated; every value has a default."""

    values: dict[str, Any]
    locs: dict[str, Location]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass
class Network:
    """A checked network: layers in execution order plus the train section."""

    name: str
    file: str
    layers: list[Layer]
    train: TrainConfig
    gpus: int = 1
    gpus_loc: Location | None = None

    def layer(self, name: str) -> Layer:
        for lyr in self.layers:
            if lyr.name == name:
                return lyr
        raise KeyError(name)

    @property
    def input(self) -> Layer:
        return self.layers[0]

    @property
    def loss(self) -> Layer | None:
        from .ops import registry  # the registry's declarations import this module

        return next((lyr for lyr in self.layers if registry.of(lyr).is_loss), None)
