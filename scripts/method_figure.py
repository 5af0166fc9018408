"""The README's picture of one C-Upscale stage, drawn from a real run of the pack's nodes.

One ×2 stage of a real photo runs through TiledBlendedDiffusion, LowFreqStructureGuide,
RegionalAttentionPrior and AttentionComposer and the stock KSampler, on ComfyUI's own classes with tiny
random weights (this picture shows geometry and data flow, not quality). What the figure shows is read
from that run: the tiles the model was called on (recorded at the diffusion model), the low band of the
low-res reference that the structure guide aligns to, and the region prompts the composer encoded.

    .venv/bin/python scripts/method_figure.py          # writes docs/method_stage.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import comfy_host  # noqa: E402
from cupscale.images import from_uint8, to_uint8  # noqa: E402
from harness.photos import photo  # noqa: E402

LOW_SIZE = (192, 128)        # the stage's input; the stage samples it at x2
TILE, OVERLAP = 128, 32      # pixels: a 4 x 3 grid at 384 x 256
SIGMA = 1.0                  # the structure guide's Gaussian, in low-res latent cells
PROMPTS = ("tabby fur, left ear", "striped tabby forehead", "striped forehead, fine fur", "right ear, soft background",
           "cheek fur, white whiskers", "yellow-green cat eye", "green cat eye, striped fur",
           "whiskers, soft background", "white chin fur", "white muzzle, whiskers", "pink cat nose, white muzzle",
           "soft blurred background")
COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
           "#fabebe", "#008080", "#e6beff")


def latent_picture(latent: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """Three of a latent's channels as RGB, each stretched to its own range, enlarged without smoothing."""
    x = latent[0, :3].float()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    rgb = ((x - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).numpy()
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.NEAREST)


def run_stage() -> dict:
    """One stage through the nodes; returns what the figure needs."""
    comfy_host.boot()
    import comfy.patcher_extension
    import nodes
    from cupscale.captioning.region_prompts import RegionPrompts, to_json
    from cupscale.tiling.grid import region_grid
    from cupscale.tiling.lowpass import lowpass
    n = nodes.NODE_CLASS_MAPPINGS

    model, clip, vae = n["CupscaleTinyCheckpointLoader"]().load("sdxl", 0)
    low = from_uint8(np.asarray(ImageOps.fit(photo("chelsea"), LOW_SIZE)))
    image = n["ImageScaleBy"]().upscale(low, "bicubic", 2.0)[0]
    low_latent, latent = n["VAEEncode"]().encode(vae, low)[0], n["VAEEncode"]().encode(vae, image)[0]
    positive = n["CLIPTextEncode"]().encode(clip, "a photograph of a tabby cat, sharp focus")[0]
    negative = n["CLIPTextEncode"]().encode(clip, "blurry")[0]
    h, w = latent["samples"].shape[-2:]
    grid = region_grid(h, w, TILE // 8, TILE // 8, OVERLAP // 8)
    prompts = RegionPrompts(grid, PROMPTS, "a photograph of a tabby cat, sharp focus")

    patched = n["TiledBlendedDiffusion"].execute(model, TILE, TILE, OVERLAP, 4)[0]
    patched = n["LowFreqStructureGuide"].execute(patched, low_latent, 1.0, "gaussian", SIGMA, 0.5, 0.0, 0.8,
                                                "cosine")[0]
    patched = n["RegionalAttentionPrior"].execute(patched, low_latent, positive, "all", "1/2 and coarser", 0.0, 1.0)[0]
    patched = n["AttentionComposer"].execute(patched, clip, 0.5, None, to_json(prompts))[0]
    seen = []

    def record_tiles(executor, *args, **kwargs):  # UNetModel._forward(x, timesteps, context, y, control, options)
        tiles = kwargs.get("transformer_options", args[5] if len(args) > 5 else {}).get("cupscale_tiles")
        seen.extend(tiles.boxes if tiles is not None else ())
        return executor(*args, **kwargs)
    patched = patched.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "method_figure", record_tiles)
    out = n["KSampler"]().sample(patched, 0, 4, 5.0, "euler", "normal", positive, negative, latent, denoise=0.5)[0]
    reference_low = lowpass(model.model.latent_format.process_in(low_latent["samples"]), "gaussian", SIGMA)
    return {"image": Image.fromarray(to_uint8(image)[0]), "boxes": list(dict.fromkeys(seen)), "grid": grid, "prompts": PROMPTS,
            "reference_low": reference_low, "output": Image.fromarray(to_uint8(n["VAEDecode"]().decode(vae, out)[0])[0])}


def draw_boxes(image: Image.Image, boxes, labels=None) -> Image.Image:
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    for i, box in enumerate(boxes):
        x, y, bw, bh = box.left * 8, box.top * 8, box.width * 8, box.height * 8
        inset = i % 2  # neighbours' edges side by side where tiles overlap
        draw.rectangle([x + inset, y + inset, x + bw - 1 - inset, y + bh - 1 - inset],
                       outline=COLOURS[i % len(COLOURS)], width=2)
        if labels:
            draw.text((x + 6, y + 5 + inset * 10), labels[i][:24], fill=COLOURS[i % len(COLOURS)])
    return image


def figure(stage: dict) -> Image.Image:
    size = stage["image"].size
    panels = [("1. the stage's image (x2 bicubic) and the tiles the model ran on",
               draw_boxes(stage["image"], stage["boxes"])),
              ("2. low band of the low-res latent (tiny VAE): the structure guide's target",
               latent_picture(stage["reference_low"], size)),
              ("3. region prompts, one per tile, as AttentionComposer encoded them",
               draw_boxes(Image.new("RGB", size, "#202020"), stage["grid"].boxes, stage["prompts"])),
              ("4. the stage's output (tiny random models: geometry only)", stage["output"])]
    pad, caption = 12, 22
    sheet = Image.new("RGB", (2 * size[0] + 3 * pad, 2 * (size[1] + caption) + 3 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, panel) in enumerate(panels):
        x, y = pad + (i % 2) * (size[0] + pad), pad + (i // 2) * (size[1] + caption + pad)
        draw.text((x, y + 4), title, fill="black")
        sheet.paste(panel, (x, y + caption))
    return sheet


def main() -> int:
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        stage = run_stage()
    assert len(stage["boxes"]) == len(stage["grid"]), "the model did not run on every tile of the grid"
    target = ROOT / "docs" / "method_stage.png"
    figure(stage).save(target, optimize=True)
    print(f"wrote {target}: {len(stage['boxes'])} tiles, {len(stage['prompts'])} region prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
