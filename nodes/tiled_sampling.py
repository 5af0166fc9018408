"""The wrappers behind TiledBlendedDiffusion (nodes/tiled_diffusion.py): MultiDiffusion over overlapping
tiles, optionally blended with a mask.

Three wrappers on a clone of the model (core: cupscale.tiling.multidiffusion.run_tiles, cupscale.tiling.blended):
- OUTER_SAMPLE prepares one run: the source latent and noise for blending, the progress bar.
- CALC_COND_BATCH pins the background outside the mask and defers ControlNets to the tiles.
- APPLY_MODEL runs each evaluation as tile batches through the core's loop; the node's part of each
  batch is the host's: conditioning and hint crops, interruption, the progress bar. The tiles being
  run are published as ``transformer_options["cupscale_tiles"]`` (a TileBatch). On SDXL each tile's
  ``y`` says where the tile lies in the image (cupscale.tiling.micro_conditioning); on a DiT its positional
  embeddings do (nodes/dit_positions.py).
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch

from ..cupscale.lru import LRU, env_limit
from ..cupscale.schedule import StepClock
from ..cupscale.tiling import blended, micro_conditioning, positions
from ..cupscale.tiling.grid import RegionGrid, region_grid
from ..cupscale.tiling.multidiffusion import (BatchTuner, TileBatch, auto_batch_size, repeat_per_tile, run_tiles,
                                              tile_value, tile_weights)
from .control_tiling import ControlRequest, TiledHints, defer_controls
from .dit_positions import ACTIVE, TilePlace
from .host import comfy_utils, model_base
from .host_services import free_memory, stop_if_interrupted
from .inputs import widget_names
from .step_clock import run_clock
from .tile_devices import matched_replicas

TILES_KEY = "cupscale_tiles"
CONTEXTS_KEY = "cupscale_tile_contexts"
"""Set by AttentionComposer on a DiT: (context, tiles or None, labels, latent hw) -> each item's text."""
RUN_KEY = "cupscale_tiled_run"
REPLICA_KEY = "cupscale_tile_replica"
"""Set on a replica's model call (nodes/tile_devices.py): that call is one tile batch, not to be tiled again."""
WRAPPER_KEY = "cupscale.tiled_diffusion"
GRIDS_VAR = "CUPSCALE_TILE_GRIDS"
"""Latent sizes whose grid and feather weights a patched model keeps (default 8)."""


def latent_ratio(model_patcher) -> int:
    """Pixels per latent cell of the model's VAE (8 for SD1.5, SDXL, SD3, Flux)."""
    return getattr(model_patcher.model.latent_format, "spacial_downscale_ratio", 8)


def has_sdxl_crops(model) -> bool:
    """Whether ``model`` (a BaseModel) takes SDXL's size and crop embeddings in ``y`` (SDXL and its distilled
    kin; not the refiner, whose ``y`` ends in an aesthetic score)."""
    return isinstance(model, model_base.SDXL) and hasattr(model, "embedder")


@dataclass
class TiledRun:
    """What one sampling run needs beyond the model call: blending inputs, hints, progress."""

    clock: StepClock
    tiles: int
    progress: comfy_utils.ProgressBar
    source: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    hints: TiledHints = field(default_factory=TiledHints)
    batch_sizes: dict[tuple, int] = field(default_factory=dict)
    evaluations: dict[tuple, int] = field(default_factory=dict)
    replicas: list = field(default_factory=list)

    def report(self, done: int, total: int) -> None:
        """Tile-level progress on the same scale as the sampler's own step bar (steps x tiles); the step is the
        clock's, on the host, so reporting never waits for the device."""
        value = self.clock.step * self.tiles + round(done * self.tiles / total)
        # Never backwards: a resampler (RePaint) revisits noise levels it has passed.
        self.progress.update_absolute(max(value, self.progress.current), self.clock.steps * self.tiles)


class TiledDiffusion:
    """The patch: tiling settings plus the wrappers that apply them."""

    def __init__(self, tile_height: int, tile_width: int, overlap: int, tiles_per_batch: int,
                 mask: torch.Tensor | None, lowpass_sigma: float, crop_pixels_per_cell: int | None = None,
                 position_patch: int | None = None, whole_positions: bool = True):
        self.tile_height, self.tile_width, self.overlap = tile_height, tile_width, overlap
        self.tiles_per_batch = tiles_per_batch
        self.mask = mask
        self.lowpass_sigma = lowpass_sigma
        # Pixels per latent cell when each SDXL tile is conditioned as a crop; None: tiles keep ``y`` as it is.
        self.crop_pixels_per_cell = crop_pixels_per_cell
        # Latent cells per DiT patch (None: not a DiT); whole_positions: each tile is positioned at its place in
        # the image (cupscale.tiling.positions), else as an image of its own.
        self.position_patch, self.whole_positions = position_patch, whole_positions
        self.places: LRU[TilePlace] = LRU("tile positions", env_limit(GRIDS_VAR, 8) * 64)
        self.grids: LRU[tuple[RegionGrid, torch.Tensor]] = LRU("tile grids", env_limit(GRIDS_VAR, 8))
        self.crops: LRU[torch.Tensor] = LRU("tile crop embeddings", env_limit(GRIDS_VAR, 8))
        self.tuners: LRU[BatchTuner] = LRU("tile batch tuners", env_limit(GRIDS_VAR, 8))

    def grid(self, hw: tuple[int, int], like: torch.Tensor | None = None) -> tuple[RegionGrid, torch.Tensor]:
        """The grid for a latent of ``hw`` and its feather weights, kept on ``like``'s device and dtype
        once moved there, so no step copies them again."""
        found = self.grids.get(hw)
        if found is None:
            grid = region_grid(hw[0], hw[1], self.tile_height, self.tile_width, self.overlap)
            found = self.grids.put(hw, (grid, tile_weights(grid)))
        grid, weights = found
        if like is not None and (weights.device, weights.dtype) != (like.device, like.dtype):
            found = self.grids.put(hw, (grid, weights.to(like)))
        return found

    def tile_crops(self, hw: tuple[int, int], grid: RegionGrid, model, y: torch.Tensor) -> torch.Tensor:
        """Every tile's crop embeddings for a latent of ``hw``, made once per grid by the model's own embedder
        on ``y``'s device and dtype."""
        found = self.crops.get(hw)
        if found is None or (found.device, found.dtype) != (y.device, y.dtype):
            found = self.crops.put(hw, micro_conditioning.tile_crop_embeddings(
                grid, self.crop_pixels_per_cell, model.embedder, y))
        return found

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     *args, **kwargs):
        guider = executor.class_obj
        model = guider.model_patcher.model
        hw = tuple(noise.shape[-2:])
        clock, callback = run_clock(guider.model_options, sigmas, callback)
        tiles = len(self.grid(hw)[0])
        # Like the sampler's own ProgressBar (latent_preview.prepare_callback), this reports to the UI and to
        # progress hooks whatever disable_pbar says: that flag is for the console's tqdm bars.
        run = TiledRun(clock, tiles, comfy_utils.ProgressBar(clock.steps * tiles),
                       replicas=matched_replicas(guider.model_patcher))
        if self.mask is not None:
            with widget_names(mask="TiledBlendedDiffusion's mask"):
                run.mask = blended.mask_at_latent(self.mask, hw, latent_ratio(guider.model_patcher))
            run.source = model.process_latent_in(latent_image) if torch.count_nonzero(latent_image) else latent_image
            run.noise = noise
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                        *args, **kwargs)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        run: TiledRun | None = model_options.get("transformer_options", {}).get(RUN_KEY)
        pinned = run is not None and run.mask is not None
        if pinned:
            mask = run.mask.to(x_in)
            source = run.source.to(x_in)
            if self.lowpass_sigma <= 0:
                noised = model.scale_latent_inpaint(sigma=timestep, noise=run.noise.to(x_in), latent_image=source)
                x_in = blended.blend(x_in, noised, mask)
        out = executor(model, defer_controls(conds), x_in, timestep, model_options, *args, **kwargs)
        if pinned:
            out = [blended.pin_background(o, source, mask, self.lowpass_sigma) for o in out]
        return out

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        if transformer_options.get(REPLICA_KEY):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        hw = tuple(x.shape[-2:])
        grid, weights = self.grid(hw, x)
        labels = transformer_options.get("cond_or_uncond", [0])
        contexts = transformer_options.get(CONTEXTS_KEY)
        if len(grid) == 1:
            if contexts is not None:
                c_crossattn = contexts(c_crossattn, None, labels, hw)
            if isinstance(control, ControlRequest):
                control = control.evaluate(x, t, control.cond, transformer_options)
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        run: TiledRun | None = transformer_options.get(RUN_KEY)
        chunks = len(labels) or 1
        cond = dict(kwargs, c_concat=c_concat, c_crossattn=c_crossattn)
        hints = run.hints if run is not None else TiledHints()
        crops = None
        if self.crop_pixels_per_cell is not None and torch.is_tensor(cond.get("y")):
            crops = self.tile_crops(hw, grid, executor.class_obj, cond["y"])

        def evaluate(batch: TileBatch, tile_x: torch.Tensor, call=executor) -> torch.Tensor:
            stop_if_interrupted()
            tile_cond = {k: tile_value(v, x, batch.boxes, chunks) for k, v in cond.items()}
            if crops is not None:
                tile_cond["y"] = micro_conditioning.with_tile_crops(tile_cond["y"], crops, batch.indices, chunks)
            tile_t = repeat_per_tile(t, chunks, len(batch.indices))
            options = {**transformer_options, TILES_KEY: batch}
            if transformer_options.get("patches"):
                options["patches"] = hints.model_patches(transformer_options["patches"], batch, chunks)
            tile_control = control
            if isinstance(control, ControlRequest):
                control_cond = {k: tile_value(v, x, batch.boxes, chunks) for k, v in control.cond.items()}
                tile_control = hints.evaluate(control, batch, tile_x, tile_t, control_cond, options)
            c_cat, c_cross = tile_cond.pop("c_concat"), tile_cond.pop("c_crossattn")
            if contexts is not None:
                c_cross = contexts(c_cross, batch, labels, hw)
            token = ACTIVE.set(self.place(batch, hw)) if self.position_patch else None
            try:
                return call(tile_x, tile_t, c_cat, c_cross, tile_control, options, **tile_cond)
            finally:
                if token is not None:
                    ACTIVE.reset(token)

        report = None if run is None else run.report
        tiles = self.tiles_to_run(grid, run)
        if run is not None and run.replicas and control is None:
            return run_tiles(x, grid, weights, self.batch_size(executor.class_obj, x, grid, chunks, run),
                             device_evaluators(evaluate, run.replicas, x.device), chunks=chunks, tiles=tiles,
                             report=report)
        batch_size, evaluate = self.batch_plan(executor.class_obj, x, grid, chunks, run, tiles, evaluate)
        return run_tiles(x, grid, weights, batch_size, evaluate, chunks=chunks, tiles=tiles, report=report)

    def batch_plan(self, model, x, grid, chunks, run, tiles, evaluate):
        """(batch sizes, evaluate) of this evaluation. On the CPU the automatic batch is measured, not taken
        whole (cupscale.tiling.multidiffusion.BatchTuner): memory bounds it, time picks within that bound."""
        batch_size = self.batch_size(model, x, grid, chunks, run)
        if self.tiles_per_batch > 0 or x.device.type != "cpu":
            return batch_size, evaluate
        count = len(grid) if tiles is None else len(tiles)
        key = (tuple(x.shape), batch_size, count)
        tuner = self.tuners.get(key) or self.tuners.put(key, BatchTuner(batch_size, count))
        evaluation = 0
        if run is not None:
            evaluation = run.evaluations[key] = run.evaluations.get(key, -1) + 1
        return tuner.sizes(evaluation), tuner.timed(evaluate)

    def place(self, batch: TileBatch, hw: tuple[int, int]) -> TilePlace:
        """Where the tiles of ``batch`` lie, in patches; kept per grid and batch, so the offsets reach the
        device once."""
        key = (hw, batch.indices, batch.chunks, batch.images)
        found = self.places.get(key)
        if found is None:
            p = self.position_patch
            tile_hw = (batch.grid.tile_height, batch.grid.tile_width)
            found = self.places.put(key, TilePlace(positions.tile_origins(batch, p), positions.patch_grid(tile_hw, p),
                                                   positions.patch_grid(hw, p), self.whole_positions))
        return found

    def batch_size(self, model, x: torch.Tensor, grid: RegionGrid, chunks: int, run: TiledRun | None) -> int:
        """tiles_per_batch, or for 0 (auto) the most tiles whose model memory fits in the device's free memory,
        by the model's own estimate (BaseModel.memory_required); chosen once per run and latent shape."""
        if self.tiles_per_batch > 0:
            return self.tiles_per_batch
        key = tuple(x.shape)
        if run is not None and key in run.batch_sizes:
            return run.batch_sizes[key]
        free = free_memory(x.device)
        shape = [*x.shape[:-2], grid.tile_height, grid.tile_width]  # with Qwen-Image's frame axis where it has one
        size = auto_batch_size(len(grid), free, lambda k: model.memory_required([shape[0] * k, *shape[1:]]))
        if run is not None:
            run.batch_sizes[key] = size
        return size

    def tiles_to_run(self, grid: RegionGrid, run: TiledRun | None) -> list[int] | None:
        """Every tile (None), except under a hard-pinned mask only those it touches."""
        if run is None or run.mask is None or self.lowpass_sigma > 0:
            return None
        return blended.tiles_touching(grid, run.mask)


def device_evaluators(evaluate, replicas: list, home: torch.device) -> list:
    """``evaluate`` on the model's device, then on each replica's: the tile batch moved there, its model
    called as one batch (REPLICA_KEY), the prediction brought home. Each runs in its own thread in a copy of
    this call's context, so what the wrappers around this call have set (the model call, the tile place)
    reads the same on every device. ControlNets stay on one device: their models have no replicas here."""
    def on(replica):
        device = replica.load_device

        def call(x, t, c_concat, c_crossattn, control, options, **cond):
            options = {**{k: moved(v, device) if torch.is_tensor(v) else v for k, v in options.items()},
                       REPLICA_KEY: True}
            out = replica.model.apply_model(moved(x, device), moved(t, device), moved(c_concat, device),
                                            moved(c_crossattn, device), control, options,
                                            **{k: moved(v, device) for k, v in cond.items()})
            return out.to(home)
        return lambda batch, tile_x: evaluate(batch, tile_x, call)

    return [in_context(evaluate)] + [in_context(on(r)) for r in replicas]


def in_context(fn):
    context = contextvars.copy_context()
    return lambda *args: context.run(fn, *args)


def moved(value, device: torch.device):
    """Tensors (in lists, tuples and dicts too) on ``device``; anything else as it is."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    return value
