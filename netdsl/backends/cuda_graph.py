"""The training step as a CUDA graph: captured once, replayed every step.

Why: a step is one kernel launch per layer and direction plus the fan-out additions, and a
Numba launch costs several microseconds of Python (argument type checks, the launch call)
per kernel. On a small net such as LeNet-5 at batch 128 the launches take longer than the
kernels; a CUDA graph replays all of them with one launch.

What is captured: the forward (train mode) and backward launches of a step, nothing else.
What stays outside, every step: the uploads before the replay (the batch, the labels, the
dropout keep-masks, which are drawn on the host so the random stream is the CPU's; copied on
the upload stream and landed on the kernels' stream before the replay), the
download of the loss after it, and the optimizer's one kernel, whose learning rate (and
Adam's step count) change between steps while a graph freezes its launch arguments. The
buffers a graph reads and writes are the plan's, allocated once, so replays see each
step's new data.

Modes, from NETDSL_CUDA_GRAPHS: on a real GPU graphs are used unless it is 0; under Numba's
simulator they are off unless it is 1, and then a list of the captured launches, replayed in
order, stands in for the graph. The capture is the same code, so the simulator tests check
what matters for correctness: that a replayed step gives the eager step's loss and
gradients, step after step, with nothing per-step frozen into the capture.

The first step of a plan always runs eagerly (it compiles every kernel, which must not
happen inside a capture); the second is captured. If the capture fails (an older
numba-cuda, a driver refusal) the plan says why once and keeps launching eagerly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..ops import cudakit
from ..ops.cudakit import say_once


def graph_mode() -> str:
    """'cuda' (real graphs), 'replay' (the simulator's stand-in) or 'off'."""
    want = os.environ.get("NETDSL_CUDA_GRAPHS", "")
    if cudakit.simulator():
        return "replay" if want not in ("", "0") else "off"
    return "off" if want == "0" else "cuda"


class _Replay:
    """The simulator's graph: the captured launches, replayed in order."""

    def __init__(self, step: Callable[[], None]) -> None:
        self.launches: list[tuple[cudakit.Launch, tuple]] = []
        with cudakit.capturing(lambda launch, args: self.launches.append((launch, args))):
            step()

    def launch(self) -> None:
        for launch, args in self.launches:
            launch.run(*args)


class _CudaGraph:
    """A real CUDA graph, captured with cuda.core's GraphBuilder (numba-cuda >= 0.2x launches
    a kernel into a graph builder given in place of a stream)."""

    def __init__(self, step: Callable[[], None]) -> None:
        from numba import cuda

        try:
            from cuda.core import Device
        except ImportError:  # cuda.core before 0.3
            from cuda.core.experimental import Device

        dev = Device(cuda.get_current_device().id)
        dev.set_current()  # the primary context, which Numba uses too
        builder = dev.create_graph_builder()
        self.count = 0

        def into_graph(launch: cudakit.Launch, args: tuple) -> None:
            launch.kernel[launch.grid, launch.block, builder](*args)
            self.count += 1

        # "relaxed": this thread may still make calls that are unsafe during a capture; none
        # are made (only launches reach the builder), but Numba's own bookkeeping may.
        builder.begin_building("relaxed")
        try:
            with cudakit.capturing(into_graph):
                step()
        finally:
            builder.end_building()
        self.graph = builder.complete()
        # The legacy default stream, the kernels' stream: it has waited for this step's
        # uploads and landed them (cuda_runner.Uploads), and the loss download follows there.
        self.stream = dev.default_stream

    def launch(self) -> None:
        self.graph.launch(self.stream)


class StepGraph:
    """Runs a plan's training-step launches: eagerly, or through a captured graph."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = graph_mode() if mode is None else mode
        self.graph: Any = None
        self.eager_steps = 0
        self.replays = 0

    def run(self, step: Callable[[], None]) -> bool:
        """Run step() (launches only), or replay its capture. True when it was a replay."""
        if self.mode == "off" or self.eager_steps == 0:
            step()
            self.eager_steps += 1
            return False
        if self.graph is None:
            try:
                self.graph = (_Replay if self.mode == "replay" else _CudaGraph)(step)
            except Exception as e:  # keep training, eagerly; say why once
                self.mode = "off"
                say_once(f"CUDA graph capture failed ({type(e).__name__}: {e}); "
                          "launching kernels one by one")  # fmt: skip
                step()
                self.eager_steps += 1
                return False
        self.graph.launch()
        self.replays += 1
        return True
