"""The regions an MLLM looks at: the tiles of the sampler's grid, cut from the image in pixels.

Regions are the tiles of :func:`cupscale.tiling.grid.region_grid` in pixels (box x 8), so each
region's prompt lands on exactly the tile TiledBlendedDiffusion runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..images import to_uint8
from ..tiling.grid import RegionGrid, region_grid
from .region_prompts import PIXELS_PER_CELL


@dataclass(frozen=True, eq=False)
class Crop:
    """A region of the image as the model sees it (8-bit RGB), its pixel box and content digest."""

    box: tuple[int, int, int, int]  # top, left, height, width in pixels
    pixels: np.ndarray

    @cached_property
    def digest(self) -> str:
        data = np.ascontiguousarray(self.pixels).tobytes() + str(self.pixels.shape).encode()
        return hashlib.sha256(data).hexdigest()

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, "RGB")


def image_grid(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> RegionGrid:
    """The region grid of an image, in the units TiledBlendedDiffusion takes (pixels, multiples of 8).

    Built exactly as TiledBlendedDiffusion builds its tiles: ``region_grid`` over latent cells.
    """
    c = PIXELS_PER_CELL
    if height < c or width < c:
        raise InputError(f"{{image}} is {width}x{height} pixels: regions need at least {c}x{c} (one latent cell).",
                         image="image")
    return region_grid(height // c, width // c, tile_height // c, tile_width // c, overlap // c)


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """A host IMAGE holding one picture (``1 x H x W x C`` floats in [0, 1]) as ``H x W x 3`` bytes."""
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{{image}} has shape {tuple(image.shape)}: give one RGB image (a batch of 1; pick one "
                         f"from a batch with ImageFromBatch).", image="image")
    return to_uint8(image)[0]


def region_crops(pixels: np.ndarray, grid: RegionGrid) -> list[Crop]:
    """Each region's crop in pixels (latent box x 8), in the grid's row-major order."""
    c = PIXELS_PER_CELL
    crops = []
    for b in grid.boxes:
        box = (b.top * c, b.left * c, b.height * c, b.width * c)
        crops.append(Crop(box, pixels[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]))
    return crops


def whole_image(pixels: np.ndarray) -> Crop:
    return Crop((0, 0, pixels.shape[0], pixels.shape[1]), pixels)
