"""A Caffe SolverParameter prototxt (`--solver`) as the train { } section (placeholder)."""

from __future__ import annotations


def apply(path, net, data) -> None:
    raise NotImplementedError
