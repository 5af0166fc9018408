"""A DiT tile's place in the whole image, as its positional embeddings carry it.

A DiT knows where each patch lies only from its positional embedding: RoPE ids (Flux, Flux.2, Qwen-Image,
Chroma, HiDream, Z-Image) or a
learned table cropped around its centre (SD3). Run alone, a tile at the bottom right gets the ids of an
image's top left, and its neighbours disagree about what lies where. Here each batch item's ids (or
table crop) are those of its tile's patches inside the whole latent, so overlapping tiles see the same
positions for the same patches. Where a model centres its ids (Qwen-Image) the whole image's centre is
kept as the origin.
"""
from __future__ import annotations

import torch

from .multidiffusion import TileBatch


def patch_grid(hw: tuple[int, int], patch: int) -> tuple[int, int]:
    """Patches (image tokens) of a latent of ``hw`` cells: the models pad to whole patches."""
    return -(-hw[0] // patch), -(-hw[1] // patch)


def tile_origins(batch: TileBatch, patch: int) -> tuple[tuple[int, int], ...]:
    """Each batch item's tile top-left, (row, column), in whole patches of ``patch`` latent cells (tiles are
    patch-aligned: cupscale.tiling.grid.tile_starts)."""
    items = len(batch.indices) * batch.chunks * batch.images
    boxes = [batch.grid.boxes[batch.tile_of_item(i)] for i in range(items)]
    return tuple((box.top // patch, box.left // patch) for box in boxes)


def id_offsets(origins: tuple[tuple[int, int], ...], shift: tuple[int, int] = (0, 0), axes: int = 3) -> torch.Tensor:
    """(items, 1, axes): what moves RoPE ids (index, row, column, and any axes after: Flux.2 has four) of tiles to
    ``origins`` plus a common ``shift`` (row, column): added to a tile's ids, it gives the whole image's ids at
    the tile's patches."""
    offsets = torch.zeros(len(origins), 1, axes)
    offsets[:, 0, 1:3] = torch.tensor(origins, dtype=torch.float32) + torch.tensor(shift, dtype=torch.float32)
    return offsets


def grid_ids(hw: tuple[int, int]) -> torch.Tensor:
    """(h*w, 2): the (row, column) ids an image of ``hw`` patches gives its patches, row-major, from (0, 0): how a
    tile run alone is numbered by the models that build their ids inline (Chroma, HiDream, Z-Image)."""
    rows, cols = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()


def centred_shift(tile_hw: tuple[int, int], whole_hw: tuple[int, int]) -> tuple[int, int]:
    """For ids centred on the image (Qwen-Image: row - rows // 2): the change of origin from a tile's centre
    to the whole image's, in patches."""
    return tuple(t // 2 - w // 2 for t, w in zip(tile_hw, whole_hw))


def table_crops(table: torch.Tensor, tile_hw: tuple[int, int], whole_hw: tuple[int, int],
                origins: tuple[tuple[int, int], ...]) -> torch.Tensor | None:
    """A learned position table (1, side·side, channels) read as SD3 reads it for the whole image (the
    centred crop of ``whole_hw`` patches), at each item's tile: (items, h·w, channels). None when the whole
    image is larger than the table, which then has no positions for it."""
    side = int(round(table.shape[1] ** 0.5))
    (h, w), (H, W) = tile_hw, whole_hw
    if H > side or W > side:
        return None
    grid = table.reshape(side, side, -1)
    top, left = (side - H) // 2, (side - W) // 2
    return torch.stack([grid[top + r:top + r + h, left + c:left + c + w].reshape(h * w, -1) for r, c in origins])
