"""XPSR's released files at the tiny SD1.5 model's channel counts, in the official diffusers layout
(qyp2000/XPSR models/xpsr/controlnet.py, unet_2d_blocks.py), written out key by key for the tests."""
from __future__ import annotations

import json
import math

import safetensors.torch
import torch

CONTEXT = 64  # the tiny CLIP's width
HEADS = 2
TEMB = 128  # 4 x the tiny UNet's 32 base channels


# -- the official layout, written out ------------------------------------------------------------

def transformer(prefix: str, c: int, ctx: int, depth: int = 1) -> dict:
    """diffusers Transformer2DModel (continuous input, 1x1 conv projections, GEGLU feed-forward)."""
    s = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,),
         f"{prefix}.proj_in.weight": (c, c, 1, 1), f"{prefix}.proj_in.bias": (c,),
         f"{prefix}.proj_out.weight": (c, c, 1, 1), f"{prefix}.proj_out.bias": (c,)}
    for d in range(depth):
        b = f"{prefix}.transformer_blocks.{d}"
        for n in ("norm1", "norm2", "norm3"):
            s.update({f"{b}.{n}.weight": (c,), f"{b}.{n}.bias": (c,)})
        for attn, kv in (("attn1", c), ("attn2", ctx)):
            s.update({f"{b}.{attn}.to_q.weight": (c, c), f"{b}.{attn}.to_k.weight": (c, kv),
                      f"{b}.{attn}.to_v.weight": (c, kv), f"{b}.{attn}.to_out.0.weight": (c, c),
                      f"{b}.{attn}.to_out.0.bias": (c,)})
        s.update({f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
                  f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,)})
    return s


def resnet(prefix: str, cin: int, cout: int) -> dict:
    s = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
         f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
         f"{prefix}.time_emb_proj.weight": (cout, TEMB), f"{prefix}.time_emb_proj.bias": (cout,),
         f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
         f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        s.update({f"{prefix}.conv_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.conv_shortcut.bias": (cout,)})
    return s


def conv(prefix: str, cout: int, cin: int, k: int = 3) -> dict:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def sfa(prefix: str, index: int, c: int) -> dict:
    return {**transformer(f"{prefix}.attentions.{index}", c, CONTEXT),
            **transformer(f"{prefix}.attentions_lowlevel.{index}", c, CONTEXT),
            **transformer(f"{prefix}.attentions_connect.{index}", c, c)}


def controlnet_shapes(sfa_attention: bool = True) -> dict:
    """XPSR's ControlNetModel for the tiny UNet: DownBlock2D (32) then CrossAttnDownBlock2D (64)."""
    s = {**conv("conv_in", 32, 4),
         "time_embedding.linear_1.weight": (TEMB, 32), "time_embedding.linear_1.bias": (TEMB,),
         "time_embedding.linear_2.weight": (TEMB, TEMB), "time_embedding.linear_2.bias": (TEMB,),
         **conv("controlnet_cond_embedding.conv_in", 16, 3), **conv("controlnet_cond_embedding.conv_out", 32, 256)}
    hint = [16, 32, 96, 256]
    for i in range(3):
        s.update(conv(f"controlnet_cond_embedding.blocks.{2 * i}", hint[i], hint[i]))
        s.update(conv(f"controlnet_cond_embedding.blocks.{2 * i + 1}", hint[i + 1], hint[i]))
        s.update(conv(f"controlnet_cond_embedding.to_rgbs.{i}", 3, hint[i + 1]))
    s.update(resnet("down_blocks.0.resnets.0", 32, 32))
    s.update(conv("down_blocks.0.downsamplers.0.conv", 32, 32))
    s.update(resnet("down_blocks.1.resnets.0", 32, 64))
    s.update(resnet("mid_block.resnets.0", 64, 64))
    s.update(resnet("mid_block.resnets.1", 64, 64))
    if sfa_attention:
        s.update(sfa("down_blocks.1", 0, 64))
        s.update(sfa("mid_block", 0, 64))
    else:
        s.update(transformer("down_blocks.1.attentions.0", 64, CONTEXT))
        s.update(transformer("mid_block.attentions.0", 64, CONTEXT))
    for k, c in enumerate([32, 32, 32, 64]):
        s.update(conv(f"controlnet_down_blocks.{k}", c, c, 1))
        if sfa_attention:
            s.update(conv(f"conv_degradation.{k}.0", 4, c))
    s.update(conv("controlnet_mid_block", 64, 64, 1))
    if sfa_attention:
        s.update(conv("conv_degradation_mid.0", 4, 64))
    return s


def unet_shapes() -> dict:
    """XPSR's UNet: the frozen SD UNet (a few of its keys) plus pixel_attentions after every up layer."""
    s = {**conv("conv_in", 32, 4), **conv("conv_out", 4, 32), **resnet("up_blocks.0.resnets.0", 128, 64),
         **transformer("up_blocks.0.attentions.0", 64, CONTEXT)}
    # up_blocks.0 is CrossAttnUpBlock2D (64 ch): its layers' skips carry 64 then 32 channels.
    s.update(transformer("up_blocks.0.pixel_attentions.0", 64, 64))
    s.update(transformer("up_blocks.0.pixel_attentions.1", 64, 32))
    s.update(transformer("up_blocks.1.pixel_attentions.0", 32, 32))
    s.update(transformer("up_blocks.1.pixel_attentions.1", 32, 32))
    return s


def seeded(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), biases small, norms near 1: every part acts, nothing explodes."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        if len(shape) == 1:
            is_norm_weight = ".norm" in name and name.endswith("weight")
            out[name] = 1 + 0.1 * noise if is_norm_weight else 0.05 * noise
        else:
            out[name] = noise / math.sqrt(math.prod(shape[1:]))
    return out


CONTROLNET = seeded(controlnet_shapes(), 11)
UNET = seeded(unet_shapes(), 12)


def save(sd: dict, path, torch_format: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        torch.save(sd, path)
    else:
        safetensors.torch.save_file(sd, str(path))


def release(root, name: str, suffix: str) -> None:
    """A checkpoint folder as XPSR's save_pretrained writes it: controlnet/ and unet/ with configs."""
    for part, sd, cls in (("controlnet", CONTROLNET, "ControlNetModel"), ("unet", UNET, "UNet2DConditionModel")):
        folder = root / name / part
        save(sd, folder / f"diffusion_pytorch_model.{suffix}", torch_format=suffix == "bin")
        (folder / "config.json").write_text(json.dumps({"_class_name": cls, "attention_head_dim": HEADS,
                                                        "block_out_channels": [32, 64], "layers_per_block": 1}))
