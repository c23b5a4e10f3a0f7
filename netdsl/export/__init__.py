"""Export a network and its weights: ONNX (onnx.py), a PyTorch state_dict in safetensors
(safetensors.py) and a standalone PyTorch module source (pytorch.py); `netdsl export` (cli.py).

Every per-layer-type mapping lives in the layer type's module (netdsl/ops/layers/<type>.py,
netdsl/ops/activations/<kind>.py) as the export hooks of netdsl/ops/base.py's LayerType;
the modules here only drive them. None of them imports numba.
"""
