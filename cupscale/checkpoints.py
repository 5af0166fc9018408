"""Reading model files safely: tensors only (``weights_only=True`` or safetensors), and errors that
tell a damaged file from one holding Python objects, in the user's terms."""
from __future__ import annotations

import pickle
from pathlib import Path

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


def unreadable(error: Exception, path: Path, describe_as: str = "") -> CheckpointError:
    """Why a file could not be read: unsafe objects, or damage. ``describe_as`` names the input."""
    prefix = f"{describe_as}: " if describe_as else ""
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        return CheckpointError(f"{prefix}{path.name} holds Python objects beyond tensors, which are not loaded "
                               f"for safety (weights_only=True). Use a .safetensors file, or re-save the state dict "
                               f"with torch.save.")
    detail = "invalid pickle data" if isinstance(error, pickle.UnpicklingError) else first_line(error)
    return CheckpointError(f"{prefix}{path.name} could not be read ({type(error).__name__}: {detail}). The file "
                           f"is damaged or incomplete (an interrupted download?) or not a safetensors/torch file: "
                           f"download or copy it again.")


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]
