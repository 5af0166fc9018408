"""ControlNets evaluated per tile, each tile with its crop of the hint.

The host evaluates a ControlNet on the whole latent inside calc_cond_batch, before the model call:
at 4K that costs as much as the tiles themselves and resizes the hint to the wrong size. We swap
each cond's control for a :class:`DeferredControl` there, and evaluate the real chain per tile
batch in the tiled apply_model, with ``cond_hint_original`` swapped for the tiles' crops.

Model-patch ControlNets (the host's ModelPatchLoader: Qwen-Image's DiffSynth and Z-Image's Fun ControlNets)
ride in ``transformer_options["patches"]`` and resize their whole pixel hint to whatever latent they are
called with: under tiles, each tile would see the whole hint squeezed into it. Each tile batch gets copies
of them whose hints are the tiles' crops (:meth:`TiledHints.model_patches`).
"""
from __future__ import annotations

import copy

import torch

from ..cupscale.tiling.multidiffusion import TileBatch
from .host import comfy_utils


class DeferredControl:
    """Stands for a control chain in calc_cond_batch; ``get_control`` only records the request."""

    def __init__(self, control):
        self.control = control

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        return ControlRequest(self.control, cond, batched_number)


class ControlRequest:
    """A control evaluation the tiled apply_model still owes: the chain, its cond, its chunk count."""

    def __init__(self, control, cond: dict, batched_number: int):
        self.control = control
        self.cond = cond
        self.batched_number = batched_number

    def evaluate(self, x, t, cond, transformer_options):
        return self.control.get_control(x, t, cond, self.batched_number, transformer_options)


def defer_controls(conds: list) -> list:
    """The conds with every 'control' swapped for one DeferredControl per distinct chain."""
    deferred = {}
    out = []
    for cond in conds:
        if cond is None:
            out.append(None)
            continue
        swapped = []
        for c in cond:
            control = c.get("control")
            if control is not None and not isinstance(control, DeferredControl):
                c = dict(c, control=deferred.setdefault(id(control), DeferredControl(control)))
            swapped.append(c)
        out.append(swapped)
    return out


def control_chain(control) -> list:
    chain = []
    while control is not None:
        chain.append(control)
        control = getattr(control, "previous_controlnet", None)
    return chain


# What a control caches from its hint: ControlNet its resized hint, T2I adapters their features.
PREPARED = ("cond_hint", "control_input")
PATCH_HINTS = {"image": -3, "inpaint_image": -3, "mask": -2}
"""A model-patch ControlNet's pixel inputs, by the axis of their height (images channels-last, masks last)."""


def is_hinted_patch(patch) -> bool:
    """A model-patch ControlNet: it encodes a pixel hint itself (through its VAE) and keeps the encoding for the
    size it was made at (the host's DiffSynthCnetPatch, ZImageControlPatch)."""
    return all(hasattr(patch, a) for a in ("image", "vae", "encoded_image", "encoded_image_size"))


def resized(value: torch.Tensor, height_axis: int, hw: tuple[int, int]) -> torch.Tensor:
    """``value`` with its (height, width) axes resized to ``hw`` as the host's patches resize them ("area")."""
    if tuple(value.shape[height_axis:height_axis + 2 or None]) == hw:
        return value
    moved = value.movedim(-1, 1) if height_axis == -3 else value
    flat = moved.reshape(-1, 1, *moved.shape[-2:])
    out = comfy_utils.common_upscale(flat, hw[1], hw[0], "area", "center").reshape(*moved.shape[:-2], *hw)
    return out.movedim(1, -1) if height_axis == -3 else out


class TiledHints:
    """Hint crops per tile batch, kept for the whole sampling run so hints are prepared once."""

    def __init__(self):
        self.full = {}      # (control, latent h, w) -> hint resized to the whole latent
        self.prepared = {}  # (control, tile indices, batch) -> the control's own prepared hint

    def crops(self, control, batch: TileBatch) -> torch.Tensor:
        """The hint cropped to the batch's tiles, in (tile, image) order as broadcast_image_to expects."""
        latent_hw = (batch.grid.height, batch.grid.width)
        key = (id(control), latent_hw)
        if key not in self.full:
            r = control.compression_ratio
            self.full[key] = comfy_utils.common_upscale(
                control.cond_hint_original, latent_hw[1] * r, latent_hw[0] * r, control.upscale_algorithm, "center")
        full, r = self.full[key], control.compression_ratio
        parts = []
        for b in batch.boxes:
            crop = full[:, :, b.top * r:b.bottom * r, b.left * r:b.right * r]
            parts.append(comfy_utils.repeat_to_batch_size(crop, batch.images))
        return torch.cat(parts)

    def model_patches(self, patches: dict, batch: TileBatch, chunks: int) -> dict:
        """``transformer_options["patches"]`` for a tile batch: each model-patch ControlNet swapped for a copy
        whose hints are the tiles' crops, one item per model item (chunk, tile, image), made once per run so its
        encoding is made once; the same copy wherever the patch is listed (Z-Image's sits in two lists)."""
        if not any(is_hinted_patch(p) for items in patches.values() for p in items):
            return patches
        return {name: [self.patch_copy(p, batch, chunks) if is_hinted_patch(p) else p for p in items]
                for name, items in patches.items()}

    def patch_copy(self, patch, batch: TileBatch, chunks: int):
        key = (id(patch), batch.indices, chunks, batch.images)
        if key not in self.prepared:
            tile = copy.copy(patch)
            ratio = patch.vae.spacial_compression_encode()
            whole = (batch.grid.height * ratio, batch.grid.width * ratio)
            for name, axis in PATCH_HINTS.items():
                value = getattr(patch, name, None)
                if torch.is_tensor(value):
                    setattr(tile, name, self.patch_crops(resized(value, axis, whole), axis, batch, chunks, ratio))
            tile.encoded_image, tile.temp_data = None, None
            self.prepared[key] = tile
        return self.prepared[key]

    @staticmethod
    def patch_crops(value: torch.Tensor, axis: int, batch: TileBatch, chunks: int, r: int) -> torch.Tensor:
        """``value``'s crops at the batch's tiles, chunk-major as the model's items: (chunk, tile, image)."""
        def crop(b):
            rows = value.narrow(axis, b.top * r, b.height * r)
            return comfy_utils.repeat_to_batch_size(rows.narrow(axis + 1, b.left * r, b.width * r), batch.images)
        tiles = [crop(b) for b in batch.boxes]
        return torch.cat(tiles * chunks)

    def evaluate(self, request: ControlRequest, batch: TileBatch, x, t, cond, transformer_options):
        """Run the chain on a tile batch with each control's hint swapped for the tiles' crops.

        What a control derives from its hint (the resized hint; a T2I adapter's features) is kept
        per tile batch and handed back on later steps, so it is computed once per run.
        """
        chain = control_chain(request.control)
        saved = [(c, c.cond_hint_original) for c in chain]
        try:
            for c in chain:
                c.cond_hint_original = self.crops(c, batch)
                prepared = self.prepared.get((id(c), batch.indices, x.shape[0]), {})
                for attr in PREPARED:
                    if hasattr(c, attr):
                        setattr(c, attr, prepared.get(attr))
            out = request.evaluate(x, t, cond, transformer_options)
            for c in chain:
                self.prepared[(id(c), batch.indices, x.shape[0])] = {a: getattr(c, a) for a in PREPARED if hasattr(c, a)}
            return out
        finally:
            for c, original in saved:
                c.cond_hint_original = original
                for attr in PREPARED:
                    if hasattr(c, attr):
                        setattr(c, attr, None)
