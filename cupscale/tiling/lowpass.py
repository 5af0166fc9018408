"""Low/high-frequency split of latents (C-Upscale Global Structure Prior; MSBD low-passed background).

Two filters, both measurable: a Gaussian blur whose ``sigma`` is in latent cells, and an ideal FFT
low-pass whose ``cutoff`` is a fraction of the Nyquist frequency. Both run every sampler step, so neither
reads anything back from the device (kornia's blur checks its sigma on the host at every call).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)  # one per (sigma, size, device) of a run, reused at every step
def gaussian_kernel(sigma: float, radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised 1D Gaussian exp(-x²/2sigma²) on the taps -radius..radius, float32, kept on ``device``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (kernel / kernel.sum()).float().to(device)


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur over the last two dims; ``sigma`` in latent cells, reflect-padded borders, in float32
    (separable: rows, then columns)."""
    if sigma <= 0 or min(x.shape[-2:]) < 2:
        return x
    radius = min(max(1, math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    kernel = gaussian_kernel(float(sigma), radius, x.device)
    shape = x.shape
    flat = x.float().reshape(-1, 1, *shape[-2:])
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return flat.reshape(shape).to(x.dtype)


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
    """(LP(x), HP(x)) with HP = x - LP(x): the two bands sum back to ``x``."""
    low = lowpass(x, kind, amount)
    return low, x - low


def align_low_frequencies(denoised: torch.Tensor, reference_low: torch.Tensor, weight: float,
                          kind: str, amount: float) -> torch.Tensor:
    """C-Upscale's (GSP), cupscale.priors.structure: HP(z0_hat) + lerp(LP(z0_hat), LP(z_L), w_t); ``reference_low``
    is LP(z_L). Also the low-passed background of blended diffusion, at weight 1."""
    low, high = frequency_split(denoised, kind, amount)
    return high + torch.lerp(low, reference_low.to(low.dtype), weight)
