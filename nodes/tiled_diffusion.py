"""TiledBlendedDiffusion: MultiDiffusion over overlapping tiles, optionally blended with a mask.

Three wrappers on a clone of the model (core maths in cupscale.tiling.multidiffusion / cupscale.tiling.blended):
- OUTER_SAMPLE prepares one run: the source latent and noise for blending, the progress bar.
- CALC_COND_BATCH pins the background outside the mask and defers ControlNets to the tiles.
- APPLY_MODEL splits each evaluation into tile batches and merges them with feathered weights;
  the tiles being run are published as ``transformer_options["cupscale_tiles"]`` (a TileBatch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from ..cupscale.tiling import blended
from ..cupscale.tiling.grid import RegionGrid, check_tile_settings, region_grid
from ..cupscale.tiling.multidiffusion import TileBatch, TileMerger, gather_tiles, repeat_per_tile, tile_weights
from .inputs import tile_inputs_v1, widget_names
from .control_tiling import ControlRequest, TiledHints, defer_controls

TILES_KEY = "cupscale_tiles"
RUN_KEY = "cupscale_tiled_run"
WRAPPER_KEY = "cupscale.tiled_diffusion"
WrappersMP = comfy.patcher_extension.WrappersMP


def latent_ratio(model_patcher) -> int:
    """Pixels per latent cell of the model's VAE (8 for SD1.5, SDXL, SD3, Flux)."""
    return getattr(model_patcher.model.latent_format, "spacial_downscale_ratio", 8)


def mask_to_latent(mask: torch.Tensor, latent_hw: tuple[int, int], ratio: int) -> torch.Tensor:
    """A MASK of the image's size (or the latent's) as ``(batch, 1, h, w)`` at latent resolution.

    VAE Encode drops up to ``ratio - 1`` pixels of an image whose sides are not whole latent cells,
    half on each side; a mask of the uncropped image is cropped the same way.
    """
    h, w = latent_hw
    mh, mw = mask.shape[-2:]
    mask = mask.reshape(-1, 1, mh, mw).float()
    if (mh, mw) == (h, w):
        return mask
    if not (h * ratio <= mh < (h + 1) * ratio and w * ratio <= mw < (w + 1) * ratio):
        raise ValueError(f"mask is {mw}x{mh} pixels but the latent being sampled is {w}x{h} "
                         f"({w * ratio}x{h * ratio} pixels): give TiledBlendedDiffusion a mask of the image's size.")
    top, left = (mh - h * ratio) // 2, (mw - w * ratio) // 2
    mask = mask[:, :, top:top + h * ratio, left:left + w * ratio]
    return torch.nn.functional.interpolate(mask, size=(h, w), mode="area")


@dataclass
class TiledRun:
    """What one sampling run needs beyond the model call: blending inputs, hints, progress."""

    steps: int
    tiles: int
    source: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    hints: TiledHints = field(default_factory=TiledHints)
    progress: comfy.utils.ProgressBar | None = None

    def report(self, transformer_options: dict, done: int, total: int) -> None:
        """Tile-level progress on the same scale as the sampler's own step bar (steps x tiles)."""
        sigmas = transformer_options.get("sample_sigmas")
        sigma = transformer_options.get("sigmas")
        if self.progress is None or sigmas is None or sigma is None:
            return
        step = int((sigmas[:-1] > sigma.max() * (1 + 1e-4)).sum())
        value = step * self.tiles + round(done * self.tiles / total)
        # Never backwards: a resampler (RePaint) revisits noise levels it has passed.
        self.progress.update_absolute(max(value, self.progress.current), self.steps * self.tiles)


class TiledDiffusion:
    """The patch: tiling settings plus the wrappers that apply them."""

    def __init__(self, tile_height: int, tile_width: int, overlap: int, tiles_per_batch: int,
                 mask: torch.Tensor | None, lowpass_sigma: float):
        self.tile_height, self.tile_width, self.overlap = tile_height, tile_width, overlap
        self.tiles_per_batch = tiles_per_batch
        self.mask = mask
        self.lowpass_sigma = lowpass_sigma
        self.grids: dict[tuple[int, int], tuple[RegionGrid, torch.Tensor]] = {}

    def grid(self, hw: tuple[int, int], like: torch.Tensor | None = None) -> tuple[RegionGrid, torch.Tensor]:
        """The grid for a latent of ``hw`` and its feather weights, kept on ``like``'s device and dtype
        once moved there, so no step copies them again."""
        if hw not in self.grids:
            grid = region_grid(hw[0], hw[1], self.tile_height, self.tile_width, self.overlap)
            self.grids[hw] = (grid, tile_weights(grid))
        grid, weights = self.grids[hw]
        if like is not None and (weights.device, weights.dtype) != (like.device, like.dtype):
            self.grids[hw] = grid, weights.to(like)
        return self.grids[hw]

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        guider = executor.class_obj
        model = guider.model_patcher.model
        hw = tuple(noise.shape[-2:])
        run = TiledRun(steps=max(1, sigmas.shape[-1] - 1), tiles=len(self.grid(hw)[0]))
        if not disable_pbar:
            run.progress = comfy.utils.ProgressBar(run.steps * run.tiles)
        if self.mask is not None:
            run.mask = mask_to_latent(self.mask, hw, latent_ratio(guider.model_patcher))
            run.source = model.process_latent_in(latent_image) if torch.count_nonzero(latent_image) else latent_image
            run.noise = noise
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run: TiledRun | None = model_options.get("transformer_options", {}).get(RUN_KEY)
        pinned = run is not None and run.mask is not None
        if pinned:
            mask = run.mask.to(x_in)
            source = run.source.to(x_in)
            if self.lowpass_sigma <= 0:
                noised = model.scale_latent_inpaint(sigma=timestep, noise=run.noise.to(x_in), latent_image=source)
                x_in = blended.blend(x_in, noised, mask)
        out = executor(model, defer_controls(conds), x_in, timestep, model_options)
        if pinned:
            out = [blended.blend(o, blended.pinned_background(o, source, self.lowpass_sigma), mask) for o in out]
        return out

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        grid, weights = self.grid(tuple(x.shape[-2:]), x)
        if len(grid) == 1:
            if isinstance(control, ControlRequest):
                control = control.evaluate(x, t, control.cond, transformer_options)
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        cond = dict(kwargs, c_concat=c_concat, c_crossattn=c_crossattn)

        run: TiledRun | None = transformer_options.get(RUN_KEY)
        chunks = len(transformer_options.get("cond_or_uncond", ())) or 1
        images = x.shape[0] // chunks
        todo = self.tiles_to_run(grid, run)
        merger = TileMerger(x, grid, weights)
        hints = run.hints if run is not None else TiledHints()
        for start in range(0, len(todo), self.tiles_per_batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            indices = tuple(todo[start:start + self.tiles_per_batch])
            batch = TileBatch(grid, indices, chunks, images)
            boxes = batch.boxes
            tile_cond = {k: tile_value(v, x, boxes, chunks) for k, v in cond.items()}
            tile_t = repeat_per_tile(t, chunks, len(indices))
            options = dict(transformer_options)
            options[TILES_KEY] = batch
            tile_x = gather_tiles(x, boxes, chunks)
            tile_control = control
            if isinstance(control, ControlRequest):
                control_cond = {k: tile_value(v, x, boxes, chunks) for k, v in control.cond.items()}
                tile_control = hints.evaluate(control, tile_x, tile_t, control_cond, options,
                                              tuple(x.shape[-2:]), indices, boxes, images)
            c_cat, c_cross = tile_cond.pop("c_concat"), tile_cond.pop("c_crossattn")
            out = executor(tile_x, tile_t, c_cat, c_cross, tile_control, options, **tile_cond)
            merger.add(out, indices, chunks)
            if run is not None:
                run.report(transformer_options, start + len(indices), len(todo))
        return merger.result(fallback=x)

    def tiles_to_run(self, grid: RegionGrid, run: TiledRun | None) -> list[int]:
        """Every tile, except under a hard-pinned mask those wholly outside it (they'd be replaced)."""
        if run is None or run.mask is None or self.lowpass_sigma > 0:
            return list(range(len(grid)))
        return [i for i, b in enumerate(grid.boxes) if run.mask[(..., *b.slices())].max() > 0]


def tile_value(value, x: torch.Tensor, boxes, chunks: int):
    """A conditioning entry for a tile batch: spatial maps cropped, per-item tensors repeated."""
    if not torch.is_tensor(value) or value.shape[0] != x.shape[0]:
        return value
    if value.ndim == x.ndim and value.shape[-2:] == x.shape[-2:]:
        return gather_tiles(value, boxes, chunks)
    return repeat_per_tile(value, chunks, len(boxes))


class TiledBlendedDiffusion:
    """MODEL -> MODEL whose every evaluation runs as feathered, batched tiles (MultiDiffusion)."""

    CATEGORY = "cupscale"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = ("Splits every model evaluation into overlapping tiles, runs them in batches and merges "
                   "them with feathered weights (MultiDiffusion). Tiles larger than the latent are clamped "
                   "to it. With a mask, the area outside it stays the sampled latent (blended diffusion); "
                   "background_lowpass > 0 keeps only its low frequencies there (Multi-Stage Blended Diffusion).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                **tile_inputs_v1("Tile", "the model's native size; neighbouring tiles cross-fade over the overlap"),
                "tiles_per_batch": ("INT", {"default": 4, "min": 1, "max": 256,
                                            "tooltip": "Tiles evaluated together in one model call."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Where to generate; outside it the sampled latent is kept. "
                                             "Same size as the image."}),
                "background_lowpass": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5,
                                                 "tooltip": "Gaussian sigma in latent cells: outside the mask keep "
                                                            "only the latent's low frequencies (0 = keep all)."}),
            },
        }

    def patch(self, model, tile_width, tile_height, overlap, tiles_per_batch, mask=None, background_lowpass=0.0):
        with widget_names():
            check_tile_settings(tile_width, tile_height, overlap)
        if tiles_per_batch < 1:
            raise ValueError(f"tiles_per_batch = {tiles_per_batch} must be at least 1.")
        if background_lowpass < 0:
            raise ValueError(f"background_lowpass = {background_lowpass} must be 0 (off) or a positive sigma.")
        ratio = latent_ratio(model)
        patch = TiledDiffusion(tile_height // ratio, tile_width // ratio, overlap // ratio, tiles_per_batch,
                               mask, background_lowpass)
        patched = model.clone()
        for kind, fn in ((WrappersMP.OUTER_SAMPLE, patch.outer_sample),
                         (WrappersMP.CALC_COND_BATCH, patch.calc_cond_batch),
                         (WrappersMP.APPLY_MODEL, patch.apply_model)):
            patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
            patched.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return (patched,)


NODE_CLASS_MAPPINGS = {"TiledBlendedDiffusion": TiledBlendedDiffusion}
NODE_DISPLAY_NAME_MAPPINGS = {"TiledBlendedDiffusion": "Tiled Blended Diffusion (cupscale)"}
