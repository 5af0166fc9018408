"""RePaintSampler: SAMPLER -> SAMPLER that walks RePaint's zigzag schedule (core: cupscale.editing.repaint).

The wrapped k-diffusion sampler runs each downhill stretch of the schedule as its own call, inside
one KSAMPLER, so ComfyUI's inpaint blending (the latent's noise mask, KSamplerX0Inpaint) and the
model's patches (TiledBlendedDiffusion's mask and low-passed background) act at every step, the
re-noised ones included.
"""
from __future__ import annotations

import functools

from ..cupscale.editing import repaint
from .host import io, model_sampling, samplers
from .host_services import stop_if_interrupted
from .inputs import widget_names, widgets_valid

# These two choose their own steps between the first and last sigma, so they cannot follow a zigzag.
OWN_STEP_SAMPLERS = {"dpm_fast_function": "dpm_fast", "dpm_adaptive_function": "dpm_adaptive"}


def renoise_for(sampling):
    """The exact re-noising for the model's parametrisation, read off its ``noise_scaling``."""
    scaling = type(sampling).noise_scaling
    if scaling is model_sampling.EPS.noise_scaling:
        return repaint.renoise_ve
    if scaling is model_sampling.CONST.noise_scaling:
        return repaint.renoise_flow
    raise ValueError(f"RePaint cannot re-noise for {type(sampling).__name__} model sampling: it supports "
                     "x0 + sigma*eps models (EPS, V_PREDICTION, EDM: SD1.5, SDXL, ...) and rectified flow (CONST: "
                     "SD3, Flux, ...). Sample this model without the RePaint sampler.")


def check_sampler(sampler) -> None:
    if not isinstance(sampler, samplers.KSAMPLER):
        raise ValueError(f"sampler: RePaint wraps k-diffusion samplers (KSamplerSelect or a Sampler... node), "
                         f"not {type(sampler).__name__}.")
    name = OWN_STEP_SAMPLERS.get(getattr(sampler.sampler_function, "__name__", ""))
    if name is not None:
        raise ValueError(f"sampler: {name} picks its own steps and cannot follow RePaint's schedule; "
                         "use euler, euler_ancestral, dpmpp_2m, ... instead.")


class RePaintKSampler(samplers.Sampler):
    """A SAMPLER: ``inner`` (a KSAMPLER) along RePaint's schedule over the sigmas it is given."""

    def __init__(self, inner: samplers.KSAMPLER, jump_length: int, resample_count: int):
        self.inner, self.jump_length, self.resample_count = inner, jump_length, resample_count

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        with widget_names():
            path = repaint.jump_schedule(len(sigmas) - 1, self.jump_length, self.resample_count)
        if len(path) > len(sigmas) and (sigmas[1:] > sigmas[:-1]).any():
            raise ValueError("sigmas: RePaint needs a descending schedule to jump back up; these rise "
                             f"somewhere: {[round(float(s), 4) for s in sigmas]}.")
        walk = functools.partial(
            repaint.sample_repaint, path=path,
            sample_run=functools.partial(self.inner.sampler_function, **self.inner.extra_options),
            renoise=renoise_for(model_wrap.inner_model.model_sampling),
            check_interrupt=stop_if_interrupted)
        total = repaint.forward_steps(path)
        # The host's progress callback takes the total; give it the real number of steps, jumps included.
        report = None if callback is None else (lambda i, x0, x, _steps: callback(i, x0, x, total))
        ksampler = samplers.KSAMPLER(walk, inpaint_options=self.inner.inpaint_options)
        return ksampler.sample(model_wrap, sigmas, extra_args, report, noise, latent_image, denoise_mask, disable_pbar)


class RePaintSampler(io.ComfyNode):
    """SAMPLER -> SAMPLER with RePaint's resampling, for SamplerCustom / SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RePaintSampler",
            display_name="RePaint Resampling (cupscale)",
            category="cupscale/sampling",
            description=("RePaint resampling (Lugmayr et al. 2022): every jump_length steps the sample is noised "
                         "back jump_length steps and denoised again, resample_count times, so a masked edit "
                         "harmonises with the kept background (Multi-Stage Blended Diffusion's first stage). Costs "
                         "about resample_count times the steps. Works with the latent's noise mask and Tiled "
                         "Blended Diffusion's mask; multistep samplers restart their history after each jump."),
            inputs=[
                io.Sampler.Input("sampler"),
                io.Int.Input("jump_length", default=1, min=1, max=1000,
                             tooltip="Steps gone back (and redone) per jump; below the step count."),
                io.Int.Input("resample_count", default=5, min=1, max=100,
                             tooltip="Times each stretch of steps is sampled; 1 = the sampler alone."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, jump_length=None, resample_count=None) -> bool | str:
        return widgets_valid(cls, jump_length=jump_length, resample_count=resample_count)

    @classmethod
    def execute(cls, sampler, jump_length, resample_count) -> io.NodeOutput:
        check_sampler(sampler)
        with widget_names():
            repaint.check_resampling(jump_length, resample_count)
        return io.NodeOutput(RePaintKSampler(sampler, jump_length, resample_count))


NODES = [RePaintSampler]
