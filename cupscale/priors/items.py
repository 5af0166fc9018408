"""Which item of a model batch is which: cond or uncond, the region it is a tile of, the image it belongs to.

The regional priors change the positive (cond) branch only; the negative keeps its plain attention, so CFG
pushes away from the same negative as without them. A batch is laid out as the host evaluates it: chunks
(cond, uncond, ...) of equal size, each (tile, image) under MultiDiffusion (cupscale.tiling.multidiffusion.
TileBatch), or just images when the latent is not tiled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..tiling.grid import RegionGrid, region_grid

if TYPE_CHECKING:
    from ..tiling.multidiffusion import TileBatch

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Plain attention (q, k, v) -> out on (batch, tokens, heads·d), through whichever backend the host chose."""


@dataclass(frozen=True)
class ItemRegions:
    """For each of some items of a batch: its region (index in ``grid``) and its image in the batch."""

    grid: RegionGrid
    regions: tuple[int, ...]
    images: tuple[int, ...]


def item_regions(tiles: TileBatch | None, items: Sequence[int], per_chunk: int,
                 latent_hw: tuple[int, int]) -> ItemRegions:
    """Where ``items`` lie: on the tiles of ``tiles``, or without tiles in the whole latent as one region."""
    if tiles is None:
        h, w = latent_hw
        return ItemRegions(region_grid(h, w, h, w, 0), (0,) * len(items), tuple(i % per_chunk for i in items))
    return ItemRegions(tiles.grid, tuple(tiles.tile_of_item(i) for i in items), tuple(i % tiles.images for i in items))


def on_cond_items(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: Sequence[int], attend: Attend,
                  cond_attention: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Attention with the cond items (label 0) through ``cond_attention(items, q, k, v)`` and the others through
    ``attend``; ``labels`` names the batch's chunks in order (the host's cond_or_uncond)."""
    per_chunk = q.shape[0] // len(labels)
    cond = [i for i in range(q.shape[0]) if labels[i // per_chunk] == 0]
    if not cond:
        return attend(q, k, v)
    uncond = [i for i in range(q.shape[0]) if labels[i // per_chunk] != 0]
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    if uncond:
        out[uncond] = attend(q[uncond], k[uncond], v[uncond])
    out[cond] = cond_attention(cond, q[cond], k[cond], v[cond]).to(out.dtype)
    return out
