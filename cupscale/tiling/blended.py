"""Blended diffusion (Avrahami et al. 2022) with MSBD's low-passed background (seed 002).

Outside the mask the sample is pinned to the source: the model sees the source noised to the
current noise level, and its denoised estimate there is replaced by the source. With a low-pass,
only the source's low frequencies are pinned and the model's high frequencies are kept, so an
upscaled background gains detail while keeping its structure (MSBD Fig. 5f).
"""
from __future__ import annotations

import torch

from .lowpass import align_low_frequencies, gaussian_lowpass


def pinned_background(denoised: torch.Tensor, source: torch.Tensor, lowpass_sigma: float) -> torch.Tensor:
    """What the background is pinned to: the source, or LP(source) + HP(denoised)."""
    if lowpass_sigma <= 0:
        return source
    # The Global Structure Prior's alignment at full weight, with the source as the reference.
    return align_low_frequencies(denoised, gaussian_lowpass(source, lowpass_sigma), 1.0, "gaussian", lowpass_sigma)


def blend(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` x inside + (1 - mask) x outside; mask broadcasts over batch and channels."""
    return outside + (inside - outside) * mask
