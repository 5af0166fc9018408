"""Prompts per region from a multimodal LLM: instructions, region crops, the cache, composition.

Three papers ask an MLLM to look at the image:
- C-Upscale (seed 000, Fig. 3, Regional Semantic Prior): a descriptive prompt for every region,
  which fuels creative regional detail while the global prompt keeps the whole coherent.
- Zoomed-In, Diffused-Out (seed 001, Fig. 2, local degradation-aware prompt extraction): tags per
  tile that name both the content and its degradations, so a tile is not steered by content that
  lies elsewhere in the image.
- XPSR (seed 004, Sec. 3.3): two descriptions of the whole image, a high-level one (content, layout,
  scene) and a low-level one (quality: clarity, colour, noise, lighting), with its exact instructions.

Regions are the tiles of :func:`cupscale.tiling.grid.region_grid` in pixels (box x 8), so each region's
prompt lands on exactly the tile TiledBlendedDiffusion runs. Backends (local transformers models,
OpenAI-compatible endpoints) live in :mod:`cupscale.captioning.backends`; here is what they must provide.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ..tiling.grid import RegionGrid, region_grid
from .region_prompts import PIXELS_PER_CELL, RegionPrompts

logger = logging.getLogger(__name__)

DESCRIPTION = ("Describe this image in one or two sentences as a prompt for a text-to-image model: name the "
               "objects, materials, textures and colours you see. Reply with the description only.")
"""Per region (C-Upscale's Regional Semantic Prior). The paper does not print its instruction."""

DEGRADATION_TAGS = ("List what this image shows as short comma-separated tags: objects, materials and textures, "
                    "then its quality, such as sharp, blurry, noisy, jpeg artifacts or low light. "
                    "Reply with the tags only.")
"""Per region (Zoomed-In's local degradation-aware prompts, asked of an MLLM instead of a tagger)."""

XPSR_HIGH_LEVEL = "Please provide a descriptive summary of the content of this image"
"""XPSR Sec. 3.3, verbatim: the high-level semantic prior (objects, layout, scene)."""

XPSR_LOW_LEVEL = ("Please describe the quality of this image and evaluate it based on factors such as "
                  "clarity, color, noise, and lighting")
"""XPSR Sec. 3.3, verbatim: the low-level semantic prior (quality, clarity, noise, colour)."""

MODES = {
    "description (C-Upscale)": ("description",),
    "degradation tags (Zoomed-In)": ("tags",),
    "description + tags": ("description", "tags"),
}
"""What each region's prompt is made of; the names are the node's choices."""


class CaptionFailure(RuntimeError):
    """One call failed for its images only (a timeout, a server error): those regions may fall back."""


class CaptionBackend(Protocol):
    """A multimodal LLM that answers one instruction about each of a few images."""

    model_id: str  # names the model (and what changes its answers) in cache keys
    batch_size: int  # images per call

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str]:
        """One answer per image; raises :class:`CaptionFailure` when this call failed."""


@dataclass(frozen=True)
class Instructions:
    """What to ask; the field names are the node's ``<name>_instruction`` inputs."""

    description: str = DESCRIPTION
    tags: str = DEGRADATION_TAGS
    high_level: str = XPSR_HIGH_LEVEL
    low_level: str = XPSR_LOW_LEVEL

    def get(self, name: str) -> str:
        text = getattr(self, name).strip()
        if not text:
            default = getattr(Instructions, name)
            raise ValueError(f"{name}_instruction is empty: write what the MLLM should be asked "
                             f"(the default is {default!r}).")
        return text


@dataclass(frozen=True)
class CaptionRequest:
    """What to write (``mode`` is a key of :data:`MODES`) and how captions become prompts.

    A region prompt is ``prefix, caption(s), suffix``. An empty ``global_prompt`` is replaced by the
    model's high-level description of the whole image. ``fallback_to_global`` lets a region whose
    caption failed take the global prompt (with a warning) instead of stopping the run.
    """

    mode: str = "description (C-Upscale)"
    xpsr: bool = False
    instructions: Instructions = field(default_factory=Instructions)
    global_prompt: str = ""
    prefix: str = ""
    suffix: str = ""
    fallback_to_global: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"region_prompts = {self.mode!r}: choose one of {', '.join(MODES)}.")

    def region_instructions(self) -> list[str]:
        return [self.instructions.get(name) for name in MODES[self.mode]]


@dataclass(frozen=True, eq=False)
class Crop:
    """A region of the image as the model sees it (8-bit RGB), its pixel box and content digest."""

    box: tuple[int, int, int, int]  # top, left, height, width in pixels
    pixels: np.ndarray

    @cached_property
    def digest(self) -> str:
        data = np.ascontiguousarray(self.pixels).tobytes() + str(self.pixels.shape).encode()
        return hashlib.sha256(data).hexdigest()

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, "RGB")


def image_grid(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> RegionGrid:
    """The region grid of an image, in the units TiledBlendedDiffusion takes (pixels, multiples of 8).

    Built exactly as TiledBlendedDiffusion builds its tiles: ``region_grid`` over latent cells.
    """
    c = PIXELS_PER_CELL
    if height < c or width < c:
        raise ValueError(f"image is {width}x{height} pixels: regions need at least {c}x{c} (one latent cell).")
    return region_grid(height // c, width // c, tile_height // c, tile_width // c, overlap // c)


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """A ComfyUI IMAGE holding one picture (``1 x H x W x C`` floats in [0, 1]) as ``H x W x 3`` bytes."""
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image has shape {tuple(image.shape)}: give one RGB image (a batch of 1; pick one "
                         f"from a batch with ImageFromBatch).")
    rgb = image[0, ..., :3].expand(*image.shape[1:3], 3)
    return (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def region_crops(pixels: np.ndarray, grid: RegionGrid) -> list[Crop]:
    """Each region's crop in pixels (latent box x 8), in the grid's row-major order."""
    c = PIXELS_PER_CELL
    crops = []
    for b in grid.boxes:
        box = (b.top * c, b.left * c, b.height * c, b.width * c)
        crops.append(Crop(box, pixels[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]))
    return crops


def whole_image(pixels: np.ndarray) -> Crop:
    return Crop((0, 0, pixels.shape[0], pixels.shape[1]), pixels)


def clean(text: str) -> str:
    """One line of text: XPSR writes its descriptions with newlines replaced by spaces."""
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Answer:
    """The model's answer to one (crop, instruction); ``error`` says why there is no text."""

    text: str
    error: str = ""


class CaptionCache:
    """Answers keyed by image content, box, model, instruction and token budget (least recently used).

    Re-queuing an unchanged graph, or one where only the prefix or the failure policy changed,
    asks the model nothing; a new instruction, model or image asks again. Failures are not kept.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple, str] = OrderedDict()

    def get(self, key: tuple) -> str | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key: tuple, text: str) -> None:
        self.entries[key] = text
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


CACHE = CaptionCache()
"""The process-wide cache the node uses."""

Progress = Callable[[int, int], None]


class Captioner:
    """A backend behind the cache: asks the model only what it has not answered before, in batches."""

    def __init__(self, backend: CaptionBackend, cache: CaptionCache, max_tokens: int,
                 progress: Progress | None = None):
        if max_tokens < 1:
            raise ValueError(f"max_tokens = {max_tokens} must be at least 1 (XPSR let LLaVA write up to about 200).")
        self.backend, self.cache, self.max_tokens = backend, cache, max_tokens
        self.progress = progress or (lambda done, total: None)
        self.model_calls = 0

    def key(self, crop: Crop, instruction: str) -> tuple:
        return crop.digest, crop.box, self.backend.model_id, instruction, self.max_tokens

    def answer(self, jobs: Sequence[tuple[Crop, str]]) -> list[Answer]:
        """One answer per (crop, instruction) job, from the cache where it can."""
        keys = [self.key(crop, instruction) for crop, instruction in jobs]
        found: dict[tuple, Answer] = {k: Answer(t) for k in set(keys) if (t := self.cache.get(k)) is not None}
        todo = {k: job for k, job in zip(keys, jobs) if k not in found}
        total = len(found) + len(todo)
        self.progress(len(found), total)
        by_instruction: dict[str, list[tuple[tuple, Crop]]] = {}
        for k, (crop, instruction) in todo.items():
            by_instruction.setdefault(instruction, []).append((k, crop))
        for instruction, items in by_instruction.items():
            for start in range(0, len(items), self.backend.batch_size):
                found.update(self.ask(items[start:start + self.backend.batch_size], instruction))
                self.progress(len(found), total)
        return [found[k] for k in keys]

    def ask(self, batch: list[tuple[tuple, Crop]], instruction: str) -> dict[tuple, Answer]:
        self.model_calls += 1
        try:
            texts = self.backend.caption([crop.image() for _, crop in batch], instruction, self.max_tokens)
        except CaptionFailure as e:
            return {k: Answer("", str(e)) for k, _ in batch}
        answers = {}
        for (k, _), text in zip(batch, texts, strict=True):
            text = clean(text)
            if text:
                self.cache.put(k, text)
            answers[k] = Answer(text, "" if text else "the model's answer was empty")
        return answers


def compose(prefix: str, parts: Sequence[str], suffix: str) -> str:
    """``prefix, part, ..., suffix`` without empty pieces."""
    return ", ".join(p for p in (prefix.strip(), *(p.strip() for p in parts), suffix.strip()) if p)


def caption_image(image: torch.Tensor, grid: RegionGrid, captioner: Captioner,
                  request: CaptionRequest) -> RegionPrompts:
    """Region prompts for ``image`` (a ComfyUI IMAGE of one picture) over ``grid``.

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
        raise RuntimeError(f"the model gave no {name.replace('_', '-')} description of the whole image "
                           f"({answer.error}). Type a global_prompt, check {name}_instruction and max_tokens, "
                           f"or try another model.")
    return answer.text


def report_failures(failures: dict[int, str], grid: RegionGrid, fallback: bool) -> None:
    if not failures:
        return
    listed = "; ".join(f"region {i} (row {i // grid.cols}, col {i % grid.cols}): {why}"
                       for i, why in failures.items())
    if not fallback:
        raise RuntimeError(f"{len(failures)} of {len(grid)} regions got no caption: {listed}. Set "
                           f"on_region_failure to 'use global prompt' to continue with the global prompt there.")
    logger.warning("MLLMRegionCaptioner: %d of %d regions got no caption and use the global prompt: %s",
                   len(failures), len(grid), listed)
