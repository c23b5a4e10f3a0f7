"""GPU placement as in AlexNet's two columns (cuda-convnet's model parallelism).

With `gpus G`, GPU g owns channels [g*C/G, (g+1)*C/G) of every layer's output, so each
GPU holds 1/G of the kernels and maps. The input is loaded on every GPU. A grouped
conv whose groups are a multiple of G reads only its own GPU's maps; an ungrouped
conv, an fc, a connection table, LRN's window at a boundary and a concat that moves
channels read maps another GPU owns: those are exchanged, forward (maps) and
backward (their gradients). The loss and softmax gather all scores on GPU 0.
"""

from __future__ import annotations

from ..ir import Layer, Network
from ..ops import registry

BYTES = 4  # float32


def _own(g, c: int, gpus: int):
    """The channels [lo, hi) of a C-channel tensor that GPU g owns: contiguous blocks.
    `g` is one GPU or an array of them."""
    return -(-g * c // gpus), -(-(g + 1) * c // gpus)


def place(net: Network) -> Network:
    """Set layer.gpus and layer.exchange (elements received per image, forward)."""
    g = net.gpus
    everywhere = tuple(range(g))  # one tuple shared by every split layer
    owners: dict[str, str] = {}  # layer -> "all" (replicated) or "split" or "gpu0"
    for layer in net.layers:
        layer.exchange = 0
        lt = registry.of(layer)
        if lt.source:
            layer.gpus = everywhere
            owners[layer.name] = "all"
            continue
        if g == 1:
            layer.gpus = (0,)
            continue
        gathered = lt.gathered
        layer.gpus = (0,) if gathered else everywhere
        replicated = all(owners[n] == "all" for n in layer.inputs)
        if not replicated:
            layer.exchange = _exchange(layer, g, gathered, owners)
        owners[layer.name] = "gpu0" if gathered else "split"
    return net


def _exchange(layer: Layer, gpus: int, gathered: bool, owners: dict[str, str]) -> int:
    """Elements per image that cross between GPUs to compute this layer's forward pass.

    Computed for all GPUs at once, as arrays indexed by GPU: a net of 10,000 layers on
    1,024 GPUs is ten million (layer, GPU) pairs, too many for a Python loop over pairs.
    """
    import numpy as np  # only for nets on several GPUs; `check` of others never loads it

    spatial = layer.in_shapes[0][1] * layer.in_shapes[0][2]
    ids = np.zeros(1, np.int64) if gathered else np.arange(gpus, dtype=np.int64)
    # the input channels each GPU already holds, as intervals of the concatenation
    held, offset = [], 0
    for name, shape in zip(layer.inputs, layer.in_shapes):
        c = shape[0]
        if owners[name] == "all":
            lo, hi = np.zeros_like(ids), np.full_like(ids, c)
        elif owners[name] == "gpu0":
            lo, hi = np.zeros_like(ids), np.where(ids == 0, c, 0)
        else:
            lo, hi = _own(ids, c, gpus)
        held.append((offset + lo, offset + hi))
        offset += c
    table = registry.of(layer).channel_table(layer)
    if table is not None:
        return _table_exchange(table, layer.out_shape[0], ids.tolist(), gpus, held) * spatial
    a, b, active = _needed_interval(layer, ids, gpus)
    overlap = sum(np.maximum(0, np.minimum(b, hi) - np.maximum(a, lo)) for lo, hi in held)
    return int(np.sum(np.where(active, (b - a) - overlap, 0))) * spatial


def _table_channels(table, lo: int, hi: int) -> set[int]:
    """The input channels a connection table's outputs [lo, hi) read."""
    return {i for o in range(lo, hi) for i in table[o]}


def _table_exchange(table, cout: int, ids: list[int], gpus: int, held: list) -> int:
    """A connection table reads scattered channels: counted per GPU (tables are small)."""
    received = 0
    for j, gpu in enumerate(ids):
        lo, hi = _own(gpu, cout, gpus)
        spans = [(int(a[j]), int(b[j])) for a, b in held]
        for i in _table_channels(table, lo, hi):  # each a one-channel interval
            received += 1 - sum(max(0, min(i + 1, b) - max(i, a)) for a, b in spans)
    return received


def _needed_interval(layer: Layer, ids, gpus: int):
    """The input channels (of the concatenated inputs) each GPU in `ids` reads, for the
    layers that read one interval: (start, end, owns-output) arrays indexed like `ids`."""
    cin = sum(s[0] for s in layer.in_shapes)
    cout = layer.out_shape[0]
    lo, hi = _own(ids, cout, gpus)
    active = lo < hi
    a, b = registry.of(layer).needed_interval(layer, lo, hi, cin, gpus)
    return a, b, active


def _needed(layer: Layer, gpu: int, gpus: int) -> list[tuple[int, int]]:
    """Input channels (of the concatenated inputs) GPU `gpu` reads, as disjoint intervals:
    the one-GPU view of `_needed_interval`, which the multi-GPU CUDA plan binds its reads to."""
    import numpy as np

    lo, hi = _own(gpu, layer.out_shape[0], gpus)
    if lo >= hi:
        return []
    table = registry.of(layer).channel_table(layer)
    if table is not None:
        return [(i, i + 1) for i in sorted(_table_channels(table, lo, hi))]
    a, b, _ = _needed_interval(layer, np.array([gpu], np.int64), gpus)
    return [(int(a[0]), int(b[0]))]


def exchange_bytes(net: Network, batch: int) -> int:
    """Bytes moved between GPUs per training step: maps forward, their gradients backward."""
    total = 0
    for layer in net.layers:
        total += layer.exchange * batch * BYTES * 2
    return total


def per_gpu(net: Network) -> list[dict[str, int]]:
    """Parameters and activation elements per image held by each GPU."""
    g = net.gpus
    # what a split layer puts on every GPU, summed once (not once per GPU: O(layers + GPUs))
    shared = {"params": 0, "activations": 0}
    own = [{"params": 0, "activations": 0} for _ in range(g)]  # single-GPU layers, remainders
    for layer in net.layers:
        elems = layer.out_shape[0] * layer.out_shape[1] * layer.out_shape[2]
        lt = registry.of(layer)
        if not lt.keeps_output:
            continue
        if lt.source or len(layer.gpus) == g:
            shared["activations"] += elems if lt.source else elems // g
            shared["params"] += layer.n_params // g
            own[0]["params"] += layer.n_params % g if not lt.source else 0
        else:
            own[layer.gpus[0]]["activations"] += elems
            own[layer.gpus[0]]["params"] += layer.n_params
    return [{k: shared[k] + d[k] for k in ("params", "activations")} for d in own]
