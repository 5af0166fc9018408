"""bench/real_scale.py's rows for full-size DiTs: Flux.1 dev's and Z-Image Turbo's published configs with seeded
random weights (harness/real_models.py ``ensure_dit``), stored in fp8 as Comfy-Org's flux1-dev-fp8 is and loaded by
the stock UNETLoader, on the CPU (where ComfyUI computes in float32, casting each layer's weights as it runs).

Both are distilled (Flux dev into a guidance input, Z-Image Turbo to 8 steps): CFG 1, so the sampler evaluates the
positive alone, one model call per tile batch. Their text encoders (T5-XXL and CLIP-L, 4.9 B parameters; Qwen3 4B)
are left out: the rows take text of their shapes (256 T5 tokens, as ComfyUI pads every shorter prompt, and a
768-wide pooled vector; 64 Qwen3 tokens, a short prompt in Z-Image's chat template, which the model pads to a
multiple of 32), so AttentionComposer, which encodes region prompts with them, is not in the rows; on a DiT it adds
no model work to the prior's (each tile runs with its region's text, and its weight scales the prior's term).

    .venv/bin/python bench/real_scale.py --models flux z_image [--size 384] [--tile 256] [--steps 1]
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from bench.tables import table


@dataclass(frozen=True)
class Text:
    """The text a DiT reads, as its encoder node leaves the CONDITIONING: tokens x width, the pooled vector's
    width (None: none) and any other entry (Flux's FluxGuidance)."""
    tokens: int
    width: int
    pooled: int | None = None
    extra: tuple[tuple[str, float], ...] = ()


TEXT = {"flux": Text(256, 4096, 768, (("guidance", 3.5),)), "z_image": Text(64, 2560)}
PRIOR_IN = {"flux": "19 double blocks", "z_image": "30 main layers"}
KINDS = tuple(TEXT)


def load(kind: str, name: str):
    import nodes

    from bench.real_scale import PeakRSS
    start = time.perf_counter()
    with PeakRSS() as rss:
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(name, "fp8_e4m3fn")[0]
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    table(f"{kind}: the stock UNETLoader on {name} (weight_dtype fp8_e4m3fn)",
          ["detected", "parameters", "stored", "computes in", "load s", "peak RSS GiB"],
          [[type(model.model.model_config).__name__, f"{params / 1e9:.2f} B",
            str(model.model_dtype()).replace("torch.", ""), str(model.model.manual_cast_dtype).replace("torch.", ""),
            f"{time.perf_counter() - start:.1f}", f"{rss.gib:.1f}"]])
    return model


def conditioning(kind: str, seed: int) -> list:
    """CONDITIONING of ``kind``'s shapes, as its text nodes give it."""
    import torch
    g, text = torch.Generator().manual_seed(seed), TEXT[kind]
    pooled = {"pooled_output": torch.randn(1, text.pooled, generator=g)} if text.pooled else {}
    return [[torch.randn(1, text.tokens, text.width, generator=g), {**pooled, **dict(text.extra)}]]


def chains(n, model, low, pos, tile, overlap):
    """name -> its patched model, made on demand: plain, tiles alone, + each prior (in the model's joint
    attention), both (the composer is left out: see above)."""
    from bench.real_scale import patches
    p = patches(n, low, pos, tile, overlap, 4)
    tiled, guide, prior = p["tiled"], p["guide"], p["prior"]
    return {"plain": lambda: model, "tiles": lambda: tiled(model), "+ structure guide": lambda: guide(tiled(model)),
            "+ attention prior": lambda: prior(tiled(model)), "guide + prior": lambda: prior(guide(tiled(model)))}


def rows_table(kind: str, model, size: int, tile: int, steps: int, only: list[str] | None = None) -> None:
    import nodes
    import torch

    from bench.real_scale import sample_once
    from cupscale.tiling.grid import region_grid
    pos, neg = conditioning(kind, 1), conditioning(kind, 2)
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
    table(f"{kind}: {size}² px output, {tiles} tiles of {tile} px (overlap {overlap}), {steps} euler step(s), CFG 1, "
          f"text {TEXT[kind].tokens} tokens, prior in the {PRIOR_IN[kind]}, tiles/batch 4 (measured)",
          ["run", "time s", "in model s", "total / model", "model calls", "peak RSS GiB", "CPU s"], rows)


def child(kind: str, size: int, tile: int, steps: int, rows: list[str] | None = None) -> None:
    import torch

    from harness import comfy_host, real_models
    torch.set_num_threads(2)
    comfy_host.prepare()
    comfy_host.boot()
    real_models.register_cache_folder()
    model = load(kind, real_models.ensure_dit(kind).name)
    rows_table(kind, model, size, tile, steps, rows)
