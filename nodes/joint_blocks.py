"""The Regional Attention Prior in a DiT's double (joint) blocks (core: cupscale.priors.joint_attention).

Each chosen block gets a ``patches_replace["dit"][("double_block", i)]`` patch, the hook Flux, SD3 and
Qwen-Image all call with the block's inputs. When the run state asks for it, the patch runs the block with
an ``optimized_attention_override`` of its own in a copy of ``transformer_options``, so only that block's
joint attention call (text first, then image tokens) is changed, through whatever backend the user chose;
the model's files and weights are untouched and LoRAs still apply. Other attention in the block (SD3.5's
extra image self-attention) is left alone.

Why the double blocks, all of them by default: there text and image tokens keep their own projections,
like a UNet's cross-attention keeps the prompt apart; in Flux's single blocks the text has been merged into
one stream. Flux has 19, SD3.5 Large 38 and Medium 24, Qwen-Image 60.
"""
from __future__ import annotations

import inspect
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
BLOCK_LISTS = {"flux": "double_blocks", "sd3": "joint_blocks", "qwen_image": "transformer_blocks"}
CONTEXT_INPUTS = {"flux": "txt_in", "sd3": "context_embedder", "qwen_image": "txt_in"}


def joint_blocks(model_patcher) -> list[Layer]:
    """Every double block of a DiT as a Layer named for its dit patch; [] for other models. The blocks see
    the latent in 2x2 patches: resolution 1/2."""
    kind = dit_kind(model_patcher)
    if kind is None:
        return []
    blocks = getattr(model_patcher.model.diffusion_model, BLOCK_LISTS[kind])
    return [Layer("double_block", i, 0, patch_cells(model_patcher)) for i in range(len(blocks))]


def context_channels(model_patcher) -> int:
    """Channels per token of the text the DiT takes (its text embedder's input)."""
    net = model_patcher.model.diffusion_model
    return getattr(net, CONTEXT_INPUTS[dit_kind(model_patcher)]).in_features


class JointBlockRouter:
    """The dit patch of one double block: plain, or the block with this call's processor on its joint attention."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        capture, prior = options.get(CAPTURE_KEY), options.get(PRIOR_KEY)
        if prior is None or (capture is None and self.layer.key not in prior.maps):
            return extra["original_block"](args)
        hook = partial(self.attention, options=options, text=args["txt"].shape[1], image=args["img"].shape[1])
        return extra["original_block"]({**args, "transformer_options": {**options, "optimized_attention_override": hook}})

    def attention(self, func, *args, options: dict, text: int, image: int, **kwargs):
        bound = ATTENTION_ARGS.bind(*args, **kwargs).arguments
        q, k, v, heads = (bound.pop(name) for name in ("q", "k", "v", "heads"))
        rest = {**bound.pop("kwargs", {}), **bound}
        split = not rest.get("skip_reshape", False)
        if q.shape[1 if split else -2] != text + image:
            return func(*args, **kwargs)  # not the joint call (SD3.5's image-only attention)
        # (batch, tokens, heads·d), or heads apart already (SD3's values); (batch, heads, tokens, d) when skipped
        q4, k4, v4 = ((t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) if split else t) for t in (q, k, v))
        rest.update(skip_reshape=True, skip_output_reshape=True)
        attend = lambda a, b, c: func(a, b, c, heads, **rest)  # noqa: E731
        out = self.process(q4, k4, v4, attend, options, text, image)
        merged = not kwargs.get("skip_output_reshape", False)  # what the caller asked for
        return out.transpose(1, 2).flatten(-2) if merged else out

    def process(self, q, k, v, attend, options: dict, text: int, image: int) -> torch.Tensor:
        prior = options[PRIOR_KEY]
        patch = self.layer.downscale
        capture = options.get(CAPTURE_KEY)
        if capture is not None:
            capture[self.layer.key] = capture_text(q, k, v, text, patch_grid(tuple(prior.low.shape[-2:]), patch))
            return attend(q, k, v)
        tiles = options.get(TILES_KEY)
        hw = (tiles.grid.tile_height, tiles.grid.tile_width) if tiles is not None else prior.latent_hw
        tokens_hw = patch_grid(hw, patch)
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


def joint_routers(model_patcher) -> list[JointBlockRouter]:
    """The routers RegionalAttentionPrior installed on a DiT."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    return [p for p in patches.get("dit", {}).values() if isinstance(p, JointBlockRouter)]
