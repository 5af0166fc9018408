"""Attention processors: C-Upscale's regional priors (Figs. 3-4) as one object per behaviour of a layer.

In the manner of diffusers' attention processors, each is built for one cross-attention layer with the state
that layer needs (its key in the run's maps, its to_k / to_v) and nothing global, and has one ``__call__`` over
the layer's q, k, v (heads merged: (batch, tokens, heads·d)) and an :class:`AttentionCall`: the host's
attention and what this call's sampling run holds. A router on the layer (nodes/attention_router.py) picks one
per call from the run state:

- :class:`CaptureProcessor` on the capture pass: (RAP), the layer's maps A_L and values V_g recorded.
- :class:`PriorProcessor` for the cond items: A_R V_g (cupscale.priors.attention_prior).
- :class:`ComposerProcessor` for the cond items: (AC) (cupscale.priors.composer).

Everything else (uncond items, layers or steps without maps and no composer) keeps the host's plain attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention_prior import CapturedAttention, capture_attention, prior_attention
from .composer import ComposerRun, composed_attention, region_attention
from .items import Attend, ItemRegions


@dataclass(frozen=True)
class AttentionCall:
    """One call of a chosen layer, as its processors see it.

    ``maps`` holds the run's (RAP) by layer at the current sigma (the capture pass fills it); ``where``
    locates the items being processed (the sampler's passes); ``composer`` is set under AttentionComposer.
    """

    attend: Attend
    heads: int
    tokens_hw: tuple[int, int]
    maps: dict[tuple, CapturedAttention] = field(default_factory=dict)
    composer: ComposerRun | None = None
    where: ItemRegions | None = None


class CaptureProcessor:
    """(RAP) on the capture pass: records this layer's A_L and V_g, and returns A_L V_g (plain attention)."""

    def __init__(self, layer: tuple):
        self.layer = layer

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        call.maps[self.layer], out = capture_attention(q, k, v, call.heads, call.tokens_hw)
        return out


class PriorProcessor:
    """A_R V_g: this layer's captured maps read at each item's region, applied to the global prompt's values.
    Out of the prior's step range (no maps at this sigma) the items attend to their own prompt."""

    def __init__(self, layer: tuple):
        self.layer = layer

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        captured = call.maps.get(self.layer)
        if captured is None:
            return call.attend(q, k, v)
        return prior_attention(captured, call.where, call.tokens_hw).to(q.dtype)


class ComposerProcessor:
    """(AC): w · (the prior's term) + (1 - w) · each item's attention to its region's prompt, whose keys and
    values this layer's ``attn2`` projects."""

    def __init__(self, prior: PriorProcessor, attn2: nn.Module):
        self.prior = prior
        self.attn2 = attn2

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        run = call.composer
        run.check(call.where.grid)

        def region() -> torch.Tensor:
            keys_values = [run.keys_values(self.prior.layer, self.attn2, r, q) for r in call.where.regions]
            return region_attention(q, keys_values, call.attend)
        return composed_attention(run.settings.weight, lambda: self.prior(q, k, v, call), region)
