"""Fully connected (linear) layer: y = x @ w.T + b.

Shapes: x (N, F) (the caller flattens C*H*W), w (O, F) (PyTorch layout), b (O,), y (N, O).

The float32 CPU path is three BLAS GEMMs through NumPy (``np.dot(..., out=...)`` on
contiguous float32 arrays and their transposes, which BLAS reads with a transpose flag
instead of copying), so it needs no Numba kernel and nothing is allocated per call.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def ref_forward(
    x: np.ndarray,  # (N, F)
    w: np.ndarray,  # (O, F)
    b: np.ndarray | None,  # (O,) or None
) -> np.ndarray:
    """Reference linear layer in float64 -> y (N, O)."""
    y = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T  # (N, O)
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :]
    return y


def ref_backward(
    dy: np.ndarray,  # (N, O)
    x: np.ndarray,  # (N, F)
    w: np.ndarray,  # (O, F)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference gradients in float64 -> (dx (N, F), dw (O, F), db (O,))."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# float32 CPU
# ---------------------------------------------------------------------------------------------


class FcCPU:
    """float32 linear layer on the CPU (BLAS via NumPy) for fixed shapes."""

    def __init__(self, n: int, f: int, o: int, bias: bool) -> None:
        self.shape = (n, f, o)
        self.bias = bias

    def forward(
        self,
        x: np.ndarray,  # (N, F) float32 C-contiguous
        w: np.ndarray,  # (O, F) float32 C-contiguous
        b: np.ndarray | None,  # (O,) float32 or None
        y: np.ndarray,  # (N, O) float32 C-contiguous, written
    ) -> None:
        """y = x @ w.T + b."""
        np.dot(x, w.T, out=y)  # (N, F) @ (F, O)
        if self.bias and b is not None:
            np.add(y, b, out=y)  # broadcast over the batch

    def backward(
        self,
        dy: np.ndarray,  # (N, O) float32
        x: np.ndarray,  # (N, F) float32, the forward input
        w: np.ndarray,  # (O, F) float32
        dx: np.ndarray | None,  # (N, F) float32 overwritten, or None to skip
        dw: np.ndarray,  # (O, F) float32, overwritten
        db: np.ndarray | None,  # (O,) float32 overwritten, or None without bias
    ) -> None:
        """Overwrite dx (unless None), dw and db (unless None) with the gradients."""
        if dx is not None:
            np.dot(dy, w, out=dx)  # (N, O) @ (O, F)
        np.dot(dy.T, x, out=dw)  # (O, N) @ (N, F)
        if db is not None:
            np.sum(dy, axis=0, out=db)


# CUDA kernels: see the CUDA backend issue
