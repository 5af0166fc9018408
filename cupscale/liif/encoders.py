"""Feature extractors that feed a LIIF head, with the module names of their official checkpoints.

- EDSR (Lim et al. 2017) and RDN (Zhang et al. 2018) without their up-sampling tail: LIIF's
  encoders E_phi (LIIF Sec. 4.1, "EDSR-baseline" and "RDN", `no_upsampling: true`).
- The SD-style VAE decoder trunk without up-sampling, norm_out or conv_out: the arbitrary-scale LDM's auto-decoder
  D_phi ("the symmetric decoder w/o up-scaling", Fig. 3), run at the latent's own resolution.

Each local extractor reports ``receptive_radius``: how many codes away a 3x3 convolution chain can
see, which is the margin a tile needs to be computed exactly. The trunk normalises (GroupNorm) and
attends over the whole map, so it has none.

Layers come from ``operations`` (``torch.nn`` by default): ComfyUI passes its own ``comfy.ops`` classes, which
skip the random initialisation a checkpoint overwrites anyway and leave casting to the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(c_in: int, c_out: int, ops=nn) -> nn.Conv2d:
    return ops.Conv2d(c_in, c_out, 3, padding=1)


class EDSRResBlock(nn.Module):
    """conv-ReLU-conv with a scaled residual (EDSR Sec. 3.1: no batch norm)."""

    def __init__(self, feats: int, res_scale: float, ops=nn):
        super().__init__()
        self.body = nn.Sequential(conv3x3(feats, feats, ops), nn.ReLU(True), conv3x3(feats, feats, ops))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR without the tail: head conv, residual blocks, a conv, and a long skip connection."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0, in_channels: int = 3,
                 operations=nn):
        super().__init__()
        self.head = nn.Sequential(conv3x3(in_channels, n_feats, operations))
        self.body = nn.Sequential(*[EDSRResBlock(n_feats, res_scale, operations) for _ in range(n_resblocks)],
                                  conv3x3(n_feats, n_feats, operations))
        self.out_dim = n_feats
        self.receptive_radius = 2 * n_resblocks + 2

    def forward(self, x):
        x = self.head(x)
        return x + self.body(x)


class RDBConv(nn.Module):
    """One densely connected layer: its output is concatenated to its input."""

    def __init__(self, c_in: int, growth: int, ops=nn):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(c_in, growth, ops), nn.ReLU())

    def forward(self, x):
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    """Residual dense block: dense layers, a 1x1 local feature fusion (LFF) and a residual."""

    def __init__(self, g0: int, growth: int, layers: int, ops=nn):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + i * growth, growth, ops) for i in range(layers)])
        self.LFF = ops.Conv2d(g0 + layers * growth, g0, 1)

    def forward(self, x):
        return x + self.LFF(self.convs(x))


RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}  # blocks D, layers per block C, growth G (RDN Sec. 3)


class RDN(nn.Module):
    """RDN without the up-sampling net: shallow features, D dense blocks, global feature fusion."""

    def __init__(self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B", in_channels: int = 3, operations=nn):
        super().__init__()
        if RDNkSize != 3:
            raise ValueError(f"RDNkSize = {RDNkSize}: only the released kernel size 3 is supported")
        if RDNconfig not in RDN_CONFIGS:
            raise ValueError(f"RDNconfig = {RDNconfig!r}: expected one of {sorted(RDN_CONFIGS)}")
        blocks, layers, growth = RDN_CONFIGS[RDNconfig]
        self.SFENet1 = conv3x3(in_channels, G0, operations)
        self.SFENet2 = conv3x3(G0, G0, operations)
        self.RDBs = nn.ModuleList([RDB(G0, growth, layers, operations) for _ in range(blocks)])
        self.GFF = nn.Sequential(operations.Conv2d(blocks * G0, G0, 1), conv3x3(G0, G0, operations))
        self.out_dim = G0
        self.receptive_radius = 2 + blocks * layers + 1

    def forward(self, x):
        shallow = self.SFENet1(x)
        x = self.SFENet2(shallow)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + shallow


def group_norm(channels: int, ops=nn) -> nn.GroupNorm:
    return ops.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """The LDM autoencoder's residual block (no time embedding): norm-swish-conv twice."""

    def __init__(self, c_in: int, c_out: int, ops=nn):
        super().__init__()
        self.norm1 = group_norm(c_in, ops)
        self.conv1 = conv3x3(c_in, c_out, ops)
        self.norm2 = group_norm(c_out, ops)
        self.conv2 = conv3x3(c_out, c_out, ops)
        self.nin_shortcut = ops.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of the map, with a residual."""

    def __init__(self, channels: int, ops=nn):
        super().__init__()
        self.norm = group_norm(channels, ops)
        self.q, self.k, self.v, self.proj_out = (ops.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


@dataclass(frozen=True)
class TrunkConfig:
    """Shape of a decoder trunk: ``level_channels[i]`` = ch * ch_mult[i] of the LDM ddconfig."""

    z_channels: int
    level_channels: tuple[int, ...]
    blocks_per_level: int  # num_res_blocks + 1, as in the LDM decoder
    attn_levels: tuple[bool, ...] = field(default=())
    mid_attention: bool = True

    @property
    def out_dim(self) -> int:
        return self.level_channels[0]


class DecoderTrunk(nn.Module):
    """The LDM decoder with its up-sampling layers, norm_out and conv_out removed (arbitrary-scale LDM, Fig. 3):
    conv_in, the middle block, then every level's residual blocks from the deepest level up, all at
    the latent's resolution. Module names follow the LDM decoder, so a VAE's decoder weights fit.
    """

    def __init__(self, config: TrunkConfig, operations=nn):
        super().__init__()
        levels = len(config.level_channels)
        attn_levels = config.attn_levels or (False,) * levels
        deepest = config.level_channels[-1]
        self.conv_in = conv3x3(config.z_channels, deepest, operations)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(deepest, deepest, operations)
        self.mid.attn_1 = AttnBlock(deepest, operations) if config.mid_attention else nn.Identity()
        self.mid.block_2 = ResnetBlock(deepest, deepest, operations)
        self.up = nn.ModuleList()
        c_in = deepest
        for i in reversed(range(levels)):
            c_out = config.level_channels[i]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                level.block.append(ResnetBlock(c_in, c_out, operations))
                if attn_levels[i]:
                    level.attn.append(AttnBlock(c_out, operations))
                c_in = c_out
            self.up.insert(0, level)
        self.config = config
        self.out_dim = config.out_dim
        self.receptive_radius = None

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
        return h


def trunk_config_from_state_dict(sd: dict[str, torch.Tensor]) -> TrunkConfig:
    """Read a trunk's shape from its keys (an LDM ``decoder.*`` state dict without the prefix).

    A plain VAE decoder's state dict works too: its up-sampling and output layers are not read.
    """
    if "conv_in.weight" not in sd:
        raise KeyError("conv_in.weight")
    levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("up."))
    blocks = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("up.0.block."))
    return TrunkConfig(
        z_channels=sd["conv_in.weight"].shape[1],
        level_channels=tuple(sd[f"up.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)),
        blocks_per_level=blocks,
        attn_levels=tuple(f"up.{i}.attn.0.q.weight" in sd for i in range(levels)),
        mid_attention="mid.attn_1.q.weight" in sd,
    )
