"""Tiny seeded checkpoints in the official layouts, with key names written out here from the
official code (yinboc/liif models/edsr.py, rdn.py, mlp.py, train_liif.py; zhenshij/arbitrary-scale-
diffusion ldm/models/firststagemodel.py), not taken from the pack, so that loading them tests the
pack's key mapping."""
from __future__ import annotations

import math

import torch


class Weights:
    """Seeded parameters named as in a state dict: weights ~ N(0, 1/fan_in), small biases."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def conv(self, name: str, c_out: int, c_in: int, k: int = 3) -> None:
        self.sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=self.g) / math.sqrt(c_in * k * k)
        self.sd[f"{name}.bias"] = torch.randn(c_out, generator=self.g) * 0.1

    def linear(self, name: str, c_out: int, c_in: int) -> None:
        self.sd[f"{name}.weight"] = torch.randn(c_out, c_in, generator=self.g) / math.sqrt(c_in)
        self.sd[f"{name}.bias"] = torch.randn(c_out, generator=self.g) * 0.1

    def norm(self, name: str, c: int) -> None:
        self.sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=self.g)
        self.sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=self.g)

    def mlp(self, name: str, dims: list[int]) -> None:
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            self.linear(f"{name}.layers.{2 * i}", b, a)


def liif_file(encoder: str, encoder_args: dict, sd: dict, hidden: list[int]) -> dict:
    """What train_liif.py saves: the model spec with its state dict, the optimiser, the epoch."""
    spec = {"name": "liif", "args": {"encoder_spec": {"name": encoder, "args": {**encoder_args, "no_upsampling": True}},
                                     "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": hidden}}},
            "sd": sd}
    optimizer = {"name": "adam", "args": {"lr": 1e-4},
                 "sd": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}}
    return {"model": spec, "optimizer": optimizer, "epoch": 1000}


def edsr_liif(seed: int = 0, feats: int = 8, blocks: int = 2, hidden: tuple[int, ...] = (16, 16)) -> dict:
    """EDSR-baseline-LIIF in miniature (the release: 16 blocks, 64 features, MLP [256] * 4)."""
    w = Weights(seed)
    w.conv("encoder.sub_mean", 3, 3, 1)  # MeanShift layers: saved, never used by LIIF's EDSR
    w.conv("encoder.add_mean", 3, 3, 1)
    w.conv("encoder.head.0", feats, 3)
    for b in range(blocks):
        w.conv(f"encoder.body.{b}.body.0", feats, feats)
        w.conv(f"encoder.body.{b}.body.2", feats, feats)
    w.conv(f"encoder.body.{blocks}", feats, feats)
    w.mlp("imnet", [9 * feats + 4, *hidden, 3])
    return liif_file("edsr-baseline", {"n_resblocks": blocks, "n_feats": feats}, w.sd, list(hidden))


def rdn_liif(seed: int = 0, g0: int = 8, hidden: tuple[int, ...] = (16,)) -> dict:
    """RDN-LIIF with config A (20 blocks of 6 layers, growth 32) and few features."""
    w = Weights(seed)
    blocks, layers, growth = 20, 6, 32
    w.conv("encoder.SFENet1", g0, 3)
    w.conv("encoder.SFENet2", g0, g0)
    for b in range(blocks):
        for c in range(layers):
            w.conv(f"encoder.RDBs.{b}.convs.{c}.conv.0", growth, g0 + c * growth)
        w.conv(f"encoder.RDBs.{b}.LFF", g0, g0 + layers * growth, 1)
    w.conv("encoder.GFF.0", g0, blocks * g0, 1)
    w.conv("encoder.GFF.1", g0, g0)
    w.mlp("imnet", [9 * g0 + 4, *hidden, 3])
    return liif_file("rdn", {"G0": g0, "RDNconfig": "A"}, w.sd, list(hidden))


def resnet_block(w: Weights, name: str, c_in: int, c_out: int) -> None:
    w.norm(f"{name}.norm1", c_in)
    w.conv(f"{name}.conv1", c_out, c_in)
    w.norm(f"{name}.norm2", c_out)
    w.conv(f"{name}.conv2", c_out, c_out)
    if c_in != c_out:
        w.conv(f"{name}.nin_shortcut", c_out, c_in, 1)


def attention(w: Weights, name: str, c: int) -> None:
    w.norm(f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
        w.conv(f"{name}.{part}", c, c, 1)


def first_stage(seed: int = 0, z: int = 4, ch: int = 32, mult: tuple[int, ...] = (1, 2), res_blocks: int = 1,
                hidden: tuple[int, ...] = (16, 16)) -> dict:
    """A FirstStageModel's Lightning checkpoint: encoder (Encoder + 1x1 conv) and IND (decoder =
    Sequential(1x1 conv, Decoder without up-sampling), inr = LIIF without unfolding)."""
    w = Weights(seed)
    w.conv("encoder.0.conv_in", ch, 3)  # a stand-in for the frozen encoder; the decoder ignores it
    w.conv("encoder.1", 2 * z, 2 * z, 1)
    w.conv("decoder.decoder.0", z, z, 1)
    trunk = "decoder.decoder.1"
    deepest = ch * mult[-1]
    w.conv(f"{trunk}.conv_in", deepest, z)
    resnet_block(w, f"{trunk}.mid.block_1", deepest, deepest)
    attention(w, f"{trunk}.mid.attn_1", deepest)
    resnet_block(w, f"{trunk}.mid.block_2", deepest, deepest)
    c_in = deepest
    for level in reversed(range(len(mult))):
        for b in range(res_blocks + 1):
            resnet_block(w, f"{trunk}.up.{level}.block.{b}", c_in, ch * mult[level])
            c_in = ch * mult[level]
    w.mlp("decoder.inr.imnet", [ch * mult[0] + 4, *hidden, 3])
    return {"state_dict": w.sd, "epoch": 3, "global_step": 1000}
