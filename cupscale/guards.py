"""Checks at the door, for inputs that arrive over an API from anyone: values that are not numbers, and
requests for more memory than the machine has. Both fail with an InputError naming the field, before any
work or allocation, so a long-lived server answers the one bad prompt and serves the next."""
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


def gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.1f} GiB"


def check_fits(nbytes: int, available: int, what: str, fix: str, **fields: str) -> None:
    """Raise before allocating ``nbytes`` for ``what`` when the machine has only ``available`` free: the process
    would otherwise be killed by the system (CPU) or fail halfway (GPU). ``what`` and ``fix`` may name fields
    as ``{slot}`` (``fields``: slot -> field)."""
    if nbytes > available:
        raise InputError(f"{what} would need {gib(nbytes)}, but {gib(available)} is free: {fix}", **fields)
