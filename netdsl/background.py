"""State that a background thread is still filling: an attribute whose reads wait for it.

CompiledNet draws its parameters in a thread (init.InitInThread) and the Optimizer touches
its state's pages in one (optimizer._touch_in_thread) while the first step starts; whatever
reads `theta`, `runners`, `v` or `m` must see them complete. WaitsFirst is that attribute.
"""

from __future__ import annotations

from typing import Any


class WaitsFirst:
    """A data attribute `name` stored as `_name`: each read first calls the owner's method
    `wait` while the owner's attribute `pending` is not None (the method's job is to wait
    and then clear `pending`, so later reads cost one attribute test). Writes never wait."""

    def __init__(self, wait: str, pending: str) -> None:
        self.wait, self.pending = wait, pending
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        if getattr(obj, self.pending) is not None:
            getattr(obj, self.wait)()
        return getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, value)
