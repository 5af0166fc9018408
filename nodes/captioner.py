"""MLLMRegionCaptioner: a prompt per region from the vision-language model a loader gives (nodes/vlm.py).

The core (cupscale.captioning: regions, instructions, captioner, compose, backends, region_prompts)
does the work; this shell turns widgets into a request, names the core's fields as its widgets, and
reports progress.
"""
from __future__ import annotations

import os

import torch
from PIL import Image

from ..cupscale.captioning.cache import CACHE
from ..cupscale.captioning.captioner import Captioner
from ..cupscale.captioning.compose import caption_image
from ..cupscale.captioning.instructions import (DEGRADATION_TAGS, DESCRIPTION, XPSR_HIGH_LEVEL, XPSR_LOW_LEVEL,
                                                CaptionRequest, Instructions)
from ..cupscale.captioning.region_prompts import TYPE_NAME, from_json, to_json
from ..cupscale.captioning.regions import image_grid, to_uint8_rgb
from ..cupscale.tiling.grid import check_tile_settings
from .host import folder_paths, io
from .host_services import progress_reporter
from .inputs import advanced, check_combos, check_numbers, tile_inputs, widget_names, widgets_valid
from .vlm import VLM_TYPE, WIDGETS as LOADER_WIDGETS

REGION_PROMPTS = {"description (C-Upscale)": "description", "degradation tags (Zoomed-In)": "tags",
                  "description + tags": "description + tags"}
"""The dropdown's choices -> the core's modes (cupscale.captioning.instructions.MODES)."""
FALLBACK = "use global prompt"
FAILURE_POLICIES = {"stop with an error": False, FALLBACK: True}
PREVIEW_SIDE = 1024  # longest side of the preview the region overlay (js/cupscale.js) draws on
WIDGETS = {**LOADER_WIDGETS, "fallback_to_global": repr(FALLBACK)}
"""The core's field names (and the fallback policy's value) as the user sees them."""
NO_VLM = ("vlm: not connected. The captioner takes its model from a loader: add a Local VLM Loader (a folder in "
          "models/LLM), an Endpoint VLM Loader (an OpenAI-compatible server) or, on ComfyUI v0.33.0 and later, VLM "
          "from CLIP (a Load CLIP text encoder that sees images), and connect its vlm output here. A workflow saved "
          "before the loaders: move backend's choice to that loader (local_model, hf_repo_id, device, dtype, "
          "batch_size, after_use, allow_download to the Local VLM Loader; endpoint_url, endpoint_model, timeout_s, "
          "retries to the Endpoint VLM Loader).")


def save_preview(image: torch.Tensor) -> dict:
    """The image as a PNG of at most PREVIEW_SIDE pixels in ComfyUI's temp folder, as /view serves it."""
    pil = Image.fromarray(to_uint8_rgb(image))
    pil.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        "cupscale_regions", folder_paths.get_temp_directory(), pil.width, pil.height)
    filename = f"{name}_{counter:05}_.png"
    pil.save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": subfolder, "type": "temp"}


def chosen(widget: str, label: str, choices) -> str:
    if label not in choices:
        raise ValueError(f"{widget} = {label!r}: choose one of {', '.join(choices)}.")
    return label


def text(name: str, default: str, tooltip: str) -> io.String.Input:
    return io.String.Input(name, default=default, multiline=True, optional=True, tooltip=tooltip)


class MLLMRegionCaptioner(io.ComfyNode):
    """IMAGE -> REGION_PROMPTS over the same tiles as TiledBlendedDiffusion, plus XPSR's descriptions."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MLLMRegionCaptioner",
            display_name="MLLM Region Captioner (cupscale)",
            category="cupscale",
            description=("Cuts the image into the tiles TiledBlendedDiffusion will use (same tile size and overlap) "
                         "and asks a vision-language model (from a VLM loader) for a prompt per tile: a description "
                         "(C-Upscale's regional semantic prior) and/or degradation-aware tags (Zoomed-In). "
                         "Optionally XPSR's high-level and low-level descriptions of the whole image. Answers are "
                         "cached; edit the JSON output and feed it back through region_prompts_json to fix a "
                         "caption by hand."),
            inputs=[
                io.Image.Input("image", tooltip="This stage's image at the size that will be sampled (after the "
                                                "pixel pre-upscale), so the regions match the tiles."),
                io.Custom(VLM_TYPE).Input("vlm", optional=True,
                                          tooltip="From a Local VLM Loader, an Endpoint VLM Loader or VLM from CLIP; "
                                                  "one loader serves every captioner of the graph. Not needed "
                                                  "when region_prompts_json is set."),
                *tile_inputs("Region", "the same as TiledBlendedDiffusion's tiles"),
                io.Combo.Input("region_prompts", options=list(REGION_PROMPTS),
                               tooltip="What each region's prompt says."),
                io.Boolean.Input("xpsr_descriptions", default=False,
                                 tooltip="Also write XPSR's high-level (content) and low-level (quality) descriptions "
                                         "of the whole image."),
                io.Int.Input("max_tokens", default=120, min=1, max=4096, tooltip="Longest answer, in tokens."),
                io.Combo.Input("on_region_failure", options=list(FAILURE_POLICIES),
                               tooltip="A region whose caption failed (empty answer, timeout, server error): stop, or "
                                       "give it the global prompt with a warning."),
                text("global_prompt", "", "The prompt for the whole image (e.g. the one it was made with). Empty: "
                                          "the model's high-level description of the whole image."),
                advanced(io.String.Input("prefix", default="", optional=True,
                                         tooltip="Put before every region's caption.")),
                advanced(io.String.Input("suffix", default="", optional=True,
                                         tooltip="Put after every region's caption.")),
                advanced(text("description_instruction", DESCRIPTION,
                              "Asked about each region for its description.")),
                advanced(text("tags_instruction", DEGRADATION_TAGS, "Asked about each region for its tags.")),
                advanced(text("high_level_instruction", XPSR_HIGH_LEVEL,
                              "XPSR's high-level instruction (Sec. 3.3).")),
                advanced(text("low_level_instruction", XPSR_LOW_LEVEL, "XPSR's low-level instruction (Sec. 3.3).")),
                text("region_prompts_json", "", "Edited region prompts JSON (this node's second output). When not "
                                                "empty it is used instead of captioning."),
            ],
            outputs=[io.Custom(TYPE_NAME).Output(display_name="region_prompts"),
                     io.String.Output(display_name="region_prompts_json"),
                     io.String.Output(display_name="xpsr_high_level"),
                     io.String.Output(display_name="xpsr_low_level")],
        )

    @classmethod
    def validate_inputs(cls, tile_width=None, tile_height=None, overlap=None, max_tokens=None, region_prompts=None,
                        on_region_failure=None) -> bool | str:
        return widgets_valid(cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap,
                             max_tokens=max_tokens, region_prompts=region_prompts, on_region_failure=on_region_failure)

    @classmethod
    def execute(cls, image, **inputs) -> io.NodeOutput:
        """:meth:`caption`, plus the payload of the region overlay and editor in the frontend
        (js/cupscale.js): the image it draws the regions on, its true size, the prompts' JSON."""
        result = cls.caption(image, **inputs)
        payload = {"image": save_preview(image), "width": image.shape[2], "height": image.shape[1],
                   "region_prompts_json": result[1]}
        return io.NodeOutput(*result, ui={"cupscale_regions": [payload]})

    @classmethod
    def caption(cls, image, tile_width, tile_height, overlap, region_prompts, xpsr_descriptions, max_tokens,
                on_region_failure, vlm=None, global_prompt="", prefix="", suffix="",
                description_instruction=DESCRIPTION, tags_instruction=DEGRADATION_TAGS,
                high_level_instruction=XPSR_HIGH_LEVEL, low_level_instruction=XPSR_LOW_LEVEL, region_prompts_json=""):
        """The four outputs: region prompts, their JSON, XPSR's two descriptions."""
        check_combos(cls, region_prompts=region_prompts, on_region_failure=on_region_failure)  # linked values
        check_numbers(cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap, max_tokens=max_tokens)
        with widget_names(**WIDGETS):
            check_tile_settings(tile_width, tile_height, overlap)
            grid = image_grid(image.shape[1], image.shape[2], tile_height, tile_width, overlap)
            if region_prompts_json.strip():
                prompts = from_json(region_prompts_json)
                prompts.check_grid(grid, f"this node's image ({image.shape[2]}x{image.shape[1]}) and tile settings",
                                   "the region prompts JSON in region_prompts_json")
                return prompts, to_json(prompts), prompts.high_level, prompts.low_level
            if vlm is None:
                raise ValueError(NO_VLM)
            request = CaptionRequest(
                mode=REGION_PROMPTS[chosen("region_prompts", region_prompts, REGION_PROMPTS)],
                xpsr=xpsr_descriptions,
                instructions=Instructions(description_instruction, tags_instruction, high_level_instruction,
                                          low_level_instruction),
                global_prompt=global_prompt, prefix=prefix, suffix=suffix,
                fallback_to_global=FAILURE_POLICIES.get(on_region_failure, False))
            try:
                prompts = caption_image(image, grid, Captioner(vlm.backend, CACHE, max_tokens, progress_reporter()),
                                        request)
            finally:
                vlm.backend.release(offload=vlm.offload)
        return prompts, to_json(prompts), prompts.high_level, prompts.low_level


NODES = [MLLMRegionCaptioner]
