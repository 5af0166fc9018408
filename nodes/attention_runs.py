"""The run state the attention routers read (nodes/attention_router.py), set by sampler wrappers, and the
prior's capture pass.

- The prior's OUTER_SAMPLE wrapper puts a PriorRun in transformer_options, with the low-res latent and its
  noise at the capture size. Its CALC_COND_BATCH wrapper, once per step in the step range (at the step's first
  sigma; the step is the run's StepClock, known on the host), runs the UNet on that latent noised to sigma with the
  global prompt (cond only) through ``model._apply_model``: that skips APPLY_MODEL wrappers, so
  TiledBlendedDiffusion does not tile the capture. The routers see the capture key and record the layers' (RAP).
- The composer's OUTER_SAMPLE wrapper puts a ComposerRun there. At w = 0 the maps would go unused, so no
  capture pass runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

from ..cupscale.priors.attention_prior import CapturedAttention, capture_latent
from ..cupscale.priors.composer import ComposerRun, ComposerSettings
from ..cupscale.priors.structure import check_same_aspect
from ..cupscale.tiling.grid import region_grid
from ..cupscale.tiling.multidiffusion import TileBatch
from .attention_router import CAPTURE_KEY, COMPOSER_KEY, PRIOR_KEY
from .dit_positions import model_call
from .host import WrappersMP, sampler_helpers, samplers
from .step_clock import clock_of, run_clock
from .tiled_sampling import CONTEXTS_KEY, TILES_KEY
from .tiled_sampling import WRAPPER_KEY as TILED_KEY
from .unet_layers import Layer

TILES_NAME = "TiledBlendedDiffusion's tiles (one region when the latent is not tiled)"


@dataclass
class PriorRun:
    """One sampling run of the prior: the latent and noise the capture pass runs on (the low-res ones, bounded
    to the capture size), its prompt, and the capture of the latest step."""

    low: torch.Tensor
    noise: torch.Tensor
    seed: int
    latent_hw: tuple[int, int] = (0, 0)
    model_kwargs: dict | None = None
    step: int | None = None
    maps: dict[tuple, CapturedAttention] = field(default_factory=dict)


def low_res_noise(noise: torch.Tensor, low: torch.Tensor, seed: int) -> torch.Tensor:
    """The noise of the capture pass, fixed for the run. The sampler's own when the low-res latent has the
    sampled size, so the capture sees exactly the sampler's x at the first step; otherwise drawn from the
    sampler's seed (a private generator: the global RNG that samplers use is left alone)."""
    if noise.shape[-2:] == low.shape[-2:]:
        return noise[:low.shape[0]]
    return torch.randn(low.shape, generator=torch.Generator().manual_seed(seed), dtype=low.dtype)


def capture_model_kwargs(model, conditioning: list, low: torch.Tensor, noise: torch.Tensor, seed: int) -> dict:
    """The global prompt as model kwargs for the low-res latent, through ComfyUI's own encode_model_conds
    (SDXL's size conditioning then comes from the low-res size)."""
    conds = samplers.encode_model_conds(model.extra_conds, sampler_helpers.convert_cond(conditioning), noise,
                                              low.device, "positive", latent_image=low, seed=seed)
    batch = low.shape[0]
    return samplers.cond_cat([{k: c.process_cond(batch_size=batch, area=None)
                              for k, c in conds[0]["model_conds"].items()}])


def text_as_model_reads(model_patcher, clip, prompt: str) -> torch.Tensor:
    """A region prompt as a DiT reads its text: encoded as CLIPTextEncode encodes it, then through the model's own
    extra_conds, as the sampler passes the global prompt (Flux.2 pads every prompt to 512 tokens there)."""
    embedding, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    latent_format = model_patcher.model.latent_format
    low = torch.zeros(1, latent_format.latent_channels, *[1] * (latent_format.latent_dimensions - 2), 16, 16)
    kwargs = capture_model_kwargs(model_patcher.model, [[embedding, {"pooled_output": pooled}]], low, low, 0)
    return kwargs["c_crossattn"]


class AttentionPrior:
    """The prior's wrappers: a PriorRun per sampling run, and the capture pass once per sigma in the step range."""

    def __init__(self, low: torch.Tensor, conditioning: list, layers: list[Layer], start: float, end: float,
                 max_cells: int):
        self.low = low
        self.max_cells = max_cells
        self.conditioning = conditioning
        self.layers = layers
        self.start, self.end = start, end

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     *args, **kwargs):
        low = self.low
        if low.shape[0] not in (1, noise.shape[0]):
            raise ValueError(f"low_res_latent holds {low.shape[0]} latents but the sampler's batch has {noise.shape[0]}: "
                             f"give RegionalAttentionPrior one low-res latent, or one per image of the batch.")
        check_same_aspect(tuple(low.shape[-2:]), tuple(noise.shape[-2:]), "low_res_latent", "RegionalAttentionPrior")
        seed = 0 if seed is None else seed
        run = PriorRun(*capture_latent(low, low_res_noise(noise, low, seed), self.max_cells), seed=seed,
                       latent_hw=tuple(noise.shape[-2:]))
        executor.class_obj.model_options.setdefault("transformer_options", {})[PRIOR_KEY] = run
        _, callback = run_clock(executor.class_obj.model_options, sigmas, callback)
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                        *args, **kwargs)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        run: PriorRun | None = model_options.get("transformer_options", {}).get(PRIOR_KEY)
        if run is not None:
            self.update(run, model, x_in, timestep, model_options)
        return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)

    def update(self, run: PriorRun, model, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> None:
        """Capture at the step's first sigma unless already done; outside the step range, hold no maps. Nothing here
        reads a value back from the device: the step is the clock's."""
        clock = clock_of(model_options)
        step, progress = (0, 0.0) if clock is None else (clock.step, clock.progress)
        composer: ComposerRun | None = model_options["transformer_options"].get(COMPOSER_KEY)
        unused = composer is not None and composer.settings.weight <= 0  # region prompts only: skip the pass
        if unused or not self.start <= progress < self.end:
            run.step, run.maps = None, {}
        elif run.step != step:
            run.maps = {}  # free the previous capture first: at 4K the maps are the prior's main memory
            run.maps = self.capture(run, model, x_in, timestep[:1], model_options)
            run.step = step

    def capture(self, run: PriorRun, model, like: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> dict:
        """One UNet pass on z_L noised to sigma with the global prompt, cond only; the routers record (RAP)."""
        low = run.low.to(like)
        noise = run.noise.to(like)
        if run.model_kwargs is None:
            run.model_kwargs = capture_model_kwargs(model, self.conditioning, low, noise, run.seed)
        sigma = sigma.to(like).expand(low.shape[0])
        x = model.scale_latent_inpaint(sigma=sigma, noise=noise, latent_image=low)
        captured: dict[tuple, CapturedAttention] = {}
        options = {k: v for k, v in model_options["transformer_options"].items() if k not in (TILES_KEY, COMPOSER_KEY)}
        options.update({CAPTURE_KEY: captured, "cond_or_uncond": [0], "sigmas": sigma})
        with model_call(x, sigma):
            model._apply_model(x, sigma, transformer_options=options, **run.model_kwargs)
        missing = [layer.key for layer in self.layers if layer.key not in captured]
        if missing:
            raise RuntimeError(f"RegionalAttentionPrior's capture pass did not reach layers {missing}: another patch "
                               f"replaced them or the UNet's forward. Put RegionalAttentionPrior after that patch.")
        return captured


@dataclass(frozen=True)
class Composer:
    """AttentionComposer's wrappers: a ComposerRun per sampling run; on a DiT, each cond item's text is its
    region's prompt (per tile by TiledBlendedDiffusion, for the whole latent by :meth:`apply_model`)."""

    settings: ComposerSettings
    dit: bool = False

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     *args, **kwargs):
        run = ComposerRun(self.settings, TILES_NAME)
        options = executor.class_obj.model_options.setdefault("transformer_options", {})
        options[COMPOSER_KEY] = run
        if self.dit:
            options[CONTEXTS_KEY] = partial(self.contexts, run)
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                        *args, **kwargs)

    @staticmethod
    def contexts(run: ComposerRun, context: torch.Tensor, tiles: TileBatch | None, labels: list,
                 latent_hw: tuple[int, int]) -> torch.Tensor:
        per_chunk = context.shape[0] // len(labels)
        grid = tiles.grid if tiles is not None else region_grid(*latent_hw, *latent_hw, 0)
        run.check(grid)
        regions = [tiles.tile_of_item(i) for i in range(per_chunk)] if tiles is not None else [0] * per_chunk
        return run.region_contexts(context, labels, regions)

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
        """Without TiledBlendedDiffusion (which gives each tile its text) the latent is one region."""
        contexts = transformer_options.get(CONTEXTS_KEY)
        tiled = TILED_KEY in transformer_options.get("wrappers", {}).get(WrappersMP.APPLY_MODEL, {})
        if contexts is not None and not tiled and c_crossattn is not None:
            c_crossattn = contexts(c_crossattn, None, transformer_options.get("cond_or_uncond", [0]),
                                   tuple(x.shape[-2:]))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
