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

BYTES = 4  # float32


def _owner(channel: int, c: int, g: int) -> int:
    return channel * g // c  # contiguous blocks of C/G channels


def _needed(layer: Layer, gpu: int, g: int) -> set[int]:
    """Input channels GPU `gpu` reads (of the concatenated inputs) to make its outputs."""
    cin = sum(s[0] for s in layer.in_shapes)
    cout = layer.out_shape[0]
    mine = [ch for ch in range(cout) if _owner(ch, cout, g) == gpu]
    t = layer.type
    if t in ("fc", "softmax", "loss"):
        return set(range(cin))
    if t == "conv":
        a = layer.attrs
        if a["connect"] is not None:
            return {i for o in mine for i in a["connect"][o]}
        per = cin // a["groups"]  # input channels each group sees
        return {(o * a["groups"] // cout) * per + i for o in mine for i in range(per)}
    if t == "lrn":
        half = layer.attrs["size"] // 2
        return {i for o in mine for i in range(max(0, o - half), min(cin, o + half + 1))}
    if t == "maxout":
        k = layer.attrs["pieces"]
        return {o * k + j for o in mine for j in range(k)}
    if t == "concat":
        return set(mine)  # output channel i is input channel i of the joined inputs
    return set(mine)  # channel-wise layers: act, pool, subsample, dropout, bn, add, flatten


def place(net: Network) -> Network:
    """Set layer.gpus and layer.exchange (elements received per image, forward)."""
    g = net.gpus
    owners: dict[str, str] = {}  # layer -> "all" (replicated) or "split" or "gpu0"
    for layer in net.layers:
        layer.exchange = 0
        if layer.type == "input":
            layer.gpus = tuple(range(g))
            owners[layer.name] = "all"
            continue
        if g == 1:
            layer.gpus = (0,)
            continue
        gathered = layer.type in ("loss", "softmax")
        layer.gpus = (0,) if gathered else tuple(range(g))
        replicated = all(owners[n] == "all" for n in layer.inputs)
        if not replicated:
            layer.exchange = _exchange(layer, g, gathered, owners)
        owners[layer.name] = "gpu0" if gathered else "split"
    return net


def _exchange(layer: Layer, g: int, gathered: bool, owners: dict[str, str]) -> int:
    """Elements per image that cross between GPUs to compute this layer's forward pass."""
    spatial = layer.in_shapes[0][1] * layer.in_shapes[0][2]
    # ownership of the input channels, concatenated over the inputs
    src: list[int] = []
    for name, shape in zip(layer.inputs, layer.in_shapes):
        c = shape[0]
        src += [0 if owners[name] == "gpu0" else _owner(ch, c, g) for ch in range(c)]
    received = 0
    gpus = (0,) if gathered else range(g)
    for gpu in gpus:
        received += sum(1 for ch in _needed(layer, gpu, g) if src[ch] != gpu)
    return received * spatial


def exchange_bytes(net: Network, batch: int) -> int:
    """Bytes moved between GPUs per training step: maps forward, their gradients backward."""
    total = 0
    for layer in net.layers:
        total += layer.exchange * batch * BYTES * 2
    return total


def per_gpu(net: Network) -> list[dict[str, int]]:
    """Parameters and activation elements per image held by each GPU."""
    g = net.gpus
    out = [{"params": 0, "activations": 0} for _ in range(g)]
    for layer in net.layers:
        elems = layer.out_shape[0] * layer.out_shape[1] * layer.out_shape[2]
        if layer.type == "input" or len(layer.gpus) == g:
            for d in range(g):
                share = elems if layer.type == "input" else elems // g
                out[d]["activations"] += share
                out[d]["params"] += layer.n_params // g
            rem = layer.n_params % g if layer.type != "input" else 0
            out[0]["params"] += rem
        else:
            out[layer.gpus[0]]["activations"] += elems
            out[layer.gpus[0]]["params"] += layer.n_params
    return out
