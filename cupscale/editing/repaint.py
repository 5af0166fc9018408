"""RePaint resampling (Lugmayr et al. 2022, "RePaint", Sec. 4.2 and Fig. 9/10).

Blended diffusion pins the background to the noised source, but each step sees that background
only once, so the generated region need not agree with it. RePaint lets the two harmonise: after
``jump_length`` denoising steps the sample is diffused back ``jump_length`` steps with fresh noise
and denoised again, ``resample_count`` times per jump point, before sampling moves on. Multi-Stage
Blended Diffusion (Ackermann & Li 2022) runs its low-resolution edit, the first stage of its Fig. 1,
this way (``repaint_steps`` / ``repaint_jump`` in its code).

Notation: ``sigmas`` is the schedule handed to the sampler, descending, ``steps = len(sigmas) - 1``;
the sample "at index k" has noise level ``sigmas[k]``, so index 0 is the start (pure noise, or the
SDEdit start when the schedule is truncated) and index ``steps`` the end. A *path* is the list of
indices the sample visits; a move down the list (k -> k + 1) is one step of the wrapped sampler, a
move up (k -> k - jump_length) one re-noising.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import InputError


def jump_schedule(steps: int, jump_length: int, resample_count: int) -> list[int]:
    """RePaint's time schedule with jumps, as sigma indices.

    RePaint's times t run from ``steps - 1`` down to -1 (t = -1 is the clean sample); here index
    ``k = steps - 1 - t``. RePaint's jump points are the times 0, j, 2j, ... below ``steps - j``
    (j = ``jump_length``), i.e. indices ``steps - 1``, ``steps - 1 - j``, ... down to j. On reaching one
    the sample jumps back j indices, at most ``resample_count - 1`` times there, so each stretch of
    j steps is sampled ``resample_count`` times (the last step, to ``sigmas[-1]``, once).
    """
    check_resampling(jump_length, resample_count)
    if jump_length >= steps:
        raise InputError(f"{{jump}} = {jump_length} must be smaller than the number of steps being sampled "
                         f"({steps}; with denoise < 1 only the steps after the start count): lower {{jump}} "
                         "or raise the steps.", jump="jump_length")
    jumps_left = {k: resample_count - 1 for k in range(steps - 1, jump_length - 1, -jump_length)}
    path, k = [0], 0
    while k < steps:
        k += 1
        path.append(k)
        if jumps_left.get(k, 0) > 0:
            jumps_left[k] -= 1
            k -= jump_length
            path.append(k)
    return path


def check_resampling(jump_length: int, resample_count: int) -> None:
    if resample_count < 1:
        raise InputError(f"{{count}} = {resample_count} must be at least 1 "
                         "(1 = no resampling: the wrapped sampler alone).", count="resample_count")
    if jump_length < 1:
        raise InputError(f"{{jump}} = {jump_length} must be at least 1 step.", jump="jump_length")


def monotone_runs(path: list[int]) -> list[tuple[int, int]]:
    """The path as maximal runs ``(a, b)``: ``a < b`` denoises sigmas[a] -> sigmas[b] in one sampler
    call (so a multistep sampler restarts its history after each jump), ``a > b`` is one jump."""
    runs, start = [], 0
    for i in range(1, len(path)):
        last = i == len(path) - 1
        if last or (path[i + 1] > path[i]) != (path[i] > path[i - 1]):
            runs.append((path[start], path[i]))
            start = i
    return runs


def forward_steps(path: list[int]) -> int:
    """Denoising steps along the path: the sampler's steps, hence the progress bar's length."""
    return sum(b - a for a, b in zip(path, path[1:]) if b > a)


def renoise_ve(x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Diffuse x from sigma_from up to sigma_to in the k-diffusion (variance-exploding)
    parametrisation x = x0 + sigma * eps: independent Gaussian increments add their variances, so
    x + sqrt(sigma_to^2 - sigma_from^2) * eps is exactly the forward process q(x_to | x_from) that
    RePaint's jumps sample (Sec. 4.2), over any number of steps at once."""
    return x + (sigma_to ** 2 - sigma_from ** 2).clamp(min=0).sqrt() * noise


def renoise_flow(x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The same for rectified flow, x = (1 - sigma) x0 + sigma * eps (ComfyUI's CONST sampling):
    scale by c = (1 - sigma_to) / (1 - sigma_from), which takes the x0 part to the new level, then add
    the noise still missing, sqrt(sigma_to^2 - c^2 sigma_from^2) * eps."""
    c = (1 - sigma_to) / (1 - sigma_from)
    return c * x + (sigma_to ** 2 - (c * sigma_from) ** 2).clamp(min=0).sqrt() * noise


def normal_sampler(like: torch.Tensor, seed: int | None) -> Callable[[], torch.Tensor]:
    """Standard normal draws shaped like ``like`` from their own seeded stream (global RNG if None)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=like.device).manual_seed(seed)
    return lambda: torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


@torch.no_grad()
def sample_repaint(model, x, sigmas, extra_args=None, callback=None, disable=None, *, path: list[int],
                   sample_run: Callable, renoise: Callable, check_interrupt: Callable[[], None] = lambda: None):
    """Walk ``path`` over ``sigmas``: denoising runs by ``sample_run`` (a k-diffusion sampler function),
    jumps by ``renoise``. With one run (resample_count 1) this is exactly ``sample_run``.

    Seeds: the n-th denoising run gets ``seed + n`` (so its ancestral noise differs from the other
    runs'), the jumps draw from a stream seeded one past the last run's seed.
    """
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    runs = monotone_runs(path)
    denoising = sum(b > a for a, b in runs)
    noise = normal_sampler(x, None if seed is None else seed + denoising)
    shape, done, n = x.shape, 0, 0
    with tqdm(total=forward_steps(path), disable=disable) as bar:
        for a, b in runs:
            check_interrupt()
            if b < a:
                x = renoise(x, sigmas[a], sigmas[b], noise())
                continue

            def report(info, offset=done):
                bar.update(1)
                if callback is not None:
                    callback({**info, "i": offset + info["i"]})

            args = extra_args if n == 0 or seed is None else {**extra_args, "seed": seed + n}
            x = sample_run(model, x, sigmas[a:b + 1], extra_args=args, callback=report, disable=True)
            if x.shape != shape:
                raise ValueError(f"the wrapped sampler changed the latent from {tuple(shape)} to {tuple(x.shape)} "
                                 "(an upscaling sampler?); RePaint can only resample a sampler that keeps its size.")
            done, n = done + b - a, n + 1
    return x
