"""The real SD1.5 and SDXL UNet layouts (built on the meta device: shapes without weights or memory), and
Flux.1 dev's and Z-Image Turbo's DiT configs.

For figures and checks that depend on where the cross-attention layers are and how wide they are (e.g. the
memory of the Regional Attention Prior's maps at 1024²), not on any weight. The configs are the published
architectures (as ComfyUI detects them from the checkpoints' keys).
"""
from __future__ import annotations

import comfy.ops
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

COMMON = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
          "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
          "use_temporal_resblock": False}

REAL_UNETS = {
    "SD1.5": {**COMMON, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_linear_in_transformer": False,
              "context_dim": 768, "num_heads": 8},
    "SDXL": {**COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64},
}


def meta_unet(name: str) -> UNetModel:
    """The UNet of ``name`` (a key of REAL_UNETS) with every parameter on the meta device."""
    return UNetModel(**REAL_UNETS[name], device="meta", operations=comfy.ops.disable_weight_init)


FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
            "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
            "guidance_embed": True}
"""Flux.1 dev as ComfyUI's model_detection reads it from the published file's keys (11.9 B parameters)."""
Z_IMAGE_TURBO = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
                 "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
                 "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
                 "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}
"""Z-Image Turbo as ComfyUI's model_detection reads it from the published file's keys (6.15 B parameters; its text
is Qwen3 4B's hidden states, 2560 wide)."""
