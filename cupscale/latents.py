"""Latents of either layout the models use: (batch, channels, height, width), or with a frame axis before the
image's (Qwen-Image's Wan 2.1 VAE: batch, channels, 1, height, width). The image axes are always last."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_hw(x: torch.Tensor, size: tuple[int, int], **interpolation) -> torch.Tensor:
    """``F.interpolate`` over the last two axes only, whatever comes before them."""
    flat = x.flatten(1, -3) if x.ndim > 4 else x
    return F.interpolate(flat, size=size, **interpolation).reshape(*x.shape[:-2], *size)


def layout(ndim: int) -> str:
    """How a latent of ``ndim`` axes reads, for error messages."""
    return "(batch, channels, frames, height, width)" if ndim == 5 else "(batch, channels, height, width)"
