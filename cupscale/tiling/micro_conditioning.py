"""SDXL's crop micro-conditioning, per tile: each tile is conditioned as a crop of the whole image.

SDXL (Podell et al. 2023, Sec. 2.2, "Micro-Conditioning") appends to its pooled text embedding six
sinusoidal embeddings of 256 channels each: the original height and width, the crop's top-left corner
``c_top, c_left`` and the target height and width. Trained on random crops, the model reads ``c_top, c_left``
as where the picture it makes sits in a larger one. A tile is exactly such a crop, so it gets its own
offset in pixels while the sizes stay the whole image's; every tile otherwise claims to be the image's
top-left corner.
"""
from __future__ import annotations

from typing import Callable

import torch

from .grid import RegionGrid

SLOT = 256
"""Channels of one number's embedding (SDXL's ``Timestep(256)``)."""
SLOTS = 6
"""The numbers at the end of ``y``: height, width, crop top, crop left, target height, target width."""


def crop_columns(width: int) -> slice:
    """The columns of a ``y`` ``width`` wide that hold the crop's top and left (slots 3 and 4 of the last six)."""
    start = width - (SLOTS - 2) * SLOT
    return slice(start, start + 2 * SLOT)


def tile_crop_embeddings(grid: RegionGrid, pixels_per_cell: int, embed: Callable[[torch.Tensor], torch.Tensor],
                         like: torch.Tensor) -> torch.Tensor:
    """Each tile's crop slots, ``(tiles, 2 * SLOT)``: ``embed`` (the model's own embedder) of its top, then of
    its left, in pixels; computed in float32 on ``like``'s device, as ``like``'s dtype."""
    offsets = torch.tensor([[b.top, b.left] for b in grid.boxes], dtype=torch.float32, device=like.device)
    offsets = offsets * pixels_per_cell
    return embed(offsets.flatten()).reshape(len(grid), 2 * SLOT).to(like.dtype)


def with_tile_crops(y: torch.Tensor, crops: torch.Tensor, indices: tuple[int, ...], chunks: int) -> torch.Tensor:
    """``y`` of a tile batch (laid out ``(chunk, tile, image)``) with each item's crop slots those of its tile,
    ``crops[indices[t]]``; the pooled embedding and the sizes are kept."""
    k, width = len(indices), y.shape[-1]
    columns = crop_columns(width)
    # Tile by tile with Python ints: a view each, no index tensor to send to the device.
    per_tile = torch.stack([crops[i] for i in indices]).to(y)
    y = y.reshape(chunks, k, -1, width)
    per_item = per_tile[None, :, None, :].expand(chunks, k, y.shape[2], -1)
    return torch.cat([y[..., :columns.start], per_item, y[..., columns.stop:]], dim=-1).reshape(-1, width)
