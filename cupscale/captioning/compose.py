"""Region prompts from captions: every crop asked once, answers composed, failures handled.

A region prompt is ``prefix, caption(s), suffix``; a region whose caption failed takes the global
prompt or stops the run, as the request says. Whole-image answers (the global prompt's stand-in,
XPSR's descriptions) have no fallback.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..errors import RunError
from ..tiling.grid import RegionGrid
from .captioner import Answer, Captioner
from .instructions import CaptionRequest
from .region_prompts import PIXELS_PER_CELL, RegionPrompts
from .regions import region_crops, to_uint8_rgb, whole_image

logger = logging.getLogger(__name__)


def compose(prefix: str, parts: Sequence[str], suffix: str) -> str:
    """``prefix, part, ..., suffix`` without empty pieces."""
    return ", ".join(p for p in (prefix.strip(), *(p.strip() for p in parts), suffix.strip()) if p)


def caption_image(image: torch.Tensor, grid: RegionGrid, captioner: Captioner,
                  request: CaptionRequest) -> RegionPrompts:
    """Region prompts for ``image`` (a host IMAGE of one picture) over ``grid``.

    Every (crop, instruction) pair is asked once; regions whose answers failed take the global
    prompt when ``request.fallback_to_global``, otherwise the run stops with the list of them.
    """
    pixels = to_uint8_rgb(image)
    if (grid.height, grid.width) != (pixels.shape[0] // PIXELS_PER_CELL, pixels.shape[1] // PIXELS_PER_CELL):
        raise ValueError(f"the grid covers a {grid.width}x{grid.height}-cell latent but the image is "
                         f"{pixels.shape[1]}x{pixels.shape[0]} pixels; build the grid with image_grid().")
    crops, whole = region_crops(pixels, grid), whole_image(pixels)
    about_whole = whole_image_instructions(request)
    jobs = [(crop, ins) for ins in request.region_instructions() for crop in crops]
    jobs += [(whole, ins) for ins in about_whole.values()]
    answers = captioner.answer(jobs)
    region_answers = answers[:len(jobs) - len(about_whole)]  # instruction-major: region i at i, i + n, ...
    texts = {name: whole_text(a, name) for name, a in zip(about_whole, answers[len(region_answers):])}

    global_prompt = request.global_prompt.strip() or texts["high_level"]
    per_region = [region_answers[i::len(crops)] for i in range(len(crops))]
    return RegionPrompts(grid, region_texts(per_region, grid, request, global_prompt), global_prompt,
                         texts.get("high_level", "") if request.xpsr else "", texts.get("low_level", ""))


def whole_image_instructions(request: CaptionRequest) -> dict[str, str]:
    """XPSR's two descriptions when asked; the high-level one also stands in for a missing global prompt."""
    names = ["high_level"] if request.xpsr or not request.global_prompt.strip() else []
    names += ["low_level"] if request.xpsr else []
    return {name: request.instructions.get(name) for name in names}


def region_texts(per_region: list[list[Answer]], grid: RegionGrid, request: CaptionRequest,
                 global_prompt: str) -> tuple[str, ...]:
    """``prefix, answers, suffix`` per region; failed regions get the global prompt or stop the run."""
    prompts, failures = [], {}
    for i, answers in enumerate(per_region):
        errors = [a.error for a in answers if a.error]
        if errors:
            failures[i] = errors[0]
            prompts.append(global_prompt)
        else:
            prompts.append(compose(request.prefix, [a.text for a in answers], request.suffix))
    report_failures(failures, grid, request.fallback_to_global)
    return tuple(prompts)


def whole_text(answer: Answer, name: str) -> str:
    """A whole-image answer is needed as such (global prompt, XPSR): no fallback for it."""
    if answer.error:
        raise RunError(f"the model gave no {name.replace('_', '-')} description of the whole image "
                       f"({answer.error}). Type a {{global_prompt}}, check {{instruction}} and {{max_tokens}}, "
                       f"or try another model.", global_prompt="global_prompt", instruction=f"{name}_instruction",
                       max_tokens="max_tokens")
    return answer.text


def report_failures(failures: dict[int, str], grid: RegionGrid, fallback: bool) -> None:
    if not failures:
        return
    listed = "; ".join(f"region {i} (row {i // grid.cols}, col {i % grid.cols}): {why}"
                       for i, why in failures.items())
    if not fallback:
        raise RunError(f"{len(failures)} of {len(grid)} regions got no caption: {listed}. Set {{policy}} to "
                       f"{{fallback}} to continue with the global prompt there.", policy="on_region_failure",
                       fallback="fallback_to_global")
    logger.warning("MLLMRegionCaptioner: %d of %d regions got no caption and use the global prompt: %s",
                   len(failures), len(grid), listed)
