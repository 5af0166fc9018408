"""LowFreqStructureGuide: the Global Structure Prior, in the core alone and inside real host sampling."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from cupscale.tiling.lowpass import align_low_frequencies, fft_lowpass, frequency_split, gaussian_lowpass, lowpass
from cupscale.priors.structure import reference_at, reference_for_batch, step_weight, working_band
from cupscale.schedule import schedule_progress

AMOUNT = {"gaussian": 1.0, "fft": 0.5}  # in reference-latent units, as the node takes them


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def smooth_field(h: int, w: int, channels: int = 4) -> torch.Tensor:
    """A smooth function sampled at the cell centres of an h x w grid (same picture at any size)."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    k = torch.arange(1, channels + 1, dtype=torch.float32)[:, None, None]
    return (torch.sin(2 * math.pi * k * 0.5 * y[:, None] + k) * torch.cos(2 * math.pi * 0.7 * x[None, :] - k))[None]


# --- core: the alignment formula, the split, the resize, the schedule -------------------------------------

def test_fft_guide_at_strength_one_replaces_the_low_band_exactly_at_a_non_integer_factor():
    reference = torch.randn(2, 4, 40, 40, generator=torch.Generator().manual_seed(1))
    denoised = torch.randn(2, 4, 100, 100, generator=torch.Generator().manual_seed(2))
    cutoff = working_band("fft", AMOUNT["fft"], 100 / 40)
    z_l = reference_at(reference, (100, 100))
    out = align_low_frequencies(denoised, fft_lowpass(z_l, cutoff), 1.0, "fft", cutoff)
    low, high = frequency_split(out, "fft", cutoff)
    assert rel(low, fft_lowpass(z_l, cutoff)) <= 1e-3
    assert rel(high, denoised - fft_lowpass(denoised, cutoff)) <= 1e-3
    assert rel(low, fft_lowpass(denoised, cutoff)) > 0.5  # the band really changed


def test_gaussian_guide_at_strength_one_is_reference_low_band_plus_model_high_band():
    reference = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(3))
    denoised = torch.randn(1, 4, 100, 100, generator=torch.Generator().manual_seed(4))
    sigma = working_band("gaussian", AMOUNT["gaussian"], 100 / 40)
    z_l = reference_at(reference, (100, 100))
    out = align_low_frequencies(denoised, gaussian_lowpass(z_l, sigma), 1.0, "gaussian", sigma)
    model_high = denoised - gaussian_lowpass(denoised, sigma)
    assert rel(out - model_high, gaussian_lowpass(z_l, sigma)) <= 1e-3
    # The guide adds only blurred content, and differs from the reference only by high-passed content.
    assert rel(out - denoised, gaussian_lowpass(z_l - denoised, sigma)) <= 1e-3
    diff = denoised - z_l
    assert rel(out - z_l, diff - gaussian_lowpass(diff, sigma)) <= 1e-3
    # G is no projection: G(out) - G(z_L) = G(I - G)(denoised - z_L), what is left of the mid band. Even for white
    # noise (the worst case, flat in that band) G(out) is much nearer G(z_L) than G(denoised) is.
    target = gaussian_lowpass(z_l, sigma)
    assert rel(gaussian_lowpass(out, sigma), target) < 0.5 * rel(gaussian_lowpass(denoised, sigma), target)


@pytest.mark.parametrize("kind", ["gaussian", "fft"])
def test_partial_strength_interpolates_the_low_band_and_keeps_the_high_band(kind):
    g = torch.Generator().manual_seed(5)
    denoised, z_l = torch.randn(1, 4, 48, 48, generator=g), torch.randn(1, 4, 48, 48, generator=g)
    amount = working_band(kind, AMOUNT[kind], 2.0)
    out = align_low_frequencies(denoised, lowpass(z_l, kind, amount), 0.3, kind, amount)
    expected = denoised + 0.3 * lowpass(z_l - denoised, kind, amount)
    assert rel(out, expected) <= 1e-5


def test_reference_resize_keeps_the_picture_at_non_integer_factors_and_aspects():
    for (h, w), (H, W) in [((40, 40), (100, 100)), ((30, 50), (75, 125)), ((96, 128), (316, 422)), ((64, 64), (26, 26))]:
        resized = reference_at(smooth_field(h, w), (H, W))
        assert resized.shape[-2:] == (H, W)
        assert rel(resized, smooth_field(H, W)) < 0.03, (h, w, H, W)


def test_reference_of_another_aspect_ratio_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"reference is 40x40 cells .* is 60x100: their aspect ratios differ .* same aspect ratio"):
        reference_at(torch.zeros(1, 4, 40, 40), (100, 60))


def test_reference_batch_broadcasts_or_matches_else_names_the_input():
    one, two = torch.zeros(1, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    assert reference_for_batch(one, 3).shape[0] == 3 and reference_for_batch(two, 2) is two
    with pytest.raises(ValueError, match="reference holds 2 latents but the sampler's batch has 3 images"):
        reference_for_batch(two, 3)


def test_working_band_follows_the_scale():
    assert working_band("gaussian", 1.5, 2.5) == pytest.approx(3.75)
    assert working_band("fft", 0.5, 2.5) == pytest.approx(0.2)
    assert working_band("fft", 1.0, 0.5) == 1.0  # a reference larger than the latent: keep every frequency


def test_schedule_progress_and_step_weights():
    sigmas = torch.tensor([14.6, 6.0, 2.5, 0.9, 0.0])
    assert [schedule_progress(sigmas, float(s)) for s in sigmas[:-1]] == [0.0, 0.25, 0.5, 0.75]
    assert schedule_progress(sigmas, 4.0) == 0.25  # a midpoint evaluation belongs to the step above it
    assert schedule_progress(sigmas, 20.0) == 0.0  # churned sigma above the schedule
    assert [step_weight(p, 0.8, 0.25, 0.75, "constant") for p in (0.0, 0.25, 0.5, 0.75)] == [0.0, 0.8, 0.8, 0.0]
    assert step_weight(0.5, 1.0, 0.0, 1.0, "linear") == pytest.approx(0.5)
    assert step_weight(0.5, 1.0, 0.0, 1.0, "cosine") == pytest.approx(0.5)
    assert step_weight(0.25, 1.0, 0.0, 1.0, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError, match="decay 'square' is not one of"):
        step_weight(0.5, 1.0, 0.0, 1.0, "square")


# --- in the host: real sampling ----------------------------------------------------------------------------

WORK = 32  # working latent side
REF = 13   # reference side: a x2.46 upscale


def reference_latent(batch: int = 1, side: int = REF, seed: int = 7, kind: str = "sd15") -> dict:
    """A random low-resolution LATENT shaped as the VAE of model ``kind`` gives it."""
    from harness.tiny_models import latent_shape
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(latent_shape(kind, batch, side, side), generator=g)}


def guided(pack_node, model, reference, kind="fft", strength=1.0, start=0.0, end=1.0, decay="constant"):
    return pack_node("LowFreqStructureGuide").execute(model, reference, strength, kind, AMOUNT["gaussian"],
                                                    AMOUNT["fft"], start, end, decay)[0]


def recording(model, store: list):
    """A clone that records the denoised estimate its post-CFG functions so far produced."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(lambda args: store.append(args["denoised"].clone()) or args["denoised"])
    return m


def sample(tiny, model, kind="sd15", batch=1, steps=4, seed=0, denoised=None):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    shape = tiny.latent_shape(kind, batch, WORK, WORK)
    latent, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    callback = None if denoised is None else (lambda i, x0, x, total: denoised.append(x0.clone()))
    return comfy.sample.sample(model, noise, steps, 2.0, "euler", "normal", tiny.conditioning(kind, 1),
                               tiny.conditioning(kind, 2), latent, denoise=0.75, callback=callback,
                               disable_pbar=True, seed=seed)


def sampled_reference_low(model, reference: dict, kind: str, work: int = WORK) -> torch.Tensor:
    """LP(z_L) in the sampler's space, computed independently of the node (resize first, then process_in)."""
    samples = reference["samples"]
    z_l = model.model.latent_format.process_in(reference_at(samples, (work, work)))
    return lowpass(z_l, kind, working_band(kind, AMOUNT[kind], work / samples.shape[-1]))


def assert_guided_steps(model, reference, kind, unguided, final, batch_items=None):
    """After each step: the low band is the reference's, the high band the unguided estimate's."""
    amount = working_band(kind, AMOUNT[kind], WORK / reference["samples"].shape[-1])
    target = sampled_reference_low(model, reference, kind).expand_as(final[0])
    assert len(unguided) == len(final) == 4
    assert rel(lowpass(unguided[0], kind, amount), target) > 0.1  # the model alone would have drifted
    for before, after in zip(unguided, final):
        low, high = frequency_split(after, kind, amount)
        before_high = frequency_split(before, kind, amount)[1]
        if kind == "fft":  # an orthogonal projection: both bands measured by the same filter
            assert rel(low, target) <= 1e-3 and rel(high, before_high) <= 1e-3
        else:  # the Gaussian split: out = G(z_L) + (z0_hat - G(z0_hat))
            assert rel(after - before_high, target) <= 1e-3
        for i in batch_items or ():
            assert rel(after[i] - before_high[i], target[i]) <= 1e-3


@pytest.mark.parametrize("model_kind,kind", [("sd15", "fft"), ("sdxl", "gaussian"), ("sdxl", "fft")])
def test_strength_one_aligns_every_step_of_real_sampling(tiny, pack_node, model_kind, kind):
    base = tiny.tiny_model(model_kind)
    unguided, final = [], []
    reference = reference_latent()
    sample(tiny, guided(pack_node, recording(base, unguided), reference, kind), model_kind, denoised=final)
    assert_guided_steps(base, reference, kind, unguided, final)


def test_batch_of_two_with_one_reference_each_and_with_a_shared_one(tiny, pack_node):
    base = tiny.tiny_model("sd15")
    for reference in (reference_latent(batch=2), reference_latent(batch=1)):
        unguided, final = [], []
        sample(tiny, guided(pack_node, recording(base, unguided), reference, "gaussian"), batch=2, denoised=final)
        assert final[0].shape[0] == 2
        assert_guided_steps(base, reference, "gaussian", unguided, final, batch_items=(0, 1))


def test_strength_zero_and_steps_outside_the_range_are_bitwise_unpatched(tiny, pack_node):
    base = tiny.tiny_model("sd15")
    plain = []
    expected = sample(tiny, base, denoised=plain)
    assert torch.equal(sample(tiny, guided(pack_node, base, reference_latent(), strength=0.0)), expected)
    late = []
    sample(tiny, guided(pack_node, base, reference_latent(), start=0.5, end=1.0), denoised=late)
    assert torch.equal(late[0], plain[0]) and torch.equal(late[1], plain[1])
    assert not torch.equal(late[2], plain[2])


def test_decay_weights_reach_the_sampler(tiny, pack_node):
    """Linear decay over 4 steps: w = 1, 0.75, 0.5, 0.25, seen as the FFT low band's interpolation."""
    base = tiny.tiny_model("sd15")
    reference = reference_latent()
    unguided, final = [], []
    sample(tiny, guided(pack_node, recording(base, unguided), reference, decay="linear"), denoised=final)
    amount = working_band("fft", AMOUNT["fft"], WORK / REF)
    target = sampled_reference_low(base, reference, "fft")
    for w, before, after in zip((1.0, 0.75, 0.5, 0.25), unguided, final):
        expected = torch.lerp(fft_lowpass(before, amount), target, w)
        assert rel(fft_lowpass(after, amount), expected) <= 1e-3


def test_guide_acts_on_the_merged_tiles_in_either_chain_order(tiny, pack_node):
    base = tiny.tiny_model("sd15")
    reference = reference_latent()
    tiles = lambda m: pack_node("TiledBlendedDiffusion").execute(m, 192, 192, 64, 4)[0]  # 2x2 tiles of 24 cells
    outputs = []
    for chain in (lambda rec: guided(pack_node, rec(tiles(base)), reference),   # tiles, then the guide
                  lambda rec: tiles(guided(pack_node, rec(base), reference))):  # the guide, then tiles
        unguided, final = [], []
        outputs.append(sample(tiny, chain(lambda m: recording(m, unguided)), denoised=final))
        assert_guided_steps(base, reference, "fft", unguided, final)
    assert torch.equal(outputs[0], outputs[1])


def test_bad_references_are_named_and_the_input_model_is_never_mutated(tiny, pack_node):
    base = tiny.tiny_model("sd15")
    before = base.model_options, copy.deepcopy(base.model_options), copy.deepcopy(base.wrappers)
    patched = guided(pack_node, base, reference_latent())
    assert base.model_options is before[0] and base.model_options == before[1] and base.wrappers == before[2]
    assert len(patched.model_options["sampler_post_cfg_function"]) == 1
    for samples, message in [(torch.zeros(1, 16, REF, REF), "reference has 16 channels but the model's latents have 4"),
                             (torch.zeros(0, 4, REF, REF), "reference is empty"),
                             (torch.zeros(1, 4, 0, REF), "reference is empty"),
                             (torch.zeros(1, 4, 2, REF, REF), "reference has shape .* needs an image latent")]:
        with pytest.raises(ValueError, match=message):
            guided(pack_node, base, {"samples": samples})
    with pytest.raises(ValueError, match="start_percent = 0.6, end_percent = 0.4"):
        guided(pack_node, base, reference_latent(), start=0.6, end=0.4)
    with pytest.raises(ValueError, match="strength = 1.5 must be a finite number from 0.0 to 1.0"):
        guided(pack_node, base, reference_latent(), strength=1.5)
    with pytest.raises(ValueError, match="cutoff = 0.0 must be a finite number from 0.01 to 1.0"):
        pack_node("LowFreqStructureGuide").execute(base, reference_latent(), 1.0, "fft", 1.0, 0.0, 0.0, 1.0, "constant")
    # NaN passes the host's bounds check (every comparison with it is false); it used to fail at the KSampler.
    with pytest.raises(ValueError, match="sigma = nan must be a finite number from 0.1 to 64.0"):
        pack_node("LowFreqStructureGuide").execute(base, reference_latent(), 1.0, "gaussian", float("nan"), 0.5, 0.0,
                                                   1.0, "constant")
    # Found before the first model evaluation: the UNet must never run.
    calls = []
    base.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(ValueError, match="reference holds 3 latents but the sampler's batch has 2 images"):
        sample(tiny, guided(pack_node, base, reference_latent(batch=3)), batch=2)
    with pytest.raises(ValueError, match="reference is 13x20 cells .* 32x32"):
        sample(tiny, guided(pack_node, base, {"samples": torch.zeros(1, 4, 20, 13)}))
    assert calls == []


# --- in the host executor: an API prompt -------------------------------------------------------------------

def structure_prompt(strength: float) -> dict:
    """Two-colour 80x80 image -> 10x10 latent (the reference) -> x2.5 latent -> guided KSampler."""
    return {
        "1": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 80, "batch_size": 1, "color": 0xC03020}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 32, "batch_size": 1, "color": 0x2040E0}},
        "4": {"class_type": "ImageCompositeMasked",
              "inputs": {"destination": ["2", 0], "source": ["3", 0], "x": 16, "y": 24, "resize_source": False}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "bicubic",
                                                          "scale_by": 2.5}},
        "7": {"class_type": "LowFreqStructureGuide",
              "inputs": {"model": ["1", 0], "reference": ["5", 0], "strength": strength, "lowpass": "fft",
                         "sigma": 1.0, "cutoff": 0.5, "start_percent": 0.0, "end_percent": 1.0, "decay": "constant"}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue box on red", "clip": ["1", 1]}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "10": {"class_type": "KSampler",
               "inputs": {"model": ["7", 0], "seed": 3, "steps": 3, "cfg": 2.0, "sampler_name": "euler",
                          "scheduler": "normal", "positive": ["8", 0], "negative": ["9", 0],
                          "latent_image": ["6", 0], "denoise": 0.6}},
        "11": {"class_type": "CupscaleCapture", "inputs": {"value": ["10", 0], "key": "sampled"}},
        "12": {"class_type": "CupscaleCapture", "inputs": {"value": ["5", 0], "key": "reference"}},
    }


def test_graph_output_keeps_the_reference_low_band_through_the_host_executor(host):
    """Euler's last step returns the last denoised estimate, so the sampled latent itself carries LP(z_L)."""
    from harness import comfy_host
    from harness.test_nodes import CAPTURED
    executor = comfy_host.new_executor()  # shared: the second run reuses the encode
    kept = []
    for strength in (1.0, 0.0):
        comfy_host.run_prompt(structure_prompt(strength), executor)
        kept.append((CAPTURED["sampled"]["samples"], CAPTURED["reference"]["samples"]))
    (out, reference), (unguided, _) = kept
    assert out.shape[-2:] == (25, 25) and reference.shape[-2:] == (10, 10)
    cutoff = working_band("fft", 0.5, 2.5)
    target = fft_lowpass(reference_at(reference, (25, 25)), cutoff)
    assert rel(fft_lowpass(out, cutoff), target) <= 1e-3
    assert rel(fft_lowpass(unguided, cutoff), target) > 10 * rel(fft_lowpass(out, cutoff), target)
