"""Parameter initialisation: gaussian, uniform, xavier, he, constant; per layer or default.

Defaults come from the train section's `init weight=..., bias=...` (he and 0 unless
given); a layer's own `init` / `bias_init` wins. Batch-norm starts at gamma 1, beta 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .ir import Network
from .ops import registry


def sample(spec: dict[str, Any], shape, fan_in: float, fan_out: float,
           rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Draw one tensor from an initialiser spec like {'kind': 'gaussian', 'std': 0.01}."""
    kind = spec["kind"]
    if kind == "gaussian":
        return rng.normal(spec.get("mean", 0.0), spec["std"], shape)
    if kind == "uniform":
        return rng.uniform(-spec["scale"], spec["scale"], shape)
    if kind == "xavier":  # Glorot and Bengio 2010: U(+-sqrt(6 / (fan_in + fan_out)))
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, shape)
    if kind == "he":  # He et al. 2015: N(0, sqrt(2 / fan_in))
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if kind == "constant":
        return np.full(shape, spec["value"])
    raise ValueError(f"unknown initialiser {kind}")


# Values drawn per chunk: AlexNet's 61M float64 draws at once were a 488 MB temporary,
# written three times (draw, scale, shift) before the cast. The drawing runs in a thread
# (InitInThread) beside a main thread busy with Python (binding the plan, loading kernels),
# and each NumPy call of a chunk must take the GIL back, which a thread running Python
# hands over only every 5 ms (sys.getswitchinterval()): with 1 M values a chunk and four
# calls, AlexNet's drawing took 1.9-2.1 s of wall time for 0.7 s of CPU; with 4 M (a 32 MB
# temporary) and three calls, 0.90-0.93 s.
CHUNK = 1 << 22


def sample_into(out: np.ndarray, spec: dict[str, Any], fan_in: float, fan_out: float,
                rng: np.random.Generator, chunk: int = CHUNK) -> None:  # fmt: skip
    """out[...] = sample(spec, out.shape, ...) cast to out's dtype, bit for bit the same
    values (the generator's stream is consumed in order, chunk after chunk, and
    ``loc + scale * z`` is computed in float64 as numpy's Generator.normal/uniform do), with
    no full-size float64 temporary. `out`: C-contiguous."""
    kind = spec["kind"]
    if kind == "gaussian":
        loc, scale, draw = spec.get("mean", 0.0), spec["std"], rng.standard_normal
    elif kind == "he":
        loc, scale, draw = 0.0, math.sqrt(2.0 / fan_in), rng.standard_normal
    elif kind in ("uniform", "xavier"):
        a = spec["scale"] if kind == "uniform" else math.sqrt(6.0 / (fan_in + fan_out))
        loc, scale, draw = -a, a - -a, rng.random  # low + (high - low) * U[0, 1)
    else:
        out[...] = sample(spec, out.shape, fan_in, fan_out, rng)
        return
    flat = out.reshape(-1)  # a view: out is contiguous
    buf = np.empty(min(chunk, flat.size))
    for lo in range(0, flat.size, chunk):
        part = buf[: min(chunk, flat.size - lo)]
        draw(out=part)
        np.multiply(part, scale, out=part)
        # the shift in float64, cast once into out (what the assignment did): one call less
        np.add(part, loc, out=flat[lo : lo + part.size], casting="same_kind")


def init_params(net: Network, slots, theta: np.ndarray, rng: np.random.Generator,
                masks: dict[str, np.ndarray]) -> None:  # fmt: skip
    """Fill the flat parameter buffer in layer order, reproducibly from `rng`."""
    for s in slots:
        init_slot(net, s, theta, rng, masks)


def init_slot(net: Network, s, theta: np.ndarray, rng: np.random.Generator,
              masks: dict[str, np.ndarray]) -> None:  # fmt: skip
    """Fill one parameter tensor (a compiler.Slot) of theta from `rng`: init_params calls it
    for each slot in order."""
    defaults = net.train["init"]
    layer = net.layer(s.layer)
    pname = s.key.split(".")[-1]
    view = theta[s.offset : s.offset + s.size].reshape(s.shape)
    lt = registry.of(layer)
    if pname == "bias":
        spec = layer.attrs.get("bias_init") or defaults["bias"]
    else:
        spec = layer.attrs.get("init") or defaults["weight"]
    fan_in, fan_out = lt.fans(layer, layer.params["weight"])
    spec = lt.init_spec(layer, pname, spec, fan_in)  # bn: gamma 1, beta 0
    sample_into(view, spec, fan_in, fan_out, rng)
    if pname == "weight" and layer.name in masks:
        view[...] *= masks[layer.name]


class InitInThread:
    """init_params in a thread of its own: the same draws from the same generator in the same
    order, so the same values. A plan starts it once its buffers are bound and goes on
    (loading or compiling kernels, allocating the optimizer's state); whatever reads a
    layer's parameters first calls wait_for(layer), whatever reads them all wait_for().
    AlexNet's 61 M draws take 0.65 s, of which the forward of its convolutions (the
    parameters it needs first: 6 % of them) then hides most. NumPy's generator and
    arithmetic release the GIL on chunks this size (sample_into: 4 M values)."""

    def __init__(self, net: Network, slots, theta: np.ndarray, rng: np.random.Generator,
                 masks: dict[str, np.ndarray]) -> None:  # fmt: skip
        import threading

        # layer -> how many slots must be drawn before it may run: its last one and all before
        self._need = {s.layer: i + 1 for i, s in enumerate(slots)}
        self._all = len(slots)
        self.done = 0  # slots drawn so far (written by the thread only)
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(net, slots, theta, rng, masks),
                                        name="netdsl-init", daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self, net, slots, theta, rng, masks) -> None:
        try:
            for i, s in enumerate(slots):
                init_slot(net, s, theta, rng, masks)
                with self._cond:
                    self.done = i + 1
                    self._cond.notify_all()
        except BaseException as e:  # handed to the thread that waits (wait_for raises it)
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def wait_for(self, layer: str | None = None) -> bool:
        """Block until `layer`'s parameters (None: all) are drawn; True once all are. An
        error in the drawing is raised here."""
        need = self._all if layer is None else self._need.get(layer, 0)
        if self.done < need:
            with self._cond:
                while self.done < need and self._error is None:
                    self._cond.wait()
        if self.done < need and self._error is not None:
            raise self._error
        return self.done >= self._all
