"""The Regional Attention Prior in a DiT's double (joint) blocks (core: cupscale.priors.joint_attention).

Each chosen block gets a ``patches_replace["dit"][("double_block", i)]`` patch, the hook Flux (Flux.2 too), SD3,
Qwen-Image and Chroma all call with the block's inputs; HiDream and Z-Image call no such hook, so there the
block's ``forward`` is an object patch instead (:class:`InnerBlockRouter`). When the run state asks for it, the
patch runs the block with an ``optimized_attention_override`` of its own in a copy of ``transformer_options``, so
only that block's joint attention call is changed, through whatever backend the user chose; the model's files
and weights are untouched and LoRAs still apply. Other attention in the block (SD3.5's extra image
self-attention) is left alone. Where the call puts text and image (:class:`Span`): text first (Flux, SD3,
Qwen-Image, Chroma, Z-Image), image first (HiDream); Z-Image pads the image tokens after it.

Why the double blocks, all of them by default: there text and image tokens keep their own projections,
like a UNet's cross-attention keeps the prompt apart; in Flux's (and Chroma's, HiDream's) single blocks the text
has been merged into one stream. Flux has 19, Flux.2 dev 8, SD3.5 Large 38 and Medium 24, Qwen-Image 60, Chroma
19, HiDream 16. Z-Image has no double blocks: its main ``layers`` (30) are single-stream over [text; image], and
the split of joint attention into alpha*O_txt + (1 - alpha)*O_img holds for any softmax over text and image keys,
so the prior applies in each of them the same way; its refiners (text alone, image alone) have no text part.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial

import torch

from ..cupscale.priors.items import item_regions, on_cond_items
from ..cupscale.priors.joint_attention import capture_text, joint_prior_attention, read_text_prior
from ..cupscale.tiling.positions import patch_grid
from .attention_router import CAPTURE_KEY, COMPOSER_KEY, PRIOR_KEY
from .dit_positions import dit_kind, patch_cells
from .host import attention
from .tiled_sampling import TILES_KEY
from .unet_layers import Layer

ATTENTION_ARGS = inspect.signature(attention.attention_basic)
BLOCK_LISTS = {"flux": "double_blocks", "sd3": "joint_blocks", "qwen_image": "transformer_blocks",
               "chroma": "double_blocks", "hidream": "double_stream_blocks", "z_image": "layers"}
CONTEXT_INPUTS = {"flux": ("txt_in",), "sd3": ("context_embedder",), "qwen_image": ("txt_in",), "chroma": ("txt_in",),
                  "hidream": ("caption_projection", -1, "linear"), "z_image": ("cap_embedder", 1)}
"""The linear layer that first reads the text context (HiDream's T5 projection is its last caption projection)."""


@dataclass(frozen=True)
class Span:
    """Where one joint attention call holds its tokens: ``text`` and ``image`` tokens (the image first where
    ``image_first``), ``tokens`` in all (more than both where the model pads the image after it)."""

    text: int
    image: int
    tokens: int
    image_first: bool = False


def hidream_span(router, args: tuple, kwargs: dict, options: dict) -> Span:
    """HiDream's double block attends over [image; text]."""
    text, image = kwargs["text_tokens"].shape[1], kwargs["image_tokens"].shape[1]
    return Span(text, image, text + image, image_first=True)


def z_image_span(router, args: tuple, kwargs: dict, options: dict) -> Span:
    """Z-Image's layers attend over [text, padded; image; its padding to a multiple of the model's]."""
    tokens, (h, w) = args[0].shape[1], router.tokens_hw(options)
    multiple = router.pad_multiple or 1
    return Span(tokens - h * w - (-(h * w) % multiple), h * w, tokens)


INNER_SPANS = {"hidream": hidream_span, "z_image": z_image_span}
"""The DiTs whose blocks take no dit patch: where their joint attention's tokens lie, from the block's call."""


def joint_blocks(model_patcher) -> list[Layer]:
    """Every double block of a DiT (Z-Image's every layer) as a Layer named for its dit patch; [] for other models.
    The blocks see the latent in patches: resolution 1/patch."""
    kind = dit_kind(model_patcher)
    if kind is None:
        return []
    blocks = getattr(model_patcher.model.diffusion_model, BLOCK_LISTS[kind])
    return [Layer("double_block", i, 0, patch_cells(model_patcher)) for i in range(len(blocks))]


def context_channels(model_patcher) -> int:
    """Channels per token of the text the DiT takes (its text embedder's input)."""
    module = model_patcher.model.diffusion_model
    for step in CONTEXT_INPUTS[dit_kind(model_patcher)]:
        module = module[step] if isinstance(step, int) else getattr(module, step)
    return module.in_features


def rotate(t: torch.Tensor, first: int) -> torch.Tensor:
    """The tokens (axis 2) of ``t`` with the first ``first`` moved to the end."""
    return torch.cat([t[:, :, first:], t[:, :, :first]], dim=2)


class JointBlockRouter:
    """The dit patch of one double block: plain, or the block with this call's processor on its joint attention."""

    def __init__(self, layer: Layer, pad_multiple: int | None = None):
        self.layer, self.pad_multiple = layer, pad_multiple

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        if not self.active(options):
            return extra["original_block"](args)
        text, image = args["txt"].shape[1], args["img"].shape[1]
        return extra["original_block"]({**args, "transformer_options": self.routed(options, Span(text, image, text + image))})

    def active(self, options: dict) -> bool:
        """Whether this call captures O_txt or reads the prior in this block."""
        prior = options.get(PRIOR_KEY)
        return prior is not None and (options.get(CAPTURE_KEY) is not None or self.layer.key in prior.maps)

    def routed(self, options: dict, span: Span) -> dict:
        """``options`` with this block's joint attention call going through :meth:`attention`."""
        return {**options, "optimized_attention_override": partial(self.attention, options=options, span=span)}

    def attention(self, func, *args, options: dict, span: Span, **kwargs):
        bound = ATTENTION_ARGS.bind(*args, **kwargs).arguments
        q, k, v, heads = (bound.pop(name) for name in ("q", "k", "v", "heads"))
        rest = {**bound.pop("kwargs", {}), **bound}
        split = not rest.get("skip_reshape", False)
        if q.shape[1 if split else -2] != span.tokens:
            return func(*args, **kwargs)  # not the joint call (SD3.5's image-only attention)
        # (batch, tokens, heads·d), or heads apart already (SD3's values); (batch, heads, tokens, d) when skipped
        q4, k4, v4 = ((t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) if split else t) for t in (q, k, v))
        if span.image_first:  # the core takes text first; attention does not mind the order of the tokens
            q4, k4, v4 = (rotate(t, span.image) for t in (q4, k4, v4))
        rest.update(skip_reshape=True, skip_output_reshape=True)
        attend = lambda a, b, c: func(a, b, c, heads, **rest)  # noqa: E731
        out = self.process(q4, k4, v4, attend, options, span.text, span.image)
        out = rotate(out, span.text) if span.image_first else out
        merged = not kwargs.get("skip_output_reshape", False)  # what the caller asked for
        return out.transpose(1, 2).flatten(-2) if merged else out

    def tokens_hw(self, options: dict) -> tuple[int, int]:
        """The image tokens' grid in this call: the low-res latent's in the capture pass, else the tile's (the
        latent's, untiled)."""
        prior, tiles = options[PRIOR_KEY], options.get(TILES_KEY)
        if options.get(CAPTURE_KEY) is not None:
            hw = tuple(prior.low.shape[-2:])
        else:
            hw = (tiles.grid.tile_height, tiles.grid.tile_width) if tiles is not None else prior.latent_hw
        return patch_grid(hw, self.layer.downscale)

    def process(self, q, k, v, attend, options: dict, text: int, image: int) -> torch.Tensor:
        prior = options[PRIOR_KEY]
        capture = options.get(CAPTURE_KEY)
        tokens_hw = self.tokens_hw(options)
        if capture is not None:
            capture[self.layer.key] = capture_text(q, k, v, text, tokens_hw)
            return attend(q, k, v)
        tiles = options.get(TILES_KEY)
        if tokens_hw[0] * tokens_hw[1] != image:
            return attend(q, k, v)  # extra image tokens (reference latents): no place on the low-res image
        composer = options.get(COMPOSER_KEY)
        weight = 1.0 if composer is None else composer.settings.weight
        labels = options.get("cond_or_uncond", [0])
        per_chunk = q.shape[0] // len(labels)

        def on_cond(items, q, k, v):
            where = item_regions(tiles, items, per_chunk, prior.latent_hw)
            if composer is not None:
                composer.check(where.grid)
            read = read_text_prior(prior.maps[self.layer.key], where, tokens_hw)
            return joint_prior_attention(attend, q, k, v, text, read, weight)
        return on_cond_items(q, k, v, labels, attend, on_cond)


class InnerBlockRouter:
    """Over the ``forward`` of a HiDream or Z-Image block (they call no dit patch): the block with the router's
    ``transformer_options`` where it is active."""

    def __init__(self, original, router: JointBlockRouter, span):
        self.original, self.router, self.span = original, router, span

    def __call__(self, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if options is not None and self.router.active(options):
            kwargs["transformer_options"] = self.router.routed(options, self.span(self.router, args, kwargs, options))
        return self.original(*args, **kwargs)


def add_joint_router(model_patcher, layer: Layer) -> None:
    """Route ``layer``'s joint attention on ``model_patcher`` (a clone): a dit patch, or on HiDream and Z-Image an
    object patch over the block's forward."""
    kind = dit_kind(model_patcher)
    if kind not in INNER_SPANS:
        model_patcher.set_model_patch_replace(JointBlockRouter(layer), "dit", layer.block, layer.number)
        return
    pad = getattr(model_patcher.model.diffusion_model, "pad_tokens_multiple", None)
    name = f"diffusion_model.{BLOCK_LISTS[kind]}.{layer.number}.forward"
    original = model_patcher.get_model_object(name)
    original = original.original if isinstance(original, InnerBlockRouter) else original
    model_patcher.add_object_patch(name, InnerBlockRouter(original, JointBlockRouter(layer, pad), INNER_SPANS[kind]))


def joint_routers(model_patcher) -> list[JointBlockRouter]:
    """The routers RegionalAttentionPrior installed on a DiT."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    inner = [p.router for p in model_patcher.object_patches.values() if isinstance(p, InnerBlockRouter)]
    return [p for p in patches.get("dit", {}).values() if isinstance(p, JointBlockRouter)] + inner
