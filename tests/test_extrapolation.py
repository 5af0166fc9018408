"""Rotary frequencies past the trained positions (cupscale.tiling.extrapolation) against an independent
transcription of DyPE's official FLUX code (guyyariv/DyPE, flux/transformer_flux.py at 5db5897: its
get_1d_rotary_pos_embed and FluxPosEmbed), written here in numpy, scalar by scalar."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cupscale.tiling.extrapolation import Extrapolation, axis_frequencies, base_omega, rotary

pytestmark = pytest.mark.hostfree

THETA = 10000.0
STEPS = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 0.01]


def official_correction_range(r0, r1, dim, base):
    def factor(r):
        return dim * math.log(base / (r * 2 * math.pi)) / (2 * math.log(THETA))
    return max(np.floor(factor(r0)), 0), min(np.ceil(factor(r1)), dim - 1)


def official_ramp(lo, hi, n):
    if lo == hi:
        hi += 0.001
    return np.clip((np.arange(n, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1).astype(np.float64)


def official_frequencies(method, dim, base, patches, t, dype=True):
    """(freqs, mscale) of one spatial axis as FluxPosEmbed computes them."""
    exps = np.arange(0, dim, 2, dtype=np.float64) / dim
    if method == "yarn" and patches > base:
        scale = max(patches / base, 1.0)
        b0, b1, g0, g1 = 1.25, 0.75, 16.0, 2.0
        freqs_base = 1.0 / THETA ** exps
        freqs_linear = 1.0 / (scale * THETA ** exps)
        freqs_ntk = 1.0 / (THETA * scale ** (dim / (dim - 2))) ** exps
        if dype:
            b0, b1 = b0 * t ** 2, b1 * t ** 2
        lo, hi = official_correction_range(b0, b1, dim, base)
        mask = 1 - official_ramp(max(0, lo), min(dim // 2, hi), dim // 2)
        freqs = freqs_linear * (1 - mask) + freqs_ntk * mask
        if dype:
            g0, g1 = g0 * t ** 2, g1 * t ** 2
        lo, hi = official_correction_range(g0, g1, dim, base)
        mask = 1 - official_ramp(max(0, lo), min(dim // 2, hi), dim // 2)
        return freqs * (1 - mask) + freqs_base * mask, 0.1 * math.log(scale) + 1.0
    ntk_factor = 1.0
    if method == "ntk" and patches > base:
        base_ntk = (patches / base) ** (dim / (dim - 2))
        ntk_factor = max(1.0, base_ntk ** (2.0 * t ** 2) if dype else base_ntk)
    return 1.0 / (THETA * ntk_factor) ** exps, 1.0


@pytest.mark.parametrize("method", ["yarn", "ntk"])
@pytest.mark.parametrize("dype", [True, False])
def test_frequencies_equal_the_official_codes_on_a_grid_of_steps_and_scales(method, dype):
    e = Extrapolation(method, (64, 64), dynamic=dype)
    for dim in (56, 16, 48):
        for patches in (32, 64, 65, 96, 128, 256, 512):
            for t in STEPS:
                ours, mscale = axis_frequencies(dim, THETA, 0, (patches, 48), torch.tensor(t, dtype=torch.float64), e)
                ref, ref_mscale = official_frequencies(method, dim, 64, patches, t, dype)
                assert np.abs(ours.numpy() - ref).max() <= 1e-6 * np.abs(ref).max(), (dim, patches, t)
                assert abs(float(mscale) - ref_mscale) <= 1e-6


def test_at_or_below_the_base_size_every_mode_gives_the_base_frequencies():
    for mode in ("ntk", "yarn", "vision_yarn"):
        e = Extrapolation(mode, (64, 80))
        for whole in ((64, 80), (32, 80), (1, 1), (64, 10)):
            for axis in (0, 1):
                omega, mscale = axis_frequencies(56, THETA, axis, whole, torch.tensor(0.6), e)
                assert torch.equal(omega, base_omega(56, THETA)) and float(mscale) == 1.0, (mode, whole, axis)


def test_at_pure_noise_the_schedule_is_the_static_method_and_it_changes_as_the_noise_falls():
    """(NTK's at pure noise is b^lambda_s, not b: the official code's; checked above.)"""
    for mode in ("yarn", "vision_yarn"):
        dynamic, static = Extrapolation(mode, (64, 64)), Extrapolation(mode, (64, 64), dynamic=False)
        one, half = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
        at_noise, _ = axis_frequencies(56, THETA, 0, (256, 256), one, dynamic)
        assert torch.equal(at_noise, axis_frequencies(56, THETA, 0, (256, 256), one, static)[0]), mode
        assert not torch.equal(at_noise, axis_frequencies(56, THETA, 0, (256, 256), half, dynamic)[0]), mode


def test_vision_yarn_takes_the_whole_images_scale_and_a_temperature_that_follows_the_schedule():
    e, t = Extrapolation("vision_yarn", (64, 64)), torch.tensor(0.5, dtype=torch.float64)
    square, mscale = axis_frequencies(56, THETA, 0, (256, 256), t, e)
    yarn, _ = axis_frequencies(56, THETA, 0, (256, 256), t, Extrapolation("yarn", (64, 64)))
    assert torch.allclose(square, yarn) and abs(float(mscale) - (1 + 0.1 * math.log(4) * 0.25)) < 1e-12
    narrow, _ = axis_frequencies(56, THETA, 1, (256, 64), t, e)  # the width fits, the image does not
    assert not torch.equal(narrow, base_omega(56, THETA))


def test_rotary_matrices_rotate_by_position_times_frequency_scaled_by_the_temperature():
    pos = torch.tensor([[0.0, 3.0, 17.0]])
    omega = base_omega(8, THETA)
    out = rotary(pos, omega, torch.tensor(1.5, dtype=torch.float64))
    assert out.shape == (1, 3, 4, 2, 2) and out.dtype == torch.float32
    angle = 17.0 * omega[2].item()
    expected = 1.5 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert torch.allclose(out[0, 2, 2], expected.float(), atol=1e-6)
