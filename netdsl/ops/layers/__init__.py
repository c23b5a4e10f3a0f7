"""One module per layer type, each defining `LAYER`, an instance of netdsl.ops.base.LayerType.

netdsl/ops/registry.py finds them here; adding a layer type is adding a module."""
