"""RegionalAttentionPrior and AttentionComposer: C-Upscale's regional priors (seed 000, Figs. 3-4) as attn2 patches.

Core maths: cupscale.priors.attention_prior (RAP: capture, reading the maps at a tile) and cupscale.priors.composer
(AC). How the pieces meet at every sampling step:
- RegionalAttentionPrior puts one RegionalAttention patch on each chosen cross-attention layer
  (attn2_replace) of a clone. Its CALC_COND_BATCH wrapper, once per distinct σ in the step range, runs the
  UNet on the low-res latent noised to σ with the global prompt (cond only) through ``model._apply_model``:
  that skips APPLY_MODEL wrappers, so TiledBlendedDiffusion does not tile the capture. The patches see the
  capture flag and record the layer's attention probabilities and the global prompt's values.
- In the tile passes that follow, each patch finds the tile being run in ``transformer_options
  ["cupscale_tiles"]`` (without one, the whole latent is one region) and gives the cond items A_R V_g: the
  captured maps read at the tile's tokens, applied to the global prompt's values. Uncond items keep their
  plain attention (ComfyUI's optimized_attention, whichever backend it is).
- AttentionComposer adds region prompts and a weight w: the cond items then get (AC). The region prompts are
  encoded once and projected per layer by that layer's own to_k / to_v at sampling time, so LoRA-patched
  weights apply. Out of the prior's step range nothing is captured and A_R V_g gives way to the tile's own
  attention to its prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

from ..cupscale.priors.composer import RegionTexts, compose, from_region_prompts, parse_region_text
from ..cupscale.priors.attention_prior import CapturedAttention, attend_with, capture_attention, region_prior
from ..cupscale.tiling.grid import RegionGrid, region_grid
from ..cupscale.captioning.region_prompts import TYPE_NAME as REGION_PROMPTS
from ..cupscale.priors.structure import check_same_aspect
from ..cupscale.schedule import schedule_progress
from .tiled_diffusion import TILES_KEY

PRIOR_KEY = "cupscale_attention_prior"
COMPOSER_KEY = "cupscale_attention_composer"
CAPTURE_KEY = "cupscale_attention_capture"
WrappersMP = comfy.patcher_extension.WrappersMP

BLOCKS = {"all": ("input", "middle", "output"), "input": ("input",), "middle": ("middle",), "output": ("output",),
          "input + middle": ("input", "middle"), "middle + output": ("middle", "output"),
          "input + output": ("input", "output")}
RESOLUTIONS = {"1/2 and coarser": lambda ds: ds >= 2, "all": lambda ds: True, "1/4 and coarser": lambda ds: ds >= 4,
               "1/1": lambda ds: ds == 1, "1/2": lambda ds: ds == 2, "1/4": lambda ds: ds == 4,
               "1/8": lambda ds: ds == 8}


@dataclass(frozen=True)
class Layer:
    """A cross-attention layer as attn2_replace names it (block, number, transformer index), and its
    resolution: 1/``downscale`` of the latent."""

    block: str
    number: int
    index: int
    downscale: int

    @property
    def key(self) -> tuple[str, int, int]:
        return self.block, self.number, self.index


def cross_attention_layers(unet: torch.nn.Module) -> list[tuple[Layer, torch.nn.Module]]:
    """Every attn2 of a ComfyUI UNet (SD1.x, SD2.x, SDXL layouts) with its block's downscale; [] for other models."""
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        return []

    def in_block(name: str, number: int, block, downscale: int):
        return [(Layer(name, number, i, downscale), t.attn2) for m in block if isinstance(m, attention.SpatialTransformer)
                for i, t in enumerate(m.transformer_blocks) if t.attn2 is not None]

    found, downscale = [], 1
    for number, block in enumerate(unet.input_blocks):
        found += in_block("input", number, block, downscale)
        downscale *= 2 if any(isinstance(m, Downsample) for m in block) else 1
    found += in_block("middle", 0, unet.middle_block or [], downscale)
    for number, block in enumerate(unet.output_blocks):
        found += in_block("output", number, block, downscale)
        downscale //= 2 if any(isinstance(m, Upsample) for m in block) else 1
    return found


def describe_layers(layers: list[tuple[Layer, torch.nn.Module]]) -> str:
    counts: dict[tuple[str, int], int] = {}
    for layer, _ in layers:
        counts[(layer.block, layer.downscale)] = counts.get((layer.block, layer.downscale), 0) + 1
    return ", ".join(f"{n} in {block} blocks at 1/{ds}" for (block, ds), n in counts.items())


def select_layers(model_patcher, blocks: str, resolutions: str) -> list[tuple[Layer, torch.nn.Module]]:
    """The chosen layers, or an error that says what the model has."""
    found = cross_attention_layers(model_patcher.model.diffusion_model)
    if not found:
        raise ValueError(f"RegionalAttentionPrior needs a UNet with cross-attention layers (SD1.x, SD2.x, SDXL); this "
                         f"model ({type(model_patcher.model).__name__}) has none. Use an SD1.x/SD2.x/SDXL checkpoint, or "
                         f"leave RegionalAttentionPrior and AttentionComposer out of this model's chain.")
    if blocks not in BLOCKS or resolutions not in RESOLUTIONS:
        raise ValueError(f"blocks = {blocks!r}, resolutions = {resolutions!r}: choose blocks among {', '.join(BLOCKS)} "
                         f"and resolutions among {', '.join(RESOLUTIONS)}.")
    chosen = [(layer, module) for layer, module in found
              if layer.block in BLOCKS[blocks] and RESOLUTIONS[resolutions](layer.downscale)]
    if not chosen:
        raise ValueError(f"blocks = {blocks!r} with resolutions = {resolutions!r} selects none of this model's "
                         f"cross-attention layers ({describe_layers(found)}); choose blocks and resolutions among those.")
    return chosen


def attend(q, k, v, extra_options) -> torch.Tensor:
    """Plain cross-attention through ComfyUI's chosen backend, as CrossAttention.forward runs it."""
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                         transformer_options=extra_options)


@dataclass(frozen=True)
class ItemRegions:
    """For each item of a batch of cond items: its region (index in ``grid``) and its image in the batch."""

    grid: RegionGrid
    regions: tuple[int, ...]
    images: tuple[int, ...]


def item_regions(extra_options: dict, items: list[int], per_chunk: int) -> ItemRegions:
    """Regions from TiledBlendedDiffusion's TileBatch, laid out (chunk, tile, image); without one, the whole
    latent is one region and the layout is (chunk, image)."""
    tiles = extra_options.get(TILES_KEY)
    if tiles is None:
        h, w = extra_options["original_shape"][-2:]
        return ItemRegions(region_grid(h, w, h, w, 0), (0,) * len(items), tuple(i % per_chunk for i in items))
    return ItemRegions(tiles.grid, tuple(tiles.tile_of_item(i) for i in items), tuple(i % tiles.images for i in items))


@dataclass
class PriorRun:
    """One sampling run of the prior: the low-res latent's noise and prompt, and the capture at the latest σ."""

    noise: torch.Tensor
    seed: int
    model_kwargs: dict | None = None
    sigma: float | None = None
    maps: dict[tuple, CapturedAttention] = field(default_factory=dict)


@dataclass
class ComposerRun:
    """One sampling run of the composer: region prompts projected per layer, and the grids already checked."""

    composer: "Composer"
    projected: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    checked: set[tuple] = field(default_factory=set)

    def check(self, grid: RegionGrid) -> None:
        if grid.boxes not in self.checked:
            self.composer.texts.check(grid, "TiledBlendedDiffusion's tiles (one region when the latent is not tiled)")
            self.checked.add(grid.boxes)

    def keys_values(self, layer: Layer, attn2: torch.nn.Module, prompt: int, like: torch.Tensor):
        """K_r, V_r of prompt ``prompt`` at ``layer``: its to_k / to_v as loaded for this run (LoRAs included)."""
        if (layer.key, prompt) not in self.projected:
            embedding = self.composer.embeddings[prompt].to(like.device, like.dtype)
            self.projected[(layer.key, prompt)] = (attn2.to_k(embedding), attn2.to_v(embedding))
        return self.projected[(layer.key, prompt)]


class RegionalAttention:
    """attn2_replace of one chosen layer: records (RAP) on the capture pass; on the passes of the sampler, the
    cond items get A_R V_g, or (AC) under AttentionComposer."""

    def __init__(self, layer: Layer, attn2: torch.nn.Module):
        self.layer = layer
        self.attn2 = attn2

    def __call__(self, q, k, v, extra_options):
        capture = extra_options.get(CAPTURE_KEY)
        if capture is not None:
            captured, out = capture_attention(q, k, v, extra_options["n_heads"], tuple(extra_options["activations_shape"][-2:]))
            capture[self.layer.key] = captured
            return out
        prior: PriorRun | None = extra_options.get(PRIOR_KEY)
        composer: ComposerRun | None = extra_options.get(COMPOSER_KEY)
        captured = prior.maps.get(self.layer.key) if prior is not None else None
        labels = extra_options.get("cond_or_uncond", [0])
        per_chunk = q.shape[0] // len(labels)
        cond = [i for i in range(q.shape[0]) if labels[i // per_chunk] == 0]
        if (captured is None and composer is None) or not cond:
            return attend(q, k, v, extra_options)
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        uncond = [i for i in range(q.shape[0]) if labels[i // per_chunk] != 0]
        if uncond:
            out[uncond] = attend(q[uncond], k[uncond], v[uncond], extra_options)
        where = item_regions(extra_options, cond, per_chunk)
        if composer is not None:
            composer.check(where.grid)
        out[cond] = self.cond_output(q[cond], k[cond], v[cond], captured, composer, where, extra_options).to(out.dtype)
        return out

    def cond_output(self, q, k, v, captured, composer, where: ItemRegions, extra_options) -> torch.Tensor:
        """A_R V_g alone (the prior without a composer, or w = 1), or (AC); each term only when it counts."""
        weight = 1.0 if composer is None else composer.composer.weight

        def prior():
            if captured is None:  # out of the step range: the tile's own attention to its prompt
                return attend(q, k, v, extra_options)
            return self.prior_term(q, captured, where, extra_options)
        if weight >= 1:
            return prior()
        region = self.region_term(q, composer, where, extra_options)
        return region if weight <= 0 else compose(prior(), region, weight)

    def prior_term(self, q, captured: CapturedAttention, where: ItemRegions, extra_options) -> torch.Tensor:
        """A_R V_g for every cond item; the maps of each (region, image) pair are read once."""
        grid = where.grid
        working_hw, target_hw = (grid.height, grid.width), tuple(extra_options["activations_shape"][-2:])
        sources = [image if captured.maps.shape[0] > 1 else 0 for image in where.images]
        probs = {}
        for region, source in zip(where.regions, sources):
            if (region, source) not in probs:
                probs[(region, source)] = region_prior(captured.maps[source], grid.boxes[region], working_hw, target_hw)
        stacked = torch.stack([probs[pair] for pair in zip(where.regions, sources)])
        return attend_with(stacked, captured.values[sources]).to(q.dtype)

    def region_term(self, q, composer: ComposerRun, where: ItemRegions, extra_options) -> torch.Tensor:
        """Attention of each cond item's features to its region's prompt; items batched by prompt length."""
        texts = composer.composer.texts
        kv = [composer.keys_values(self.layer, self.attn2, texts.prompt_index(r), q) for r in where.regions]
        out = q.new_empty(q.shape[0], q.shape[1], kv[0][1].shape[-1])
        for length in {k.shape[1] for k, _ in kv}:
            items = [i for i, (k, _) in enumerate(kv) if k.shape[1] == length]
            keys = torch.cat([kv[i][0] for i in items])
            values = torch.cat([kv[i][1] for i in items])
            out[items] = attend(q[items], keys, values, extra_options)
        return out


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
    conds = comfy.samplers.encode_model_conds(model.extra_conds, comfy.sampler_helpers.convert_cond(conditioning), noise,
                                              low.device, "positive", latent_image=low, seed=seed)
    batch = low.shape[0]
    return comfy.samplers.cond_cat([{k: c.process_cond(batch_size=batch, area=None)
                                     for k, c in conds[0]["model_conds"].items()}])


class AttentionPrior:
    """The prior's wrappers: a PriorRun per sampling run, and the capture pass once per σ in the step range."""

    def __init__(self, low: torch.Tensor, conditioning: list, layers: list[Layer], start: float, end: float):
        self.low = low
        self.conditioning = conditioning
        self.layers = layers
        self.start, self.end = start, end

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        low = self.low
        if low.shape[0] not in (1, noise.shape[0]):
            raise ValueError(f"low_res_latent holds {low.shape[0]} latents but the sampler's batch has {noise.shape[0]}: "
                             f"give RegionalAttentionPrior one low-res latent, or one per image of the batch.")
        check_same_aspect(tuple(low.shape[-2:]), tuple(noise.shape[-2:]), "low_res_latent", "RegionalAttentionPrior")
        seed = 0 if seed is None else seed
        run = PriorRun(noise=low_res_noise(noise, low, seed), seed=seed)
        executor.class_obj.model_options.setdefault("transformer_options", {})[PRIOR_KEY] = run
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run: PriorRun | None = model_options.get("transformer_options", {}).get(PRIOR_KEY)
        if run is not None:
            self.update(run, model, x_in, timestep, model_options)
        return executor(model, conds, x_in, timestep, model_options)

    def update(self, run: PriorRun, model, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> None:
        """Capture at this σ unless already done; outside the step range, hold no maps."""
        sigma = float(timestep.max())
        sigmas = model_options["transformer_options"].get("sample_sigmas")
        progress = 0.0 if sigmas is None else schedule_progress(sigmas, sigma)
        composer: ComposerRun | None = model_options["transformer_options"].get(COMPOSER_KEY)
        unused = composer is not None and composer.composer.weight <= 0  # region prompts only: skip the pass
        if unused or not self.start <= progress < self.end:
            run.sigma, run.maps = None, {}
        elif run.sigma != sigma:
            run.maps = {}  # free the previous capture first: at 4K the maps are the prior's main memory
            run.maps = self.capture(run, model, x_in, timestep[:1], model_options)
            run.sigma = sigma

    def capture(self, run: PriorRun, model, like: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> dict:
        """One UNet pass on z_L noised to σ with the global prompt, cond only; the patches record (RAP)."""
        low = self.low.to(like)
        noise = run.noise.to(like)
        if run.model_kwargs is None:
            run.model_kwargs = capture_model_kwargs(model, self.conditioning, low, noise, run.seed)
        sigma = sigma.to(like).expand(low.shape[0])
        x = model.scale_latent_inpaint(sigma=sigma, noise=noise, latent_image=low)
        captured: dict[tuple, CapturedAttention] = {}
        options = {k: v for k, v in model_options["transformer_options"].items() if k not in (TILES_KEY, COMPOSER_KEY)}
        options.update({CAPTURE_KEY: captured, "cond_or_uncond": [0] , "sigmas": sigma})
        model._apply_model(x, sigma, transformer_options=options, **run.model_kwargs)
        missing = [layer.key for layer in self.layers if layer.key not in captured]
        if missing:
            raise RuntimeError(f"RegionalAttentionPrior's capture pass did not reach layers {missing}: another patch "
                               f"replaced them or the UNet's forward. Put RegionalAttentionPrior after that patch.")
        return captured


@dataclass(frozen=True)
class Composer:
    """AttentionComposer's settings: w and the encoded region prompts (one embedding per prompt)."""

    weight: float
    texts: RegionTexts
    embeddings: tuple[torch.Tensor, ...]

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        executor.class_obj.model_options.setdefault("transformer_options", {})[COMPOSER_KEY] = ComposerRun(self)
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


def prior_patches(model_patcher) -> list[RegionalAttention]:
    replace = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return [p for p in replace.values() if isinstance(p, RegionalAttention)]


def check_context(what: str, channels: int, patch: RegionalAttention, fix: str) -> None:
    expected = patch.attn2.to_k.in_features
    if channels != expected:
        raise ValueError(f"{what} has {channels} channels per token but the model's cross-attention takes {expected}: "
                         f"{fix}")


class RegionalAttentionPrior:
    """MODEL -> MODEL whose chosen cross-attention layers follow the global prompt's attention on the low-res image."""

    CATEGORY = "cupscale"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = ("Regional Attention Prior (C-Upscale): at every step it runs the model on the low-resolution latent, "
                   "noised to the current noise level, with the global prompt, and records where each word of the "
                   "prompt falls (cross-attention maps). Each tile then uses those maps cut to its place in the image "
                   "instead of attending to the whole prompt itself, so objects are not repeated in every tile. Chain "
                   "with TiledBlendedDiffusion in either order; AttentionComposer adds region prompts.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "low_res_latent": ("LATENT", {"tooltip": "The low-resolution image's latent (VAE Encode of the image "
                                                         "before upscaling); same aspect ratio as the sampled one."}),
                "global_conditioning": ("CONDITIONING", {"tooltip": "The global prompt (CLIP Text Encode), usually the "
                                                                    "sampler's positive."}),
                "blocks": (list(BLOCKS), {"tooltip": "UNet blocks whose cross-attention follows the prior."}),
                "resolutions": (list(RESOLUTIONS), {"tooltip": "Layers by resolution, as a fraction of the latent's. "
                                                               "1/2 and coarser: every SDXL layer; SD1.5's without "
                                                               "the full-resolution ones (texture, costly to capture)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "First step with the prior, as a fraction of the steps."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Steps from here on attend to their prompt themselves."}),
            },
        }

    def patch(self, model, low_res_latent, global_conditioning, blocks, resolutions, start_percent, end_percent):
        layers = select_layers(model, blocks, resolutions)
        samples = low_res_latent["samples"]
        channels = model.model.latent_format.latent_channels
        if samples.ndim != 4 or samples.numel() == 0 or samples.shape[1] != channels:
            raise ValueError(f"low_res_latent has shape {tuple(samples.shape)}: RegionalAttentionPrior needs an image "
                             f"latent with this model's {channels} channels, e.g. VAE Encode of the low-res image.")
        if len(global_conditioning) != 1:
            raise ValueError(f"global_conditioning holds {len(global_conditioning)} prompts: give RegionalAttentionPrior "
                             f"the one global prompt (one CLIP Text Encode, not a Conditioning Combine).")
        if not 0 <= start_percent < end_percent <= 1:
            raise ValueError(f"start_percent = {start_percent}, end_percent = {end_percent}: the range must satisfy "
                             f"0 <= start_percent < end_percent <= 1.")
        patches = [RegionalAttention(layer, module) for layer, module in layers]
        check_context("global_conditioning", global_conditioning[0][0].shape[-1], patches[0],
                      "encode the global prompt with this checkpoint's CLIP.")
        prior = AttentionPrior(model.model.latent_format.process_in(samples.float()), global_conditioning,
                               [layer for layer, _ in layers], start_percent, end_percent)
        patched = model.clone()
        for p in patches:
            patched.set_model_attn2_replace(p, p.layer.block, p.layer.number, p.layer.index)
        for kind, fn in ((WrappersMP.OUTER_SAMPLE, prior.outer_sample), (WrappersMP.CALC_COND_BATCH, prior.calc_cond_batch)):
            patched.remove_wrappers_with_key(kind, PRIOR_KEY)
            patched.add_wrapper_with_key(kind, PRIOR_KEY, fn)
        return (patched,)


def region_texts(region_prompts, text: str) -> RegionTexts:
    if region_prompts is not None and text.strip():
        raise ValueError("AttentionComposer got both region_prompts and text: connect one, or clear text.")
    if region_prompts is not None:
        return from_region_prompts(region_prompts)
    return parse_region_text(text, "AttentionComposer's text")


class AttentionComposer:
    """MODEL -> MODEL whose regions fuse the prior's attention with attention to their own prompts (C-Upscale Fig. 4)."""

    CATEGORY = "cupscale"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = ("Attention Composer (C-Upscale): in the layers RegionalAttentionPrior patches, each tile's positive "
                   "cross-attention becomes weight x (the global prompt's attention on the low-res image, at the tile) "
                   "+ (1 - weight) x (the tile's attention to its own region prompt). Region prompts come from "
                   "MLLMRegionCaptioner, or are typed one per line (row by row), or one line for every region.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A model patched by RegionalAttentionPrior."}),
                "clip": ("CLIP", {"tooltip": "Encodes the region prompts: the checkpoint's CLIP."}),
                "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "1: the global prompt's attention only; 0: each region's prompt only."}),
            },
            "optional": {
                "region_prompts": (REGION_PROMPTS, {"tooltip": "From MLLMRegionCaptioner, made with the tiles' size "
                                                               "and overlap."}),
                "text": ("STRING", {"default": "", "multiline": True,
                                    "tooltip": "Instead of region_prompts: one prompt per line, one line per tile row by "
                                               "row from the top left; a single line for every tile; or the "
                                               "captioner's region_prompts_json."}),
            },
        }

    def patch(self, model, clip, weight, region_prompts=None, text=""):
        patches = prior_patches(model)
        if not patches:
            raise ValueError("AttentionComposer needs RegionalAttentionPrior before it: connect MODEL -> "
                             "RegionalAttentionPrior -> AttentionComposer (it composes in the layers the prior patches).")
        if not 0 <= weight <= 1:
            raise ValueError(f"weight = {weight} must lie in [0, 1].")
        texts = region_texts(region_prompts, text)
        encoded = {prompt: clip.encode_from_tokens(clip.tokenize(prompt)) for prompt in dict.fromkeys(texts.prompts)}
        check_context("The CLIP's text embedding", next(iter(encoded.values())).shape[-1], patches[0],
                      "connect the CLIP of the model's checkpoint.")
        composer = Composer(weight, texts, tuple(encoded[p] for p in texts.prompts))
        patched = model.clone()
        patched.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, COMPOSER_KEY)
        patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, COMPOSER_KEY, composer.outer_sample)
        return (patched,)


NODE_CLASS_MAPPINGS = {"RegionalAttentionPrior": RegionalAttentionPrior, "AttentionComposer": AttentionComposer}
NODE_DISPLAY_NAME_MAPPINGS = {"RegionalAttentionPrior": "Regional Attention Prior (cupscale)",
                              "AttentionComposer": "Attention Composer (cupscale)"}
