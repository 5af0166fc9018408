"""XPSR (seed 004) in ComfyUI: its Semantic-Fusion Attention ControlNet and the UNet's Conditional Attention.

- SFAControlNetLoader reads the released weights (``cupscale.xpsr.checkpoint``) into ComfyUI's
  ControlNet with :class:`cupscale.xpsr.sfa.SemanticFusionAttention` in place of each cross-attention;
  the UNet's added Conditional Attention layers travel with it.
- SFAControlNetApply attaches the control to the high-level CONDITIONING pair, with the low-level
  CONDITIONING and the LR image, and returns a MODEL clone whose output blocks run the Conditional
  Attention on the residuals of that control.

How the two meet inside a model call: the control's ``get_control`` publishes its own residuals
(scaled by strength, as the official UNet receives them) in ``transformer_options``; each UNet
output block walks a slot before its upsampler, where a ``forward_timestep_embed_patch`` runs the
Conditional Attention of that block on them. No control, strength 0 or outside start/end: nothing
is published and the MODEL is plain SD1.5. Under TiledBlendedDiffusion the control runs per tile
batch on its crop of the LR image, and publishes that batch's residuals.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.utils
import folder_paths
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock, TimestepEmbedSequential, Upsample
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..cupscale.xpsr.sfa import SemanticFusionAttention, Transformer2D, conditional_attention, low_level_batch
from ..cupscale.xpsr.checkpoint import XPSRArchitecture, XPSRWeights, check_layout, load_xpsr
from .host_services import register_model_folder

XPSR_FOLDER = "xpsr"
CATEGORY = "cupscale/xpsr"
CONDITIONAL_KEY = "cupscale_xpsr_conditional"
HINT_RESIZE = "bicubic"  # XPSR's test script resizes the LR image with PIL's default, bicubic

register_model_folder(XPSR_FOLDER)


class SFAControlNetModel(comfy.cldm.cldm.ControlNet):
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
                self.input_blocks[block][1] = SemanticFusionAttention(arch.sfa_spec(level), operations, **factory)
        self.middle_block[1] = SemanticFusionAttention(arch.sfa_spec(len(arch.channel_mult)), operations, **factory)
        self.conditional_attention = nn.ModuleList(
            Transformer2D(spec, operations, **factory) for spec in arch.conditional_attention_specs())

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


class SFAControl(comfy.controlnet.ControlNet):
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
            resized = comfy.utils.common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm,
                                                 "center")
            self.cond_hint = resized.clamp(0, 1).to(x.device, dtype)
        if self.cond_hint.shape[0] != x.shape[0]:
            self.cond_hint = comfy.controlnet.broadcast_image_to(self.cond_hint, x.shape[0], batched_number)
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
    load_device = comfy.model_management.get_torch_device()
    dtype = comfy.model_management.unet_dtype(model_params=params)
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device)
    ops = comfy.ops.disable_weight_init if manual_cast is None else comfy.ops.manual_cast
    model = SFAControlNetModel(weights.architecture, dtype, "meta", ops)
    check_layout({k: tuple(v.shape) for k, v in model.state_dict().items()}, weights)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.state_dict.items()}, assign=True)
    return SFAControl(model, load_device=load_device, manual_cast_dtype=manual_cast)


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


@dataclass
class SFAControlNet:
    """SFA_CONTROLNET: the loaded control and what it was built from."""

    control: SFAControl
    architecture: XPSRArchitecture


class SFAControlNetLoader:
    """XPSR's released ControlNet + the UNet's Conditional Attention -> SFA_CONTROLNET."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("SFA_CONTROLNET",)
    DESCRIPTION = ("Loads XPSR's ControlNet with Semantic-Fusion Attention and the Conditional Attention XPSR added "
                   "to the SD1.5 UNet, from the release's diffusers folders (controlnet/ and unet/, each a "
                   "diffusion_pytorch_model .safetensors or .bin beside its config.json) placed in models/xpsr. "
                   "Only the unet file's Conditional Attention is read; your SD1.5 checkpoint supplies the rest. "
                   "Names and shapes are checked; heads used only by XPSR's training loss are skipped.")

    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list(XPSR_FOLDER)
        return {"required": {
            "controlnet": (files, {"tooltip": "XPSR's ControlNet: <checkpoint>/controlnet/diffusion_pytorch_model."
                                              "safetensors (or .bin) under models/xpsr."}),
            "unet": (files, {"tooltip": "XPSR's UNet, for its Conditional Attention: <checkpoint>/unet/"
                                        "diffusion_pytorch_model.safetensors (or .bin) under models/xpsr."}),
        }}

    def load(self, controlnet, unet):
        weights = load_xpsr(folder_paths.get_full_path_or_raise(XPSR_FOLDER, controlnet),
                            folder_paths.get_full_path_or_raise(XPSR_FOLDER, unet))
        logging.info("XPSR: %d weights from %s and %s; %d used only by the training loss (Eq. 3) skipped.",
                     len(weights.state_dict), controlnet, unet, len(weights.training_only))
        return (SFAControlNet(build_control(weights), weights.architecture),)


def unet_fields(arch: XPSRArchitecture) -> dict:
    """The ComfyUI unet_config entries an XPSR control fixes for the MODEL it runs with."""
    return {"model_channels": arch.model_channels, "channel_mult": list(arch.channel_mult),
            "num_res_blocks": list(arch.num_res_blocks), "context_dim": arch.context_dim,
            "transformer_depth": [arch.transformer_depth[lv] for kind, lv, _ in arch.input_blocks() if kind == "res"],
            "adm_in_channels": None}


def check_model(model, arch: XPSRArchitecture) -> None:
    """Refuse a MODEL of another shape (SDXL, SD2) before sampling fails deep inside the UNet."""
    config = model.model.model_config.unet_config
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    ours = unet_fields(arch)
    theirs = {k: as_list(config.get(k)) for k in ours}
    if isinstance(theirs["num_res_blocks"], int):
        theirs["num_res_blocks"] = [theirs["num_res_blocks"]] * len(arch.channel_mult)
    differ = [f"{k} = {v} (the MODEL has {theirs[k]})" for k, v in ours.items() if theirs[k] != v]
    if differ:
        raise ValueError(f"model: the MODEL is not the UNet this XPSR ControlNet was trained with; the ControlNet "
                         f"needs {'; '.join(differ)}. XPSR builds on SD1.5: use an SD1.5 checkpoint for this model.")


def low_level_tensor(conditioning, name: str, width: int) -> torch.Tensor:
    if not conditioning or len(conditioning) != 1:
        raise ValueError(f"{name}: give one text encoding (CLIP Text Encode of the low-level description), not "
                         f"{len(conditioning or [])} combined conditionings.")
    tensor = conditioning[0][0]
    if tensor.shape[-1] != width:
        raise ValueError(f"{name}: its embedding is {tensor.shape[-1]} wide but the ControlNet attends to "
                         f"{width}-wide text embeddings (SD1.5's CLIP: 768): encode it with the SD1.5 CLIP.")
    return tensor


def attach(conditioning: list, controls: dict, make) -> list:
    """``conditioning`` with the XPSR control chained after each entry's existing control."""
    out = []
    for tensor, options in conditioning:
        previous = options.get("control")
        if previous not in controls:
            controls[previous] = make(previous)
        out.append([tensor, dict(options, control=controls[previous], control_apply_to_uncond=False)])
    return out


class SFAControlNetApply:
    """MODEL, high-level CONDITIONING pair, low-level CONDITIONING, LR IMAGE -> what the KSampler needs."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    DESCRIPTION = (
        "Runs XPSR (seed 004) through the stock KSampler: the SFA ControlNet reads the LR image, the high-level "
        "description (positive) and the low-level one (MLLMRegionCaptioner writes both with XPSR's instructions); "
        "the returned MODEL adds XPSR's Conditional Attention. "
        "Official settings (qyp2000/XPSR test.py, configs/xpsr_test.yaml, paper Sec. 3.6 / 4.1): 20 steps of DDPM "
        "sampling (sampler ddpm, scheduler ddim_uniform), CFG 5.5 in the paper (the released test config uses 4.5), "
        "denoise 1.0 on the VAE-encoded, upscaled LR image; positive = the high-level description + ', clean, "
        "high-resolution, 8k, high quality, clear text.'; negative = 'blurry, dotted, noise, raster lines, unclear, "
        "lowres, over-smoothed.'; low_level_negative = 'high resolution, best quality, clear' (the official "
        "pipeline's; without it the low-level prompt serves both passes, as in Eq. 6); the official script then "
        "matches the result's colours to the LR image (AdaIN). XPSR was trained at 512x512: "
        "for larger images put TiledBlendedDiffusion (512 px tiles) on the MODEL output; each tile then sees its "
        "crop of the LR image. Strength scales the ControlNet residuals, which are also what the Conditional "
        "Attention reads; strength 0, or steps outside start/end, leave the model plain SD1.5.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 model: XPSR's ControlNet was trained on SD1.5."}),
                "positive": ("CONDITIONING", {"tooltip": "The high-level description (content, layout, scene)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt."}),
                "low_level": ("CONDITIONING", {"tooltip": "The low-level description (quality: clarity, noise, "
                                                          "colour, lighting), encoded with the same CLIP."}),
                "sfa_controlnet": ("SFA_CONTROLNET",),
                "image": ("IMAGE", {"tooltip": "The low-resolution image; resized (bicubic) to the sampled size."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            },
            "optional": {
                "low_level_negative": ("CONDITIONING", {"tooltip": "Low-level prompt of the negative pass; the "
                                                                   "official pipeline's is 'high resolution, best "
                                                                   "quality, clear'. Default: low_level."}),
            },
        }

    def apply(self, model, positive, negative, low_level, sfa_controlnet, image, strength, start_percent,
              end_percent, low_level_negative=None):
        arch = sfa_controlnet.architecture
        if image.ndim != 4 or image.shape[-1] != arch.hint_channels:
            raise ValueError(f"image has shape {tuple(image.shape)}; XPSR's ControlNet reads RGB images "
                             f"(B, H, W, {arch.hint_channels}): drop the alpha channel or convert to RGB first.")
        if start_percent > end_percent:
            raise ValueError(f"start_percent = {start_percent} is after end_percent = {end_percent}.")
        check_model(model, arch)
        low = low_level_tensor(low_level, "low_level", arch.context_dim)
        prompts = LowLevelPrompts(low, low if low_level_negative is None else
                                  low_level_tensor(low_level_negative, "low_level_negative", arch.context_dim))
        hint = image.movedim(-1, 1)

        def make(previous):
            control = sfa_controlnet.control.copy().set_cond_hint(hint, strength, (start_percent, end_percent))
            control.low_level = prompts
            control.set_previous_controlnet(previous)
            return control
        controls = {}
        return (with_conditional_attention(model), attach(positive, controls, make), attach(negative, controls, make))


NODE_CLASS_MAPPINGS = {"SFAControlNetLoader": SFAControlNetLoader, "SFAControlNetApply": SFAControlNetApply}
NODE_DISPLAY_NAME_MAPPINGS = {"SFAControlNetLoader": "Load XPSR SFA ControlNet (cupscale)",
                              "SFAControlNetApply": "Apply XPSR SFA ControlNet (cupscale)"}
