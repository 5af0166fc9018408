"""XPSR's SFA ControlNet as a ComfyUI ControlNet (core: cupscale.xpsr.sfa, weights: cupscale.xpsr.checkpoint).

ComfyUI's ControlNet model with Semantic-Fusion Attention (Eq. 2) in place of each cross-attention, its
attention run by ComfyUI's ``optimized_attention`` (the backend the user chose), and a control that also
feeds the low-level description and publishes its residuals for the UNet's Conditional Attention
(nodes/conditional_attention.py). Under TiledBlendedDiffusion the control runs per tile batch on its crop
of the LR image, and publishes that batch's residuals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cupscale.xpsr.checkpoint import XPSRArchitecture, XPSRWeights, check_layout
from ..cupscale.xpsr.sfa import SemanticFusionAttention, Transformer2D, low_level_batch
from .conditional_attention import CONDITIONAL_KEY, ConditionalContext
from .host import TimestepBlock, attention, cldm, comfy_utils, controlnet, model_management, ops, timestep_embedding

HINT_RESIZE = "bicubic"  # XPSR's test script resizes the LR image with PIL's default, bicubic


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """SFA's attention through the backend the user chose (xformers, sage, flash, pytorch...), looked up at
    every call as ComfyUI's own layers do."""
    return attention.optimized_attention(q, k, v, heads)


class SFAControlNetModel(cldm.ControlNet):
    """ComfyUI's ControlNet with Eq. 2's SFA for every SpatialTransformer, plus the UNet's
    Conditional Attention layers (``conditional_attention.I``, run by the UNet, not here)."""

    def __init__(self, arch: XPSRArchitecture, dtype: torch.dtype, device, operations):
        per_block = [arch.transformer_depth[level] for kind, level, _ in arch.input_blocks() if kind == "res"]
        super().__init__(image_size=None, in_channels=arch.in_channels, model_channels=arch.model_channels,
                         hint_channels=arch.hint_channels, num_res_blocks=list(arch.num_res_blocks),
                         channel_mult=list(arch.channel_mult), transformer_depth=per_block,
                         transformer_depth_middle=arch.transformer_depth_middle, context_dim=arch.context_dim,
                         num_heads=arch.heads[-1], use_spatial_transformer=True, legacy=False,
                         use_linear_in_transformer=arch.use_linear, dtype=dtype, device=device,
                         operations=operations)
        factory = {"dtype": dtype, "device": device}
        for block, (kind, level, _) in enumerate(arch.input_blocks(), start=1):
            if kind == "res" and arch.transformer_depth[level]:
                self.input_blocks[block][1] = SemanticFusionAttention(arch.sfa_spec(level), operations, host_attention,
                                                                      **factory)
        self.middle_block[1] = SemanticFusionAttention(arch.sfa_spec(len(arch.channel_mult)), operations,
                                                       host_attention, **factory)
        self.conditional_attention = nn.ModuleList(
            Transformer2D(spec, operations, host_attention, **factory) for spec in arch.conditional_attention_specs())

    def forward(self, x, hint, timesteps, context, low_level_context=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        guided_hint = self.input_hint_block(hint, emb, context)
        h, outputs = x, []
        for n, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = run_block(block, h, emb, context, low_level_context)
            if n == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h, emb, context))
        h = run_block(self.middle_block, h, emb, context, low_level_context)
        return {"middle": [self.middle_block_out(h, emb, context)], "output": outputs}


def run_block(block, h, emb, high_level, low_level):
    """One ControlNet block: ResBlocks take the time embedding, SFA both descriptions (Eq. 2)."""
    for layer in block:
        if isinstance(layer, SemanticFusionAttention):
            h = layer(h, high_level, low_level)
        elif isinstance(layer, TimestepBlock):
            h = layer(h, emb)
        else:
            h = layer(h)
    return h


@dataclass
class LowLevelPrompts:
    """The low-level description's embedding (Sec. 3.3) for the positive pass and the others."""

    positive: torch.Tensor
    negative: torch.Tensor


class SFAControl(controlnet.ControlNet):
    """A ControlNet whose model also takes the low-level embedding, and which publishes its
    residuals for the UNet's Conditional Attention. Keeps ``cond_hint_original``,
    ``compression_ratio`` and ``upscale_algorithm`` so tiled sampling can crop its hint."""

    def __init__(self, control_model=None, load_device=None, manual_cast_dtype=None):
        super().__init__(control_model, load_device=load_device, manual_cast_dtype=manual_cast_dtype)
        self.upscale_algorithm = HINT_RESIZE
        self.low_level: LowLevelPrompts | None = None

    def copy(self):
        c = SFAControl(None, self.load_device, self.manual_cast_dtype)
        c.control_model, c.control_model_wrapped = self.control_model, self.control_model_wrapped
        self.copy_to(c)
        c.low_level = self.low_level
        return c

    def active_at(self, t: torch.Tensor) -> bool:
        return self.timestep_range is None or self.timestep_range[1] <= t[0] <= self.timestep_range[0]

    def hint_for(self, x: torch.Tensor, batched_number: int, dtype: torch.dtype) -> torch.Tensor:
        """The LR image at the sampled size in pixels (cached until the size changes), in [0, 1]."""
        r = self.compression_ratio
        height, width = x.shape[-2] * r, x.shape[-1] * r
        if self.cond_hint is None or tuple(self.cond_hint.shape[-2:]) != (height, width):
            resized = comfy_utils.common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm,
                                                 "center")
            self.cond_hint = resized.clamp(0, 1).to(x.device, dtype)
        if self.cond_hint.shape[0] != x.shape[0]:
            self.cond_hint = controlnet.broadcast_image_to(self.cond_hint, x.shape[0], batched_number)
        return self.cond_hint

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.strength == 0 or not self.active_at(t):
            return previous
        dtype = self.manual_cast_dtype or self.control_model.dtype
        device = x_noisy.device
        passes = transformer_options.get("cond_or_uncond") or [0] * batched_number
        low = low_level_batch(self.low_level.positive, self.low_level.negative, passes, x_noisy.shape[0] // len(passes))
        high = cond.get("crossattn_controlnet", cond["c_crossattn"])
        sampling = self.model_sampling_current
        out = self.control_model(x=sampling.calculate_input(t, x_noisy).to(dtype),
                                 hint=self.hint_for(x_noisy, batched_number, dtype),
                                 timesteps=sampling.timestep(t).to(dtype), context=high.to(device, dtype),
                                 low_level_context=low.to(device, dtype))
        # What the UNet receives once control_merge has scaled them (a copy unless strength is 1).
        residuals = out["output"] if self.strength == 1 else [r * self.strength for r in out["output"]]
        transformer_options[CONDITIONAL_KEY] = ConditionalContext(self.control_model.conditional_attention,
                                                                  residuals, dtype)
        return self.control_merge(out, previous, output_dtype=None)


def build_control(weights: XPSRWeights) -> SFAControl:
    """Build the model on the meta device, check the weights against it, then take them as they are."""
    params = sum(v.numel() for v in weights.state_dict.values())
    load_device = model_management.get_torch_device()
    dtype = model_management.unet_dtype(model_params=params)
    manual_cast = model_management.unet_manual_cast(dtype, load_device)
    operations = ops.disable_weight_init if manual_cast is None else ops.manual_cast
    model = SFAControlNetModel(weights.architecture, dtype, "meta", operations)
    check_layout({k: tuple(v.shape) for k, v in model.state_dict().items()}, weights)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.state_dict.items()}, assign=True)
    return SFAControl(model, load_device=load_device, manual_cast_dtype=manual_cast)


@dataclass
class SFAControlNet:
    """SFA_CONTROLNET: the loaded control and what it was built from."""

    control: SFAControl
    architecture: XPSRArchitecture
