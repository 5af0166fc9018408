"""DiTPositionExtrapolation: a RoPE DiT's rotary frequencies stretched past its trained resolution, with
DyPE's schedule over the noise level (core: cupscale.tiling.extrapolation).

The host builds a DiT's rotary table in its ``pe_embedder`` (EmbedND: Flux, Qwen-Image and their kin) from
the ids alone. The patch replaces it on a clone with :class:`ExtrapolatedRope`, which computes the spatial
axes' frequencies for the whole image at the current sigma and leaves the other axes to the host's own rope. The
whole image's size comes from TiledBlendedDiffusion's tile place where tiles run (their ids are the whole
image's: each tile's table is the whole one's at the tile), else from the latent the model is called on; sigma
from the call (dit_positions.CALL: the sampler's calls, and the prior's capture pass).
"""
from __future__ import annotations

import torch

from ..cupscale.tiling.extrapolation import MODES, Extrapolation, axis_frequencies, rotary
from ..cupscale.tiling.positions import patch_grid
from .dit_positions import ACTIVE, CALL, dit_kind, model_call, patch_cells
from .host import WrappersMP, flux_rope, io
from .inputs import advanced, check_combos, check_numbers, widgets_valid
from .tiled_sampling import latent_ratio

BASE_RESOLUTION = {"flux": 1024, "qwen_image": 1328}
"""Pixels a side each RoPE family was trained around (Flux.1: 1024, Qwen-Image: 1328, as DyPE's code has them)."""
WRAPPER_KEY = "cupscale.position_extrapolation"
SPATIAL_AXES = (1, 2)
"""The row and column axes of the ids (the first is the image index / frame; Flux.2 adds a fourth)."""


class ExtrapolatedRope(torch.nn.Module):
    """Over the host's EmbedND: the spatial axes at the extrapolated frequencies, the rest as the host has them.
    ``sigma_max`` normalises sigma to DyPE's t in [0, 1]; ``patch`` is latent cells per patch."""

    def __init__(self, original: torch.nn.Module, extrapolation: Extrapolation, sigma_max: float, patch: int):
        super().__init__()
        self.original, self.extrapolation = original, extrapolation
        self.sigma_max, self.patch = sigma_max, patch
        self.theta, self.axes_dim = original.theta, original.axes_dim

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = CALL.get()
        if call is None:
            return self.original(ids, *args, **kwargs)
        place = ACTIVE.get()
        whole = place.image_hw if place is not None else patch_grid(call.cells, self.patch)
        # float64 as the host's rope; where the device has none (MPS) on the CPU, as the host does too.
        sigma = call.sigma if ids.device.type != "mps" else call.sigma.cpu()
        t = (sigma.to(torch.float64) / self.sigma_max).clamp(0, 1)
        axes = []
        for i in range(ids.shape[-1]):
            if i in SPATIAL_AXES:
                omega, mscale = axis_frequencies(self.axes_dim[i], self.theta, i - 1, whole, t, self.extrapolation)
                axes.append(rotary(ids[..., i], omega, mscale).to(ids.device))
            else:
                axes.append(flux_rope(ids[..., i], self.axes_dim[i], self.theta))
        return torch.cat(axes, dim=-3).unsqueeze(1)


def publish_call(executor, x, t, *args, **kwargs):
    """The APPLY_MODEL wrapper: the call's sigma and latent size, for ExtrapolatedRope."""
    with model_call(x, t):
        return executor(x, t, *args, **kwargs)


class DiTPositionExtrapolation(io.ComfyNode):
    """MODEL -> MODEL whose rotary positions past the trained resolution are extrapolated (NTK, YaRN, DyPE)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTPositionExtrapolation",
            display_name="DiT Position Extrapolation (cupscale)",
            category="cupscale",
            description=("For RoPE DiTs (Flux, Qwen-Image) past their trained size: stretches the rotary "
                         "frequencies of the whole image (NTK, YaRN, or vision YaRN with one scale for both axes), "
                         "with DyPE's schedule: full extrapolation while the layout forms, less as the noise falls. "
                         "Computed for the whole image, so TiledBlendedDiffusion's tiles still agree. At or below "
                         "the base resolution the model is unchanged."),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("method", options=list(MODES), default="yarn",
                               tooltip="yarn: per axis, the DyPE paper's choice; vision_yarn: the image's larger "
                                       "scale for both axes (wide or tall images); ntk: stretch theta alone."),
                io.Boolean.Input("dype", default=True,
                                 tooltip="DyPE: the extrapolation follows the noise level (kappa(t) = t^lambda_t). "
                                         "Off: the static method at every step."),
                io.Int.Input("base_resolution", default=0, min=0, max=16384, step=16,
                             tooltip="Pixels a side the model was trained around; 0 = the model's own (Flux 1024, "
                                     "Qwen-Image 1328)."),
                advanced(io.Float.Input("lambda_s", default=2.0, min=0.0, max=8.0, step=0.1, optional=True,
                                        tooltip="ntk: the factor's exponent at pure noise (b^(lambda_s·kappa)).")),
                advanced(io.Float.Input("lambda_t", default=2.0, min=0.0, max=8.0, step=0.1, optional=True,
                                        tooltip="kappa(t) = t^lambda_t: higher returns to the base frequencies "
                                                "sooner as the noise falls.")),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, method=None, base_resolution=None, lambda_s=None, lambda_t=None) -> bool | str:
        return widgets_valid(cls, method=method, base_resolution=base_resolution, lambda_s=lambda_s, lambda_t=lambda_t)

    @classmethod
    def execute(cls, model, method, dype, base_resolution, lambda_s=2.0, lambda_t=2.0) -> io.NodeOutput:
        check_combos(cls, method=method)
        check_numbers(cls, base_resolution=base_resolution, lambda_s=lambda_s, lambda_t=lambda_t)
        kind = dit_kind(model)
        if kind not in BASE_RESOLUTION:
            raise ValueError(f"model is {kind or 'not a DiT'}: DiTPositionExtrapolation stretches rotary positions, "
                             f"which {', '.join(BASE_RESOLUTION)} models have (SD3.5's are a learned table, a UNet "
                             f"has none); connect a Flux or Qwen-Image model.")
        patch = patch_cells(model)
        patch_px = patch * latent_ratio(model)
        side = max(base_resolution or BASE_RESOLUTION[kind], patch_px) // patch_px
        extrapolation = Extrapolation(method, (side, side), dype, lambda_s, lambda_t)
        patched = model.clone()
        original = patched.get_model_object("diffusion_model.pe_embedder")
        original = original.original if isinstance(original, ExtrapolatedRope) else original
        sigma_max = float(patched.get_model_object("model_sampling").sigma_max)
        patched.add_object_patch("diffusion_model.pe_embedder",
                                 ExtrapolatedRope(original, extrapolation, sigma_max, patch))
        patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, publish_call)
        return io.NodeOutput(patched)


NODES = [DiTPositionExtrapolation]
