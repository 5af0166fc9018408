"""Tiles across devices: TiledBlendedDiffusion's ``devices`` (core: run_tiles over one evaluator per device).

Each extra device holds a replica of the model made the host's way (``ModelPatcher.deepclone_multigpu``,
ComfyUI's multi-GPU support: a fresh copy from the loader, so weight patches such as LoRAs apply to it as to
the original) and is loaded with the model by the host's model management (an additional model of the
patched clone). At sampling each replica takes the sampled model's patches (as the host's own
``match_multigpu_clones`` does), so nodes chained after TiledBlendedDiffusion reach every device. A step's
tile batches are shared out over the devices, each batch's prediction comes back to the model's device and
the merge runs there once, in batch order: the result is one device's.
"""
from __future__ import annotations

import logging

import torch

from .host import model_management, model_patcher

KEY = "cupscale_tile_devices"
"""The additional-models key of the replicas (the host loads additional models with the model)."""
MAX_CHARS = 200


def host_replicates() -> bool:
    """Whether this ComfyUI makes per-device model copies (its multi-GPU support; v0.33 has it, v0.14 not)."""
    return hasattr(model_patcher.ModelPatcher, "deepclone_multigpu")


def named_devices(text: str) -> list[torch.device]:
    """The devices ``text`` names: empty for the model's own only; ``all`` for every device the host sees;
    else a comma-separated list (``cuda:0, cuda:1``; ``cpu`` may repeat, for a CPU run split in two)."""
    text = (text or "").strip()
    if len(text) > MAX_CHARS:
        raise ValueError(f"devices is {len(text)} characters long: name devices as 'cuda:0, cuda:1' (at most "
                         f"{MAX_CHARS} characters), 'all', or leave it empty for the model's own device.")
    if not text:
        return []
    if text.lower() == "all":
        return present_devices()
    found, present = [], present_devices()
    for name in (part.strip() for part in text.split(",")):
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"devices: {name[:40]!r} is not a device; name them as 'cuda:0, cuda:1', 'cpu', "
                             "'all', or leave it empty for the model's own device.") from None
        if device.type != "cpu" and device not in present:
            raise ValueError(f"devices: {name} is not on this machine (it has "
                             f"{', '.join(map(str, present)) or 'no GPU'}); name one of those.")
        found.append(device)
    return found


def present_devices() -> list[torch.device]:
    """Every device the host computes on (older hosts know only their one)."""
    every = getattr(model_management, "get_all_torch_devices", None)
    return [torch.device(d) for d in (every() if every else [model_management.get_torch_device()])]


def same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are one device when cuda:0 is the current one."""
    index = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
    return a.type == b.type and (a.index or index) == (b.index or index)


def extra_devices(model, devices: list[torch.device]) -> list[torch.device]:
    """The devices beyond the model's own that its tiles should use: ``devices`` less one entry for the
    model's device, which must be among them (the merge runs there)."""
    if len(devices) <= 1:
        if devices and not same_device(devices[0], model.load_device):
            raise ValueError(f"devices = {devices[0]}: the model runs on {model.load_device}; name it "
                             f"first and the others after it, e.g. '{model.load_device}, {devices[0]}'.")
        if devices:
            logging.info("TiledBlendedDiffusion: one device (%s) named: its tiles run there.", devices[0])
        return []
    own = next((i for i, d in enumerate(devices) if same_device(d, model.load_device)), None)
    if own is None:
        raise ValueError(f"devices: the model runs on {model.load_device}, which is not among "
                         f"{', '.join(map(str, devices))}; add it (the tiles are merged there).")
    return devices[:own] + devices[own + 1:]


def add_replicas(patched, devices: list[torch.device]) -> None:
    """A replica of ``patched`` on each device, kept as its additional models. On a host without per-device
    copies the tiles stay on one device, and the log says so."""
    if not devices:
        return
    if not host_replicates():
        logging.warning("TiledBlendedDiffusion: this ComfyUI cannot copy a model to another device (its "
                        "multi-GPU support came in a later release): tiles run on %s only.", patched.load_device)
        return
    if getattr(patched, "cached_patcher_init", None) is None:
        raise ValueError("devices: this model came from a loader that cannot make a copy of it for another "
                         "device; load it with ComfyUI's own loaders (Load Checkpoint, Load Diffusion Model) "
                         "or leave devices empty.")
    replicas = [patched.deepclone_multigpu(new_load_device=device) for device in devices]
    patched.set_additional_models(KEY, [without_replicas(r) for r in replicas])


def without_replicas(replica):
    replica.remove_additional_models(KEY)
    return replica


def matched_replicas(sampled) -> list:
    """Each replica with the patches of ``sampled`` (the model being sampled), on its own device and weights; set
    back as the additional models the host loads for this run."""
    replicas = sampled.get_additional_models_with_key(KEY)
    if not replicas:
        return []
    matched = []
    for replica in replicas:
        clone = sampled.clone(model_override=replica.get_clone_model_override())
        clone.load_device = replica.load_device
        matched.append(without_replicas(clone))
    sampled.set_additional_models(KEY, matched)
    return matched
