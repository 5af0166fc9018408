"""bench/real_scale.py's rows for a Flux-size DiT: Flux.1 dev's published config with seeded random weights
(harness/real_models.py ``ensure_flux``), stored in fp8 as Comfy-Org's flux1-dev-fp8 is and loaded by the stock
UNETLoader, on the CPU (where ComfyUI computes in float32, casting each layer's weights as it runs).

Flux dev is guidance-distilled: CFG 1, so the sampler evaluates the positive alone, one model call per tile
batch. Its text encoders (T5-XXL, CLIP-L; 4.9 B parameters) are left out: the rows take text of their shapes
(256 T5 tokens, as ComfyUI pads every shorter prompt, and a 768-wide pooled vector), so AttentionComposer,
which encodes region prompts with them, is not in the rows; on a DiT it adds no model work to the prior's
(each tile runs with its region's text, and its weight scales the prior's term).

    .venv/bin/python bench/real_scale.py --models flux [--size 384] [--tile 256] [--steps 1]
"""
from __future__ import annotations

import time

from bench.tables import table

TEXT_TOKENS, POOLED = 256, 768


def load(name: str):
    import nodes

    from bench.real_scale import PeakRSS
    start = time.perf_counter()
    with PeakRSS() as rss:
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(name, "fp8_e4m3fn")[0]
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    table(f"flux: the stock UNETLoader on {name} (weight_dtype fp8_e4m3fn)",
          ["detected", "parameters", "stored", "computes in", "load s", "peak RSS GiB"],
          [[type(model.model.model_config).__name__, f"{params / 1e9:.2f} B",
            str(model.model_dtype()).replace("torch.", ""), str(model.model.manual_cast_dtype).replace("torch.", ""),
            f"{time.perf_counter() - start:.1f}", f"{rss.gib:.1f}"]])
    return model


def conditioning(seed: int) -> list:
    """CONDITIONING of Flux dev's shapes, as CLIPTextEncode and FluxGuidance give it."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, 4096, generator=g),
             {"pooled_output": torch.randn(1, POOLED, generator=g), "guidance": 3.5}]]


def chains(n, model, low, pos, tile, overlap):
    """name -> its patched model, made on demand: plain, tiles alone, + each prior (in the 19 double blocks),
    both (the composer is left out: see above)."""
    from bench.real_scale import patches
    p = patches(n, low, pos, tile, overlap, 4)
    tiled, guide, prior = p["tiled"], p["guide"], p["prior"]
    return {"plain": lambda: model, "tiles": lambda: tiled(model), "+ structure guide": lambda: guide(tiled(model)),
            "+ attention prior": lambda: prior(tiled(model)), "guide + prior": lambda: prior(guide(tiled(model)))}


def rows_table(model, size: int, tile: int, steps: int, only: list[str] | None = None) -> None:
    import nodes
    import torch

    from bench.real_scale import sample_once
    from cupscale.tiling.grid import region_grid
    pos, neg = conditioning(1), conditioning(2)
    side, overlap = size // 8, tile // 4
    low = torch.randn(1, 16, side // 2, side // 2, generator=torch.Generator().manual_seed(0))
    latent = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")
    tiles = len(region_grid(side, side, tile // 8, tile // 8, overlap // 8))
    rows = []
    for name, make in chains(nodes.NODE_CLASS_MAPPINGS, model, low, pos, tile, overlap).items():
        if only and name not in only:
            continue
        total, clock, gib, cpu = sample_once(make(), steps, pos, neg, latent, cfg=1.0, scheduler="simple")
        rows.append([name, f"{total:.0f}", f"{clock.seconds:.0f}", f"{total / clock.seconds:.3f}", clock.calls,
                     f"{gib:.1f}", f"{cpu:.0f}"])
        print(f"  {name}: {total:.0f} s", flush=True)
    table(f"flux: {size}² px output, {tiles} tiles of {tile} px (overlap {overlap}), {steps} euler step(s), CFG 1 "
          f"(guidance 3.5), text {TEXT_TOKENS} tokens, tiles/batch 4 (measured)",
          ["run", "time s", "in model s", "total / model", "model calls", "peak RSS GiB", "CPU s"], rows)


def child(size: int, tile: int, steps: int, rows: list[str] | None = None) -> None:
    import torch

    from harness import comfy_host, real_models
    torch.set_num_threads(2)
    comfy_host.prepare()
    comfy_host.boot()
    real_models.register_cache_folder()
    model = load(real_models.ensure_flux().name)
    rows_table(model, size, tile, steps, rows)
