"""Warnings: networks that check, compile and train, but train badly or ignore a setting.

Each rule finds one clearly wrong pattern that a Keras, Caffe or Darknet user writes
without noticing, e.g. a `softmax` layer right before `loss cross_entropy` (the loss
applies softmax itself, so the scores are squashed twice and training stalls). A warning
is located like an error and carries the fix; it never stops a command: `netdsl check`
prints it to stderr and still exits 0.

The pass runs after shapes and data checks and stores its findings on the network;
`warnings_of(net)` reads them and `print_warnings(net)` prints them once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from ..errors import Location, _diagnostic
from ..ir import Layer, Network
from ..ops import activations, registry
from .shapes import KNOWN_DATASETS, known_dataset


@dataclass(frozen=True)
class LintWarning:
    """A located warning with its fix, rendered like an error:
    ``file:line:col: warning: message``, the source line, a caret, notes and a hint."""

    message: str
    loc: Location | None = None
    hint: str | None = None
    notes: tuple[tuple[str, Location], ...] = ()

    def render(self) -> str:
        lines = [_diagnostic("warning", self.message, self.loc)]
        lines += [_diagnostic("note", text, loc) for text, loc in self.notes]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def lint(net: Network) -> Network:
    """The pass: find every warning and keep them on the network (see warnings_of)."""
    net.warnings = find_warnings(net)  # type: ignore[attr-defined]
    return net


def find_warnings(net: Network) -> list[LintWarning]:
    """Every rule's warnings for a network whose shapes are known, in rule order."""
    return [w for rule in RULES for w in rule(net)]


def warnings_of(net: Network) -> list[LintWarning]:
    """The warnings the lint pass found for `net` (none if it has not run)."""
    return list(getattr(net, "warnings", ()))


def print_warnings(net: Network, file: TextIO | None = None) -> None:
    """Print each of the network's warnings (to stderr by default)."""
    for w in warnings_of(net):
        print(w.render(), file=file or sys.stderr)


# ---------------------------------------------------------------- rules


def _warn(layer: Layer, message: str, hint: str | None = None) -> LintWarning:
    """A warning at a layer, with the block use that made it (if any) as a note."""
    return LintWarning(message, layer.loc, hint, layer.notes)


def _reshapes(layer: Layer) -> bool:
    return registry.of(layer).reshapes_only  # flatten keeps a vector as it is


def _reshapes_or_eval_identity(layer: Layer) -> bool:
    lt = registry.of(layer)
    return lt.reshapes_only or lt.identity_at_eval  # dropout: the scores at evaluation


def _scores(net: Network, through: Callable[[Layer], bool] = _reshapes) -> Layer | None:
    """The layer whose output the loss reads as class scores, looking through the layers
    `through` says leave the scores as they are."""
    loss = net.loss
    if loss is None or len(loss.inputs) != 1:
        return None
    layer = net.layer(loss.inputs[0])
    while through(layer) and len(layer.inputs) == 1:
        layer = net.layer(layer.inputs[0])
    return layer


def _cross_entropy(net: Network) -> bool:
    return net.loss is not None and net.loss.attrs.get("kind") == "cross_entropy"


def softmax_before_cross_entropy(net: Network) -> Iterator[LintWarning]:
    """`softmax` then `loss cross_entropy`: softmax twice; the scores hardly move (Keras habit)."""
    layer = _scores(net, _reshapes_or_eval_identity)
    if layer is not None and registry.of(layer).normalises_scores and _cross_entropy(net):
        yield _warn(
            layer,
            f"loss cross_entropy applies softmax itself; remove the softmax layer '{layer.name}'",
            "softmax twice squashes the scores into (0, 1) and training stalls; eval and "
            "predict report probabilities without it",
        )


def dropout_before_loss(net: Network) -> Iterator[LintWarning]:
    """Dropout on the class scores: it zeroes scores, not features."""
    layer = _scores(net)
    if layer is not None and registry.of(layer).identity_at_eval:
        yield _warn(
            layer,
            f"dropout '{layer.name}' drops class scores right before the loss",
            "put dropout before the last fc layer (as AlexNet does), not after it",
        )


# each activation kind's note, where it has one (netdsl/ops/activations/<kind>.py: squash)
_SQUASH = {k.name: k.squash for k in activations.kinds().values() if k.squash}


def squashed_scores(net: Network) -> Iterator[LintWarning]:
    """An activation on the class scores before cross_entropy, which needs them unbounded."""
    layer = _scores(net, _reshapes_or_eval_identity)
    if layer is None or not _cross_entropy(net):
        return
    # `relu r1` is an act layer too (elaboration): every activation is in attrs["activation"]
    act = layer.attrs["activation"][0] if isinstance(layer.attrs.get("activation"), tuple) else None
    if act in _SQUASH:
        yield LintWarning(
            f"'{layer.name}' applies {act} to the class scores before loss cross_entropy",
            layer.where("activation"),
            f"remove the {act}: {_SQUASH[act]} (the loss applies softmax itself)",
            layer.notes,
        )


def one_class(net: Network) -> Iterator[LintWarning]:
    """cross_entropy over one score: softmax of one number is 1, the loss 0, no gradient."""
    loss = net.loss
    if _cross_entropy(net) and loss.in_shapes and loss.in_shapes[0][0] == 1:
        yield _warn(
            loss,
            "loss cross_entropy over a single class score is always 0: nothing will learn",
            "make the last layer one score per class, or use loss mse for one output",
        )


def no_op_crops(net: Network) -> Iterator[LintWarning]:
    """Random crops and ten-crop testing of a known dataset whose images are no larger than
    the input: the trainer has nothing to crop, so the setting is silently ignored."""
    t = net.train
    name = known_dataset(t["data"])
    if name is None or net.input.out_shape is None:
        return
    _, h, w = KNOWN_DATASETS[name][0]
    _, ih, iw = net.input.out_shape
    if h > ih or w > iw:
        return
    images = f"{name} images are {h}x{w} and the input {ih}x{iw}"
    for a in t["augment"]:
        if a["kind"] == "crop" and a["pad"] == 0:
            yield LintWarning(
                f"crop() has no effect: {images}, so every crop is the whole image",
                t.locs.get("augment.crop", t.locs.get("augment")),
                f"shift the images by padding them, e.g. crop({ih}, pad={max(1, ih // 8)})",
            )
    if t["test_crops"] == 10:
        yield LintWarning(
            f"test_crops 10 has no effect: {images}, so there is one view to test",
            t.locs.get("test_crops"),
            "ten views need an input smaller than the images (AlexNet: 227 of 256)",
        )


RULES: tuple[Callable[[Network], Iterator[LintWarning]], ...] = (
    softmax_before_cross_entropy,
    dropout_before_loss,
    squashed_scores,
    one_class,
    no_op_crops,
)
