"""Global Structure Prior (C-Upscale, Fig. 3): keep the low-resolution image's layout.

Notation. At every denoising step the sampler holds the denoised estimate z0_hat of the high-resolution
latent (for tiled sampling, the MultiDiffusion merge of the tiles, after CFG). z_L is the
low-resolution latent resized to z0_hat's size. A low-pass LP splits a latent into bands,
x = LP(x) + HP(x) with HP = I - LP. The prior aligns z0_hat's low band with z_L's:

    z0_hat' = HP(z0_hat) + (1 - w_t) · LP(z0_hat) + w_t · LP(z_L)                                      (GSP)

so the composition and colours (low band) follow the low-resolution image while the details
(high band) stay the model's. w_t is the strength, shaped over a range of steps by a decay.

What w_t = 1 guarantees, for each kind of low-pass:
- ``fft``: LP is an orthogonal projection (an ideal band mask, LP(LP(x)) = LP(x)), so LP(z0_hat') = LP(z_L)
  and HP(z0_hat') = HP(z0_hat): both bands are exactly the intended ones, measured by the same filter.
- ``gaussian``: a blur G is not a projection (G(G(x)) != G(x)), so no additive correction can make
  G(z0_hat') = G(z_L) without deconvolving. What (GSP) guarantees is the split itself: z0_hat' is the sum
  of z_L's low band G(z_L) and z0_hat's high band z0_hat - G(z0_hat); equivalently the guide adds only blurred
  content, z0_hat' - z0_hat = G(z_L - z0_hat), and what differs from the reference is only high-passed,
  z0_hat' - z_L = (I - G)(z0_hat - z_L).
"""
from __future__ import annotations

import math

import torch

from ..latents import resize_hw
from ..tiling.lowpass import lowpass

DECAY_SHAPES = ("constant", "linear", "cosine")


def check_same_aspect(reference_hw: tuple[int, int], working_hw: tuple[int, int],
                      input_name: str = "reference", node: str = "LowFreqStructureGuide") -> None:
    """Refuse a low-res latent of another aspect ratio: stretching it would distort the structure.

    One latent cell of rounding per side is allowed (sizes are rounded to whole cells at every
    stage of an upscale), i.e. |H·w - W·h| <= H + W + h + w.
    """
    (h, w), (H, W) = reference_hw, working_hw
    if abs(H * w - W * h) > H + W + h + w:
        raise ValueError(
            f"{input_name} is {w}x{h} cells but the latent being sampled is {W}x{H}: their aspect ratios "
            f"differ ({w / h:.3f} vs {W / H:.3f}). Give {node} the low-resolution latent of the "
            f"same image (any size, same aspect ratio) that was upscaled to make the sampled latent.")


def reference_at(reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """z_L: the low-resolution latent resized to the working latent's size (any factor, 2.5 or 1/3).

    Bilinear, antialiased when shrinking: only the reference's low band is used, and bilinear
    interpolation keeps it without the overshoot of bicubic.
    """
    check_same_aspect(tuple(reference.shape[-2:]), size)
    if tuple(reference.shape[-2:]) == tuple(size):
        return reference
    resized = resize_hw(reference.float(), size, mode="bilinear", align_corners=False, antialias=True)
    return resized.to(reference.dtype)


def reference_for_batch(reference: torch.Tensor, batch: int) -> torch.Tensor:
    """One reference for the whole batch, or one per image."""
    if reference.shape[0] == batch:
        return reference
    if reference.shape[0] == 1:
        return reference.expand(batch, *reference.shape[1:])
    raise ValueError(f"reference holds {reference.shape[0]} latents but the sampler's batch has {batch} images: "
                     f"give LowFreqStructureGuide one reference latent, or one per image of the batch.")


def upscale_factor(reference_hw: tuple[int, int], working_hw: tuple[int, int]) -> float:
    """The reference-to-working scale s: the geometric mean of the two axes' factors."""
    return math.sqrt(working_hw[0] * working_hw[1] / (reference_hw[0] * reference_hw[1]))


def working_band(kind: str, amount: float, scale: float) -> float:
    """A low-pass amount given in reference-latent units, in working-latent units.

    Users set the band relative to the reference, which holds frequencies up to its own Nyquist
    only: a Gaussian sigma of 1 reference cell spans ``scale`` working cells, and a cutoff that is a
    fraction of the reference's Nyquist is ``1 / scale`` of that fraction of the working Nyquist.
    So one setting means the same band at x1.5 and at x4.
    """
    return amount * scale if kind == "gaussian" else min(amount / scale, 1.0)


def step_weight(progress: float, strength: float, start: float, end: float, decay: str) -> float:
    """w_t: ``strength`` over the steps whose progress lies in [start, end), shaped by ``decay``.

    The decay runs from full strength at ``start`` toward zero at ``end``: constant, linear, or a
    half cosine (gentle at both ends). Outside the range w_t = 0.
    """
    if not start <= progress < end:
        return 0.0
    u = (progress - start) / (end - start)
    if decay == "constant":
        return strength
    if decay == "linear":
        return strength * (1.0 - u)
    if decay == "cosine":
        return strength * 0.5 * (1.0 + math.cos(math.pi * u))
    raise ValueError(f"decay {decay!r} is not one of {', '.join(DECAY_SHAPES)}")


def lowfreq_error(x: torch.Tensor, reference: torch.Tensor, kind: str, amount: float) -> float:
    """||LP(x) - LP(z_L)|| / ||LP(z_L)||: how far ``x``'s global structure is from the reference's."""
    target = lowpass(reference.float(), kind, amount)
    return float((lowpass(x.float(), kind, amount) - target).norm() / target.norm())
