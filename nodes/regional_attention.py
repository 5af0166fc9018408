"""RegionalAttentionPrior and AttentionComposer: C-Upscale's regional priors (Figs. 3-4) as attn2 patches.

Two hops to the maths: each chosen layer gets an AttentionRouter (nodes/attention_router.py) whose processors
are in cupscale.priors.processors: (RAP) and A_R V_g in cupscale.priors.attention_prior, (AC) in
cupscale.priors.composer. The layers come from nodes/unet_layers.py; the per-run state and the capture pass
from nodes/attention_runs.py. RegionalAttentionPrior works with or without TiledBlendedDiffusion (without it
the whole latent is one region); AttentionComposer composes in the layers the prior patched.
"""
from __future__ import annotations

from ..cupscale.captioning.region_prompts import TYPE_NAME as REGION_PROMPTS
from ..cupscale.guards import check_finite
from ..cupscale.latents import layout
from ..cupscale.priors.composer import ComposerSettings, RegionTexts, from_region_prompts, parse_region_text
from ..cupscale.schedule import check_percent_range
from .attention_router import COMPOSER_KEY, PRIOR_KEY, AttentionRouter, routers
from .attention_runs import AttentionPrior, Composer, text_as_model_reads
from .host import WrappersMP, io
from .inputs import advanced, check_numbers, percent_range_inputs, widget_names, widgets_valid
from .tiled_sampling import latent_ratio
from .dit_positions import dit_kind
from .joint_blocks import add_joint_router, context_channels, joint_blocks, joint_routers
from .unet_layers import BLOCKS, RESOLUTIONS, select_layers


# The training resolution of each family, told apart by its cross-attention width: SD1.x, SD2.x, SDXL.
NATIVE_SIDE = {768: 512, 1024: 768, 2048: 1024}


def check_context(what: str, channels: int, expected: int, fix: str) -> None:
    if channels != expected:
        raise ValueError(f"{what} has {channels} channels per token but the model's cross-attention takes {expected}: "
                         f"{fix}")


MIN_LOW_RES_SIDE = 2
"""Latent cells a side the low-res latent needs at least: the prior crops its attention maps per region, and
a map of one cell has nothing to crop (a 1 x 1 latent failed inside the model's normalisation, at the KSampler)."""


def check_low_res_latent(samples, channels: int, ndim: int = 4) -> None:
    if samples.ndim != ndim or samples.numel() == 0 or samples.shape[1] != channels:
        raise ValueError(f"low_res_latent has shape {tuple(samples.shape)}: RegionalAttentionPrior needs an image "
                         f"latent {layout(ndim)} with this model's {channels} channels, e.g. VAE Encode of the "
                         f"low-res image.")
    if min(samples.shape[-2:]) < MIN_LOW_RES_SIDE:
        height, width = samples.shape[-2:]
        raise ValueError(f"low_res_latent is {height}x{width} latent cells: RegionalAttentionPrior needs at least "
                         f"{MIN_LOW_RES_SIDE} a side to crop its attention per region: give the latent of the "
                         f"low-res image (VAE Encode), at least {MIN_LOW_RES_SIDE * 8} pixels a side for an 8x VAE.")
    with widget_names(f="low_res_latent"):
        check_finite(samples, "f")


def select_dit_blocks(model, blocks: str) -> list:
    """A DiT's double blocks (with no module: the dit patch takes the block whole). Its blocks are not
    split into input, middle and output, so only "all" chooses among them."""
    if blocks != "all":
        raise ValueError(f"blocks = {blocks!r}: this model ({dit_kind(model)}) has no input, middle or output "
                         f"blocks; choose all (its {len(joint_blocks(model))} double blocks).")
    return [(layer, None) for layer in joint_blocks(model)]


class RegionalAttentionPrior(io.ComfyNode):
    """MODEL -> MODEL whose chosen cross-attention layers follow the global prompt's attention on the low-res image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RegionalAttentionPrior",
            display_name="Regional Attention Prior (cupscale)",
            category="cupscale",
            description=("Regional Attention Prior (C-Upscale): at every step it runs the model on the low-resolution "
                         "latent, noised to the current noise level, with the global prompt, and records where each "
                         "word of the prompt falls (cross-attention maps). Each tile then uses those maps cut to its "
                         "place in the image instead of attending to the whole prompt itself, so objects are not "
                         "repeated in every tile. Chain with TiledBlendedDiffusion in either order; AttentionComposer "
                         "adds region prompts."),
            inputs=[
                io.Model.Input("model"),
                io.Latent.Input("low_res_latent", tooltip="The low-resolution image's latent (VAE Encode of the image "
                                                          "before upscaling); same aspect ratio as the sampled one."),
                io.Conditioning.Input("global_conditioning", tooltip="The global prompt (CLIP Text Encode), usually "
                                                                     "the sampler's positive."),
                io.Combo.Input("blocks", options=list(BLOCKS), tooltip="UNet blocks whose cross-attention follows the "
                                                                       "prior."),
                io.Combo.Input("resolutions", options=list(RESOLUTIONS),
                               tooltip="Layers by resolution, as a fraction of the latent's. 1/2 and coarser: every "
                                       "SDXL layer; SD1.5's without the full-resolution ones (texture, costly to "
                                       "capture)."),
                *percent_range_inputs("First step with the prior, as a fraction of the steps.",
                                      "Steps from here on attend to their prompt themselves."),
                advanced(io.Int.Input("capture_size", default=0, min=0, max=16384, step=8, optional=True,
                                      tooltip="Largest capture, as the side of a square in pixels: a larger low-res "
                                              "image is captured at this area (same aspect) and its maps read "
                                              "per tile. 0: the model's native size (1024 SDXL, 512 SD1.5).")),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, blocks=None, resolutions=None, start_percent=None, end_percent=None,
                        capture_size=None) -> bool | str:
        return widgets_valid(cls, blocks=blocks, resolutions=resolutions, start_percent=start_percent,
                             end_percent=end_percent, capture_size=capture_size)

    @classmethod
    def execute(cls, model, low_res_latent, global_conditioning, blocks, resolutions, start_percent,
                end_percent, capture_size=0) -> io.NodeOutput:
        dit = dit_kind(model) is not None
        layers = select_dit_blocks(model, blocks) if dit else select_layers(model, blocks, resolutions)
        samples = low_res_latent["samples"]
        latent_format = model.model.latent_format
        check_low_res_latent(samples, latent_format.latent_channels, latent_format.latent_dimensions + 2)
        if len(global_conditioning) != 1:
            raise ValueError(f"global_conditioning holds {len(global_conditioning)} prompts: give RegionalAttentionPrior "
                             f"the one global prompt (one CLIP Text Encode, not a Conditioning Combine).")
        with widget_names(start="start_percent", end="end_percent"):
            check_percent_range(start_percent, end_percent)
        channels = context_channels(model) if dit else layers[0][1].to_k.in_features
        check_context("global_conditioning", global_conditioning[0][0].shape[-1], channels,
                      "encode the global prompt with this checkpoint's text encoder.")
        if capture_size < 0 or capture_size % 8:
            raise ValueError(f"capture_size = {capture_size}: 0 (the model's native size) or a multiple of 8 pixels.")
        side = capture_size or (1024 if dit else NATIVE_SIDE.get(channels, 1024))
        prior = AttentionPrior(model.model.latent_format.process_in(samples.float()), global_conditioning,
                               [layer for layer, _ in layers], start_percent, end_percent,
                               (side // latent_ratio(model)) ** 2)
        patched = model.clone()
        for layer, module in layers:
            if dit:
                add_joint_router(patched, layer)
            else:
                patched.set_model_attn2_replace(AttentionRouter(layer, module), layer.block, layer.number, layer.index)
        for kind, fn in ((WrappersMP.OUTER_SAMPLE, prior.outer_sample), (WrappersMP.CALC_COND_BATCH, prior.calc_cond_batch)):
            patched.remove_wrappers_with_key(kind, PRIOR_KEY)
            patched.add_wrapper_with_key(kind, PRIOR_KEY, fn)
        return io.NodeOutput(patched)


def region_texts(region_prompts, text: str) -> RegionTexts:
    if region_prompts is not None and text.strip():
        raise ValueError("AttentionComposer got both region_prompts and text: connect one, or clear text.")
    if region_prompts is not None:
        return from_region_prompts(region_prompts)
    return parse_region_text(text, "AttentionComposer's text")


class AttentionComposer(io.ComfyNode):
    """MODEL -> MODEL whose regions fuse the prior's attention with attention to their own prompts (C-Upscale Fig. 4)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionComposer",
            display_name="Attention Composer (cupscale)",
            category="cupscale",
            description=("Attention Composer (C-Upscale): in the layers RegionalAttentionPrior patches, each tile's "
                         "positive cross-attention becomes weight x (the global prompt's attention on the low-res "
                         "image, at the tile) + (1 - weight) x (the tile's attention to its own region prompt). Region "
                         "prompts come from MLLMRegionCaptioner, or are typed one per line (row by row), or one line "
                         "for every region."),
            inputs=[
                io.Model.Input("model", tooltip="A model patched by RegionalAttentionPrior."),
                io.Clip.Input("clip", tooltip="Encodes the region prompts: the checkpoint's CLIP."),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="1: the global prompt's attention only; 0: each region's prompt only."),
                io.Custom(REGION_PROMPTS).Input("region_prompts", optional=True,
                                                tooltip="From MLLMRegionCaptioner, made with the tiles' size and "
                                                        "overlap."),
                io.String.Input("text", default="", multiline=True, optional=True,
                                tooltip="Instead of region_prompts: one prompt per line, one line per tile row by row "
                                        "from the top left; a single line for every tile; or the captioner's "
                                        "region_prompts_json."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, weight=None) -> bool | str:
        return widgets_valid(cls, weight=weight)

    @classmethod
    def execute(cls, model, clip, weight, region_prompts=None, text="") -> io.NodeOutput:
        dit = dit_kind(model) is not None
        if not (joint_routers(model) if dit else routers(model)):
            raise ValueError("AttentionComposer needs RegionalAttentionPrior before it: connect MODEL -> "
                             "RegionalAttentionPrior -> AttentionComposer (it composes in the layers the prior patches).")
        check_numbers(cls, weight=weight)
        texts = region_texts(region_prompts, text)
        encoded = {prompt: text_as_model_reads(model, clip, prompt) if dit else clip.encode_from_tokens(clip.tokenize(prompt))
                   for prompt in dict.fromkeys(texts.prompts)}
        channels = context_channels(model) if dit else routers(model)[0].attn2.to_k.in_features
        check_context("The CLIP's text embedding", next(iter(encoded.values())).shape[-1], channels,
                      "connect the text encoder of the model's checkpoint.")
        composer = Composer(ComposerSettings(weight, texts, tuple(encoded[p] for p in texts.prompts)), dit)
        patched = model.clone()
        wrappers = [(WrappersMP.OUTER_SAMPLE, composer.outer_sample)]
        wrappers += [(WrappersMP.APPLY_MODEL, composer.apply_model)] if dit else []
        for kind, fn in wrappers:
            patched.remove_wrappers_with_key(kind, COMPOSER_KEY)
            patched.add_wrapper_with_key(kind, COMPOSER_KEY, fn)
        return io.NodeOutput(patched)


NODES = [RegionalAttentionPrior, AttentionComposer]
