"""TiledBlendedDiffusion on the tiny SD1.5-shaped model, CPU: evaluations, overhead, batching, memory.

    .venv/bin/python bench/tiled_diffusion.py [--peer PATH] [--tables evals memory auto peer]

Prints one table per question of issue #2. "In model" is the time inside the UNet's forward
(a DIFFUSION_MODEL wrapper times it); everything else in a sampling run is overhead: ComfyUI's
sampler plus the pack's tile slicing, conditioning repeats and feathered merging. Sampling runs under
``torch.inference_mode()``, as ComfyUI's executor runs every node. With ``--peer`` (a checkout of
shiimizu/ComfyUI-TiledDiffusion, bench/peer.py) one more table: its MultiDiffusion against ours at equal tiles.
"""
from __future__ import annotations

import argparse
import json
import math
import threading
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import table  # noqa: E402

STEPS = 6
TILE_PX, OVERLAP_PX = 256, 64


def setup():
    from harness import comfy_host
    comfy_host.boot()
    import comfy.patcher_extension
    import nodes
    from harness import tiny_models
    return comfy.patcher_extension, nodes.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"](), tiny_models


class ModelClock:
    """Counts UNet forwards, the batch items they carry, and the seconds spent inside them."""

    def __init__(self):
        self.calls = self.items = 0
        self.seconds = 0.0

    def __call__(self, executor, x, *args, **kwargs):
        start = time.perf_counter()
        out = executor(x, *args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.items += x.shape[0]
        return out


def run(model, size, tiled_node, patcher_extension, tiny, per_batch=None, steps=STEPS, peer=False):
    """Seconds of one sampling run and its ModelClock: untiled (``per_batch`` None), our tiles (0: the automatic
    batch) or, with ``peer``, the peer's MultiDiffusion at the same tiles and batch."""
    import comfy.sample
    import torch
    from bench import peer as peer_node
    clock = ModelClock()
    m = model.clone()
    m.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench", clock)
    if peer:
        m = peer_node.multidiffusion(m, TILE_PX, OVERLAP_PX, per_batch)
    elif per_batch is not None:
        m = tiled_node.execute(m, TILE_PX, TILE_PX, OVERLAP_PX, per_batch)[0]
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    noise = comfy.sample.prepare_noise(latent, 1)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes; outside it autograd keeps every activation
        start = time.perf_counter()
        comfy.sample.sample(m, noise, steps, 5.0, "euler", "normal", tiny.conditioning("sd15", 1),
                            tiny.conditioning("sd15", 2), latent, denoise=0.6, seed=1, disable_pbar=True)
        return time.perf_counter() - start, clock



def memory_child(size: int) -> None:
    """Run one sampling at ``size``; print the peak RSS over the RSS just before it (MiB)."""
    import psutil
    ext, node, tiny = setup()
    model = tiny.tiny_model("sd15")
    run(model, 32, node, ext, tiny, per_batch=4)  # warm up allocator and caches
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)
    base = proc.memory_info().rss
    watcher = threading.Thread(target=watch)
    watcher.start()
    run(model, size, node, ext, tiny, per_batch=4)
    done.set()
    watcher.join()
    print(json.dumps({"peak_mib": (peak[0] - base) / 2 ** 20}))


def fastest(runs: dict, repeats: int) -> dict:
    """key -> (seconds, clock) of the fastest of ``repeats`` calls of ``runs[key]()``. The keys take turns, so a
    burst of load from another process on a shared machine slows every key's round alike."""
    best = {}
    for _ in range(repeats):
        for key, go in runs.items():
            result = go()
            if key not in best or result[0] < best[key][0]:
                best[key] = result
    return best


def evals_table(model, node, ext, tiny):
    from cupscale.tiling.grid import region_grid
    rows = []
    for size in (64, 128):
        tiles = len(region_grid(size, size, TILE_PX // 8, TILE_PX // 8, OVERLAP_PX // 8))
        for per_batch in (1, 4):
            total, clock = run(model, size, node, ext, tiny, per_batch=per_batch)
            minimum = math.ceil(tiles / per_batch) * STEPS  # cond+uncond share one batch
            rows.append([f"{size}²", tiles, per_batch, clock.calls, minimum, clock.items, tiles * STEPS * 2,
                         f"{total:.2f}", f"{clock.seconds:.2f}", f"{total / clock.seconds:.3f}",
                         f"{100 * (total - clock.seconds) / total:.1f}%"])
        total, clock = run(model, size, node, ext, tiny)
        rows.append([f"{size}² untiled", 1, "-", clock.calls, STEPS, clock.items, STEPS * 2, f"{total:.2f}",
                     f"{clock.seconds:.2f}", f"{total / clock.seconds:.3f}",
                     f"{100 * (total - clock.seconds) / total:.1f}%"])
    table(f"Evaluations and time ({STEPS} euler steps, CFG, tile {TILE_PX}px overlap {OVERLAP_PX}px)",
          ["latent", "tiles", "tiles/batch", "UNet calls", "minimum calls", "tile items", "tiles×steps×2",
           "sampling s", "in model s", "sampling/model", "outside model"], rows)


def memory_table():
    rows = []
    for size in (64, 128, 256):
        out = subprocess.run([sys.executable, __file__, "--memory", str(size)], capture_output=True, text=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
        latent_mib = 4 * size * size * 4 / 2 ** 20
        rows.append([f"{size}²", f"{latent_mib:.2f}", f"{peak:.0f}"])
    table("Peak memory during sampling over the RSS before it (sampled every 2 ms; tiles/batch 4)",
          ["latent", "one latent buffer MiB", "peak growth MiB"], rows)


def auto_batch_table(model, node, ext, tiny, size=96, steps=8, repeats=5):
    """tiles_per_batch 0 against every fixed batch. Off the CPU auto is the batch the free memory holds (the
    model's estimate); on the CPU its first evaluation tries the sizes (BatchTuner), so a run of 8 steps, where
    the trials are one step in eight (a sampler's 20-30 steps make it less)."""
    from cupscale.tiling.grid import region_grid
    tiles = len(region_grid(size, size, TILE_PX // 8, TILE_PX // 8, OVERLAP_PX // 8))
    batches = [0] + [b for b in (1, 2, 4, 8) if b < tiles] + [tiles]
    best = fastest({b: lambda b=b: run(model, size, node, ext, tiny, per_batch=b, steps=steps) for b in batches},
                   repeats)
    fastest_fixed = min(best[b][0] for b in batches if b)
    rows = [["auto (0)" if b == 0 else b, best[b][1].calls, f"{best[b][0]:.3f}", f"{best[b][0] / fastest_fixed:.3f}"]
            for b in batches]
    import torch
    table(f"tiles_per_batch against the fastest fixed batch ({size}² latent, {tiles} tiles, {steps} euler steps, "
          f"CFG, best of {repeats} in turns, {torch.get_num_threads()} threads)",
          ["tiles/batch", "UNet calls", "sampling s", "/ fastest fixed"], rows)


def peer_table(model, node, ext, tiny, repeats=5):
    """Ours against the peer's MultiDiffusion at equal tiles, batch and steps. The peer evens out its batches
    (9 tiles at 4 per batch: 3 + 3 + 3, ours 4 + 4 + 1); both make the same number of calls."""
    from cupscale.tiling.grid import region_grid
    rows = []
    for size in (64, 128):
        tiles = len(region_grid(size, size, TILE_PX // 8, TILE_PX // 8, OVERLAP_PX // 8))
        for per_batch in (1, 4):
            best = fastest({who: lambda who=who: run(model, size, node, ext, tiny, per_batch=per_batch,
                                                     peer=who == "peer")
                            for who in ("ours", "peer")}, repeats)
            for who, (total, clock) in best.items():
                rows.append([f"{size}²", tiles, per_batch, who, clock.calls, f"{total:.3f}", f"{clock.seconds:.3f}",
                             f"{total / clock.seconds:.3f}", f"{total / best['peer'][0]:.3f}"])
    import torch
    table(f"Ours against the peer's MultiDiffusion at equal tiles ({STEPS} euler steps, CFG, tile {TILE_PX}px overlap "
          f"{OVERLAP_PX}px, best of {repeats} in turns, {torch.get_num_threads()} threads)",
          ["latent", "tiles", "tiles/batch", "run", "UNet calls", "sampling s", "in model s", "sampling/model",
           "/ peer"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", help="folder of a shiimizu/ComfyUI-TiledDiffusion checkout (bench/peer.py)")
    parser.add_argument("--tables", nargs="+", choices=["evals", "memory", "auto", "peer"],
                        default=["evals", "memory", "auto", "peer"])
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's; 1 is steadier beside another job)")
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        return memory_child(args.memory)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    ext, node, tiny = setup()
    if args.peer:
        from bench import peer
        peer.load(args.peer)  # before every table: its sampler hooks are then in place for both sides
    model = tiny.tiny_model("sd15")
    run(model, 64, node, ext, tiny, per_batch=4)  # warm-up
    if "evals" in args.tables:
        evals_table(model, node, ext, tiny)
    if "memory" in args.tables:
        memory_table()
    if "auto" in args.tables:
        auto_batch_table(model, node, ext, tiny)
    if "peer" in args.tables and args.peer:
        peer_table(model, node, ext, tiny)


if __name__ == "__main__":
    main()
