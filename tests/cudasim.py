"""The CUDA tests' simulator speed-up: netdsl.ops.cudakit.fast_simulator_barrier."""

from __future__ import annotations

from netdsl.ops.cudakit import fast_simulator_barrier


def install() -> bool:
    """A faster (polling-free) barrier for Numba's CUDA simulator; see fast_simulator_barrier."""
    return fast_simulator_barrier()
