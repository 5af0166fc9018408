"""Attention Composer (C-Upscale, seed 000, Fig. 4): the two regional priors, fused in cross-attention.

For a region R (a tile) whose features give queries Q_R at a chosen cross-attention layer:

    out_R = w · A_R V_g  +  (1 − w) · softmax(Q_R K_rᵀ / √d) V_r                               (AC)

- A_R V_g, the Regional Attention Prior (cupscale.priors.attention_prior): the global prompt's attention on the
  low-resolution image, read at R, applied to the global prompt's values. It keeps R faithful to what the
  low-res image shows there.
- softmax(Q_R K_rᵀ / √d) V_r, the Regional Semantic Prior: R's own attention to R's prompt (keys K_r and
  values V_r projected from it), e.g. a multimodal LLM's caption of that region (Fig. 3). It adds detail.

w = 1 keeps the global prompt's layout alone; w = 0 lets every region follow its own prompt. Only the
positive (cond) branch is composed: the negative keeps its own attention, so CFG pushes away from the same
negative as without the composer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tiling.grid import RegionGrid, check_same_grid
from ..captioning.region_prompts import RegionPrompts, from_json


def compose(prior: torch.Tensor, region: torch.Tensor, weight: float) -> torch.Tensor:
    """(AC) from its two attended terms: ``weight`` · prior + (1 − ``weight``) · region."""
    return weight * prior + (1.0 - weight) * region


@dataclass(frozen=True)
class RegionTexts:
    """The prompts the composer encodes: one per region of ``grid``, or a single one for every region.

    ``grid`` is None for prompts typed by hand, one line per region: their count is checked against the
    tiles once sampling shows them.
    """

    prompts: tuple[str, ...]
    grid: RegionGrid | None = None
    source: str = "the region prompts (MLLMRegionCaptioner)"

    def prompt_index(self, region: int) -> int:
        """The prompt of region ``region`` (row-major, as the grid's boxes)."""
        return 0 if len(self.prompts) == 1 else region

    def check(self, tiles: RegionGrid, tiles_name: str) -> None:
        """Raise a clear error unless these prompts fit ``tiles``, the grid the regions are sampled on."""
        if self.grid is not None:
            check_same_grid(tiles, self.grid, self.source, tiles_name)
        elif len(self.prompts) not in (1, len(tiles)):
            raise ValueError(
                f"{self.source} has {len(self.prompts)} lines, but {tiles_name} {tiles.describe()}: "
                f"{len(tiles)} regions. Write one line per region, row by row from the top left, or a single "
                f"line for every region.")


def from_region_prompts(prompts: RegionPrompts) -> RegionTexts:
    return RegionTexts(prompts.prompts, prompts.grid)


def parse_region_text(text: str, input_name: str) -> RegionTexts:
    """Prompts typed by hand: MLLMRegionCaptioner's JSON (edited), or one line per region, or one line for all."""
    if text.lstrip().startswith("{"):
        prompts = from_json(text, input_name)
        return RegionTexts(prompts.prompts, prompts.grid, f"the region prompts JSON in {input_name}")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise ValueError(f"{input_name} is empty: write one prompt per region (one line each, row by row), a single "
                         f"prompt for all regions, or connect region_prompts from MLLMRegionCaptioner.")
    return RegionTexts(lines, None, input_name)
