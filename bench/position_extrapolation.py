"""Time per step of tiled Flux sampling with each position mode against ``whole`` (tiles at their place in the
whole image, the model's own frequencies), and the share of the rotary tables in it.

The model is the tiny Flux of the tests (harness/tiny_models.py: ComfyUI's Flux class, seeded weights): its own
work per tile is a small fraction of Flux dev's, so the rotary table's share here is an upper bound of what it
costs beside a real model. A second table gives the table's time per call at Flux dev's rotary dims (16, 56, 56)
for one 1024 px tile of a 4K and an 8K image.

    .venv/bin/python bench/position_extrapolation.py [--size 4096] [--steps 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.tables import table  # noqa: E402

MODES = ["whole", "tile", "ntk", "yarn", "vision_yarn"]


class Timed(torch.nn.Module):
    """Seconds spent in a module's forward (the pe_embedder, plain or extrapolated; the host sets only modules
    there)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.seconds, self.calls = module, 0.0, 0

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.module(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def patched(n, model, mode: str, tile: int):
    """The tiled model of ``mode``: extrapolated at Flux's 1024 px base for the three methods."""
    if mode not in ("whole", "tile"):
        model = n["DiTPositionExtrapolation"]().execute(model, mode, True, 1024)[0]
    return n["TiledBlendedDiffusion"]().execute(model, tile, tile, 128, 0, dit_tile_positions=mode != "tile")[0]


def step_rows(size: int, steps: int, repeats: int):
    import nodes

    from bench.real_scale import sample_once
    from harness import tiny_models
    model = tiny_models.tiny_model("flux")
    pos, neg = tiny_models.conditioning("flux", 1), tiny_models.conditioning("flux", 2)
    latent = torch.randn(tiny_models.latent_shape("flux", 1, size // 8, size // 8),
                         generator=torch.Generator().manual_seed(0))
    times = {mode: [] for mode in MODES}
    tables = {mode: [] for mode in MODES}
    for _ in range(repeats):  # modes take turns, so a slow moment of the machine falls on all of them
        for mode in MODES:
            m = patched(nodes.NODE_CLASS_MAPPINGS, model, mode, 1024).clone()
            timer = Timed(m.get_model_object("diffusion_model.pe_embedder"))
            m.add_object_patch("diffusion_model.pe_embedder", timer)
            total, clock, _, _ = sample_once(m, steps, pos, neg, latent, cfg=1.0, scheduler="simple")
            times[mode].append((total, clock.seconds, clock.calls))
            tables[mode].append(timer.seconds)
    base = min(t for t, _, _ in times["whole"]) / steps
    rows = []
    for mode in MODES:
        total, model_s, calls = min(times[mode])
        per_step = total / steps
        rows.append([mode, f"{per_step:.2f}", f"{per_step / base:.3f}", calls // steps, f"{min(tables[mode]):.3f}",
                     f"{100 * min(tables[mode]) / model_s:.1f}%"])
    table(f"Tiled tiny Flux, {size}² px output, tiles of 1024 px (overlap 128), euler, CFG 1, {steps} steps, best of "
          f"{repeats}", ["mode", "s / step", "vs whole", "model calls / step", "rotary tables s", "of model time"],
          rows)


def rotary_rows(repeats: int):
    """One 1024 px tile's rotary table (64x64 patches and 512 text tokens) at Flux dev's dims."""
    from comfy.ldm.flux.layers import EmbedND

    from harness.comfy_host import pack_module
    rope = pack_module("nodes.position_extrapolation")
    places = pack_module("nodes.dit_positions")
    host = EmbedND(dim=128, theta=10000, axes_dim=[16, 56, 56])
    rows = []
    for size in (4096, 8192):
        whole = (size // 16, size // 16)
        ids = torch.zeros(1, 512 + 64 * 64, 3)
        grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij"), -1).reshape(-1, 2)
        ids[0, 512:, 1:] = grid + whole[0] // 2
        place = places.TilePlace(((whole[0] // 2, whole[1] // 2),), (64, 64), whole)
        timings = {"host EmbedND": best(lambda: host(ids), repeats)}
        for mode in ("ntk", "yarn", "vision_yarn"):
            embedder = rope.ExtrapolatedRope(host, rope.Extrapolation(mode, (64, 64)), 1.0, 2)

            def run():
                active = places.ACTIVE.set(place)
                try:
                    with places.model_call(torch.empty(1, 16, 128, 128, device="meta"), torch.tensor(0.7)):
                        embedder(ids)
                finally:
                    places.ACTIVE.reset(active)
            timings[mode] = best(run, repeats)
        rows += [[f"{size}²", name, f"{ms:.1f}"] for name, ms in timings.items()]
    table("One 1024 px tile's rotary table at Flux dev's dims (16, 56, 56), 4608 tokens, ms per call (best of "
          f"{repeats})", ["image", "embedder", "ms"], rows)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    from harness import comfy_host
    comfy_host.boot()
    torch.set_num_threads(1)
    step_rows(a.size, a.steps, a.repeats)
    rotary_rows(5)


if __name__ == "__main__":
    main()
