"""XPSR's attention modules (Qu et al. 2024, "XPSR", Sec. 3.4): Semantic-Fusion Attention and Conditional Attention.

XPSR feeds two descriptions of the low-resolution image to its ControlNet: a high-level one
(content, layout, scene: ``c_h``) and a low-level one (quality, blur, noise: ``c_l``). Attending to
them one after the other (Eq. 1) lets the second overwrite the first, so every cross-attention of
the ControlNet becomes a Semantic-Fusion Attention (Eq. 2)::

    x_{k+1} = CA_f( CA_h(x_k, c_h), CA_l(x_k, c_l) )

two parallel cross-attention branches, fused by a third whose query comes from the high-level
branch and whose keys and values are the low-level branch's feature map, read as tokens.

The frozen SD1.5 UNet gets no low-level prompt. XPSR adds a *Conditional Attention* after each
layer of its up blocks instead: a cross-attention from the UNet's features to the ControlNet
residual of the same skip connection (official code: ``pixel_attentions``), "to fortify the fusion
of features derived from LR images".

Each attention above (``CA``) is, in the official code, a whole diffusers ``Transformer2DModel``
(GroupNorm, projection in, transformer blocks of self-attention, cross-attention and a GEGLU
feed-forward, projection out, residual). :class:`Transformer2D` is that module with the same
parameter names, so released weights load by prefix. Linear, conv and norm layers come from an
``ops`` namespace (``torch.nn`` by default) so a host can supply its own weight-casting layers, and
the attention itself is an ``attend`` callable (plain SDPA by default) so a host can run it on the
backend its user chose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32  # diffusers' norm_num_groups for SD1.5
GROUP_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms
FF_MULT = 4


@dataclass(frozen=True)
class TransformerSpec:
    """The shape of one ``Transformer2D``: what its weights need and what it attends to."""

    channels: int
    context_dim: int
    heads: int
    depth: int = 1
    linear: bool = False  # diffusers' use_linear_projection: Linear instead of 1x1 Conv for proj_in/out

    def __post_init__(self):
        if self.heads < 1 or self.channels % self.heads:
            raise ValueError(f"{self.channels} channels cannot be split into {self.heads} attention heads.")


def tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``: a feature map read as a sequence, to serve as keys and values."""
    return feature_map.flatten(2).transpose(1, 2)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, on ``(B, N, heads * d)`` sequences."""
    b, n, inner = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, inner // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, inner)


MultiHeadAttend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``(q, k, v, heads) -> out`` on ``(B, N, heads * d)`` sequences, as :func:`multi_head_attention`."""


class Attention(nn.Module):
    """diffusers' ``Attention``: bias-free Q/K/V projections, an output projection with bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, ops: ModuleType = nn,
                 attend: MultiHeadAttend = multi_head_attention, **factory):
        super().__init__()
        self.heads = heads
        self.attend = attend
        self.to_q = ops.Linear(dim, dim, bias=False, **factory)
        self.to_k = ops.Linear(context_dim, dim, bias=False, **factory)
        self.to_v = ops.Linear(context_dim, dim, bias=False, **factory)
        self.to_out = nn.ModuleList([ops.Linear(dim, dim, **factory)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = self.attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """GELU-gated linear unit, the first half of the SD feed-forward."""

    def __init__(self, dim: int, inner: int, ops: ModuleType = nn, **factory):
        super().__init__()
        self.proj = ops.Linear(dim, inner * 2, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` GEGLU, ``net.1`` dropout (identity at inference), ``net.2`` projection back."""

    def __init__(self, dim: int, ops: ModuleType = nn, **factory):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * FF_MULT, ops, **factory), nn.Identity(),
                                  ops.Linear(dim * FF_MULT, dim, **factory)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context, feed-forward; each pre-normed and residual."""

    def __init__(self, dim: int, context_dim: int, heads: int, ops: ModuleType = nn,
                 attend: MultiHeadAttend = multi_head_attention, **factory):
        super().__init__()
        self.norm1 = ops.LayerNorm(dim, eps=LAYER_NORM_EPS, **factory)
        self.attn1 = Attention(dim, dim, heads, ops, attend, **factory)
        self.norm2 = ops.LayerNorm(dim, eps=LAYER_NORM_EPS, **factory)
        self.attn2 = Attention(dim, context_dim, heads, ops, attend, **factory)
        self.norm3 = ops.LayerNorm(dim, eps=LAYER_NORM_EPS, **factory)
        self.ff = FeedForward(dim, ops, **factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = self.attn1(h, h) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    """One cross-attention "CA" of the paper: diffusers' ``Transformer2DModel`` on a feature map."""

    def __init__(self, spec: TransformerSpec, ops: ModuleType = nn, attend: MultiHeadAttend = multi_head_attention,
                 **factory):
        super().__init__()
        self.spec = spec
        c = spec.channels
        self.norm = ops.GroupNorm(GROUPS, c, eps=GROUP_NORM_EPS, affine=True, **factory)
        if spec.linear:
            self.proj_in, self.proj_out = ops.Linear(c, c, **factory), ops.Linear(c, c, **factory)
        else:
            self.proj_in = ops.Conv2d(c, c, kernel_size=1, **factory)
            self.proj_out = ops.Conv2d(c, c, kernel_size=1, **factory)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(c, spec.context_dim, spec.heads, ops, attend, **factory) for _ in range(spec.depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)
        if self.spec.linear:
            hidden = self.proj_in(tokens(hidden))
        else:
            hidden = tokens(self.proj_in(hidden))
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        if self.spec.linear:
            hidden = self.proj_out(hidden)
        hidden = hidden.transpose(1, 2).reshape(b, c, h, w)
        if not self.spec.linear:
            hidden = self.proj_out(hidden)
        return hidden + x


class SemanticFusionAttention(nn.Module):
    """Eq. 2: ``CA_f(CA_h(x, c_h), CA_l(x, c_l))``, in place of each ControlNet cross-attention.

    ``high`` (official ``attentions``), ``low`` (``attentions_lowlevel``) and ``fuse``
    (``attentions_connect``, whose context is the feature map itself: ``channels`` wide).
    """

    def __init__(self, spec: TransformerSpec, ops: ModuleType = nn, attend: MultiHeadAttend = multi_head_attention,
                 **factory):
        super().__init__()
        self.high = Transformer2D(spec, ops, attend, **factory)
        self.low = Transformer2D(spec, ops, attend, **factory)
        self.fuse = Transformer2D(fusion_spec(spec), ops, attend, **factory)

    def forward(self, x: torch.Tensor, high_level: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.high(x, high_level), tokens(self.low(x, low_level)))


def fusion_spec(spec: TransformerSpec) -> TransformerSpec:
    """``CA_f`` attends from the high-level features to the low-level ones: context = channels."""
    return TransformerSpec(spec.channels, spec.channels, spec.heads, spec.depth, spec.linear)


def conditional_attention(layer: Transformer2D, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The UNet's added Conditional Attention: its features attend to the ControlNet residual of
    the same skip connection (the residual as the UNet receives it, i.e. already scaled)."""
    return layer(features, tokens(residual))


def low_level_batch(positive: torch.Tensor, negative: torch.Tensor, passes: Sequence[int],
                    per_pass: int) -> torch.Tensor:
    """The low-level context for a model batch made of ``passes`` chunks of ``per_pass`` rows.

    Pass 0 is the positive (CFG's cond), every other pass gets ``negative``: Eq. 6 keeps ``c_l``
    in the negative pass, the official pipeline encodes a negative low-level prompt there.
    Contexts of different token counts are tiled to a common length, which leaves attention
    unchanged (every key repeated as often as every other).
    """
    chosen = [positive if p == 0 else negative for p in passes]
    length = math.lcm(*(c.shape[1] for c in chosen))
    rows = []
    for c in chosen:
        c = c.repeat(1, length // c.shape[1], 1)
        if c.shape[0] not in (1, per_pass):
            raise ValueError(f"a low-level conditioning holds {c.shape[0]} prompts for {per_pass} images: "
                             f"give one prompt, or one per image.")
        rows.append(c.expand(per_pass, -1, -1))
    return torch.cat(rows)
