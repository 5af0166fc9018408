"""Full-size SD1.5 and SDXL checkpoints and Flux.1 dev and Z-Image Turbo diffusion models, with seeded random
weights, written by ComfyUI's own save path.

The cost of a diffusion model does not depend on its weights, so the real layouts with random weights
measure what a user's real checkpoint would cost (issue 14). Each file is built once through ComfyUI's
own classes (the published UNet config, CLIP-L, CLIP-G with its pooled projection, the KL VAE, the
tokenizers ComfyUI ships), written as one ``.safetensors`` by ``comfy.sd.save_checkpoint`` into a cache
folder outside the repo, and then loaded by the stock CheckpointLoaderSimple like any downloaded file.
Flux's diffusion model alone (12 B parameters) is written in fp8 as Comfy-Org's ``flux1-dev-fp8`` stores it, and
Z-Image Turbo's (6 B) the same way (its published file is bf16, 12 GB: on the CPU both compute in float32), by
``comfy.utils.save_torch_file`` under the published key names, for the stock UNETLoader; their text encoders
(T5-XXL and CLIP-L, Qwen3 4B) are left out: the bench gives them text of their shapes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE = Path(os.environ.get("CUPSCALE_CACHE", Path.home() / ".cache" / "comfyui-cupscale")) / "checkpoints"
RECIPE = 1  # bump when the weights a seed gives change, so stale files are not reused
KINDS = {"sd15": "SD1.5", "sdxl": "SDXL"}
# The published SD VAE (as comfy.sd.VAE assumes for a checkpoint's first_stage_model).
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# Weights are stored in fp16, as the published files are; ~2 GB for SD1.5, ~7 GB for SDXL.
STORE_DTYPE = torch.float16


def checkpoint_name(kind: str, seed: int = 0) -> str:
    return f"cupscale_real_{kind}_r{RECIPE}_s{seed}.safetensors"


def model_config(kind: str):
    """ComfyUI's supported-model entry for ``kind`` with the full published UNet config."""
    import comfy.supported_models
    from harness.unet_layouts import REAL_UNETS
    base = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[kind]
    config = base(dict(REAL_UNETS[KINDS[kind]]))
    config.set_inference_dtype(STORE_DTYPE, None)
    return config


def build(kind: str, seed: int = 0):
    """(ModelPatcher, CLIP, VAE) of the real ``kind`` layout, every weight drawn from ``seed``."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from harness.tiny_models import seeded_fill

    config = model_config(kind)
    model = config.get_model({}, device="cpu")
    seeded_fill(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    clip = comfy.sd.CLIP(target=config.clip_target(), model_options={"dtype": STORE_DTYPE, "initial_device": "cpu"})
    seeded_fill(clip.cond_stage_model, seed + 1)
    vae_model = seeded_fill(AutoencoderKL(embed_dim=4, ddconfig=VAE_DDCONFIG), seed + 2)
    vae = comfy.sd.VAE(sd={k: v.to(STORE_DTYPE) for k, v in vae_model.state_dict().items()})
    return patcher, clip, vae


def ensure_checkpoint(kind: str, seed: int = 0) -> Path:
    """The cached checkpoint of ``kind`` (``sd15`` or ``sdxl``), written once by ``comfy.sd.save_checkpoint``."""
    import comfy.sd
    path = CACHE / checkpoint_name(kind, seed)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    patcher, clip, vae = build(kind, seed)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    comfy.sd.save_checkpoint(str(partial), patcher, clip, vae,
                             metadata={"cupscale": f"seeded random weights, {KINDS[kind]} layout, seed {seed}"})
    del patcher, clip, vae
    partial.replace(path)  # atomic: a crashed build never leaves a file that looks finished
    return path


DIT_STORE_DTYPE = torch.float8_e4m3fn
DITS = {"flux": ("Flux", "FLUX_DEV", "Flux.1 dev"), "z_image": ("ZImage", "Z_IMAGE_TURBO", "Z-Image Turbo")}
"""The DiTs written at full size: the host's supported_models class, the config in harness.unet_layouts, the name."""


def ensure_dit(kind: str = "flux", seed: int = 0) -> Path:
    """The cached diffusion model of ``kind`` (Flux.1 dev, Z-Image Turbo), fp8, for UNETLoader."""
    import comfy.supported_models
    import comfy.utils
    from harness import unet_layouts
    from harness.tiny_models import seeded_fill
    host_class, layout, name = DITS[kind]
    path = CACHE / checkpoint_name(kind, seed)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    config = getattr(comfy.supported_models, host_class)(dict(getattr(unet_layouts, layout)))
    config.set_inference_dtype(DIT_STORE_DTYPE, torch.float32)
    net = seeded_fill(config.get_model({}, device="cpu").diffusion_model, seed)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    comfy.utils.save_torch_file(net.state_dict(), str(partial),
                                metadata={"cupscale": f"seeded random weights, {name} layout, seed {seed}"})
    del net
    partial.replace(path)
    return path


def register_cache_folder() -> None:
    """Let CheckpointLoaderSimple and UNETLoader (and the server's model lists) see the cache folder."""
    import folder_paths
    CACHE.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("checkpoints", str(CACHE))
    folder_paths.add_model_folder_path("diffusion_models", str(CACHE))


def main() -> None:
    import argparse
    from harness import comfy_host
    parser = argparse.ArgumentParser(description="Write the real-layout checkpoints into the cache folder.")
    parser.add_argument("kinds", nargs="*", default=["sd15", "sdxl"], choices=sorted(KINDS) + sorted(DITS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    comfy_host.prepare()
    for kind in args.kinds:
        print(ensure_dit(kind, args.seed) if kind in DITS else ensure_checkpoint(kind, args.seed))


if __name__ == "__main__":
    main()
