"""LowFreqStructureGuide: C-Upscale's Global Structure Prior as a post-CFG patch (core: cupscale.priors.structure).

The patch runs on the denoised estimate after CFG (``sampler_post_cfg_function``), i.e. after
TiledBlendedDiffusion has merged its tiles whatever the order the two patches were chained in, and
before any sampler uses it, so it works with every sampler and scheduler. An OUTER_SAMPLE wrapper
checks the reference against the latent before the first (at 4K, minute-long) model evaluation.
"""
from __future__ import annotations

import torch

from ..cupscale.priors.structure import (DECAY_SHAPES, reference_at, reference_for_batch, step_weight, upscale_factor,
                                         working_band)
from ..cupscale.schedule import check_percent_range
from ..cupscale.tiling.lowpass import align_low_frequencies, lowpass
from ..cupscale.guards import check_finite
from ..cupscale.latents import layout
from .host import WrappersMP, io
from .inputs import check_numbers, percent_range_inputs, widget_names, widgets_valid
from .step_clock import clock_of, run_clock


class StructureGuide:
    """The patch: the reference z_L (in the sampler's latent space) and the schedule of w_t."""

    def __init__(self, reference: torch.Tensor, strength: float, kind: str, amount: float,
                 start: float, end: float, decay: str):
        self.reference = reference
        self.strength, self.kind, self.amount = strength, kind, amount
        self.start, self.end, self.decay = start, end, decay
        self.cached: tuple[tuple, float, torch.Tensor] | None = None

    def reference_low(self, like: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(working low-pass amount, LP(z_L)) for a working latent like ``like``; computed once per run."""
        key = (tuple(like.shape), like.device, like.dtype)
        if self.cached is None or self.cached[0] != key:
            size = tuple(like.shape[-2:])
            amount = working_band(self.kind, self.amount, upscale_factor(tuple(self.reference.shape[-2:]), size))
            z_l = reference_at(self.reference, size).to(like)
            self.cached = (key, amount, reference_for_batch(lowpass(z_l, self.kind, amount), like.shape[0]))
        return self.cached[1], self.cached[2]

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        clock = clock_of(args["model_options"])
        # Called outside a sampler run (no clock), the evaluation counts as the first step.
        progress = 0.0 if clock is None else clock.progress
        weight = step_weight(progress, self.strength, self.start, self.end, self.decay)
        if weight == 0:
            return denoised
        amount, reference_low = self.reference_low(denoised)
        return align_low_frequencies(denoised, reference_low, weight, self.kind, amount)

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     *args, **kwargs):
        self.reference_low(noise)
        _, callback = run_clock(executor.class_obj.model_options, sigmas, callback)
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                        *args, **kwargs)


def check_reference(samples: torch.Tensor, channels: int, ndim: int = 4) -> None:
    if samples.ndim != ndim:
        raise ValueError(f"reference has shape {tuple(samples.shape)}: LowFreqStructureGuide needs an image latent "
                         f"{layout(ndim)}, e.g. from VAE Encode of the low-resolution image.")
    if samples.numel() == 0:
        raise ValueError(f"reference is empty (shape {tuple(samples.shape)}): connect the low-resolution latent "
                         f"(VAE Encode of the image before upscaling).")
    if samples.shape[1] != channels:
        raise ValueError(f"reference has {samples.shape[1]} channels but the model's latents have {channels}: "
                         f"encode the low-resolution image with this model's VAE.")
    with widget_names(f="reference"):
        check_finite(samples, "f")


class LowFreqStructureGuide(io.ComfyNode):
    """MODEL -> MODEL whose denoised estimate keeps the low frequencies of a low-resolution latent."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LowFreqStructureGuide",
            display_name="Low-Frequency Structure Guide (cupscale)",
            category="cupscale",
            description=("Global Structure Prior (C-Upscale): at every step in the chosen range, the low-frequency "
                         "band of the denoised latent is pulled toward that of the reference (the low-resolution "
                         "latent, resized to the sampled latent), while the model keeps the details. Keeps colours "
                         "and composition from drifting in tiled upscales. Chain with TiledBlendedDiffusion in any "
                         "order."),
            inputs=[
                io.Model.Input("model"),
                io.Latent.Input("reference", tooltip="The low-resolution latent of the image being upscaled; any size "
                                                     "with the aspect ratio of the sampled latent."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 replaces the low band by the reference's; 0 turns the guide off."),
                io.Combo.Input("lowpass", options=["gaussian", "fft"],
                               tooltip="Gaussian blur (smooth band edge) or ideal FFT band (exact projection)."),
                io.Float.Input("sigma", default=1.0, min=0.1, max=64.0, step=0.1,
                               tooltip="Gaussian sigma in cells of the reference latent (lowpass = gaussian); larger "
                                       "keeps only coarser structure from the reference."),
                io.Float.Input("cutoff", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="FFT cutoff as a fraction of the reference's Nyquist frequency (lowpass = fft); "
                                       "1 takes every frequency the reference holds."),
                *percent_range_inputs("First affected step, as a fraction of the sampler's steps.",
                                      "Steps from here on are left alone."),
                io.Combo.Input("decay", options=list(DECAY_SHAPES),
                               tooltip="How the strength falls over the range: constant, linear to 0, or a half cosine."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, lowpass=None, decay=None, strength=None, sigma=None, cutoff=None, start_percent=None,
                        end_percent=None) -> bool | str:
        return widgets_valid(cls, lowpass=lowpass, decay=decay, strength=strength, sigma=sigma, cutoff=cutoff,
                             start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, model, reference, strength, lowpass, sigma, cutoff, start_percent, end_percent,
                decay) -> io.NodeOutput:
        samples = reference["samples"]
        latent_format = model.model.latent_format
        check_reference(samples, latent_format.latent_channels, latent_format.latent_dimensions + 2)
        check_numbers(cls, strength=strength, sigma=sigma, cutoff=cutoff)
        with widget_names(start="start_percent", end="end_percent"):
            check_percent_range(start_percent, end_percent, "set strength 0 to turn the guide off")
        amount = sigma if lowpass == "gaussian" else cutoff
        guide = StructureGuide(latent_format.process_in(samples.float()), strength, lowpass, amount,
                               start_percent, end_percent, decay)
        patched = model.clone()
        # A plain closure: model_options are deep-copied on every clone, a function is copied by reference.
        patched.set_model_sampler_post_cfg_function(lambda args: guide(args))
        patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "cupscale.structure_guide",
                                     guide.outer_sample)
        return io.NodeOutput(patched)


NODES = [LowFreqStructureGuide]
