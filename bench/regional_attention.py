"""RegionalAttentionPrior and AttentionComposer: memory of the captured maps, and the cost per step.

1. Memory of the captured maps and values (one capture lives at a time), from the layer shapes of the real
   SD1.5 and SDXL UNets (meta device, no weights) for the default and the full layer selections; the goal is
   at most 1 GB in fp16 for an SDXL 1024² low-res image. Checked against the bytes measured on the tiny models.
2. The prior's extra cost per step as a ratio to the tiles' own evaluations (tiny models, euler, CFG): one
   cond-only UNet pass on the low-res latent per step, against tiles x (cond + uncond) passes.
3. What bounding the capture (capture_size) does: the maps' bytes, the capture's time, and how far the output
   moves from a full capture's, against how far the prior moves it from tiles alone.

Run: .venv/bin/python bench/regional_attention.py   (one CPU thread, for stable timings on a shared machine)
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)

from harness import comfy_host  # noqa: E402

comfy_host.boot()

import comfy.sample  # noqa: E402
import nodes  # noqa: E402
from cupscale.priors.attention_prior import capture_bytes, capture_size  # noqa: E402
from cupscale.tiling.grid import region_grid  # noqa: E402
from harness import tiny_models  # noqa: E402
from harness.unet_layouts import meta_unet  # noqa: E402

pack = nodes.NODE_CLASS_MAPPINGS["RegionalAttentionPrior"].__module__.rsplit(".", 1)[0]
layers, router, runs = (sys.modules[f"{pack}.{name}"] for name in ("unet_layers", "attention_router", "attention_runs"))
DEFAULT = ("all", "1/2 and coarser")
STEPS, TILE, OVERLAP = 4, 256, 64


def node(name):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def layer_shapes(unet, latent_hw, blocks, resolutions):
    """(heads, dim_head, low-res tokens) of the chosen layers (a stride-2 step rounds up, as the UNet does)."""
    return [(attn2.heads, attn2.dim_head, math.ceil(latent_hw[0] / layer.downscale) * math.ceil(latent_hw[1] / layer.downscale))
            for layer, attn2 in layers.cross_attention_layers(unet)
            if layer.block in layers.BLOCKS[blocks] and layers.RESOLUTIONS[resolutions](layer.downscale)]


def memory_table():
    print("Captured maps + values of one capture (the latest sigma), fp16, batch 1")
    print("| model | low-res image | layers (blocks; resolutions) | count | 77 prompt tokens | 154 prompt tokens | "
          "maps read per tile item, largest layer (fp32, 1024 px tile) |")
    print("|---|---|---|---|---|---|---|")
    for name, px in (("SDXL", 1024), ("SD1.5", 512), ("SD1.5", 1024)):
        unet = meta_unet(name)
        for selection in (DEFAULT, ("all", "all")):
            shapes = layer_shapes(unet, (px // 8, px // 8), *selection)
            tile = max(heads * tokens for heads, _, tokens in layer_shapes(unet, (128, 128), *selection)) * 77 * 4
            mib = [capture_bytes(shapes, tokens, element_size=2) / 2 ** 20 for tokens in (77, 154)]
            print(f"| {name} | {px}² | {'; '.join(selection)} | {len(shapes)} | {mib[0]:.0f} MiB | {mib[1]:.0f} MiB | "
                  f"{tile / 2 ** 20:.1f} MiB |")


def stage_memory_table():
    print("\nCaptured maps + values of a x2 stage's prior by output size, SDXL, default layers, fp16, 77 tokens "
          "(from the layer shapes): the low-res image is the stage's input, half the output's side")
    print("| output | low-res image | full capture (before capture_size) | capture_size 0 (1024 px, the default) |")
    print("|---|---|---|---|")
    unet = meta_unet("SDXL")
    for out in (2048, 4096, 8192, 16384):
        low = (out // 2 // 8, out // 2 // 8)
        full, bounded = (capture_bytes(layer_shapes(unet, hw, *DEFAULT), 77, element_size=2) / 2 ** 20
                         for hw in (low, capture_size(low, 128 * 128)))
        print(f"| {out}² | {out // 2}² | {full:,.0f} MiB | {bounded:,.0f} MiB |")


TIMES = {"capture": 0.0, "attn2": 0.0}


def timed(key, fn):
    """``fn``, adding its CPU time (this process, one thread: other work on a shared machine does not count)."""
    def run(*args):
        start = time.process_time()
        try:
            return fn(*args)
        finally:
            TIMES[key] += time.process_time() - start
    return run


def tiny_model(kind, low, variant, capture_size=0):
    """Tiled tiny model: ``alone`` (the chosen layers' cross-attention timed as it is), ``prior`` or ``composer``."""
    model = node("TiledBlendedDiffusion").execute(tiny_models.tiny_model(kind), TILE, TILE, OVERLAP, 4)[0]
    if variant == "alone":
        model = model.clone()
        for layer, _ in layers.select_layers(model, *DEFAULT):
            model.set_model_attn2_replace(timed("attn2", router.host_attention), layer.block, layer.number, layer.index)
        return model
    model = node("RegionalAttentionPrior").execute(model, {"samples": low}, tiny_models.conditioning(kind, 1), *DEFAULT,
                                                 0.0, 1.0, capture_size)[0]
    if variant == "composer":
        model = node("AttentionComposer").execute(model, tiny_models.tiny_clip(), 0.5, text="a wall")[0]
    return model


def tiny_run(kind, model, low, work_hw, seed=0):
    """One tiled sampling run: CPU seconds in all, in the capture passes, and in the chosen layers' cross-attention
    of the tile passes; the bytes of the last capture; the sampled latent."""
    latent = torch.nn.functional.interpolate(low, size=work_hw, mode="bilinear")
    TIMES.update(capture=0.0, attn2=0.0)
    seen = {"bytes": 0}
    capture, call = runs.AttentionPrior.capture, router.AttentionRouter.__call__

    def capture_and_measure(self, *args):
        maps = capture(self, *args)
        seen["bytes"] = sum(c.nbytes for c in maps.values())
        return maps

    def tile_call(self, q, k, v, extra_options):
        if router.CAPTURE_KEY in extra_options:
            return call(self, q, k, v, extra_options)
        return timed("attn2", call)(self, q, k, v, extra_options)
    runs.AttentionPrior.capture, router.AttentionRouter.__call__ = timed("capture", capture_and_measure), tile_call
    try:
        noise = comfy.sample.prepare_noise(latent, seed)
        start = time.process_time()
        out = comfy.sample.sample(model, noise, STEPS, 5.0, "euler", "normal", tiny_models.conditioning(kind, 1),
                                  tiny_models.conditioning(kind, 2), latent, denoise=0.6, disable_pbar=True, seed=seed)
        total = time.process_time() - start
    finally:
        runs.AttentionPrior.capture, router.AttentionRouter.__call__ = capture, call
    return {"total": total, **TIMES, "bytes": seen["bytes"], "out": out}


def low_latent(hw, seed=0):
    return torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(seed))


def measured_memory_table():
    print("\nMeasured on the tiny models (fp32, default layers) against the same shape formula")
    print("| model | low-res latent | layers | measured | from shapes |")
    print("|---|---|---|---|---|")
    for kind in ("sd15", "sdxl"):
        low = low_latent((32, 32))
        measured = tiny_run(kind, tiny_model(kind, low, "prior"), low, (64, 64))["bytes"]
        shapes = layer_shapes(tiny_models.tiny_model(kind).model.diffusion_model, (32, 32), *DEFAULT)
        print(f"| tiny {kind} | 32² | {len(shapes)} | {measured / 2 ** 10:.1f} KiB | "
              f"{capture_bytes(shapes, 77, element_size=4) / 2 ** 10:.1f} KiB |")


def cost_table(repeats=5):
    print(f"\nExtra cost per step, as a share of the tiles' own evaluations (the run with TiledBlendedDiffusion alone). "
          f"Tiny models, euler {STEPS} steps, CFG, {TILE} px tiles / {OVERLAP} px overlap, 4 tiles per batch; CPU time, "
          f"best of {repeats} runs, the variants interleaved. Capture: the low-res pass. Tile side: what the patched "
          f"layers' cross-attention costs beyond plain attention (reading the maps, region prompts).")
    print("| model | low-res -> working latent | tiles | tiled alone | capture | tile side, prior | tile side, prior + "
          "composer | prior in all (end to end) | prior + composer in all (end to end) | low-res tokens / tile tokens "
          "x (cond + uncond) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("sd15", "sdxl"):
        for low_hw, work_hw in (((32, 32), (64, 64)), ((16, 16), (64, 64))):
            low = low_latent(low_hw)
            variants = {name: tiny_model(kind, low, name) for name in ("alone", "prior", "composer")}
            runs = {name: [] for name in variants}
            for _ in range(repeats):
                for name, model in variants.items():
                    runs[name].append(tiny_run(kind, model, low, work_hw))
            best = {name: {key: min(r[key] for r in rs) for key in ("total", "capture", "attn2")} for name, rs in runs.items()}
            base = best["alone"]["total"]
            share = lambda seconds: f"{100 * seconds / base:.1f}%"  # noqa: E731
            tiles = len(region_grid(*work_hw, TILE // 8, TILE // 8, OVERLAP // 8))
            tokens = low_hw[0] * low_hw[1] / (tiles * (TILE // 8) ** 2 * 2)
            print(f"| tiny {kind} | {low_hw[0]}² -> {work_hw[0]}² | {tiles} | {base:.2f} s | "
                  f"{share(best['prior']['capture'])} | {share(best['prior']['attn2'] - best['alone']['attn2'])} | "
                  f"{share(best['composer']['attn2'] - best['alone']['attn2'])} | "
                  f"{share(best['prior']['total'] - base)} | {share(best['composer']['total'] - base)} | "
                  f"{100 * tokens:.1f}% |")


def bounded_capture_table():
    print(f"\nBounded capture (capture_size) against a full capture of the low-res latent. Tiny models, euler {STEPS} "
          f"steps, CFG, a 32x48 low-res latent (256x384 px) refined at 64x96, {TILE} px tiles. Output change: the "
          f"relative L2 distance of the sampled latent from the full capture's; the prior's own effect: the full "
          f"capture's distance from tiles alone.")
    print("| model | capture_size | captured latent | maps + values | capture CPU s | output change | "
          "prior's own effect |")
    print("|---|---|---|---|---|---|---|")
    low, work_hw = low_latent((32, 48)), (64, 96)
    for kind in ("sd15", "sdxl"):
        alone = tiny_run(kind, tiny_model(kind, low, "alone"), low, work_hw)["out"]
        full = tiny_run(kind, tiny_model(kind, low, "prior", 512), low, work_hw)
        effect = float((full["out"] - alone).norm() / alone.norm())
        for size in (512, 256, 192, 128):
            run = full if size == 512 else tiny_run(kind, tiny_model(kind, low, "prior", size), low, work_hw)
            cells = capture_size((32, 48), (size // 8) ** 2)
            change = float((run["out"] - full["out"]).norm() / full["out"].norm())
            print(f"| tiny {kind} | {size} px | {cells[1]}x{cells[0]} | {run['bytes'] / 2 ** 10:.0f} KiB | "
                  f"{run['capture']:.2f} | {100 * change:.2f}% | {100 * effect:.2f}% |")


if __name__ == "__main__":
    memory_table()
    stage_memory_table()
    measured_memory_table()
    cost_table()
    bounded_capture_table()
