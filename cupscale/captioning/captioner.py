"""A multimodal LLM behind the caption cache: asks only what it has not answered before, in batches.

Backends (local transformers models, OpenAI-compatible endpoints) live in
:mod:`cupscale.captioning.backends`; :class:`CaptionBackend` is what they must provide.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from PIL import Image

from ..errors import InputError
from .cache import CaptionCache
from .regions import Crop


class CaptionFailure(RuntimeError):
    """One call failed for its images only (a timeout, a server error): those regions may fall back."""


class CaptionBackend(Protocol):
    """A multimodal LLM that answers one instruction about each of a few images."""

    model_id: str  # names the model (and what changes its answers) in cache keys
    batch_size: int  # images per call

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str | CaptionFailure]:
        """One answer per image: its text, or the :class:`CaptionFailure` of that image alone; raises
        :class:`CaptionFailure` when the whole call failed."""


@dataclass(frozen=True)
class VLM:
    """A vision-language model as it flows from a loader to the captioners: one value serves every stage of a
    graph, so a local model is read from disk once; ``offload`` says what each captioning leaves of it
    (True: its weights in CPU memory for the next stage, False: nothing)."""

    backend: CaptionBackend
    offload: bool = False


@dataclass(frozen=True)
class Answer:
    """The model's answer to one (crop, instruction); ``error`` says why there is no text."""

    text: str
    error: str = ""


def clean(text: str) -> str:
    """One line of text: XPSR writes its descriptions with newlines replaced by spaces."""
    return re.sub(r"\s+", " ", text).strip()


Progress = Callable[[int, int], None]


class Captioner:
    """A backend behind the cache: asks the model only what it has not answered before, in batches."""

    def __init__(self, backend: CaptionBackend, cache: CaptionCache, max_tokens: int,
                 progress: Progress | None = None):
        if max_tokens < 1:
            raise InputError(f"{{max_tokens}} = {max_tokens} must be at least 1 (XPSR let LLaVA write up to "
                             f"about 200).", max_tokens="max_tokens")
        self.backend, self.cache, self.max_tokens = backend, cache, max_tokens
        self.progress = progress or (lambda done, total: None)
        self.model_calls = 0

    def key(self, crop: Crop, instruction: str) -> tuple:
        return crop.digest, crop.box, self.backend.model_id, instruction, self.max_tokens

    def answer(self, jobs: Sequence[tuple[Crop, str]]) -> list[Answer]:
        """One answer per (crop, instruction) job, from the cache where it can."""
        keys = [self.key(crop, instruction) for crop, instruction in jobs]
        found: dict[tuple, Answer] = {k: Answer(t) for k in set(keys) if (t := self.cache.get(k)) is not None}
        todo = {k: job for k, job in zip(keys, jobs) if k not in found}
        total = len(found) + len(todo)
        self.progress(len(found), total)
        by_instruction: dict[str, list[tuple[tuple, Crop]]] = {}
        for k, (crop, instruction) in todo.items():
            by_instruction.setdefault(instruction, []).append((k, crop))
        for instruction, items in by_instruction.items():
            for start in range(0, len(items), self.backend.batch_size):
                found.update(self.ask(items[start:start + self.backend.batch_size], instruction))
                self.progress(len(found), total)
        return [found[k] for k in keys]

    def ask(self, batch: list[tuple[tuple, Crop]], instruction: str) -> dict[tuple, Answer]:
        self.model_calls += 1
        try:
            texts = self.backend.caption([crop.image() for _, crop in batch], instruction, self.max_tokens)
        except CaptionFailure as e:
            return {k: Answer("", str(e)) for k, _ in batch}
        answers = {}
        for (k, _), text in zip(batch, texts, strict=True):
            if isinstance(text, CaptionFailure):
                answers[k] = Answer("", str(text))
                continue
            text = clean(text)
            if text:
                self.cache.put(k, text)
            answers[k] = Answer(text, "" if text else "the model's answer was empty")
        return answers
