"""Layer and activation names from Caffe, Darknet, Keras and PyTorch, and netdsl's spelling.

A user coming from another framework writes its layer names first (`convolutional`,
`InnerProduct`, `Conv2D`); the checker answers with the netdsl spelling and an example
instead of a list of every layer type or a near miss by spelling (`gelu` is not `relu`).
One table, read by `foreign_hint` for layer types and by `activation_hint` for activation
words.
"""

from __future__ import annotations

from .ops.activations import kinds as _kinds

# Activations netdsl has: its activation kinds (netdsl/ops/activations/, which imports no
# other netdsl module, so this module stays a leaf of the language code).
ACTIVATION_NAMES = tuple(_kinds())

# name -> (framework(s), netdsl spelling or None when netdsl has none, example or advice)
FOREIGN: dict[str, tuple[str, str | None, str]] = {
    # Caffe
    "Convolution": ("Caffe", "conv", "conv c1: 32 filters 3x3, pad 1, relu"),
    "InnerProduct": ("Caffe", "fc", "fc f1: 500, relu"),
    "Pooling": ("Caffe", "pool", "pool p1: max 2x2, stride 2"),
    "LRN": ("Caffe", "lrn", "lrn n1: size 5, alpha 1e-4, beta 0.75"),
    "Eltwise": ("Caffe", "add", "add s(a, b), relu"),
    "Concat": ("Caffe", "concat", "concat c(a, b)"),
    "BatchNorm": ("Caffe", "bn", "bn b1: relu (bn also learns Caffe's Scale)"),
    "Scale": ("Caffe", "bn", "bn b1 (a Caffe BatchNorm + Scale pair is one bn layer)"),
    "SoftmaxWithLoss": ("Caffe", "loss", "loss cross_entropy (it applies the softmax itself)"),
    "EuclideanLoss": ("Caffe", "loss", "loss mse"),
    "TanH": ("Caffe", "tanh", "tanh t1, or `tanh` on the layer before"),
    "Data": ("Caffe", "input", "input image: 3x32x32, and `data` in train { }"),
    "Deconvolution": ("Caffe", None, "netdsl has no deconvolution layer yet"),
    "Split": ("Caffe", None, "netdsl needs no split: several layers can read one layer"),
    "Accuracy": ("Caffe", None, "netdsl reports accuracy itself; drop this layer"),
    # Darknet
    "convolutional": ("Darknet", "conv", "conv c1: 32 filters 3x3, pad 1, leaky"),
    "connected": ("Darknet", "fc", "fc f1: 256, leaky"),
    "maxpool": ("Darknet", "pool", "pool p1: max 2x2, stride 2"),
    "avgpool": ("Darknet", "pool", "pool gap: avg, global"),
    "route": (
        "Darknet",
        "concat",
        "concat r(a, b); to read one earlier layer, name it as the input: conv c(a): ...",
    ),
    "shortcut": ("Darknet", "add", "add s(a, b), linear"),
    "cost": ("Darknet", "loss", "loss mse"),
    # Darknet's upsample is netdsl's own word (its stride=2 is `upsample u1: 2`), so no entry
    "deconvolutional": ("Darknet", None, "netdsl has no deconvolution layer yet"),
    # Darknet's (and cuda-convnet's) local is netdsl's own word; Keras's name for that layer:
    "LocallyConnected2D": ("Keras", "local", "local l1: 32 filters 3x3 (no weight sharing)"),
    "yolo": ("Darknet", None, "netdsl has no detection layers"),
    "region": ("Darknet", None, "netdsl has no detection layers"),
    "detection": ("Darknet", None, "netdsl has no detection layers"),
    "net": (
        "Darknet",
        None,
        "Darknet's [net] section is netdsl's input layer "
        "(input image: 3x416x416) and its train { } section",
    ),
    # cuda-convnet
    "rnorm": (
        "cuda-convnet",
        None,
        "netdsl's lrn normalises across maps (cmrnorm), not within one",
    ),
    "cnorm": ("cuda-convnet", None, "netdsl has no contrast normalisation"),
    "cmrnorm": (
        "cuda-convnet",
        "lrn",
        "lrn n1: size 5, alpha SCALE/5 (cuda-convnet divides scale by size)",
    ),
    # Keras
    "Conv2D": ("Keras", "conv", "conv c1: 32 filters 3x3, pad same, relu"),
    "Dense": ("Keras", "fc", "fc f1: 128, relu"),
    "MaxPooling2D": ("Keras", "pool", "pool p1: max 2x2, stride 2"),
    "MaxPool2D": ("Keras", "pool", "pool p1: max 2x2, stride 2"),
    "AveragePooling2D": ("Keras", "pool", "pool p1: avg 2x2, stride 2"),
    "AvgPool2D": ("Keras", "pool", "pool p1: avg 2x2, stride 2"),
    "GlobalAveragePooling2D": ("Keras", "pool", "pool gap: avg, global"),
    "GlobalMaxPooling2D": ("Keras", "pool", "pool gmp: max, global"),
    "BatchNormalization": ("Keras", "bn", "bn b1: relu"),
    "Activation": ("Keras", "act", "act a1: relu, or `relu` on the layer before"),
    "Add": ("Keras", "add", "add s(a, b)"),
    "Concatenate": ("Keras", "concat", "concat c(a, b)"),
    "Input": ("Keras and Caffe", "input", "input image: 3x32x32"),
    "InputLayer": ("Keras", "input", "input image: 3x32x32"),
    "LeakyReLU": ("Keras", "leaky", "leaky l1: 0.1, or `leaky(0.1)` on the layer before"),
    "ZeroPadding2D": ("Keras", None, "netdsl pads inside conv and pool: conv c1: ..., pad 1"),
    "UpSampling2D": ("Keras", "upsample", "upsample u1: 2 (nearest; 2x3 for HxW)"),
    "Conv2DTranspose": ("Keras", None, "netdsl has no deconvolution layer yet"),
    "DepthwiseConv2D": ("Keras", "conv", "conv d1: C filters 3x3, groups C (C input channels)"),
    # PyTorch
    "Conv2d": ("PyTorch", "conv", "conv c1: 32 filters 3x3, pad 1, relu"),
    "Linear": ("PyTorch", "fc", "fc f1: 128, relu"),
    "MaxPool2d": ("PyTorch", "pool", "pool p1: max 2x2, stride 2"),
    "AvgPool2d": ("PyTorch", "pool", "pool p1: avg 2x2, stride 2"),
    "AdaptiveAvgPool2d": ("PyTorch", "pool", "pool gap: avg, global (for output size 1)"),
    "BatchNorm2d": ("PyTorch", "bn", "bn b1: relu"),
    "LocalResponseNorm": ("PyTorch", "lrn", "lrn n1: size 5"),
    "CrossEntropyLoss": ("PyTorch", "loss", "loss cross_entropy"),
    "MSELoss": ("PyTorch", "loss", "loss mse"),
    "Upsample": ("PyTorch", "upsample", "upsample u1: 2 (mode nearest, whole factors)"),
    # names several frameworks share
    "ReLU": ("Caffe, Keras and PyTorch", "relu", "relu r1, or `relu` on the layer before"),
    "Dropout": ("Caffe, Keras and PyTorch", "dropout", "dropout d1: 0.5"),
    "Softmax": (
        "Caffe, Keras and PyTorch",
        "softmax",
        "softmax s1 (not before `loss cross_entropy`, which applies it itself)",
    ),
    "Sigmoid": ("Caffe and PyTorch", "sigmoid", "sigmoid s1, or `sigmoid` on the layer before"),
    "Flatten": ("Caffe, Keras and PyTorch", "flatten", "flatten f (fc flattens by itself)"),
}

# Activations other frameworks have: name -> (whose, netdsl's spelling or None when it has none)
FOREIGN_ACTIVATIONS: dict[str, tuple[str, str | None]] = {
    "logistic": ("Darknet's", "sigmoid"),
    "lrelu": ("", "leaky"),
    "leaky_relu": ("", "leaky"),
    "leakyrelu": ("", "leaky"),
    "identity": ("", "linear"),
    **{a: ("", None) for a in ("selu", "gelu", "swish", "silu", "mish", "softplus",
                               "softsign", "relu6", "hard_sigmoid", "hardswish",
                               "exponential", "loggy", "relie", "ramp", "plse", "hardtan",
                               "lhtan", "stair")},
}  # fmt: skip


def activation_hint(word: str) -> str | None:
    """A hint for an activation netdsl lacks or spells differently (`gelu`, `logistic`)."""
    key = word.lower()
    if key not in FOREIGN_ACTIVATIONS:
        return None
    whose, ours = FOREIGN_ACTIVATIONS[key]
    if ours is not None:
        return f"{whose} {word} is netdsl's {ours}".lstrip()
    return f"{word} is not available in netdsl; activations: {', '.join(ACTIVATION_NAMES)}"


def foreign_hint(word: str, known: list[str]) -> str | None:
    """A hint for a layer type written as another framework spells it, or in other case.

    `known` are the names valid here (layer types, aliases, blocks), tried without case.
    """
    if word in FOREIGN:
        return _entry_hint(word)
    lower = {k.lower(): k for k in known}
    if word.lower() in lower:
        return f"did you mean '{lower[word.lower()]}'? (names are case-sensitive)"
    activation = activation_hint(word)
    if activation:
        return activation
    for name in FOREIGN:
        if name.lower() == word.lower():
            return _entry_hint(name)
    return None


def _entry_hint(name: str) -> str:
    who, ours, example = FOREIGN[name]
    if ours is None:
        return f"{who}'s {name}: {example}"
    return f"{who}'s {name} is netdsl's {ours}: {example}"
