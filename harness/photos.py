"""Real photographs for measuring quality (scikit-image ships them), and PSNR."""
from __future__ import annotations

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> Image.Image:
    """A scikit-image photograph cropped to a multiple of 60 pixels per side (centred)."""
    import skimage.data
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    w, h = img.width // 60 * 60, img.height // 60 * 60
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def psnr(a: np.ndarray, b: np.ndarray, shave: int) -> float:
    """PSNR in dB of two uint8 RGB images, without a ``shave``-pixel border."""
    a = a[shave:-shave, shave:-shave].astype(np.float64) / 255
    b = b[shave:-shave, shave:-shave].astype(np.float64) / 255
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))
