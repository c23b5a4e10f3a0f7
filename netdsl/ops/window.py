"""Sliding-window geometry shared by the layer types that slide a kernel (conv, pool,
subsample): output length, TensorFlow's 'same' padding and the report's kernel text.
No numpy: `netdsl check` uses it."""

from __future__ import annotations

from ..ir import Layer


def window(layer: Layer, size: int, k: int, s: int, d: int, pad: tuple[int, int], axis: str,
           key: str) -> int:  # fmt: skip
    """Output length of a sliding window; checks the kernel fits its padded input."""
    ke = d * (k - 1) + 1  # dilated kernel extent
    padded = size + pad[0] + pad[1]
    if ke > padded:
        what = f"kernel {k}" + (f" (dilated to {ke})" if d > 1 else "")
        raise layer.error(
            f"{layer.name}: {what} is larger than its padded input {axis} {padded}",
            key,
            f"input {axis} is {size}; use a smaller kernel or more padding",
        )
    return (padded - ke) // s + 1


def same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's 'same': output ceil(size/stride), extra padding at the bottom/right."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
    return total // 2, total - total // 2


def window_text(layer: Layer, same: bool = False) -> list[str]:
    """The kernel column's parts for a window: ["3x3", "/1", " p1"] (" same" for `same`)."""
    a = layer.attrs
    kh, kw = a["kernel"]
    s = a["stride"]
    parts = [f"{kh}x{kw}", f"/{s[0]}" if s[0] == s[1] else f"/{s[0]}x{s[1]}"]
    ph, pw = a.get("pad_tl", (0, 0))
    if same:
        parts.append(" same")
    elif ph or pw:
        parts.append(f" p{ph}" if ph == pw else f" p{ph}x{pw}")
    return parts


def window_rf(layer: Layer, r: int, j: int) -> tuple[int, int]:
    """A window of height k (dilation d, stride s) widens the field by d*(k-1) jumps."""
    a = layer.attrs
    kh = a["kernel"][0]
    d = a.get("dilation", (1, 1))[0]
    return r + d * (kh - 1) * j, j * a["stride"][0]
