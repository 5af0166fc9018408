"""XPSR's Conditional Attention inside ComfyUI's UNet (core: cupscale.xpsr.sfa.conditional_attention).

The SFA control's ``get_control`` publishes its own residuals (scaled by strength, as the official UNet
receives them) in ``transformer_options``; each UNet output block walks a slot before its upsampler, where a
``forward_timestep_embed_patch`` runs the Conditional Attention of that block on them. No control, strength 0
or outside start/end: nothing is published and the MODEL is plain SD1.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cupscale.xpsr.sfa import conditional_attention
from .host import TimestepEmbedSequential, Upsample

CONDITIONAL_KEY = "cupscale_xpsr_conditional"


@dataclass
class ConditionalContext:
    """What one model call's UNet needs for its Conditional Attention: the layers and the residuals
    of the XPSR control (input-block order, scaled by strength), in the control's compute dtype."""

    layers: nn.ModuleList
    residuals: list[torch.Tensor]
    dtype: torch.dtype

    def attend(self, block: int, x: torch.Tensor) -> torch.Tensor:
        # Output block i consumes the skip of input block n-1-i, as ComfyUI pops control["output"].
        residual = self.residuals[len(self.residuals) - 1 - block]
        return conditional_attention(self.layers[block], x.to(self.dtype), residual.to(self.dtype)).to(x.dtype)


class ConditionalAttentionSlot:
    """Stands in an output block's layer list where XPSR's Conditional Attention runs. Without the
    patch below (another model walking the block) it passes features through."""

    def __init__(self, block: int):
        self.block = block

    def __call__(self, x):
        return x


class BlockWithSlot(TimestepEmbedSequential):
    """An output block that the UNet walks with a :class:`ConditionalAttentionSlot` before its
    upsampler (after ResBlock and SpatialTransformer, as in XPSR's up blocks). Its children are the
    original ones under the same names, so weight patches (LoRAs) still find them."""

    def __init__(self, block: TimestepEmbedSequential, index: int):
        super().__init__(*block)
        self.slot = ConditionalAttentionSlot(index)

    def __iter__(self):
        layers = list(self._modules.values())
        cut = len(layers) - 1 if isinstance(layers[-1], Upsample) else len(layers)
        return iter(layers[:cut] + [self.slot] + layers[cut:])


def attend_in_slot(slot, x, emb, context, transformer_options, *unused):
    published = transformer_options.get(CONDITIONAL_KEY)
    return x if published is None else published.attend(slot.block, x)


def with_conditional_attention(model):
    """A clone of ``model`` whose output blocks run XPSR's Conditional Attention when a control publishes."""
    patched = model.clone()
    blocks = patched.get_model_object("diffusion_model.output_blocks")
    for i in range(len(blocks)):
        name = f"diffusion_model.output_blocks.{i}"
        block = patched.get_model_object(name)
        if not isinstance(block, BlockWithSlot):
            patched.add_object_patch(name, BlockWithSlot(block, i))
    handlers = patched.model_options["transformer_options"].get("patches", {}).get("forward_timestep_embed_patch", [])
    if (ConditionalAttentionSlot, attend_in_slot) not in handlers:
        patched.set_model_patch((ConditionalAttentionSlot, attend_in_slot), "forward_timestep_embed_patch")
    return patched
