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
    ``attend``; ``labels`` names the batch's chunks in order (the host's cond_or_uncond).

    Chunks are contiguous, so both groups are gathered by slices: indexing by a list of items would build an
    index tensor on the host and copy it to the device at every call of every layer.
    """
    per_chunk = q.shape[0] // len(labels)
    chunks = [slice(c * per_chunk, (c + 1) * per_chunk) for c in range(len(labels))]
    cond = [c for c, label in enumerate(labels) if label == 0]
    if not cond:
        return attend(q, k, v)
    uncond = [c for c, label in enumerate(labels) if label != 0]

    def gather(t: torch.Tensor, group: list[int]) -> torch.Tensor:
        return t[chunks[group[0]]] if len(group) == 1 else torch.cat([t[chunks[c]] for c in group])

    items = [i for c in cond for i in range(chunks[c].start, chunks[c].stop)]
    parts = {}
    for c, out in zip(cond, cond_attention(items, gather(q, cond), gather(k, cond), gather(v, cond)).split(per_chunk)):
        parts[c] = out
    if uncond:
        for c, out in zip(uncond, attend(gather(q, uncond), gather(k, uncond), gather(v, uncond)).split(per_chunk)):
            parts[c] = out
    dtype = parts[uncond[0]].dtype if uncond else q.dtype
    return torch.cat([parts[c].to(dtype) for c in range(len(labels))])
