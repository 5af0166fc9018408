"""Checks at the door, for inputs that arrive over an API from anyone: values that are not numbers, empty
tensors, text past what any model reads, and requests for more memory than the machine has. Each fails
with an InputError naming the field, before any work or allocation, so a long-lived server answers the
one bad prompt and serves the next."""
from __future__ import annotations

import torch

from .errors import InputError


def check_finite(t: torch.Tensor, field: str, what: str = "") -> None:
    """Raise unless every value of ``t`` is finite: one NaN or inf spreads through sampling and blending to the
    whole image, silently (a black or noise output)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{{f}} holds {bad} NaN or infinite value{'s' if bad != 1 else ''} "
                         f"(of {t.numel()}{', ' + what if what else ''}): check the node that made it "
                         f"(a multiply by NaN, a broken file) and give finite values.", f=field)


def check_not_empty(t: torch.Tensor, field: str) -> None:
    """Raise when ``t`` holds no values (a batch of 0, a side of 0 pixels): the work after it would divide by
    its size or reduce over nothing, and fail with a message about neither."""
    if t.numel() == 0:
        raise InputError(f"{{f}} is empty (shape {tuple(t.shape)}): give at least one image of at least one pixel.",
                         f=field)


def check_least_side(t: torch.Tensor, field: str, least: int, unit: str, why: str) -> None:
    """Raise when either of ``t``'s last two sides (or, for images, H and W before the channels: pass them as
    the last two) is under ``least``: a 1-cell latent leaves one value per normalisation group, a 1-pixel hint
    resizes to nothing."""
    h, w = t.shape[-2:]
    if min(h, w) < least:
        raise InputError(f"{{f}} is {w}x{h} {unit}; {why} needs at least {least} {unit} a side: give a larger "
                         f"one.", f=field)


MAX_TEXT_CHARS = 16_000
"""Longer free text (an MLLM's instructions, prompts, a prefix) is refused before any model or tokenizer sees
it: four thousand tokens or so, past what a text encoder reads (T5's 512 tokens, CLIP's 77 a chunk); a 5 MB
instruction kept a local VLM busy past the queue's interrupt."""


def check_text(text: str, name: str) -> None:
    """Refuse a free text input past :data:`MAX_TEXT_CHARS`, naming it."""
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"{{text}} holds {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} this node "
                         f"reads: shorten it.", text=name)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.1f} GiB"


def check_fits(nbytes: int, available: int, what: str, fix: str, **fields: str) -> None:
    """Raise before allocating ``nbytes`` for ``what`` when the machine has only ``available`` free: the process
    would otherwise be killed by the system (CPU) or fail halfway (GPU). ``what`` and ``fix`` may name fields
    as ``{slot}`` (``fields``: slot -> field)."""
    if nbytes > available:
        raise InputError(f"{what} would need {gib(nbytes)}, but {gib(available)} is free: {fix}", **fields)
