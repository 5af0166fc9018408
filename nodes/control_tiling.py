"""ControlNets evaluated per tile, each tile with its crop of the hint.

The host evaluates a ControlNet on the whole latent inside calc_cond_batch, before the model call:
at 4K that costs as much as the tiles themselves and resizes the hint to the wrong size. We swap
each cond's control for a :class:`DeferredControl` there, and evaluate the real chain per tile
batch in the tiled apply_model, with ``cond_hint_original`` swapped for the tiles' crops.
"""
from __future__ import annotations

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
