"""Bounded caches for a server that stays up for days: least recently used entries go first.

Every cache of the pack that outlives one call is an :class:`LRU` with a limit in entries and/or bytes,
read from an environment variable (documented in the README's "Under load and faults"), so that repeating,
alternating and resizing graphs cannot grow a process without end. ``PEAKS`` keeps the largest size each
named cache reached, for the soak (bench/soak.py) to show them at their bound.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")
PEAKS: dict[str, dict[str, int]] = {}
"""Name -> the most entries and bytes that cache held at once, and its limits."""


def env_limit(name: str, default: int) -> int:
    """A non-negative integer limit from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${name} = {raw!r} must be a whole number (0 disables the cache); unset it for "
                         f"the default {default}.") from None
    return max(0, value)


def tensor_bytes(value) -> int:
    """Bytes of a tensor or of the tensors in a tuple/list (anything else counts 0)."""
    if isinstance(value, (tuple, list)):
        return sum(map(tensor_bytes, value))
    return value.numel() * value.element_size() if hasattr(value, "element_size") else 0


class LRU(Generic[V]):
    """A mapping that keeps at most ``max_entries`` values and ``max_bytes`` (by ``size``), dropping the least
    recently used; a value larger than the byte limit on its own is returned by the caller but not kept."""

    def __init__(self, name: str, max_entries: int | None = None, max_bytes: int | None = None,
                 size: Callable[[V], int] = tensor_bytes):
        self.name, self.max_entries, self.max_bytes, self.size = name, max_entries, max_bytes, size
        self.entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def get(self, key: Hashable) -> V | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][0]

    def put(self, key: Hashable, value: V) -> V:
        self.pop(key)
        nbytes = self.size(value) if self.max_bytes is not None else 0
        self.entries[key] = (value, nbytes)
        self.bytes += nbytes
        while self.entries and self.over():
            self.pop(next(iter(self.entries)))
        self.note_peak()
        return value

    def over(self) -> bool:
        return ((self.max_entries is not None and len(self.entries) > self.max_entries)
                or (self.max_bytes is not None and self.bytes > self.max_bytes))

    def pop(self, key: Hashable) -> None:
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[1]

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def note_peak(self) -> None:
        peak = PEAKS.setdefault(self.name, {"entries": 0, "bytes": 0})
        peak.update(entries=max(peak["entries"], len(self.entries)), bytes=max(peak["bytes"], self.bytes),
                    max_entries=self.max_entries if self.max_entries is not None else -1,
                    max_bytes=self.max_bytes if self.max_bytes is not None else -1)
