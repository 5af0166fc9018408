"""Peak memory of one x2 stage by output size: does anything but the latent grow with the image?

    .venv/bin/python bench/stage_memory.py [--sizes 2048 4096 8192] [--kind sdxl]

Each (size, chain) runs in a fresh process (its peak RSS its own): a tiny SDXL-shaped model (harness.tiny_models),
1024 px tiles with 128 px overlap, one euler step at denoise 0.5, CFG 5, tiles/batch 3, the low-res latent half
the output's side; chains "tiles" (TiledBlendedDiffusion alone) and "all priors" (+ LowFreqStructureGuide,
RegionalAttentionPrior, AttentionComposer). The table gives the peak RSS while sampling above the RSS before it,
and the latent's own size: what grows with the output beyond a few latent-sized buffers (the sampler's x,
noise, denoised; the tile merger's sum) would be the pack's. A tiny model keeps the per-tile activations small;
at real architecture they are those of one tile batch at any output size (measured in bench/real_scale.py), and
the prior's maps are bounded to the native size (bench/regional_attention.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import table  # noqa: E402

TILE, OVERLAP = 1024, 128
BATCH = 3  # 9, 25 and 81 tiles (2K, 4K, 8K) all split into calls of at most 3: the same largest tile batch


def child(kind: str, size: int, chain: str) -> dict:
    import psutil
    import torch

    from bench.real_scale import PeakRSS, patches
    from harness import comfy_host
    comfy_host.boot()
    import comfy.sample
    import nodes
    from harness import tiny_models
    clip = tiny_models.tiny_clip()
    encode = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode
    pos, neg = encode(clip, "a red barn")[0], encode(clip, "blurry")[0]
    side = size // 8
    low = torch.randn(1, 4, side // 2, side // 2, generator=torch.Generator().manual_seed(0))
    p = patches(nodes.NODE_CLASS_MAPPINGS, low, pos, TILE, OVERLAP, BATCH, clip)
    model = p["tiled"](tiny_models.tiny_model(kind))
    if chain == "all priors":
        model = p["composer"](p["prior"](p["guide"](model)))
    latent = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")
    noise = comfy.sample.prepare_noise(latent, 1)
    before = psutil.Process().memory_info().rss
    with torch.inference_mode(), PeakRSS() as rss:
        start = time.perf_counter()
        comfy.sample.sample(model, noise, 1, 5.0, "euler", "normal", pos, neg, latent, denoise=0.5, seed=1,
                            disable_pbar=True)
        seconds = time.perf_counter() - start
    return {"grown": rss.peak - before, "latent": latent.numel() * latent.element_size(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--kind", default="sdxl", choices=["sd15", "sdxl"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.kind, int(args.child[0]), args.child[1])))
        return
    rows, grown = [], {}
    for size in args.sizes:
        for chain in ("tiles", "all priors"):
            out = subprocess.run([sys.executable, __file__, "--kind", args.kind, "--child", str(size), chain],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            grown[size, chain] = result["grown"]
            rows.append([f"{size}²", chain, f"{result['latent'] / 2 ** 20:.0f}", f"{result['grown'] / 2 ** 20:.0f}",
                         f"{result['grown'] / result['latent']:.1f}", f"{result['seconds']:.1f}"])
    table(f"One x2 stage, tiny {args.kind} model, {TILE} px tiles (overlap {OVERLAP}), tiles/batch {BATCH}, 1 step "
          f"(measured, a fresh process each)", ["output", "chain", "latent MiB", "peak RSS grown while sampling MiB",
                             "grown / latent", "seconds"], rows)
    first, last = args.sizes[0], args.sizes[-1]
    extra = {size: grown[size, "all priors"] - grown[size, "tiles"] for size in (first, last)}
    ratio = grown[last, "all priors"] / grown[first, "all priors"]
    print(f"\nall priors' extra over tiles alone: {extra[first] / 2 ** 20:.0f} MiB at {first}², "
          f"{extra[last] / 2 ** 20:.0f} MiB at {last}²; all priors grown at {last}² / at {first}²: {ratio:.3f}")


if __name__ == "__main__":
    main()
