"""The pack at real architecture: full-size SD1.5 and SDXL (seeded random weights, harness/real_models.py)
loaded by the stock CheckpointLoaderSimple, and Flux.1 dev and Z-Image Turbo by UNETLoader (``--models flux
z_image``: their rows are bench/real_scale_dit.py's), on the CPU.

    .venv/bin/python bench/real_scale.py [--models sd15 sdxl flux z_image] [--size 384] [--tile 256] [--steps 1]
                                         [--batch 4] [--peer PATH] [--rows tiles peer ...] [--repeats 1]

Each model runs in its own process (its peak RSS is its own). Per model it prints:
1. the load: what the stock loader detected, seconds, RSS;
2. one UNet evaluation of a native-size tile (cond + uncond, the batch CFG makes), measured;
3. rows plain / tiles / + each prior / all priors at ``--size`` px output (measured): time, time inside the
   UNet (a DIFFUSION_MODEL wrapper, so the prior's capture pass counts as UNet time), the overhead ratio
   total / UNet, model calls, peak RSS; with ``--peer`` (a checkout of shiimizu/ComfyUI-TiledDiffusion, see
   bench/peer.py) one more row, its MultiDiffusion at the same tiles, overlap, batch and steps. ``--rows`` picks
   rows, ``--repeats`` runs them in turns and keeps each row's fastest run. Sampling runs under
   ``torch.inference_mode()``, as ComfyUI's executor runs every node;
4. the shipped workflow on the real file at a small size (SDXL: cupscale_sdxl_1024_to_4096 with its region
   prompts given as JSON instead of the MLLM), and the output size;
5. computed, not measured: time per step at 1K-16K from the measured native-tile evaluation.
SDXL runs with bf16 weights (``--bf16-unet``; the CPU computes in float32), so that it fits in ~14 GiB.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.real_scale_dit import KINDS as DITS  # noqa: E402
from bench.tables import table  # noqa: E402

NATIVE_PX = {"sd15": 512, "sdxl": 1024}
PROMPT, NEGATIVE = "a red barn in a field of sunflowers", "blurry, low quality"


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 5 ms), in GiB."""

    def __enter__(self):
        import psutil
        self.proc, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self.watch)
        self.thread.start()
        return self

    def watch(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.gib = self.peak / 2 ** 30


class ModelClock:
    """Counts UNet forwards and the seconds spent inside them (a DIFFUSION_MODEL wrapper)."""

    def __init__(self):
        self.calls, self.seconds = 0, 0.0

    def __call__(self, executor, *args, **kwargs):
        start = time.perf_counter()
        out = executor(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out



def boot(kind: str):
    from harness import comfy_host
    comfy_host.prepare()
    if kind == "sdxl":
        from comfy.cli_args import args
        args.bf16_unet = True
        args.bf16_text_enc = True
    comfy_host.boot()
    from harness import real_models
    real_models.register_cache_folder()
    return real_models.ensure_checkpoint(kind).name


def load(kind: str, name: str):
    import nodes
    start = time.perf_counter()
    with PeakRSS() as rss:
        model, clip, vae = nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(name)
    detected = type(model.model.model_config).__name__
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    table(f"{kind}: the stock CheckpointLoaderSimple on {name}",
          ["detected", "UNet parameters", "UNet dtype", "load s", "peak RSS GiB"],
          [[detected, f"{params / 1e9:.3f} B", str(model.model_dtype()).replace("torch.", ""),
            f"{time.perf_counter() - start:.1f}", f"{rss.gib:.1f}"]])
    return model, clip, vae


def encode(clip, text):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, text)[0]


def native_tile_eval(kind, model, pos):
    """Seconds of one UNet evaluation of a native-size tile, batch 2 (cond + uncond)."""
    import comfy.model_management
    import torch
    comfy.model_management.load_models_gpu([model])
    side = NATIVE_PX[kind] // 8
    x = torch.randn(2, 4, side, side)
    kwargs = {"c_crossattn": pos[0][0].expand(2, -1, -1)}
    if kind == "sdxl":
        kwargs["y"] = torch.zeros(2, 2816)
    with torch.inference_mode(), PeakRSS() as rss:
        start = time.perf_counter()
        model.model.apply_model(x, torch.full((2,), 5.0), **kwargs)
        seconds = time.perf_counter() - start
    return seconds, rss.gib


def patches(n, low, pos, tile, overlap, batch, clip=None) -> dict:
    """The pack's nodes with the rows' settings, each as MODEL -> MODEL (the composer where ``clip`` is given)."""
    made = {"tiled": lambda m: n["TiledBlendedDiffusion"]().execute(m, tile, tile, overlap, batch)[0],
            "guide": lambda m: n["LowFreqStructureGuide"]().execute(m, {"samples": low}, 1.0, "gaussian", 1.0, 0.5,
                                                                    0.0, 0.8, "cosine")[0],
            "prior": lambda m: n["RegionalAttentionPrior"]().execute(m, {"samples": low}, pos, "all",
                                                                     "1/2 and coarser", 0.0, 1.0)[0]}
    if clip is not None:
        made["composer"] = lambda m: n["AttentionComposer"]().execute(m, clip, 0.5, text="a wooden wall, sunflowers")[0]
    return made


def chains(n, model, clip, low, pos, tile, overlap, batch, peer):
    """name -> patched model: plain, tiles alone, the peer's MultiDiffusion at the same tiles (with ``peer``),
    + each prior, all priors."""
    from bench import peer as peer_node
    p = patches(n, low, pos, tile, overlap, batch, clip)
    tiled, guide, prior, composer = p["tiled"], p["guide"], p["prior"], p["composer"]
    made = {"plain": lambda: model, "tiles": lambda: tiled(model),
            "peer MultiDiffusion": lambda: peer_node.multidiffusion(model, tile, overlap, batch),
            "+ structure guide": lambda: guide(tiled(model)), "+ attention prior": lambda: prior(tiled(model)),
            "+ prior and composer": lambda: composer(prior(tiled(model))),
            "all priors": lambda: composer(prior(guide(tiled(model))))}
    return {name: make() for name, make in made.items() if peer or name != "peer MultiDiffusion"}


def sample_once(m, steps, pos, neg, latent, cfg=5.0, scheduler="normal"):
    """One timed sampling run of ``m``: (seconds, ModelClock, peak RSS GiB, process CPU seconds), inside inference
    mode as ComfyUI's executor runs it (outside it, autograd would keep every activation of the UNet until the call
    returns). The CPU seconds are the steadier figure where another job shares the cores."""
    import comfy.patcher_extension
    import comfy.sample
    import torch
    clock, m = ModelClock(), m.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench", clock)
    noise = comfy.sample.prepare_noise(latent, 1)
    with torch.inference_mode(), PeakRSS() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        comfy.sample.sample(m, noise, steps, cfg, "euler", scheduler, pos, neg, latent, denoise=0.5, seed=1,
                            disable_pbar=True)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    return total, clock, rss.gib, cpu


def rows_table(kind, model, clip, size, tile, overlap, steps, batch=4, peer=False, only=None, repeats=1):
    import nodes
    import torch
    from cupscale.tiling.grid import region_grid
    n = nodes.NODE_CLASS_MAPPINGS
    pos, neg = encode(clip, PROMPT), encode(clip, NEGATIVE)
    side = size // 8
    low = torch.randn(1, 4, side // 2, side // 2, generator=torch.Generator().manual_seed(0))
    latent = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")
    tiles = len(region_grid(side, side, tile // 8, tile // 8, overlap // 8))
    models = {name: m for name, m in chains(n, model, clip, low, pos, tile, overlap, batch, peer).items()
              if not only or name in only}
    best = {}
    for _ in range(repeats):  # rows take turns, so a burst of load on a shared machine slows each round alike
        for name, m in models.items():
            result = sample_once(m, steps, pos, neg, latent)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    rows = [[name, f"{total:.1f}", f"{clock.seconds:.1f}", f"{total / clock.seconds:.3f}", clock.calls, f"{gib:.2f}",
             f"{cpu:.1f}"] for name, (total, clock, gib, cpu) in best.items()]
    table(f"{kind}: {size}² px output, {tiles} tiles of {tile} px (overlap {overlap}), {steps} euler step(s), CFG 5, "
          f"tiles/batch {batch} (measured{f', fastest of {repeats} in turns' if repeats > 1 else ''})",
          ["run", "time s", "in UNet s", "total / UNet", "model calls", "peak RSS GiB", "CPU s"], rows)
    if "tiles" in best and "peer MultiDiffusion" in best:
        (ours, ours_clock, _, ours_cpu), (theirs, their_clock, _, their_cpu) = (best["tiles"],
                                                                               best["peer MultiDiffusion"])
        print(f"\ntiles / peer MultiDiffusion: time {ours / theirs:.3f}, "
              f"in UNet {ours_clock.seconds / their_clock.seconds:.3f}, CPU {ours_cpu / their_cpu:.3f}")


def shipped_workflow(kind, name):
    """The shipped workflow, changed only in checkpoint, image, sizes and steps (SDXL: region prompts as JSON)."""
    import tempfile

    import folder_paths
    from PIL import Image
    from cupscale.captioning.region_prompts import RegionPrompts, to_json
    from cupscale.tiling.grid import region_grid
    from harness import workflows
    from harness.comfy_host import run_prompt
    base = Path.home() / ".cache" / "comfyui-cupscale" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(tempfile.mkdtemp(dir=base))
    folder_paths.set_output_directory(tempfile.mkdtemp(dir=base))
    Image.new("RGB", (64, 64), (120, 160, 90)).save(Path(folder_paths.get_input_directory()) / "real_scale.png")
    if kind == "sd15":
        prompt = workflows.load("upscale_x4_two_stage.api.json")
        sets = ["8.steps=1", "12.steps=1", "4.tile_width=128", "4.tile_height=128", "4.overlap=32"]
        sets += [f"{n}.tile_size=256" for n in (7, 9, 11, 13)]
        out_node = "14"
    else:
        prompt = workflows.load("cupscale_sdxl_1024_to_4096.api.json")
        sets = ["16.steps=1", "25.steps=1", "5.value=128", "6.value=32"]
        sets += [f"{n}.tile_size=256" for n in (9, 11, 17, 20, 26)]
        # The region prompts are given below: an endpoint loader, which names no local model, is never asked.
        prompt["28"] = {"class_type": "EndpointVLMLoader", "inputs": {"endpoint_url": "http://127.0.0.1:9/v1",
                                                                      "endpoint_model": "unused", "in_flight": 1}}
        out_node = "27"
    prompt = workflows.with_overrides(workflows.with_image(workflows.with_checkpoint(prompt, name), "real_scale.png"),
                                      sets)
    if kind == "sdxl":
        for node, side in (("12", 16), ("21", 32)):  # the two stages' latents: 128 px and 256 px images
            grid = region_grid(side, side, 16, 16, 4)
            doc = RegionPrompts(grid, tuple(f"region {i}: sunflowers" for i in range(len(grid))), PROMPT)
            prompt[node]["inputs"]["region_prompts_json"] = to_json(doc)
    start = time.perf_counter()
    with PeakRSS() as rss:
        history = run_prompt(prompt)
    image = history["outputs"][out_node]["images"][-1]
    with Image.open(Path(folder_paths.get_output_directory()) / image["subfolder"] / image["filename"]) as im:
        size = im.size
    table(f"{kind}: the shipped workflow on the real file (64² input, two ×2 stages, 1 step each)",
          ["workflow", "output", "time s", "peak RSS GiB"],
          [["upscale_x4_two_stage" if kind == "sd15" else "cupscale_sdxl_1024_to_4096",
            f"{size[0]}x{size[1]}", f"{time.perf_counter() - start:.0f}", f"{rss.gib:.1f}"]])


def computed_table(kind, tile_seconds):
    from cupscale.tiling.grid import region_grid
    native = NATIVE_PX[kind]
    overlap = native // 8
    rows = []
    for size in (1024, 2048, 4096, 8192, 16384):
        side = size // 8
        tiles = len(region_grid(side, side, native // 8, native // 8, overlap // 8))
        rows.append([f"{size}²", tiles, f"{tiles * tile_seconds:.0f}"])
    table(f"{kind}: computed from the measured native-tile evaluation ({tile_seconds:.1f} s, {native} px, CFG batch 2):"
          f" UNet seconds per step, tile {native} px overlap {overlap}", ["output", "tiles", "s per step (computed)"],
          rows)


def child(args):
    import torch
    torch.set_num_threads(args.threads)
    kind = args.child
    name = boot(kind)
    if args.peer:
        from bench import peer
        peer.load(args.peer)  # before every row: its sampler hooks are then in place for all of them
    model, clip, vae = load(kind, name)
    if not args.skip_native:
        seconds, gib = native_tile_eval(kind, model, encode(clip, PROMPT))
        table(f"{kind}: one UNet evaluation of a native tile (measured)", ["tile", "batch", "seconds", "peak RSS GiB"],
              [[f"{NATIVE_PX[kind]}² px", 2, f"{seconds:.1f}", f"{gib:.1f}"]])
    rows_table(kind, model, clip, args.size, args.tile, args.tile // 4, args.steps, args.batch, bool(args.peer),
               args.rows, args.repeats)
    del model, clip, vae
    if not args.skip_workflow:
        shipped_workflow(kind, name)
    if not args.skip_native:
        computed_table(kind, seconds)


ROWS = ["plain", "tiles", "peer MultiDiffusion", "+ structure guide", "+ attention prior", "+ prior and composer",
        "all priors", "guide + prior"]  # the last: the DiT rows' all (bench/real_scale_dit.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl", *DITS],
                        help="flux, z_image: Flux.1 dev's and Z-Image Turbo's rows (bench/real_scale_dit.py)")
    parser.add_argument("--size", type=int, default=384, help="output side in px of the measured rows")
    parser.add_argument("--tile", type=int, default=256, help="tile side in px of the measured rows")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="tiles per model call of the tiled rows (0: automatic)")
    parser.add_argument("--peer", help="folder of a shiimizu/ComfyUI-TiledDiffusion checkout: adds its row")
    parser.add_argument("--rows", nargs="+", choices=ROWS, help="only these rows (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row, in turns; the fastest is shown")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1: steadier beside another job)")
    parser.add_argument("--skip-workflow", action="store_true")
    parser.add_argument("--skip-native", action="store_true", help="no native-tile evaluation, no computed table")
    parser.add_argument("--child", choices=["sd15", "sdxl", *DITS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in DITS:
        from bench import real_scale_dit
        return real_scale_dit.child(args.child, args.size, args.tile, args.steps, args.rows)
    if args.peer and args.batch < 1:
        parser.error("--peer needs a fixed --batch (the peer has no automatic batch)")
    if args.child:
        return child(args)
    for kind in args.models:
        subprocess.run([sys.executable, __file__, "--child", kind] + sys.argv[1:], check=True)


if __name__ == "__main__":
    main()
