"""The attn2_replace patch of each layer RegionalAttentionPrior chose: one small router per layer that picks the
layer's processor (cupscale.priors.processors) from the run state in transformer_options, and gives it
ComfyUI's attention.

The run state, set by the wrappers of nodes/attention_runs.py:
- ``CAPTURE_KEY``: the capture pass, a dict it fills -> CaptureProcessor, for every item.
- ``COMPOSER_KEY``: AttentionComposer's run -> ComposerProcessor, for the cond items.
- ``PRIOR_KEY``: the prior's run; with maps for this layer at this sigma -> PriorProcessor, for the cond items.
- none of these -> plain attention. Uncond items always keep it.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from ..cupscale.priors.items import item_regions, on_cond_items
from ..cupscale.priors.processors import AttentionCall, CaptureProcessor, ComposerProcessor, PriorProcessor
from .host import attention
from .tiled_sampling import TILES_KEY
from .unet_layers import Layer

PRIOR_KEY = "cupscale_attention_prior"
COMPOSER_KEY = "cupscale_attention_composer"
CAPTURE_KEY = "cupscale_attention_capture"


def host_attention(q, k, v, extra_options) -> torch.Tensor:
    """Plain cross-attention through the backend the user chose (xformers, sage, flash, pytorch...), as
    CrossAttention.forward runs it."""
    return attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                         attn_precision=extra_options.get("attn_precision"),
                                         transformer_options=extra_options)


class AttentionRouter:
    """attn2_replace of one chosen layer: its processors, and the one this call's run state asks for."""

    def __init__(self, layer: Layer, attn2: torch.nn.Module):
        self.layer = layer
        self.attn2 = attn2
        self.capture = CaptureProcessor(layer.key)
        self.prior = PriorProcessor(layer.key)
        self.composer = ComposerProcessor(self.prior, attn2)

    def __call__(self, q, k, v, extra_options):
        capture, prior = extra_options.get(CAPTURE_KEY), extra_options.get(PRIOR_KEY)
        maps = capture if capture is not None else prior.maps if prior is not None else {}
        call = AttentionCall(partial(host_attention, extra_options=extra_options), extra_options["n_heads"],
                             tuple(extra_options["activations_shape"][-2:]), maps, extra_options.get(COMPOSER_KEY))
        if capture is not None:
            return self.capture(q, k, v, call)
        processor = self.composer if call.composer is not None else self.prior if self.layer.key in maps else None
        if processor is None:
            return call.attend(q, k, v)
        labels = extra_options.get("cond_or_uncond", [0])
        per_chunk = q.shape[0] // len(labels)

        def on_cond(items, q, k, v):
            where = item_regions(extra_options.get(TILES_KEY), items, per_chunk,
                                 tuple(extra_options["original_shape"][-2:]))
            return processor(q, k, v, replace(call, where=where))
        return on_cond_items(q, k, v, labels, call.attend, on_cond)


def routers(model_patcher) -> list[AttentionRouter]:
    """The routers RegionalAttentionPrior installed on ``model_patcher``."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    return [p for p in patches.get("attn2", {}).values() if isinstance(p, AttentionRouter)]
