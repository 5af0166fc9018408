"""The cross-attention layers of a ComfyUI UNet, named as attn2_replace names them, and the user's choice of them.

Finding them needs ComfyUI's own classes (SpatialTransformer, Downsample, Upsample), so it lives on the node side.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .host import Downsample, Upsample, attention


BLOCKS = {"all": ("input", "middle", "output"), "input": ("input",), "middle": ("middle",), "output": ("output",),
          "input + middle": ("input", "middle"), "middle + output": ("middle", "output"),
          "input + output": ("input", "output")}
RESOLUTIONS = {"1/2 and coarser": lambda ds: ds >= 2, "all": lambda ds: True, "1/4 and coarser": lambda ds: ds >= 4,
               "1/1": lambda ds: ds == 1, "1/2": lambda ds: ds == 2, "1/4": lambda ds: ds == 4,
               "1/8": lambda ds: ds == 8}


@dataclass(frozen=True)
class Layer:
    """A cross-attention layer as attn2_replace names it (block, number, transformer index), and its
    resolution: 1/``downscale`` of the latent."""

    block: str
    number: int
    index: int
    downscale: int

    @property
    def key(self) -> tuple[str, int, int]:
        return self.block, self.number, self.index


def cross_attention_layers(unet: torch.nn.Module) -> list[tuple[Layer, torch.nn.Module]]:
    """Every attn2 of a ComfyUI UNet (SD1.x, SD2.x, SDXL layouts) with its block's downscale; [] for other models."""
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        return []

    def in_block(name: str, number: int, block, downscale: int):
        return [(Layer(name, number, i, downscale), t.attn2) for m in block if isinstance(m, attention.SpatialTransformer)
                for i, t in enumerate(m.transformer_blocks) if t.attn2 is not None]

    found, downscale = [], 1
    for number, block in enumerate(unet.input_blocks):
        found += in_block("input", number, block, downscale)
        downscale *= 2 if any(isinstance(m, Downsample) for m in block) else 1
    found += in_block("middle", 0, unet.middle_block or [], downscale)
    for number, block in enumerate(unet.output_blocks):
        found += in_block("output", number, block, downscale)
        downscale //= 2 if any(isinstance(m, Upsample) for m in block) else 1
    return found


def describe_layers(layers: list[tuple[Layer, torch.nn.Module]]) -> str:
    counts: dict[tuple[str, int], int] = {}
    for layer, _ in layers:
        counts[(layer.block, layer.downscale)] = counts.get((layer.block, layer.downscale), 0) + 1
    return ", ".join(f"{n} in {block} blocks at 1/{ds}" for (block, ds), n in counts.items())


def select_layers(model_patcher, blocks: str, resolutions: str) -> list[tuple[Layer, torch.nn.Module]]:
    """The chosen layers, or an error that says what the model has."""
    found = cross_attention_layers(model_patcher.model.diffusion_model)
    if not found:
        raise ValueError(f"RegionalAttentionPrior needs a UNet with cross-attention layers (SD1.x, SD2.x, SDXL); this "
                         f"model ({type(model_patcher.model).__name__}) has none. Use an SD1.x/SD2.x/SDXL checkpoint, or "
                         f"leave RegionalAttentionPrior and AttentionComposer out of this model's chain.")
    if blocks not in BLOCKS or resolutions not in RESOLUTIONS:
        raise ValueError(f"blocks = {blocks!r}, resolutions = {resolutions!r}: choose blocks among {', '.join(BLOCKS)} "
                         f"and resolutions among {', '.join(RESOLUTIONS)}.")
    chosen = [(layer, module) for layer, module in found
              if layer.block in BLOCKS[blocks] and RESOLUTIONS[resolutions](layer.downscale)]
    if not chosen:
        raise ValueError(f"blocks = {blocks!r} with resolutions = {resolutions!r} selects none of this model's "
                         f"cross-attention layers ({describe_layers(found)}); choose blocks and resolutions among those.")
    return chosen
