"""Rotary positions past the trained range: NTK, YaRN and vision YaRN frequencies, with DyPE's schedule.

A RoPE DiT (Flux, Qwen-Image) is trained around one resolution, L0 patches a side (Flux: 1024 px, 64
patches). At 4K-8K the whole image's ids run to 4-8 L0, where the low frequencies take angles the model never
saw. NTK stretches the base theta, YaRN blends per frequency between position interpolation (low frequencies),
NTK and the base frequencies (the highest ones), and multiplies cos and sin by an attention temperature.
DyPE (Issachar et al., "DyPE: Dynamic Position Extrapolation for Ultra High Resolution Diffusion") makes the
blend depend on the noise level t in [0, 1]: early, noisy steps settle the layout with the full
extrapolation; YaRN's thresholds then shrink with kappa(t) = t^lambda_t, so later steps, which paint detail,
keep more frequencies at their base (and NTK) values.

The frequencies depend only on the whole image's size and t, never on a tile: a tile's rotary table is the
whole image's at the tile's ids, so neighbouring tiles still agree (cupscale.tiling.positions gives them the
whole image's ids).

Notation per axis: d its rotary dims, omega_i = theta^(-2i/d) for i < d/2, s = max(P/L0, 1) for P patches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("ntk", "yarn", "vision_yarn")
BETA = (1.25, 0.75)
"""YaRN's rotation thresholds between NTK (above beta0 rotations over L0) and interpolation (below beta1)."""
GAMMA = (16.0, 2.0)
"""The thresholds above which the base frequencies are kept unchanged (gamma0 rotations), blended down to gamma1."""


@dataclass(frozen=True)
class Extrapolation:
    """How positions past ``base`` patches (height, width) are extrapolated. ``dynamic``: DyPE's schedule
    (kappa(t) = t^lambda_t; NTK's factor b^(lambda_s·kappa)); off, the static method at every step."""

    mode: str
    base: tuple[int, int]
    dynamic: bool = True
    lambda_s: float = 2.0
    lambda_t: float = 2.0


def base_omega(dim: int, theta: float, device=None) -> torch.Tensor:
    """omega_i = theta^(-2i/d), i < d/2, in float64 (as the host's rope computes them)."""
    exponents = torch.arange(0, dim // 2, dtype=torch.float64, device=device) * 2 / dim
    return 1.0 / theta ** exponents


def correction_index(rotations: torch.Tensor, dim: int, theta: float, base: int) -> torch.Tensor:
    """The (fractional) i at which omega_i turns ``rotations`` times over ``base`` positions."""
    return dim * torch.log(base / (2 * math.pi * rotations.clamp_min(1e-12))) / (2 * math.log(theta))


def ramp_mask(r0: torch.Tensor, r1: torch.Tensor, dim: int, theta: float, base: int) -> torch.Tensor:
    """1 for the frequencies above ``r0`` rotations, 0 below ``r1``, a linear ramp between (YaRN's
    find_correction_range and linear_ramp_mask: the lower end is only kept from going negative, the upper one
    within d/2; the ramp in float32, as there)."""
    lo = torch.floor(correction_index(r0, dim, theta, base)).clamp_min(0)
    hi = torch.ceil(correction_index(r1, dim, theta, base)).clamp(max=dim - 1).clamp(max=dim // 2)
    hi = torch.where(lo == hi, hi + 0.001, hi)
    i = torch.arange(dim // 2, dtype=torch.float32, device=lo.device)
    ramp = ((i - lo.float()) / (hi - lo).float()).clamp(0, 1)
    return (1 - ramp).to(torch.float64)


def kappa(t: torch.Tensor, e: Extrapolation) -> torch.Tensor:
    """DyPE's kappa(t) = t^lambda_t: 1 at pure noise, 0 at the clean image; 1 throughout when not dynamic."""
    return t ** e.lambda_t if e.dynamic else torch.ones_like(t)


def ntk_factor(scale: float, dim: int, t: torch.Tensor, e: Extrapolation) -> torch.Tensor:
    """What multiplies theta: b = s^(d/(d-2)), under DyPE b^(lambda_s·kappa(t)), never below 1."""
    b = torch.as_tensor(scale ** (dim / (dim - 2)), dtype=torch.float64, device=t.device)
    return (b ** (e.lambda_s * kappa(t, e)) if e.dynamic else b).clamp_min(1.0)


def yarn_omega(dim: int, theta: float, base: int, linear: float, ntk: float, t: torch.Tensor,
               e: Extrapolation) -> torch.Tensor:
    """YaRN's two blends: NTK (scale ``ntk``) for the high frequencies, interpolation by ``linear`` for the low
    ones, then the base frequencies for the highest; DyPE scales the thresholds by kappa(t)."""
    omega = base_omega(dim, theta, t.device)
    k = kappa(t, e)
    ntk_omega = base_omega(dim, theta * ntk ** (dim / (dim - 2)), t.device)
    mask = ramp_mask(BETA[0] * k, BETA[1] * k, dim, theta, base)
    blended = omega / linear * (1 - mask) + ntk_omega * mask
    mask = ramp_mask(GAMMA[0] * k, GAMMA[1] * k, dim, theta, base)
    return blended * (1 - mask) + omega * mask


def axis_frequencies(dim: int, theta: float, axis: int, whole: tuple[int, int], t: torch.Tensor,
                     e: Extrapolation) -> tuple[torch.Tensor, torch.Tensor]:
    """(omega, mscale) of spatial ``axis`` (0 height, 1 width) for a whole image of ``whole`` patches at noise
    level ``t`` (a 0-d tensor: read on its device, no sync). At or below the base size: omega_i, 1."""
    scale = max(whole[axis] / e.base[axis], 1.0)
    overall = max(whole[0] / e.base[0], whole[1] / e.base[1], 1.0)
    one = torch.ones((), dtype=torch.float64, device=t.device)
    if e.mode == "ntk":
        return base_omega(dim, theta * ntk_factor(scale, dim, t, e), t.device), one
    if e.mode == "yarn":
        if scale == 1.0:
            return base_omega(dim, theta, t.device), one
        return yarn_omega(dim, theta, e.base[axis], scale, scale, t, e), one * (0.1 * math.log(scale) + 1)
    if e.mode == "vision_yarn":
        if overall == 1.0:
            return base_omega(dim, theta, t.device), one
        temperature = 1 + 0.1 * math.log(overall) * kappa(t, e).to(torch.float64)
        return yarn_omega(dim, theta, e.base[axis], scale, overall, t, e), temperature
    raise ValueError(f"mode = {e.mode!r}: one of {', '.join(MODES)}")


def rotary(pos: torch.Tensor, omega: torch.Tensor, mscale: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., n, d/2, 2, 2) of positions ``pos`` (..., n) at ``omega``, in the layout of the
    host's flux rope ([[cos, -sin], [sin, cos]]), cos and sin times ``mscale``."""
    angles = pos.to(torch.float32).to(torch.float64).unsqueeze(-1) * omega
    cos, sin = torch.cos(angles) * mscale, torch.sin(angles) * mscale
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).to(torch.float32)
