"""Backends: the plan of netdsl/compiler.py bound to a device.

The dependency runs one way: backends import the plan (CudaNet subclasses CompiledNet) and
the plan imports no backend; it asks each layer's type for its runner on the plan's
backend (LayerType.cpu_runner / cuda_runner). Choosing the backend for a device is here.
"""

from __future__ import annotations

from ..compiler import CompiledNet
from ..errors import NetdslError, NetError
from ..ir import Network

__all__ = ["compile_network", "resolve_device"]


def _cuda_available() -> tuple[bool, bool]:
    """(a CUDA device can be used, it is Numba's simulator)."""
    try:
        from numba import config, cuda

        return bool(cuda.is_available()), bool(config.ENABLE_CUDASIM)
    except Exception:  # numba-cuda missing or no driver
        return False, False


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'auto' (CUDA when a real GPU is present, else the CPU).

    'cuda' also accepts Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which the tests
    use; 'auto' does not pick the simulator, which is thousands of times slower than the CPU.
    """
    if device == "auto":
        ok, sim = _cuda_available()
        return "cuda" if ok and not sim else "cpu"
    if device == "cuda":
        if not _cuda_available()[0]:
            # not a mistake in the .net file: a runtime problem (exit status 1)
            raise NetdslError("no CUDA GPU is available (numba.cuda.is_available() is False: "
                              "no NVIDIA driver or device); use --device cpu")  # fmt: skip
        return device
    if device != "cpu":
        raise NetError(f"unknown device '{device}'; use cpu, cuda or auto")
    return device


def compile_network(net: Network, device: str = "cpu", batch: int | None = None,
                    seed: int = 0) -> CompiledNet:  # fmt: skip
    """Compile a checked Network for a device (see netdsl.compile): a CompiledNet on the
    CPU, a CudaNet (or GroupedCudaNet for `gpus N`) on CUDA.

    >>> cnet = compile_network(netdsl.load("nets/lenet5.net"), device="cpu", batch=64)
    """
    device = resolve_device(device)
    cls = CompiledNet
    if device == "cuda":
        from .cuda import cuda_class

        cls = cuda_class(net)
    return cls(net, device=device, batch=batch, seed=seed)
