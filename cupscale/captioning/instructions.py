"""What the multimodal LLM is asked, and how its answers become prompts.

Three papers ask an MLLM to look at the image:
- C-Upscale (Fig. 3, Regional Semantic Prior): a descriptive prompt for every region, which fuels
  creative regional detail while the global prompt keeps the whole coherent.
- Zoomed-In, Diffused-Out (Fig. 2, local degradation-aware prompt extraction): tags per tile that
  name both the content and its degradations, so a tile is not steered by content that lies
  elsewhere in the image.
- XPSR (Sec. 3.3): two descriptions of the whole image, a high-level one (content, layout, scene)
  and a low-level one (quality: clarity, colour, noise, lighting), with its exact instructions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..guards import check_text

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
    "description": ("description",),
    "tags": ("tags",),
    "description + tags": ("description", "tags"),
}
"""What each region's prompt is made of: the instructions asked about every region, in order."""


@dataclass(frozen=True)
class Instructions:
    """What to ask; each field is the ``<name>_instruction`` of its errors."""

    description: str = DESCRIPTION
    tags: str = DEGRADATION_TAGS
    high_level: str = XPSR_HIGH_LEVEL
    low_level: str = XPSR_LOW_LEVEL

    def __post_init__(self):
        for name in ("description", "tags", "high_level", "low_level"):
            check_text(getattr(self, name), f"{name}_instruction")

    def get(self, name: str) -> str:
        text = getattr(self, name).strip()
        if not text:
            default = getattr(Instructions, name)
            raise InputError(f"{{instruction}} is empty: write what the MLLM should be asked "
                             f"(the default is {default!r}).", instruction=f"{name}_instruction")
        return text


@dataclass(frozen=True)
class CaptionRequest:
    """What to write (``mode`` is a key of :data:`MODES`) and how captions become prompts.

    A region prompt is ``prefix, caption(s), suffix``. An empty ``global_prompt`` is replaced by the
    model's high-level description of the whole image. ``fallback_to_global`` lets a region whose
    caption failed take the global prompt (with a warning) instead of stopping the run.
    """

    mode: str = "description"
    xpsr: bool = False
    instructions: Instructions = field(default_factory=Instructions)
    global_prompt: str = ""
    prefix: str = ""
    suffix: str = ""
    fallback_to_global: bool = False

    def __post_init__(self):
        for name in ("global_prompt", "prefix", "suffix"):
            check_text(getattr(self, name), name)
        if self.mode not in MODES:
            raise InputError(f"{{mode}} = {self.mode!r}: choose one of {', '.join(MODES)}.", mode="region_prompts")

    def region_instructions(self) -> list[str]:
        return [self.instructions.get(name) for name in MODES[self.mode]]
