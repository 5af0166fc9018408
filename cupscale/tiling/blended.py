"""Blended diffusion (Avrahami et al. 2022) with the low-passed background of Multi-Stage Blended
Diffusion (Ackermann & Li 2022, MSBD).

Outside the mask the sample is pinned to the source: the model sees the source noised to the
current noise level, and its denoised estimate there is replaced by the source. With a low-pass,
only the source's low frequencies are pinned and the model's high frequencies are kept, so an
upscaled background gains detail while keeping its structure (MSBD Fig. 5f).
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .grid import RegionGrid
from .lowpass import align_low_frequencies, gaussian_lowpass


def mask_at_latent(mask: torch.Tensor, latent_hw: tuple[int, int], ratio: int) -> torch.Tensor:
    """A mask of the image's size (or the latent's) as ``(batch, 1, h, w)`` at latent resolution.

    VAE Encode drops up to ``ratio - 1`` pixels of an image whose sides are not whole latent cells
    (``ratio`` pixels each), half on each side; a mask of the uncropped image is cropped the same way.
    """
    h, w = latent_hw
    mh, mw = mask.shape[-2:]
    mask = mask.reshape(-1, 1, mh, mw).float()
    if (mh, mw) == (h, w):
        return mask
    if not (h * ratio <= mh < (h + 1) * ratio and w * ratio <= mw < (w + 1) * ratio):
        raise InputError(f"{{mask}} is {mw}x{mh} pixels but the latent being sampled is {w}x{h} "
                         f"({w * ratio}x{h * ratio} pixels): give a mask of the image's size.", mask="mask")
    top, left = (mh - h * ratio) // 2, (mw - w * ratio) // 2
    mask = mask[:, :, top:top + h * ratio, left:left + w * ratio]
    return torch.nn.functional.interpolate(mask, size=(h, w), mode="area")


def tiles_touching(grid: RegionGrid, mask: torch.Tensor) -> list[int]:
    """The tiles with some of ``mask`` in them: under a hard-pinned mask the others would be replaced
    by the background whole, so they need not be evaluated."""
    return [i for i, b in enumerate(grid.boxes) if mask[(..., *b.slices())].max() > 0]


def pinned_background(denoised: torch.Tensor, source: torch.Tensor, lowpass_sigma: float) -> torch.Tensor:
    """What the background is pinned to: the source, or LP(source) + HP(denoised)."""
    if lowpass_sigma <= 0:
        return source
    # The Global Structure Prior's alignment at full weight, with the source as the reference.
    return align_low_frequencies(denoised, gaussian_lowpass(source, lowpass_sigma), 1.0, "gaussian", lowpass_sigma)


def pin_background(denoised: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                   lowpass_sigma: float) -> torch.Tensor:
    """The denoised estimate with everything outside ``mask`` pinned (see :func:`pinned_background`)."""
    return blend(denoised, pinned_background(denoised, source, lowpass_sigma), mask)


def blend(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` x inside + (1 - mask) x outside; mask broadcasts over batch and channels."""
    return outside + (inside - outside) * mask
