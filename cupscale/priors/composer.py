"""Attention Composer (C-Upscale, Fig. 4): the two regional priors, fused in cross-attention.

For a region R (a tile) whose features give queries Q_R at a chosen cross-attention layer:

    out_R = w · A_R V_g  +  (1 - w) · softmax(Q_R K_r^T / sqrt(d)) V_r                          (AC)

- A_R V_g, the Regional Attention Prior (cupscale.priors.attention_prior): the global prompt's attention on the
  low-resolution image, read at R, applied to the global prompt's values. It keeps R faithful to what the
  low-res image shows there.
- softmax(Q_R K_r^T / sqrt(d)) V_r, the Regional Semantic Prior: R's own attention to R's prompt (keys K_r and
  values V_r projected from it), e.g. a multimodal LLM's caption of that region (Fig. 3). It adds detail.

w = 1 keeps the global prompt's layout alone; w = 0 lets every region follow its own prompt. Only the
positive (cond) branch is composed: the negative keeps its own attention, so CFG pushes away from the same
negative as without the composer.

The region prompts are encoded once and projected at sampling time by each layer's own to_k / to_v, as
loaded for that run, so weight patches (LoRAs) apply to them as to the global prompt. A DiT's text is not
projected once but transformed by every block beside the image, so there each tile runs with its region's
prompt as its text (:meth:`ComposerRun.region_contexts`) and w scales the prior's term
(cupscale.priors.joint_attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import RunError
from ..lru import LRU, env_limit
from ..tiling.grid import RegionGrid, check_same_grid
from ..captioning.region_prompts import MAX_JSON_CHARS, MAX_REGIONS, RegionPrompts, from_json
from .items import Attend


def compose(prior: torch.Tensor, region: torch.Tensor, weight: float) -> torch.Tensor:
    """(AC) from its two attended terms: ``weight`` · prior + (1 - ``weight``) · region."""
    return weight * prior + (1.0 - weight) * region


def composed_attention(weight: float, prior: Callable[[], torch.Tensor],
                       region: Callable[[], torch.Tensor]) -> torch.Tensor:
    """(AC), each term computed only when its weight counts (w = 1: the prior alone; w = 0: the region's)."""
    if weight >= 1:
        return prior()
    return region() if weight <= 0 else compose(prior(), region(), weight)


def region_attention(q: torch.Tensor, keys_values: list[tuple[torch.Tensor, torch.Tensor]],
                     attend: Attend) -> torch.Tensor:
    """softmax(Q_R K_r^T / sqrt(d)) V_r for each item of ``q`` with its own (K_r, V_r); items batched by prompt
    length."""
    out = q.new_empty(q.shape[0], q.shape[1], keys_values[0][1].shape[-1])
    for length in {k.shape[1] for k, _ in keys_values}:
        items = [i for i, (k, _) in enumerate(keys_values) if k.shape[1] == length]
        keys = torch.cat([keys_values[i][0] for i in items])
        values = torch.cat([keys_values[i][1] for i in items])
        out[items] = attend(q[items], keys, values)
    return out


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
    """Prompts typed by hand: MLLMRegionCaptioner's JSON (edited), or one line per region, or one line for all.
    Bounded as the JSON is, before any prompt is encoded."""
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{input_name} holds {len(text):,} characters, more than region prompts need (at most "
                         f"{MAX_JSON_CHARS:,}): write one prompt per region, or connect region_prompts.")
    if text.lstrip().startswith("{"):
        prompts = from_json(text, input_name)
        return RegionTexts(prompts.prompts, prompts.grid, f"the region prompts JSON in {input_name}")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(lines) > MAX_REGIONS:
        raise ValueError(f"{input_name} holds {len(lines):,} lines, more than the {MAX_REGIONS:,} regions region "
                         f"prompts are made for: write one line per region (row by row), or one line for all.")
    if not lines:
        raise ValueError(f"{input_name} is empty: write one prompt per region (one line each, row by row), a single "
                         f"prompt for all regions, or connect region_prompts from MLLMRegionCaptioner.")
    return RegionTexts(lines, None, input_name)


@dataclass(frozen=True)
class ComposerSettings:
    """What the composer was given: w and the region prompts, each encoded once (one embedding per prompt)."""

    weight: float
    texts: RegionTexts
    embeddings: tuple[torch.Tensor, ...]


KEYS_VAR = "CUPSCALE_COMPOSER_KEYS_MB"


def projected_keys_cache() -> LRU:
    """K_r, V_r per (layer, prompt) for one run, at most $CUPSCALE_COMPOSER_KEYS_MB (default 1024): SDXL's 70
    layers times a 4K image's 25 region prompts would otherwise keep about 1.4 GB. An evicted pair is projected
    again when next needed (two small matmuls), so the limit trades time for memory, never the result."""
    return LRU("composer keys", max_bytes=env_limit(KEYS_VAR, 1024) * 1024 * 1024)


@dataclass
class ComposerRun:
    """One sampling run of the composer: region prompts projected per layer, and the grids already checked.
    ``tiles`` is what the user knows the sampled regions as, for the error when the prompts do not fit them."""

    settings: ComposerSettings
    tiles: str
    projected: LRU = field(default_factory=projected_keys_cache)
    checked: set[tuple] = field(default_factory=set)
    moved: dict = field(default_factory=dict)

    def check(self, grid: RegionGrid) -> None:
        """The prompts against the grid the regions are sampled on, once per grid."""
        if grid.boxes not in self.checked:
            self.settings.texts.check(grid, self.tiles)
            self.checked.add(grid.boxes)

    def keys_values(self, layer: tuple, attn2: nn.Module, region: int,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_r, V_r of region ``region``'s prompt at ``layer``, projected by its ``attn2`` once per run."""
        prompt = self.settings.texts.prompt_index(region)
        found = self.projected.get((layer, prompt))
        if found is None:
            embedding = self.settings.embeddings[prompt].to(like.device, like.dtype)
            found = self.projected.put((layer, prompt), (attn2.to_k(embedding), attn2.to_v(embedding)))
        return found

    def region_contexts(self, context: torch.Tensor, labels: Sequence[int], regions: Sequence[int]) -> torch.Tensor:
        """For a DiT, whose text runs through every block beside the image: ``context`` (chunks x items,
        tokens, channels) with each cond item's text replaced by its region's prompt (``regions``: the region
        of each item of a chunk). Embeddings reach the device once per run. Texts of other lengths are
        repeated to a common length, as the host batches prompts of different lengths."""
        key = (context.device, context.dtype)
        if key not in self.moved:
            self.moved[key] = tuple(e.to(context) for e in self.settings.embeddings)
        embeddings = self.moved[key]
        per_chunk = context.shape[0] // len(labels)
        chunks = []
        for c, label in enumerate(labels):
            if label == 0:
                chunks += [embeddings[self.settings.texts.prompt_index(r)][:1] for r in regions]
            else:
                chunks.append(context[c * per_chunk:(c + 1) * per_chunk])
        length = math.lcm(*(t.shape[1] for t in chunks))
        if length > 4 * max(t.shape[1] for t in chunks):
            raise RunError(f"{self.tiles}' region prompts and the sampler's prompts encode to "
                           f"{sorted({t.shape[1] for t in chunks})} tokens, which cannot be batched: write prompts "
                           f"of equal token counts (Flux pads every prompt under 256 T5 tokens to 256).")
        return torch.cat([t.repeat(1, length // t.shape[1], 1) for t in chunks])
