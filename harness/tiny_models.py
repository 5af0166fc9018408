"""Tiny real diffusion models built through ComfyUI's own classes, with seeded weights.

SD1.5- and SDXL-shaped UNets (the real layouts at a few channels), a CLIP text encoder with the
real tokenizer, and an SD-style VAE. ComfyUI skips weight init, so every parameter is filled
from a seeded generator; the same seed gives the same model in every process.
"""
from __future__ import annotations

import functools
import math

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base

CONTEXT_DIM = 64
POOLED_DIM = CONTEXT_DIM  # SD1ClipModel pools the last hidden state unprojected

UNET = {
    "sd15": {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
             "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
             "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
             "transformer_depth_middle": 1, "context_dim": CONTEXT_DIM, "num_heads": 2, "num_head_channels": -1,
             "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": False,
             "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False},
    "sdxl": {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
             "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
             "transformer_depth": [0, 2], "transformer_depth_output": [0, 0, 2, 2],
             "transformer_depth_middle": 1, "context_dim": CONTEXT_DIM, "num_heads": -1, "num_head_channels": 16,
             "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": True,
             "num_classes": "sequential", "adm_in_channels": POOLED_DIM + 6 * 256,
             "use_temporal_attention": False, "use_temporal_resblock": False},
}

CLIP_CONFIG = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
               "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM,
               "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
               "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
               "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1,
               "projection_dim": POOLED_DIM, "torch_dtype": "float32", "vocab_size": 49408}

VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


class TinySD15(comfy.supported_models.SD15):
    unet_config = UNET["sd15"]
    unet_extra_config = {}


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = UNET["sdxl"]
    unet_extra_config = {}


def seeded_fill(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter: norms 1, biases 0, weights ~ N(0, 1/fan_in) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:
                p.fill_(1.0)
            elif p.ndim == 1 and ("norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return module


def tiny_model(kind: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """A MODEL as CheckpointLoader gives it: BaseModel (or SDXL) in a ModelPatcher, running in ``dtype``
    (the same weights, rounded, for bfloat16 or float16)."""
    config = {"sd15": TinySD15, "sdxl": TinySDXL}[kind](dict(UNET[kind]))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device="cpu")
    seeded_fill(model.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_clip(seed: int = 0) -> comfy.sd.CLIP:
    """A CLIP as CheckpointLoader gives it: the real SD1 tokenizer, a 2-layer text model."""
    text_model = functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=CLIP_CONFIG,
                                   layer="hidden", layer_idx=-1)
    clip_model = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=text_model)
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, clip_model)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    seeded_fill(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int = 0) -> comfy.sd.VAE:
    """An SD-style KL VAE (x8 down, 4 latent channels) with 32 channels (GroupNorm needs 32)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    sd = seeded_fill(AutoencoderKL(**VAE_CONFIG["params"]), seed).state_dict()
    return comfy.sd.VAE(sd=sd, config=VAE_CONFIG, dtype=torch.float32)


def conditioning(kind: str, seed: int, tokens: int = 77, batch: int = 1) -> list:
    """CONDITIONING as CLIPTextEncode gives it, drawn from ``seed`` (pooled output for SDXL)."""
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, POOLED_DIM, generator=g)} if kind == "sdxl" else {}
    return [[torch.randn(batch, tokens, CONTEXT_DIM, generator=g), extra]]


def tiny_controlnet(kind: str = "sd15", seed: int = 0):
    """A ControlNet (ComfyUI's cldm class, the UNet's encoder half plus hint block) for ``kind``."""
    import comfy.cldm.cldm
    import comfy.controlnet
    config = {k: v for k, v in UNET[kind].items() if k not in ("out_channels", "transformer_depth_output")}
    net = seeded_fill(comfy.cldm.cldm.ControlNet(hint_channels=3, **config), seed)
    return comfy.controlnet.ControlNet(control_model=net, load_device=comfy.model_management.get_torch_device())
