"""Low/high-frequency split of latents (C-Upscale Global Structure Prior; MSBD low-passed background).

Two filters, both measurable: a Gaussian blur (kornia) whose ``sigma`` is in latent cells, and an
ideal FFT low-pass whose ``cutoff`` is a fraction of the Nyquist frequency.
"""
from __future__ import annotations

import math

import kornia
import torch


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur over the last two dims; ``sigma`` in latent cells, reflect-padded borders."""
    if sigma <= 0 or min(x.shape[-2:]) < 2:
        return x
    radius = min(max(1, math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    k = 2 * radius + 1
    out = kornia.filters.gaussian_blur2d(x.float(), (k, k), (sigma, sigma), border_type="reflect")
    return out.to(x.dtype)


def fft_lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal low-pass: keeps frequencies whose radius is below ``cutoff`` x Nyquist (0 < cutoff <= 1)."""
    if cutoff >= 1:
        return x
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).abs() * 2
    fx = torch.fft.rfftfreq(w, device=x.device) * 2
    keep = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() <= cutoff
    spectrum = torch.fft.rfft2(x.float())
    return torch.fft.irfft2(spectrum * keep, s=(h, w)).to(x.dtype)


def lowpass(x: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """Dispatch by name: ``gaussian`` (amount = sigma) or ``fft`` (amount = cutoff)."""
    if kind == "gaussian":
        return gaussian_lowpass(x, amount)
    if kind == "fft":
        return fft_lowpass(x, amount)
    raise ValueError(f"low-pass kind {kind!r} is not one of 'gaussian', 'fft'")


def frequency_split(x: torch.Tensor, kind: str, amount: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(LP(x), HP(x)) with HP = x − LP(x): the two bands sum back to ``x``."""
    low = lowpass(x, kind, amount)
    return low, x - low


def align_low_frequencies(denoised: torch.Tensor, reference_low: torch.Tensor, weight: float,
                          kind: str, amount: float) -> torch.Tensor:
    """C-Upscale's (GSP), cupscale.priors.structure: HP(ẑ₀) + lerp(LP(ẑ₀), LP(z_L), w_t); ``reference_low``
    is LP(z_L). Also the low-passed background of blended diffusion, at weight 1."""
    low, high = frequency_split(denoised, kind, amount)
    return high + torch.lerp(low, reference_low.to(low.dtype), weight)
