"""Captions kept between runs: re-queuing a graph must not ask a slow model the same questions again."""
from __future__ import annotations

from ..lru import LRU, env_limit

ENTRIES_VAR, CHARS_VAR = "CUPSCALE_CAPTION_CACHE_ENTRIES", "CUPSCALE_CAPTION_CACHE_CHARS"


class CaptionCache:
    """Answers keyed by image content, box, model, instruction and token budget (least recently used).

    Re-queuing an unchanged graph, or one where only the prefix or the failure policy changed,
    asks the model nothing; a new instruction, model or image asks again. Failures are not kept.
    Bounded in answers (``max_entries``) and in characters of text (``max_chars``): a server kept up
    for days with endpoint models that answer at length stays within a few megabytes.
    """

    def __init__(self, max_entries: int = 4096, max_chars: int | None = 16 * 1024 * 1024):
        self.lru: LRU[str] = LRU("caption cache", max_entries, max_chars, size=len)

    @property
    def max_entries(self) -> int:
        return self.lru.max_entries

    def __len__(self) -> int:
        return len(self.lru)

    def get(self, key: tuple) -> str | None:
        return self.lru.get(key)

    def put(self, key: tuple, text: str) -> None:
        self.lru.put(key, text)

    def clear(self) -> None:
        self.lru.clear()


def from_environment() -> CaptionCache:
    """The limits set by $CUPSCALE_CAPTION_CACHE_ENTRIES and $CUPSCALE_CAPTION_CACHE_CHARS, or the defaults."""
    return CaptionCache(env_limit(ENTRIES_VAR, 4096), env_limit(CHARS_VAR, 16 * 1024 * 1024))


CACHE = from_environment()
"""The process-wide cache the node uses."""
