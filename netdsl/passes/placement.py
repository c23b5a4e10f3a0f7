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


def _own(g: int, c: int, gpus: int) -> tuple[int, int]:
    """The channels [lo, hi) of a C-channel tensor that GPU g owns: contiguous blocks."""
    return -(-g * c // gpus), -(-(g + 1) * c // gpus)


def _needed(layer: Layer, gpu: int, gpus: int) -> list[tuple[int, int]]:
    """Input channels (of the concatenated inputs) GPU `gpu` reads, as disjoint intervals."""
    cin = sum(s[0] for s in layer.in_shapes)
    cout = layer.out_shape[0]
    lo, hi = _own(gpu, cout, gpus)
    if lo >= hi:
        return []
    t = layer.type
    if t in ("fc", "softmax", "loss"):
        return [(0, cin)]
    if t == "conv":
        a = layer.attrs
        if a["connect"] is not None:
            chans = sorted({i for o in range(lo, hi) for i in a["connect"][o]})
            return [(i, i + 1) for i in chans]
        g = a["groups"]
        per = cin // g  # input channels each group sees
        return [((lo * g // cout) * per, ((hi - 1) * g // cout + 1) * per)]
    if t == "lrn":
        half = layer.attrs["size"] // 2
        return [(max(0, lo - half), min(cin, hi + half))]
    if t == "flatten":  # output element i*H*W + j comes from input channel i
        hw = layer.in_shapes[0][1] * layer.in_shapes[0][2]
        return [(lo // hw, (hi - 1) // hw + 1)]
    if t == "maxout":
        k = layer.attrs["pieces"]
        return [(lo * k, hi * k)]
    return [(lo, hi)]  # channel-wise layers and concat: output channel i is input channel i


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


def _exchange(layer: Layer, gpus: int, gathered: bool, owners: dict[str, str]) -> int:
    """Elements per image that cross between GPUs to compute this layer's forward pass."""
    spatial = layer.in_shapes[0][1] * layer.in_shapes[0][2]
    received = 0
    for gpu in (0,) if gathered else range(gpus):
        # the input channels this GPU already holds, as intervals of the concatenation
        held, offset = [], 0
        for name, shape in zip(layer.inputs, layer.in_shapes):
            c = shape[0]
            if owners[name] == "all":
                lo, hi = 0, c
            elif owners[name] == "gpu0":
                lo, hi = (0, c) if gpu == 0 else (0, 0)
            else:
                lo, hi = _own(gpu, c, gpus)
            held.append((offset + lo, offset + hi))
            offset += c
        for a, b in _needed(layer, gpu, gpus):
            overlap = sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in held)
            received += (b - a) - overlap
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
        if layer.type == "loss":
            continue
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
