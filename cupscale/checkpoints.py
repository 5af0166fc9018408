"""Reading model files safely: tensors only (``weights_only=True`` or safetensors), and errors that
tell a damaged file from one holding Python objects or one of another model, in the user's terms."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch


class CheckpointError(ValueError):
    """A model file that is unreadable, of another kind, or does not fit; the message says which and what to do."""


def is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in (".safetensors", ".sft")


def load_torch_file(path: Path):
    """``torch.load`` with ``weights_only=True``, memory-mapped where the format allows (XPSR's UNet
    file is 3.4 GB and only its Conditional Attention is kept)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not the zip format mmap needs: load it plainly, for the true error if any
        return torch.load(str(path), map_location="cpu", weights_only=True)


def refused_global(error: pickle.UnpicklingError) -> bool:
    """torch's weights-only unpickler met a class or function (code it would have run), not damaged data; its
    wording differs between versions ("Unsupported global: ...", "Trying to load unsupported GLOBAL ...")."""
    return "unsupported global" in str(error).lower()


def unreadable(error: Exception, path: Path, describe_as: str = "") -> CheckpointError:
    """Why a file could not be read: unsafe objects, or damage. ``describe_as`` names the input."""
    prefix = f"{describe_as}: " if describe_as else ""
    if isinstance(error, pickle.UnpicklingError) and refused_global(error):
        return CheckpointError(f"{prefix}{path.name} holds Python objects beyond tensors, which are not loaded "
                               f"for safety (weights_only=True). Use a .safetensors file, or re-save the state dict "
                               f"with torch.save.")
    detail = "invalid pickle data" if isinstance(error, pickle.UnpicklingError) else first_line(error)
    return CheckpointError(f"{prefix}{path.name} could not be read ({type(error).__name__}: {detail}). The file "
                           f"is damaged or incomplete (an interrupted download?) or not a safetensors/torch file: "
                           f"download or copy it again.")


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def describe_state_dict(keys: Iterable) -> str:
    """What a state dict looks like, from its names alone: for messages about a file of the wrong kind."""
    keys = [k for k in keys if isinstance(k, str)]
    has = lambda *parts: any(all(p in k for p in parts) for k in keys)  # noqa: E731
    base = "SDXL" if has("add_embedding.") or has("label_emb.") or has("conditioner.embedders.") else "SD"
    kinds = (
        (has("attentions_lowlevel.") and has("controlnet_cond_embedding."),
         "XPSR's ControlNet (Semantic-Fusion Attention)"),
        (has("pixel_attentions."), "XPSR's UNet (with its Conditional Attention)"),
        (has("inr.imnet.layers.0.weight"), "an implicit latent decoder (arbitrary-scale latent diffusion)"),
        (has("imnet.layers."), "the weights of a LIIF pixel upscaler (imnet.layers.*)"),
        (has("controlnet_cond_embedding.") or has("input_hint_block."),
         f"a standard {base} ControlNet (no Semantic-Fusion Attention)"),
        (has("lora_") or has(".lora."), "a LoRA"),
        (has("output_blocks.") or has("input_blocks.") or has("model.diffusion_model."),
         f"an {base} model checkpoint" + ("" if base == "SDXL" else " (UNet in ldm layout)")),
        (has("diffusion_model."), "a diffusion model checkpoint"),
        (has("decoder.conv_out.") or has("post_quant_conv.") or has("decoder.up.", "upsample.")
         or has("decoder.") and has("encoder."), "a plain VAE"),
        (has("up_blocks.") and has("conv_out."), f"a plain {base} UNet in diffusers layout (no Conditional Attention)"),
        (has("text_model."), "a text encoder"),
        (has("conv_first.") or has("RRDB_trunk.") or has("model.0.weight") or has("body.", ".rdb"),
         "an ESRGAN-style upscale model"),
    )
    return next((kind for found, kind in kinds if found),
                f"an unknown model ({len(keys)} tensors, first keys: {', '.join(keys[:3]) or 'none'})")


@dataclass(frozen=True)
class KeyMismatch:
    """How a file's tensors differ from the parameters a model expects, in the names the caller compared."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]  # "key (found) (expected (shape))"

    def problems(self) -> list[tuple[str, list[str]]]:
        """(what, keys) for each kind of mismatch found, in the order missing, unexpected, wrong shape."""
        kinds = (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.wrong_shape))
        return [(what, keys) for what, keys in kinds if keys]


def key_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor]) -> KeyMismatch:
    """Which expected keys ``found`` lacks, which it has beyond them, and which have another shape."""
    return KeyMismatch(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        wrong_shape=[f"{k} {tuple(found[k].shape)} (expected {tuple(shape)})" for k, shape in expected.items()
                     if k in found and tuple(found[k].shape) != tuple(shape)])


def summarise(keys: list[str], shown: int = 4) -> str:
    """The first ``shown`` keys and how many more: a message stays readable for a file of another model."""
    more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
