"""What per-step synchronisation would cost if one image's tiles ran on several machines (docs/distributed.md).

MultiDiffusion merges the tiles once per step: each machine would add its tiles' (CFG-combined) denoised
estimates, weighted, into a whole-latent buffer, and an all-reduce would give every machine the merged
estimate for the sampler's step. That buffer is the latent in float32. This script sets its bytes, and the
network time of a ring all-reduce, against each step's compute: tiles from the pack's own grid
(``cupscale.tiling.grid.region_grid``) times the FLOPs of one tile evaluation, counted exactly on the published
architectures (diffusers' definitions on the meta device: shapes only, no weights, nothing run) by
``torch.utils.flop_counter``. Compute time assumes a GPU's dense bf16 peak at a stated utilisation.

    .venv/bin/python bench/sync_cost.py [--gpus 4] [--gpu-tflops 312] [--utilisation 0.5]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tables import table  # noqa: E402
from cupscale.tiling.grid import region_grid  # noqa: E402


@dataclass(frozen=True)
class Model:
    name: str
    vae_factor: int  # pixels per latent cell
    channels: int  # latent channels
    branches: int  # model evaluations per tile and step: 2 with CFG, 1 for guidance-distilled models
    tile_px: int
    overlap_px: int


MODELS = (Model("SDXL", 8, 4, 2, 1024, 128),
          Model("Flux.1 dev", 8, 16, 1, 1024, 128),
          Model("Flux.2 dev", 16, 128, 1, 1024, 128))


def meta(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta")


def tile_flops(name: str) -> tuple[float, float]:
    """(parameters, FLOPs) of one evaluation of a 1024² px tile, prompt of 77 (SDXL) or 512 tokens."""
    with torch.device("meta"):
        if name == "SDXL":
            from diffusers import UNet2DConditionModel
            net = UNet2DConditionModel(
                sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            run = lambda: net(meta(1, 4, 128, 128), meta(1), encoder_hidden_states=meta(1, 77, 2048),  # noqa: E731
                              added_cond_kwargs={"text_embeds": meta(1, 1280), "time_ids": meta(1, 6)})
        elif name == "Flux.1 dev":
            from diffusers import FluxTransformer2DModel
            net = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
            run = lambda: net(hidden_states=meta(1, 4096, 64), encoder_hidden_states=meta(1, 512, 4096),  # noqa: E731
                              pooled_projections=meta(1, 768), timestep=meta(1), img_ids=meta(4096, 3),
                              txt_ids=meta(512, 3), guidance=meta(1))
        else:
            from diffusers import Flux2Transformer2DModel
            net = Flux2Transformer2DModel()  # its defaults are Flux.2 [dev]'s published config
            run = lambda: net(hidden_states=meta(1, 4096, 128), encoder_hidden_states=meta(1, 512, 15360),  # noqa: E731
                              timestep=meta(1), img_ids=meta(4096, 4), txt_ids=meta(512, 4), guidance=meta(1))
    with FlopCounterMode(display=False) as counter:
        run()
    return sum(p.numel() for p in net.parameters()), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="output side in pixels")
    parser.add_argument("--gpus", type=int, default=4, help="machines sharing one image's tiles")
    parser.add_argument("--gpu-tflops", type=float, default=312.0, help="dense bf16 peak (A100: 312, H100: 989)")
    parser.add_argument("--utilisation", type=float, default=0.5, help="share of the peak the model reaches")
    args = parser.parse_args()
    n, flops_per_s = args.gpus, args.gpu_tflops * 1e12 * args.utilisation
    counted, rows = [], []
    for model in MODELS:
        params, flops = tile_flops(model.name)
        counted.append((model.name, f"{params / 1e9:.2f} B", f"{flops / 1e12:.1f}"))
        cell = model.tile_px // model.vae_factor
        for size in args.sizes:
            side = size // model.vae_factor
            tiles = len(region_grid(side, side, cell, cell, model.overlap_px // model.vae_factor).boxes)
            latent_bytes = side * side * model.channels * 4
            step_s = tiles * model.branches * flops / flops_per_s / n
            ring = 2 * (n - 1) / n * latent_bytes  # bytes each machine sends (and receives) in a ring all-reduce
            net = {gbps: ring / (gbps * 1e9 / 8) for gbps in (10, 100)}
            rows.append((model.name, f"{size}²", tiles, f"{latent_bytes / 2**20:,.0f} MiB", f"{step_s:.2f} s",
                         *(f"{net[g] * 1e3:.1f} ms ({net[g] / step_s:.2%})" for g in (10, 100))))
    table("One tile evaluation (1024² px), counted on the meta device", ["model", "parameters", "TFLOPs"], counted)
    table(f"Per step, {n} machines sharing one image's tiles ({args.gpu_tflops:g} TFLOP/s at "
          f"{args.utilisation:.0%}): the merged latent's all-reduce against the step's compute",
          ["model", "output", "tiles", "latent (fp32)", "compute per machine", "sync at 10 Gb/s", "sync at 100 Gb/s"],
          rows)


if __name__ == "__main__":
    main()
