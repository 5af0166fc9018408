"""XPSR's released weights (qyp2000/XPSR) in the pack's layout, with clear refusals.

The release is a diffusers ``save_pretrained`` checkpoint folder with two parts:

- ``controlnet/`` (``models/xpsr/controlnet.py``): an SD1.5 ControlNet whose every cross-attention
  is a Semantic-Fusion Attention: ``attentions.N`` (high-level), ``attentions_lowlevel.N`` and
  ``attentions_connect.N`` (Eq. 2), plus heads used only by the Degradation-Free Constraint loss
  during training (Eq. 3: ``controlnet_cond_embedding.to_rgbs``, ``conv_degradation``,
  ``conv_degradation_mid``), which inference never runs.
- ``unet/``: the whole SD1.5 UNet, frozen during training, plus the added Conditional Attention
  ``up_blocks.U.pixel_attentions.J`` after every layer of the up blocks. Only those are read; the
  user's SD1.5 checkpoint supplies the rest.

Each part is ``diffusion_pytorch_model.safetensors`` (or ``.bin``, read with ``weights_only=True``)
beside a ``config.json``. The pack's layout is ComfyUI's ControlNet (``input_blocks``,
``zero_convs``, ``input_hint_block``, ...) with :class:`cupscale.xpsr.sfa.SemanticFusionAttention` at
``input_blocks.N.1`` / ``middle_block.1`` (``high``, ``low``, ``fuse``) and the Conditional
Attention per UNet output block at ``conditional_attention.I``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import safetensors
import torch

from ..checkpoints import (CheckpointError, describe_state_dict, is_safetensors, key_mismatch, load_torch_file,
                           summarise, unreadable)
from .sfa import TransformerSpec

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
DEFAULT_HEADS = 8  # SD1.5's diffusers config: attention_head_dim 8, read as the number of heads
SFA_BRANCHES = {"attentions": "high", "attentions_lowlevel": "low", "attentions_connect": "fuse"}
TRAINING_ONLY = ("controlnet_cond_embedding.to_rgbs.", "conv_degradation.", "conv_degradation_mid.")
CONDITIONAL_ATTENTION = re.compile(r"up_blocks\.(\d+)\.pixel_attentions\.(\d+)\.")
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
RELEASE_HINT = ("XPSR's release (qyp2000/XPSR README, 'pretrained XPSR model') is a checkpoint folder with "
                "controlnet/ and unet/ subfolders; copy it into models/xpsr.")


@dataclass(frozen=True)
class XPSRArchitecture:
    """What the weights imply: the SD1.5-shaped encoder, its attentions and the UNet's additions."""

    in_channels: int
    model_channels: int
    hint_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # per level; 0 where the level has no attention
    transformer_depth_middle: int
    context_dim: int
    heads: tuple[int, ...]  # per level (the middle block uses the last level's)
    use_linear: bool
    conditional_attention_heads: tuple[int, ...]  # per level, from the UNet's config
    conditional_attention_depth: int

    def level_channels(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]

    def sfa_spec(self, level: int) -> TransformerSpec:
        """Eq. 2's branches at ``level`` (``len(channel_mult)`` for the middle block)."""
        last = len(self.channel_mult) - 1
        depth = self.transformer_depth_middle if level > last else self.transformer_depth[level]
        level = min(level, last)
        return TransformerSpec(self.level_channels(level), self.context_dim, self.heads[level], depth, self.use_linear)

    def input_blocks(self) -> list[tuple[str, int, int]]:
        """ComfyUI's ``input_blocks`` after ``conv_in``, in order: ``("res", level, j)`` for the j-th
        ResBlock of a level (followed by its attention where the level has one), ``("down", level, 0)``."""
        out = []
        for level, blocks in enumerate(self.num_res_blocks):
            out += [("res", level, j) for j in range(blocks)]
            if level < len(self.num_res_blocks) - 1:
                out.append(("down", level, 0))
        return out

    def skip_channels(self) -> list[int]:
        """Channels of each ControlNet residual, in input-block order (ComfyUI's ``zero_convs``)."""
        return [self.model_channels] + [self.level_channels(level) for _, level, _ in self.input_blocks()]

    def conditional_attention_specs(self) -> list[TransformerSpec]:
        """One per UNet output block: its features attend to the residual of the skip it consumes."""
        skips = self.skip_channels()
        specs = []
        for level in reversed(range(len(self.channel_mult))):
            for _ in range(self.num_res_blocks[level] + 1):
                specs.append(TransformerSpec(self.level_channels(level), skips[len(skips) - 1 - len(specs)],
                                             self.conditional_attention_heads[level],
                                             self.conditional_attention_depth, self.use_linear))
        return specs


@dataclass
class XPSRWeights:
    """The two parts read and renamed to the pack's layout, and what was left out on purpose."""

    architecture: XPSRArchitecture
    state_dict: dict[str, torch.Tensor]
    sources: tuple[Path, Path]
    training_only: list[str] = field(default_factory=list)


def weight_file(path: str | Path, part: str) -> Path:
    """A weight file, or the diffusers folder holding it (the part's folder or the release folder)."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path, path / part):
        for name in WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(f"{path} holds no {part} weights (looked for {WEIGHT_NAMES[0]} or .bin in it and in "
                          f"{part}/). {RELEASE_HINT}")


def read_config(weights: Path) -> dict:
    """The ``config.json`` beside a diffusers weight file; ``{}`` for a single file."""
    config = weights.parent / "config.json"
    if not config.is_file():
        return {}
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config} is not readable JSON ({e}); restore it from the release or delete it "
                              f"to use SD1.5's defaults.") from e


def read_tensors(path: Path, wanted: Callable[[str], bool], describe_as: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names are ``wanted``; a safetensors file is read selectively.

    Before reading, the whole key list is checked with :func:`check_kind`, so a wrong file fails
    fast with what it is. ``describe_as`` names the input for the messages.
    """
    try:
        if is_safetensors(path):
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                check_kind(keys, path, describe_as)
                return {k: f.get_tensor(k) for k in keys if wanted(k)}
        sd = load_torch_file(path)
    except CheckpointError:
        raise
    except Exception as e:  # torch and safetensors raise many types for a damaged file
        raise unreadable(e, path, describe_as) from e
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"{describe_as}: {path.name} is not a state dict of named tensors (it holds a "
                              f"{type(sd).__name__}); XPSR's parts are diffusers weight files.")
    check_kind(list(sd), path, describe_as)
    return {k: v for k, v in sd.items() if wanted(k)}


def check_kind(keys: list[str], path: Path, describe_as: str) -> None:
    """Refuse a file whose names show it is not the part the input expects."""
    kind = describe_state_dict(keys)
    if describe_as == "controlnet" and not kind.startswith("XPSR's ControlNet"):
        advice = ("load it with ComfyUI's 'Load ControlNet Model' instead" if "standard" in kind
                  else "XPSR builds on SD1.5" if "SDXL" in kind else "pick the release's controlnet/ weights")
        raise CheckpointError(f"controlnet: {path.name} is {kind}, not XPSR's ControlNet: that one has "
                              f"Semantic-Fusion Attention (down_blocks.*.attentions_lowlevel / attentions_connect). "
                              f"For this file, {advice}. {RELEASE_HINT}")
    if describe_as == "unet" and not kind.startswith("XPSR's UNet"):
        raise CheckpointError(f"unet: {path.name} is {kind}, not XPSR's UNet: the unet input reads the Conditional "
                              f"Attention XPSR added to the UNet's up blocks (up_blocks.*.pixel_attentions.*), "
                              f"found in the release's unet/ weights. {RELEASE_HINT}")


def heads_per_level(config: dict, levels: int) -> tuple[int, ...]:
    """diffusers reads ``attention_head_dim`` as the number of heads when ``num_attention_heads`` is
    unset (its documented naming slip, which SD1.5's config relies on); an int or one per level."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim") or DEFAULT_HEADS
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (int(heads),) * levels
    if len(heads) != levels:
        raise CheckpointError(f"config.json gives {len(heads)} attention head counts for {levels} levels.")
    return heads


def indices(keys: Iterable[str], prefix: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def depth(keys: Iterable[str], prefix: str) -> int:
    return len(indices(keys, prefix + "transformer_blocks."))


def architecture(controlnet: Mapping[str, torch.Tensor], controlnet_config: dict,
                 conditional: Mapping[str, torch.Tensor], unet_config: dict) -> XPSRArchitecture:
    """The architecture the weights imply: channels and levels from shapes, heads from the configs."""
    keys = list(controlnet)
    try:
        model_channels, in_channels = controlnet["conv_in.weight"].shape[:2]
        hint_channels = controlnet["controlnet_cond_embedding.conv_in.weight"].shape[1]
        levels = indices(keys, "down_blocks.")
        channels = [controlnet[f"down_blocks.{lv}.resnets.0.conv2.weight"].shape[0] for lv in levels]
        attention = [f"down_blocks.{lv}.attentions.0." for lv in levels]
        proj_in = next(controlnet[k] for k in keys if k.endswith("attentions.0.proj_in.weight"))
        context_dim = next(controlnet[k] for k in keys if k.endswith("attn2.to_k.weight")
                           and "attentions_connect" not in k).shape[1]
    except (KeyError, StopIteration) as e:
        raise CheckpointError(f"controlnet: the weights lack {e} that every XPSR ControlNet has: the file is "
                              f"incomplete or of another model. {RELEASE_HINT}") from e
    if levels != list(range(len(levels))) or any(c % model_channels for c in channels):
        raise CheckpointError(f"controlnet: down blocks {levels} with {channels} channels do not form an SD-style "
                              f"encoder on {model_channels} base channels.")
    ca_keys = list(conditional)
    ca_depths = {depth(ca_keys, m.group(0)) for k in ca_keys if (m := CONDITIONAL_ATTENTION.match(k))}
    return XPSRArchitecture(
        in_channels=in_channels, model_channels=model_channels, hint_channels=hint_channels,
        channel_mult=tuple(c // model_channels for c in channels),
        num_res_blocks=tuple(len(indices(keys, f"down_blocks.{lv}.resnets.")) for lv in levels),
        transformer_depth=tuple(depth(keys, prefix) for prefix in attention),
        transformer_depth_middle=depth(keys, "mid_block.attentions.0."),
        context_dim=context_dim, heads=heads_per_level(controlnet_config, len(levels)),
        use_linear=proj_in.ndim == 2,
        conditional_attention_heads=heads_per_level(unet_config, len(levels)),
        conditional_attention_depth=max(ca_depths, default=1))


def controlnet_renames(arch: XPSRArchitecture) -> dict[str, str]:
    """diffusers module prefix -> the pack's (ComfyUI's ControlNet with SFA modules)."""
    names = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_mid_block": "middle_block_out.0"}
    hint_blocks = 6  # ComfyUI's hint block: conv_in, 6 convs (16-32-96-256), conv_out, SiLU between
    for j in range(hint_blocks):
        names[f"controlnet_cond_embedding.blocks.{j}"] = f"input_hint_block.{2 * j + 2}"
    names["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * hint_blocks + 2}"

    def resnet(src: str, dst: str) -> None:
        names.update({f"{src}.{a}": f"{dst}.{b}" for a, b in RESNET.items()})

    def sfa(src: str, index: int, dst: str) -> None:
        names.update({f"{src}.{theirs}.{index}": f"{dst}.{ours}" for theirs, ours in SFA_BRANCHES.items()})

    blocks = arch.input_blocks()
    for block, (kind, level, j) in enumerate(blocks, start=1):
        if kind == "res":
            resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{block}.0")
            sfa(f"down_blocks.{level}", j, f"input_blocks.{block}.1")
        else:
            names[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
    for k in range(len(blocks) + 1):
        names[f"controlnet_down_blocks.{k}"] = f"zero_convs.{k}.0"
    resnet("mid_block.resnets.0", "middle_block.0")
    sfa("mid_block", 0, "middle_block.1")
    resnet("mid_block.resnets.1", "middle_block.2")
    return names


def conditional_attention_renames(arch: XPSRArchitecture) -> dict[str, str]:
    """``up_blocks.U.pixel_attentions.J`` -> ``conditional_attention.I``, I the UNet output block."""
    names, block = {}, 0
    for up, level in enumerate(reversed(range(len(arch.channel_mult)))):
        for j in range(arch.num_res_blocks[level] + 1):
            names[f"up_blocks.{up}.pixel_attentions.{j}"] = f"conditional_attention.{block}"
            block += 1
    return names


def rename(sd: Mapping[str, torch.Tensor], renames: Mapping[str, str]) -> tuple[dict, list[str]]:
    """``sd`` with every key under a renamed module prefix moved; the keys no prefix covers."""
    out, unplaced = {}, []
    for key, value in sd.items():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in renames:
                out[renames[prefix] + key[len(prefix):]] = value
                break
        else:
            unplaced.append(key)
    return out, unplaced


def load_xpsr(controlnet: str | Path, unet: str | Path) -> XPSRWeights:
    """Read both parts (files or diffusers folders) and rename them to the pack's layout.

    Raises :class:`CheckpointError` for unreadable or wrong files and for weights no module of
    the layout takes; whether every module gets its weights, with the right shapes, is
    :func:`check_layout`'s job once the model is built.
    """
    control_path, unet_path = weight_file(controlnet, "controlnet"), weight_file(unet, "unet")
    control_sd = read_tensors(control_path, lambda k: True, "controlnet")
    conditional = read_tensors(unet_path, lambda k: CONDITIONAL_ATTENTION.match(k) is not None, "unet")
    arch = architecture(control_sd, read_config(control_path), conditional, read_config(unet_path))
    training_only = [k for k in control_sd if k.startswith(TRAINING_ONLY)]
    kept = {k: v for k, v in control_sd.items() if not k.startswith(TRAINING_ONLY)}
    state_dict, unplaced = rename(kept, controlnet_renames(arch))
    conditional_sd, unplaced_ca = rename(conditional, conditional_attention_renames(arch))
    unplaced += unplaced_ca
    if unplaced:
        raise CheckpointError(f"{len(unplaced)} weights have no place in XPSR's ControlNet for SD1.5 "
                              f"({summarise(unplaced)}): the checkpoint was trained with options this loader does "
                              f"not support (e.g. use_rrdb, an added text embedding) or is of another model.")
    state_dict.update(conditional_sd)
    return XPSRWeights(arch, state_dict, (control_path, unet_path), training_only)


def check_layout(expected: Mapping[str, tuple[int, ...]], weights: XPSRWeights) -> None:
    """Every parameter of the built model gets a weight of its shape, and every weight has a place."""
    problems = key_mismatch(expected, weights.state_dict).problems()
    if problems:
        listed = "; ".join(f"{what} ({len(keys)}): {summarise(keys)}" for what, keys in problems)
        files = " and ".join(p.name for p in weights.sources)
        raise CheckpointError(f"{files} do not fit together as XPSR's ControlNet and Conditional Attention: "
                              f"{listed}. Use the controlnet/ and unet/ weights of one XPSR "
                              f"checkpoint folder, each with its config.json beside it.")

