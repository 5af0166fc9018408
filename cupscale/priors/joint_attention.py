"""The Regional Attention Prior in joint attention (Flux, SD3, Qwen-Image): the text part of each image
token's attention, taken on the low-res image and read per tile.

A DiT has no cross-attention: in each double (joint) block the image and text tokens attend together,
softmax over [text keys; image keys]. An image query's output splits exactly into

    out = alpha · O_txt + (1 - alpha) · O_img,   O_txt = softmax(q K_txt^T/sqrt(d)) V_txt,

alpha being the share of its attention that falls on text (O_img likewise over the image keys). O_txt is the
cross-attention of a UNet: where the prompt's words fall. The prior keeps the tile's own alpha and O_img and
replaces O_txt by the low-res image's, read at the tile:

    out' = out + alpha · w · (Ô_txt - O_txt)                                              (joint RAP)

with w = 1 (the prior alone) or the composer's weight. Ô_txt is read bilinearly from the captured O_txt
laid out as an image; since bilinear weights sum to one, that equals reading the maps A_L and applying them
to V_txt (cupscale.priors.attention_prior), at head-dim instead of prompt-length memory per token. Under
AttentionComposer the tile's own prompt is its region's, so w = 0 leaves each tile attending to its region
prompt alone.

alpha comes from the host's own attention call (any backend) with one extra value channel that is 1 on the text
keys: its output in that channel is alpha. Queries and keys get zero channels to match (and the queries a
factor that keeps the softmax scale), so the call's logits are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .attention_prior import read_regions
from .items import ItemRegions

PAD = 8  # extra head channels of the alpha call: one carries alpha, the rest keep the head size a multiple of 8
Attend4 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The host's attention on (batch, heads, tokens, d) tensors, returning the same layout."""


@dataclass(frozen=True)
class CapturedText:
    """One block's O_txt on the low-res image: (batch, heads, d, h_L, w_L), laid out for resampling."""

    features: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


def text_attention(q_img: torch.Tensor, k_txt: torch.Tensor, v_txt: torch.Tensor) -> torch.Tensor:
    """O_txt = softmax(q K_txt^T/sqrt(d)) V_txt per head, in float32: (batch, heads, image tokens, d). The text is
    short (77-512 tokens), so the probabilities are formed explicitly, one item at a time."""
    scale = q_img.shape[-1] ** -0.5
    out = [torch.softmax(q.float() @ k.float().transpose(-1, -2) * scale, dim=-1) @ v.float()
           for q, k, v in zip(q_img, k_txt, v_txt)]
    return torch.stack(out)


def capture_text(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int,
                 grid_hw: tuple[int, int]) -> CapturedText:
    """(RAP) of one joint block on the low-res pass: O_txt of the image queries (the h_L*w_L after the text; any
    tokens after them are padding) as (b, heads, d, h_L, w_L)."""
    image = grid_hw[0] * grid_hw[1]
    o_txt = text_attention(q[:, :, text:text + image], k[:, :, :text], v[:, :, :text])
    b, h, n, d = o_txt.shape
    return CapturedText(o_txt.transpose(-1, -2).reshape(b, h, d, *grid_hw).to(q.dtype).contiguous())


def attention_with_text_share(attend: Attend4, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint attention ``attend(q, k, v)`` and alpha, the share of each query's attention on the first
    ``text`` keys: (batch, heads, tokens, d) and (batch, heads, tokens, 1), from one call of the host."""
    d = q.shape[-1]
    marker = torch.zeros(*v.shape[:-1], PAD, dtype=v.dtype, device=v.device)
    marker[:, :, :text, 0] = 1
    out = attend(F.pad(q * ((d + PAD) / d) ** 0.5, (0, PAD)), F.pad(k, (0, PAD)), torch.cat([v, marker], dim=-1))
    return out[..., :d], out[..., d:d + 1]


def read_text_prior(captured: CapturedText, where: ItemRegions, tokens_hw: tuple[int, int]) -> torch.Tensor:
    """Ô_txt for items at ``where`` on ``tokens_hw`` image tokens: (items, heads, tokens, d), float32, read as
    the UNet's maps are (:func:`~cupscale.priors.attention_prior.read_regions`)."""
    return read_regions(captured.features, where, tokens_hw)[0]


def joint_prior_attention(attend: Attend4, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int,
                          prior: torch.Tensor, weight: float) -> torch.Tensor:
    """(joint RAP) for a batch of items: the joint attention with the image queries' text part moved towards
    ``prior`` (Ô_txt, (batch, heads, image tokens, d)) by ``weight``. Text queries, and any padding after the image
    (Z-Image's), keep theirs."""
    out, share = attention_with_text_share(attend, q, k, v, text)
    end = text + prior.shape[2]
    own = text_attention(q[:, :, text:end], k[:, :, :text], v[:, :, :text])
    image = out[:, :, text:end] + (share[:, :, text:end].float() * weight * (prior - own)).to(out.dtype)
    return torch.cat([out[:, :, :text], image, out[:, :, end:]], dim=2)
