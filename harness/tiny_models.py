"""Tiny real diffusion models built through ComfyUI's own classes, with seeded weights.

SD1.5- and SDXL-shaped UNets and Flux (dev), SD3.5 and Qwen-Image DiTs, and where the host has them Flux.2
(klein), Chroma, HiDream and Z-Image (the real layouts at a few channels), a CLIP text encoder with the real tokenizer, and the VAEs their latent formats expect.
ComfyUI skips weight init, so every parameter is filled from a seeded generator; the same seed
gives the same model in every process.

The DiTs read text of width CONTEXT_DIM and a pooled vector of width POOLED_DIM, the tiny CLIP's
own widths, so that CLIPTextEncode's output feeds any kind directly (the real ones take T5 or
Qwen2.5-VL text and a CLIP-L/G pooled vector; only the widths differ).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from unittest import mock

import torch

import comfy.ldm.chroma.model
import comfy.ldm.flux.model
import comfy.ldm.lumina.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.wan.vae
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
    # The DiTs (ComfyUI calls their configs unet_config too). Patch size 2 over 16 latent channels, as the real
    # ones; rope axes and head widths scaled down in the real proportions ([16, 56, 56] of 128 per head).
    "flux": {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
             "context_in_dim": CONTEXT_DIM, "vec_in_dim": POOLED_DIM, "hidden_size": 64, "num_heads": 2,
             "mlp_ratio": 4.0, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 14, 14], "theta": 10000,
             "qkv_bias": True, "guidance_embed": True},
    # MMDiT fixes 64 channels per head and one head per unit of depth: depth 2 is 2 heads, width 128. The
    # position table covers 32x32 patches (a 64x64 latent) and is cropped to the latent, as in SD3.5.
    "sd3": {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
            "adm_in_channels": POOLED_DIM, "pos_embed_max_size": 32, "num_patches": 32 * 32,
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": CONTEXT_DIM, "out_features": 2 * 64}},
            "qk_norm": "rms", "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []},
    # in_channels counts the packed 2x2 patch: 16 latent channels x 4.
    "qwen_image": {"image_model": "qwen_image", "in_channels": 16 * 2 * 2, "out_channels": 16, "patch_size": 2,
                   "joint_attention_dim": CONTEXT_DIM, "num_attention_heads": 2, "attention_head_dim": 32,
                   "num_layers": 2, "axes_dims_rope": [4, 14, 14]},
}
# FluxParams gained txt_ids_dims in late 2025 (Flux.1: [], its text ids are all zero); named where the host has it,
# as the host's own model detection names it.
if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
    UNET["flux"]["txt_ids_dims"] = []
# The 2026 models, each where the host has it, with the settings the host's model detection gives the real one.
if hasattr(comfy.supported_models, "Flux2"):
    # Flux.2 klein: 128 latent channels on a x16 VAE, patch 1, four rope axes (the fourth numbers the text).
    UNET["flux2"] = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "patch_size": 1,
                     "context_in_dim": CONTEXT_DIM, "vec_in_dim": None, "hidden_size": 64, "num_heads": 2,
                     "mlp_ratio": 3.0, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8], "theta": 2000,
                     "qkv_bias": False, "guidance_embed": False, "txt_ids_dims": [3], "global_modulation": True,
                     "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0}
# Chroma: Flux's blocks without modulation layers (an approximator makes them); in_channels counts the 2x2 patch.
UNET["chroma"] = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
                  "context_in_dim": CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
                  "depth_single_blocks": 1, "axes_dim": [4, 14, 14], "theta": 10000, "qkv_bias": True, "in_dim": 64,
                  "out_dim": 64, "hidden_dim": 128, "n_layers": 1, "txt_ids_dims": [], "vec_in_dim": None}
UNET["chroma"] = {k: v for k, v in UNET["chroma"].items() if k == "image_model" or k in
                  {f.name for f in dataclasses.fields(comfy.ldm.chroma.model.ChromaParams)}}
# HiDream: a T5 context plus Llama layers, one per block (llama_layers picks them), rope over 3 axes summing to a head.
UNET["hidream"] = {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                   "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2,
                   "caption_channels": [CONTEXT_DIM, CONTEXT_DIM], "text_emb_dim": POOLED_DIM,
                   "num_routed_experts": 4, "num_activated_experts": 2, "axes_dims_rope": [16, 8, 8],
                   "max_resolution": [128, 128], "llama_layers": [0, 1]}
HIDREAM_LLAMA_LAYERS = 2
if hasattr(comfy.supported_models, "ZImage") and hasattr(comfy.ldm.lumina.model.NextDiT, "embed_all"):
    # Z-Image (Lumina 2's lineage): single-stream, text padded to 32 tokens, time-scaled modulation; its time
    # embedding is 256 wide whatever the width, so the width is 256 (8 heads of 32).
    UNET["z_image"] = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "n_layers": 2,
                       "n_refiner_layers": 1, "n_heads": 8, "n_kv_heads": 8, "qk_norm": True,
                       "cap_feat_dim": CONTEXT_DIM, "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512],
                       "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
                       "time_scale": 1000.0, "pad_tokens_multiple": 32}

CLIP_CONFIG = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
               "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM,
               "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
               "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
               "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1,
               "projection_dim": POOLED_DIM, "torch_dtype": "float32", "vocab_size": 49408}


def kl_vae_config(channels: int) -> dict:
    """An SD-style KL VAE (x8 down) with ``channels`` latent channels: 4 for SD, 16 for Flux and SD3."""
    return {"params": {"embed_dim": channels, "ddconfig": {
        "double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


VAE_CONFIG = kl_vae_config(4)
WAN_VAE_DIM = 8  # the Wan 2.1 VAE's base width; ComfyUI builds it at 96


class TinySD15(comfy.supported_models.SD15):
    unet_config = UNET["sd15"]
    unet_extra_config = {}


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = UNET["sdxl"]
    unet_extra_config = {}


class TinyFlux(comfy.supported_models.Flux):
    unet_config = UNET["flux"]
    unet_extra_config = {}


class TinySD3(comfy.supported_models.SD3):
    unet_config = UNET["sd3"]
    unet_extra_config = {}


class TinyQwenImage(comfy.supported_models.QwenImage):
    unet_config = UNET["qwen_image"]
    unet_extra_config = {}


MODELS = {"sd15": TinySD15, "sdxl": TinySDXL, "flux": TinyFlux, "sd3": TinySD3, "qwen_image": TinyQwenImage}
HOST_CLASSES = {"flux2": "Flux2", "chroma": "Chroma", "hidream": "HiDream", "z_image": "ZImage"}
"""The 2026 kinds, by the host's supported_models class each is made from (where the host has it)."""
for kind, name in HOST_CLASSES.items():
    if kind in UNET:
        MODELS[kind] = type(f"Tiny{name}", (getattr(comfy.supported_models, name),),
                            {"unet_config": UNET[kind], "unet_extra_config": {}})


def missing(kind: str) -> str | None:
    """Why this host cannot build ``kind`` (its ComfyUI lacks the model), or None."""
    return None if kind in MODELS else f"ComfyUI {comfy_version()} lacks {HOST_CLASSES.get(kind, kind)}"


def comfy_version() -> str:
    import comfyui_version
    return comfyui_version.__version__


def is_norm_gain(name: str, p: torch.nn.Parameter) -> bool:
    """A norm's gain: LayerNorm and GroupNorm weights, CLIP's ln_1/ln_2, the RMSNorm gains of Flux's
    QK norms (``scale``), SD3's (``ln_q``/``ln_k``) and the Wan VAE's (``gamma``, shaped (C, 1, 1, 1))."""
    module, _, leaf = name.rpartition(".")
    if leaf == "gamma":
        return True
    named_norm = "norm" in name or module.rsplit(".", 1)[-1] in ("ln_1", "ln_2", "ln_q", "ln_k")
    return p.ndim == 1 and named_norm and leaf in ("weight", "scale")


def seeded_fill(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter: norm gains 1, biases 0, weights ~ N(0, 1/fan_in) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0 or is_norm_gain(name, p):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return module


def fill_position_table(net: torch.nn.Module) -> None:
    """SD3 keeps its patch positions in a buffer that checkpoints fill and ComfyUI allocates empty: put in the
    fixed 2D sin-cos table (ComfyUI's own) over the largest grid, which the model crops to the latent."""
    side = net.pos_embed_max_size
    table = comfy.ldm.modules.diffusionmodules.mmdit.get_2d_sincos_pos_embed_torch(net.hidden_size, side, side)
    with torch.no_grad():
        net.pos_embed.copy_(table[None])


def tiny_model(kind: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """A MODEL as CheckpointLoader gives it: ComfyUI's BaseModel, SDXL, Flux, SD3 or QwenImage in a
    ModelPatcher, running in ``dtype`` (the same weights, rounded, for bfloat16 or float16)."""
    config = MODELS[kind](dict(UNET[kind]))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device="cpu")
    seeded_fill(model.diffusion_model, seed)
    if kind == "sd3":
        fill_position_table(model.diffusion_model)
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


def latent_channels(kind: str) -> int:
    return {"sd15": 4, "sdxl": 4, "flux2": 128}.get(kind, 16)


def downscale(kind: str) -> int:
    """Pixels per latent cell of ``kind``'s VAE: 16 for Flux.2's, 8 for the others."""
    return 16 if kind == "flux2" else 8


def latent_shape(kind: str, batch: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of ``kind``'s latent of height x width cells as its VAE encodes it: (b, c, h, w), and for
    Qwen-Image, whose VAE is Wan 2.1's video VAE, (b, 16, 1, h, w): one frame."""
    frames = (1,) if kind == "qwen_image" else ()
    return (batch, latent_channels(kind), *frames, height, width)


def tiny_vae(seed: int = 0, kind: str = "sd15") -> comfy.sd.VAE:
    """The VAE of ``kind``: an SD-style KL VAE (x8 down, 32 channels since GroupNorm needs 32) with 4 latent
    channels for SD, 16 for Flux and SD3; for Qwen-Image a narrow Wan 2.1 VAE (``tiny_wan_vae``)."""
    if kind == "qwen_image":
        return tiny_wan_vae(seed)
    from comfy.ldm.models.autoencoder import AutoencoderKL
    config = kl_vae_config(latent_channels(kind))
    sd = seeded_fill(AutoencoderKL(**config["params"]), seed).state_dict()
    vae = comfy.sd.VAE(sd=sd, config=config, dtype=torch.float32)
    # Given a config, ComfyUI keeps its default of 4 latent channels (it reads the count from the weights only
    # when it detects the VAE itself), and VAEEncodeTiled sizes its output by it.
    vae.latent_channels = config["params"]["ddconfig"]["z_channels"]
    return vae


def tiny_wan_vae(seed: int = 0) -> comfy.sd.VAE:
    """Qwen-Image's VAE: ComfyUI's Wan 2.1 VAE, WAN_VAE_DIM wide, on the host's own Wan branch.

    Why not the 16-channel KL VAE: Qwen-Image's latents are 5-D, (b, 16, 1, h, w). The model unpacks
    ``b, c, t, h, w = x.shape`` and its Wan21 latent format normalises with (1, 16, 1, 1, 1) statistics;
    KSampler lifts a 4-D latent to 5-D, but VAEDecode(Tiled) then hands 5-D latents to a 2-D decoder. So the
    VAE must be the video VAE, whose 5-D in and out the whole graph (encode, sample, decode) agrees on.

    ComfyUI recognises the Wan 2.1 VAE by its keys and builds it 96 wide; the constructor is narrowed for
    the call, and every other setting (3-D latents, x8 scale, tiling formulas) is the host's."""
    real = comfy.ldm.wan.vae.WanVAE
    narrow = {"dim": WAN_VAE_DIM, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
              "temperal_downsample": [False, True, True], "dropout": 0.0}
    sd = seeded_fill(real(**narrow), seed).state_dict()
    with mock.patch.object(comfy.ldm.wan.vae, "WanVAE", lambda **config: real(**{**config, "dim": WAN_VAE_DIM})):
        return comfy.sd.VAE(sd=sd, dtype=torch.float32)


def with_guidance(kind: str, conditioning: list) -> list:
    """CONDITIONING as the kind's own text nodes leave it: for Flux FluxGuidance's 3.5 (its default: dev distils CFG
    into a guidance input); for HiDream its Llama layers beside the text (here the text itself, once per layer,
    where the real encoder gives Llama 3.1's hidden states); other kinds' as it is."""
    if kind == "flux":
        return [[c, {**extra, "guidance": 3.5}] for c, extra in conditioning]
    if kind == "hidream":
        return [[c, {"conditioning_llama3": c[:, None].repeat(1, HIDREAM_LLAMA_LAYERS, 1, 1), **extra}]
                for c, extra in conditioning]
    return conditioning


def conditioning(kind: str, seed: int, tokens: int = 77, batch: int = 1) -> list:
    """CONDITIONING as CLIPTextEncode gives it, drawn from ``seed``: a pooled output for SDXL, SD3, HiDream and the
    Flux family (Flux.2 and Chroma ignore it, but hosts before v0.33 read one from every Flux-family conditioning),
    and for Flux the guidance FluxGuidance sets (:func:`with_guidance`); HiDream's Llama layers beside its T5 text.
    Qwen-Image and Z-Image read the text alone."""
    g = torch.Generator().manual_seed(seed)
    pooled = kind in ("sdxl", "sd3", "flux", "flux2", "chroma", "hidream")
    extra = {"pooled_output": torch.randn(batch, POOLED_DIM, generator=g)} if pooled else {}
    return with_guidance(kind, [[torch.randn(batch, tokens, CONTEXT_DIM, generator=g), extra]])


def tiny_controlnet(kind: str = "sd15", seed: int = 0):
    """A ControlNet (ComfyUI's cldm class, the UNet's encoder half plus hint block) for ``kind``."""
    import comfy.cldm.cldm
    import comfy.controlnet
    config = {k: v for k, v in UNET[kind].items() if k not in ("out_channels", "transformer_depth_output")}
    net = seeded_fill(comfy.cldm.cldm.ControlNet(hint_channels=3, **config), seed)
    return comfy.controlnet.ControlNet(control_model=net, load_device=comfy.model_management.get_torch_device())


def tiny_z_image_control(seed: int = 0):
    """A MODEL_PATCH as ModelPatchLoader gives Z-Image's Fun ControlNet Union 2.1 (15 control layers, the
    inpainting inputs, refiner control): the host's ZImage_Control at the tiny Z-Image's width."""
    import comfy.ldm.lumina.controlnet
    import comfy.ops
    net = comfy.ldm.lumina.controlnet.ZImage_Control(
        dim=UNET["z_image"]["dim"], n_heads=UNET["z_image"]["n_heads"], n_kv_heads=UNET["z_image"]["n_kv_heads"],
        n_control_layers=15, additional_in_dim=17, refiner_control=True, operations=comfy.ops.manual_cast)
    seeded_fill(net, seed)
    return comfy.model_patcher.CoreModelPatcher(net, load_device=comfy.model_management.get_torch_device(),
                                                offload_device=comfy.model_management.unet_offload_device())
