"""Images as the host passes them (``B x H x W x C`` floats in [0, 1]) and as image models read them (bytes)."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``B x H x W x 3`` RGB bytes: a grey channel is repeated, an alpha channel dropped, values clamped."""
    rgb = images[..., :3].expand(*images.shape[:3], 3)
    return (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """``H x W x C`` (or ``B x H x W x C``) bytes as the host's IMAGE: floats in [0, 1], a batch of one added."""
    image = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255)
    return image[None] if image.ndim == 3 else image
