"""Captions kept between runs: re-queuing a graph must not ask a slow model the same questions again."""
from __future__ import annotations

from collections import OrderedDict


class CaptionCache:
    """Answers keyed by image content, box, model, instruction and token budget (least recently used).

    Re-queuing an unchanged graph, or one where only the prefix or the failure policy changed,
    asks the model nothing; a new instruction, model or image asks again. Failures are not kept.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple, str] = OrderedDict()

    def get(self, key: tuple) -> str | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key: tuple, text: str) -> None:
        self.entries[key] = text
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


CACHE = CaptionCache()
"""The process-wide cache the node uses."""
