"""RePaint resampling: RePaint's schedule, exact re-noising, and the SAMPLER in a real ComfyUI."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from cupscale.editing.repaint import (forward_steps, jump_schedule, monotone_runs, renoise_flow, renoise_ve,
                              sample_repaint)
from host_helpers import progress_reports, smooth_latent

SIGMAS = torch.tensor([14.6, 8.0, 4.4, 2.3, 1.2, 0.6, 0.3, 0.1, 0.0])


def repaint_times(t_T: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's own schedule (Lugmayr et al. 2022, Fig. 9/10): times t_T - 1 ... -1, jumping up by one."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts + [-1]


def as_sigma_indices(times: list[int]) -> list[int]:
    """RePaint time t is the sample at sigma index steps - 1 - t; a jump's unit moves become one."""
    idx = [times[0] - t for t in times]
    return [k for i, k in enumerate(idx) if not (0 < i < len(idx) - 1 and idx[i - 1] > k > idx[i + 1])]


def forward_sigmas(times: list[int], sigmas: torch.Tensor) -> list[float]:
    """The noise level of every denoising step of RePaint's schedule, in order."""
    return [float(sigmas[times[0] - a]) for a, b in zip(times, times[1:]) if b < a]


CASES = [(8, 1, 1), (8, 1, 3), (8, 2, 2), (8, 3, 4), (8, 7, 2), (10, 2, 3), (25, 4, 5), (30, 10, 10), (13, 5, 2)]


@pytest.mark.parametrize("steps,jump,resample", CASES)
def test_schedule_is_repaints_time_schedule(steps, jump, resample):
    path = jump_schedule(steps, jump, resample)
    assert path == as_sigma_indices(repaint_times(steps, jump, resample))
    assert forward_steps(path) == len(forward_sigmas(repaint_times(steps, jump, resample), torch.zeros(steps + 1)))


def test_runs_split_the_path_into_sampler_calls_and_jumps():
    path = jump_schedule(6, 2, 2)  # jump points at indices 3 and 5
    assert path == [0, 1, 2, 3, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert monotone_runs(path) == [(0, 3), (3, 1), (1, 5), (5, 3), (3, 6)]


class CountingDenoiser:
    """A k-diffusion denoiser D(x, sigma) that records the sigma of every evaluation."""

    def __init__(self):
        self.sigmas: list[float] = []

    def __call__(self, x, sigma, **kwargs):
        self.sigmas.append(float(sigma.flatten()[0]))
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("steps,jump,resample", [(8, 1, 3), (8, 3, 4), (8, 7, 2)])
def test_walk_evaluates_once_per_forward_step_with_a_fresh_call_per_run(host, steps, jump, resample):
    from comfy.k_diffusion.sampling import sample_euler
    calls = []

    def run(model, x, sigmas, **kwargs):
        calls.append(sigmas.tolist())
        return sample_euler(model, x, sigmas, **kwargs)

    model, path, steps_seen = CountingDenoiser(), jump_schedule(steps, jump, resample), []
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * SIGMAS[0]
    out = sample_repaint(model, x, SIGMAS, {"seed": 3}, callback=lambda d: steps_seen.append(d["i"]), disable=True,
                         path=path, sample_run=run, renoise=renoise_ve)
    times = repaint_times(steps, jump, resample)
    assert model.sigmas == pytest.approx(forward_sigmas(times, SIGMAS))
    assert calls == [SIGMAS[a:b + 1].tolist() for a, b in monotone_runs(path) if b > a]
    assert steps_seen == list(range(forward_steps(path)))
    assert torch.isfinite(out).all()


def test_renoise_has_mean_x_and_std_of_the_missing_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 8)
    draws = 40000
    for sigma_a, sigma_b in ((0.3, 1.1), (2.0, 9.0), (0.0, 0.5)):
        a, b = torch.tensor(sigma_a), torch.tensor(sigma_b)
        out = renoise_ve(x.expand(draws, 8), a, b, torch.randn(draws, 8, generator=g))
        std = math.sqrt(sigma_b ** 2 - sigma_a ** 2)
        assert (out.mean(0) - x).abs().max() < 5 * std / math.sqrt(draws)
        assert (out.std(0) / std - 1).abs().max() < 5 / math.sqrt(2 * draws)


def test_flow_renoise_gives_the_forward_marginal_at_the_higher_level():
    """x_a = (1 - a) x0 + a e1 re-noised to b must be distributed as (1 - b) x0 + b e."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.linspace(-1.5, 1.5, 8)
    draws = 40000
    for sigma_a, sigma_b in ((0.2, 0.7), (0.5, 0.95), (0.0, 0.4)):
        a, b = torch.tensor(sigma_a), torch.tensor(sigma_b)
        x_a = (1 - a) * x0 + a * torch.randn(draws, 8, generator=g)
        out = renoise_flow(x_a, a, b, torch.randn(draws, 8, generator=g))
        assert (out.mean(0) - (1 - b) * x0).abs().max() < 5 * sigma_b / math.sqrt(draws)
        assert (out.std(0) / sigma_b - 1).abs().max() < 5 / math.sqrt(2 * draws)


def test_walk_jumps_between_the_right_levels_with_fresh_noise():
    """With a sampler that does nothing, the walk is just its jump: x + sqrt(s0^2 - s1^2) * noise."""
    path = jump_schedule(2, 1, 2)
    assert path == [0, 1, 0, 1, 2]
    x = torch.linspace(-1, 1, 8).expand(40000, 1, 1, 8)
    out = sample_repaint(None, x, SIGMAS[:3], {"seed": 5}, disable=True, path=path,
                         sample_run=lambda model, x, sigmas, **kw: x, renoise=renoise_ve)
    std = math.sqrt(SIGMAS[0] ** 2 - SIGMAS[1] ** 2)
    assert (out.mean(0) - x[0]).abs().max() < 5 * std / math.sqrt(40000)
    assert (out.std(0) / std - 1).abs().max() < 5 / math.sqrt(80000)


@pytest.mark.parametrize("jump,resample,match", [(0, 2, "jump_length = 0"), (1, 0, "resample_count = 0"),
                                                 (4, 2, "jump_length = 4 must be smaller than the number of steps")])
def test_bad_schedule_inputs_are_named(jump, resample, match):
    with pytest.raises(ValueError, match=match):
        jump_schedule(4, jump, resample)


def test_a_sampler_that_resizes_the_latent_is_refused():
    upscale = lambda model, x, sigmas, **kw: torch.nn.functional.interpolate(x, scale_factor=2)
    with pytest.raises(ValueError, match="changed the latent from .* RePaint can only resample"):
        sample_repaint(None, torch.zeros(1, 4, 8, 8), SIGMAS[:3], disable=True, path=jump_schedule(2, 1, 2),
                       sample_run=upscale, renoise=renoise_ve)


# --- the SAMPLER in the host -------------------------------------------------------------------


def box_mask(h=16, w=16):
    mask = torch.zeros(1, h, w)
    mask[:, 4:11, 5:13] = 1
    return mask


@pytest.fixture(scope="module")
def setup(host, tiny):
    model = tiny.tiny_model("sd15")
    return model, tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)


def repaint_sampler(host, name="euler", jump=2, resample=3):
    inner = host.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler(name)[0]
    return host.NODE_CLASS_MAPPINGS["RePaintSampler"]().execute(inner, jump, resample)[0], inner


def sigmas_for(host, model, steps=6, denoise=1.0):
    return host.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model, "normal", steps, denoise)[0]


def sample_custom(host, model, pos, neg, sampler, sigmas, latent, seed=7, callback=None):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    return comfy.sample.sample_custom(model, noise, 4.0, sampler, sigmas, pos, neg, latent["samples"],
                                      noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True,
                                      seed=seed)


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "ddim", "dpmpp_2s_ancestral", "dpmpp_2m", "lms",
                                  "uni_pc", "deis"])
def test_one_resample_equals_the_wrapped_sampler(host, setup, name):
    model, pos, neg = setup
    sampler, inner = repaint_sampler(host, name, jump=2, resample=1)
    sigmas = sigmas_for(host, model, steps=5)
    latent = {"samples": smooth_latent(16, 16)}
    plain = sample_custom(host, model, pos, neg, inner, sigmas, latent)
    repainted = sample_custom(host, model, pos, neg, sampler, sigmas, latent)
    assert (repainted - plain).abs().max() <= 1e-5


def counting(model):
    """A clone that records the sigma of every UNet evaluation (cond and uncond run batched)."""
    seen = []

    def wrapper(apply_model, args):
        seen.append(float(args["timestep"].flatten()[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(wrapper)
    return counted, seen


@pytest.mark.parametrize("name,denoise", [("euler", 1.0), ("euler_ancestral", 0.6), ("dpmpp_2m", 0.6), ("lms", 1.0)])
def test_model_runs_once_per_forward_step_of_repaints_schedule(host, setup, name, denoise):
    model, pos, neg = setup
    counted, seen = counting(model)
    steps, jump, resample = 6, 2, 3
    sampler, _ = repaint_sampler(host, name, jump, resample)
    sigmas = sigmas_for(host, model, steps, denoise)
    progress = []
    out = sample_custom(host, counted, pos, neg, sampler, sigmas, {"samples": smooth_latent(16, 16)},
                        callback=lambda i, x0, x, total: progress.append((i, total)))
    expected = forward_sigmas(repaint_times(steps, jump, resample), sigmas)
    assert seen == pytest.approx(expected, rel=1e-5)
    assert progress == [(i, len(expected)) for i in range(len(expected))]
    assert torch.isfinite(out).all()


def test_resampling_changes_the_result(host, setup):
    model, pos, neg = setup
    sigmas = sigmas_for(host, model, 6)
    latent = {"samples": smooth_latent(16, 16)}
    once = sample_custom(host, model, pos, neg, repaint_sampler(host, resample=1)[0], sigmas, latent)
    thrice = sample_custom(host, model, pos, neg, repaint_sampler(host, resample=3)[0], sigmas, latent)
    assert (once - thrice).abs().max() > 1e-2


def outside_and_inside(out, source, mask):
    keep = mask[0] == 0
    return (out - source)[..., keep].abs().max(), (out - source)[..., ~keep].abs().max()


@pytest.mark.parametrize("flow", [False, True])
def test_noise_mask_keeps_the_source_outside(host, setup, flow):
    model, pos, neg = setup
    if flow:
        model = host.NODE_CLASS_MAPPINGS["ModelSamplingSD3"]().patch(model, 3.0)[0]
    source = smooth_latent(16, 16)
    latent = host.NODE_CLASS_MAPPINGS["SetLatentNoiseMask"]().set_mask({"samples": source}, box_mask())[0]
    sampler, _ = repaint_sampler(host, "euler_ancestral", jump=2, resample=3)
    out = sample_custom(host, model, pos, neg, sampler, sigmas_for(host, model, 6, 0.7), latent)
    outside, inside = outside_and_inside(out, source, box_mask())
    assert outside <= 1e-5 and inside > 1e-2


def test_tiled_blended_mask_keeps_the_source_outside(host, setup):
    model, pos, neg = setup
    mask = box_mask()
    tiled = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]().execute(model, 64, 64, 16, 9, mask=mask)[0]
    source = smooth_latent(16, 16)
    sampler, _ = repaint_sampler(host, "dpmpp_2m", jump=2, resample=3)
    out = sample_custom(host, tiled, pos, neg, sampler, sigmas_for(host, model, 6, 0.7), {"samples": source})
    outside, inside = outside_and_inside(out, source, mask)
    assert outside <= 1e-5 and inside > 1e-2


def test_tiled_blended_lowpass_background_keeps_its_low_frequencies(host, setup):
    from cupscale.tiling.lowpass import gaussian_lowpass
    model, pos, neg = setup
    mask = box_mask()
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    source = smooth_latent(16, 16)
    sampler, _ = repaint_sampler(host, "euler", jump=2, resample=3)
    sigmas = sigmas_for(host, model, 6, 0.7)
    pinned = sample_custom(host, node.execute(model, 64, 64, 16, 9, mask=mask, background_lowpass=2.0)[0],
                           pos, neg, sampler, sigmas, {"samples": source})
    free = sample_custom(host, node.execute(model, 64, 64, 16, 9)[0], pos, neg, sampler, sigmas, {"samples": source})
    keep = mask[0] == 0
    low_error = lambda out: (gaussian_lowpass(out, 4.0) - gaussian_lowpass(source, 4.0))[..., keep].abs().mean()
    assert torch.isfinite(pinned).all()
    assert low_error(pinned) < 0.5 * low_error(free)


def test_interrupt_stops_between_runs(host, setup):
    import comfy.model_management
    model, pos, neg = setup
    counted, seen = counting(model)
    sampler, _ = repaint_sampler(host, "euler", jump=2, resample=3)  # first run: sigma indices 0 -> 3

    def interrupt(i, x0, x, total):
        if i == 0:
            comfy.model_management.interrupt_current_processing(True)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample_custom(host, counted, pos, neg, sampler, sigmas_for(host, model, 6), {"samples": smooth_latent(16, 16)},
                      callback=interrupt)
    # The first run's 3 evaluations at most: RePaint checks between runs; newer hosts (v0.33's ops) also stop
    # inside the next evaluation, after its sigma is recorded.
    assert 1 < len(seen) <= 3
    assert not comfy.model_management.processing_interrupted()


def test_bad_node_inputs_are_named(host, setup):
    import comfy.samplers
    model, pos, neg = setup
    node = host.NODE_CLASS_MAPPINGS["RePaintSampler"]()
    euler = comfy.samplers.sampler_object("euler")
    with pytest.raises(ValueError, match="resample_count = 0"):
        node.execute(euler, 1, 0)
    with pytest.raises(ValueError, match="jump_length = 0"):
        node.execute(euler, 0, 2)
    with pytest.raises(ValueError, match="sampler: dpm_adaptive picks its own steps"):
        node.execute(comfy.samplers.sampler_object("dpm_adaptive"), 1, 2)
    with pytest.raises(ValueError, match="sampler: RePaint wraps k-diffusion samplers"):
        node.execute(comfy.samplers.Sampler(), 1, 2)
    with pytest.raises(ValueError, match="jump_length = 6 must be smaller than the number of steps being sampled"):
        sample_custom(host, model, pos, neg, node.execute(euler, 6, 2)[0], sigmas_for(host, model, 6),
                      {"samples": smooth_latent(16, 16)})
    with pytest.raises(ValueError, match="sigmas: RePaint needs a descending schedule"):
        sample_custom(host, model, pos, neg, node.execute(euler, 1, 2)[0], torch.tensor([3.0, 1.0, 2.0, 0.0]),
                      {"samples": smooth_latent(16, 16)})


def test_renoising_follows_the_model_parametrisation(host, setup):
    import comfy.model_sampling
    model = setup[0]
    node_module = sys.modules[host.NODE_CLASS_MAPPINGS["RePaintSampler"].__module__]
    flow = host.NODE_CLASS_MAPPINGS["ModelSamplingSD3"]().patch(model, 3.0)[0]
    assert node_module.renoise_for(model.get_model_object("model_sampling")) is node_module.repaint.renoise_ve
    assert node_module.renoise_for(flow.get_model_object("model_sampling")) is node_module.repaint.renoise_flow
    cosmos = type("CosmosLike", (comfy.model_sampling.COSMOS_RFLOW,), {})()
    with pytest.raises(ValueError, match="cannot re-noise for CosmosLike model sampling"):
        node_module.renoise_for(cosmos)


def test_samplercustomadvanced_with_a_noise_mask(host, setup):
    model, pos, neg = setup
    get = host.NODE_CLASS_MAPPINGS
    source = smooth_latent(16, 16)
    latent = get["SetLatentNoiseMask"]().set_mask({"samples": source}, box_mask())[0]
    guider = get["CFGGuider"]().get_guider(model, pos, neg, 4.0)[0]
    sampler, _ = repaint_sampler(host, "dpmpp_2s_ancestral", jump=1, resample=2)
    out = get["SamplerCustomAdvanced"]().sample(get["RandomNoise"]().get_noise(5)[0], guider, sampler,
                                                sigmas_for(host, model, 4), latent)[0]["samples"]
    outside, inside = outside_and_inside(out, source, box_mask())
    assert outside <= 1e-5 and inside > 1e-2


# --- through the host's executor ---------------------------------------------------------------

def test_samplercustom_prompt_with_repaint_keeps_the_unmasked_source(host):
    from harness.comfy_host import run_prompt
    from harness.test_nodes import CAPTURED
    prompt = {
        "1": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red door"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0x5080b0}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48, "height": 64}},
        "8": {"class_type": "MaskComposite", "inputs": {"destination": ["6", 0], "source": ["7", 0], "x": 32,
                                                        "y": 32, "operation": "add"}},
        "9": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["8", 0]}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "RePaintSampler", "inputs": {"sampler": ["10", 0], "jump_length": 2, "resample_count": 3}},
        "12": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 6,
                                                          "denoise": 1.0}},
        "13": {"class_type": "SamplerCustom", "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": 3,
                                                         "cfg": 4.0, "positive": ["2", 0], "negative": ["3", 0],
                                                         "sampler": ["11", 0], "sigmas": ["12", 0],
                                                         "latent_image": ["9", 0]}},
        "14": {"class_type": "CupscaleCapture", "inputs": {"value": ["13", 0], "key": "samples"}},
        "15": {"class_type": "CupscaleCapture", "inputs": {"value": ["5", 0], "key": "source"}},
    }
    with progress_reports() as progress:
        run_prompt(prompt)
    latent_mask = torch.zeros(1, 16, 16)
    latent_mask[:, 4:12, 4:10] = 1
    outside, inside = outside_and_inside(CAPTURED["samples"]["samples"], CAPTURED["source"]["samples"], latent_mask)
    assert outside <= 1e-5 and inside > 1e-2
    total = forward_steps(jump_schedule(6, 2, 3))
    assert progress == [(i, total) for i in range(1, total + 1)]
