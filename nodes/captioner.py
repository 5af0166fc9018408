"""MLLMRegionCaptioner: a prompt per region from a multimodal LLM, local or over an endpoint.

The core (cupscale.captioning: regions, instructions, captioner, compose, backends, region_prompts)
does the work; this shell registers models/LLM with ComfyUI, turns widgets into a request, names the
core's fields as its widgets, and reports progress.
"""
from __future__ import annotations

import os

import torch
from PIL import Image

from ..cupscale.captioning.backends import DTYPES, LocalVLM, OpenAIEndpoint, hub_repo_id
from ..cupscale.captioning.cache import CACHE
from ..cupscale.captioning.captioner import Captioner
from ..cupscale.captioning.compose import caption_image
from ..cupscale.captioning.instructions import (DEGRADATION_TAGS, DESCRIPTION, XPSR_HIGH_LEVEL, XPSR_LOW_LEVEL,
                                                CaptionRequest, Instructions)
from ..cupscale.captioning.region_prompts import TYPE_NAME, from_json, to_json
from ..cupscale.captioning.regions import image_grid, to_uint8_rgb
from ..cupscale.tiling.grid import check_tile_settings
from .host import folder_paths, io, model_management
from .host_services import (model_folder_path, model_folders, progress_reporter, register_model_folder,
                            stop_if_interrupted)
from .inputs import advanced, check_combos, check_numbers, tile_inputs, widget_names, widgets_valid

LLM_FOLDER = "LLM"
BACKENDS = ("local model", "endpoint")
REGION_PROMPTS = {"description (C-Upscale)": "description", "degradation tags (Zoomed-In)": "tags",
                  "description + tags": "description + tags"}
"""The dropdown's choices -> the core's modes (cupscale.captioning.instructions.MODES)."""
FALLBACK = "use global prompt"
FAILURE_POLICIES = {"stop with an error": False, FALLBACK: True}
AFTER_USE = {"unload": False, "offload to CPU": True}
PREVIEW_SIDE = 1024  # longest side of the preview the region overlay (js/cupscale.js) draws on
WIDGETS = {"model_folder": "local_model", "repo_id": "hf_repo_id", "model_folders": f"models/{LLM_FOLDER}",
           "base_url": "endpoint_url", "model": "endpoint_model", "fallback_to_global": repr(FALLBACK)}
"""The core's field names (and the fallback policy's value) as this node's widgets show them."""

register_model_folder(LLM_FOLDER)


def model_path(name: str) -> str:
    path = model_folder_path(LLM_FOLDER, name)
    if path is None:
        raise ValueError(f"local_model = {name!r}: no such model folder in "
                         f"{', '.join(folder_paths.get_folder_paths(LLM_FOLDER))}. Put a vision-language model "
                         f"folder (config.json, weights, tokenizer, processor) there, or set backend to endpoint.")
    return str(path)


def local_backend(local_model: str, hf_repo_id: str, device: str, dtype: str, batch_size: int,
                  allow_download: bool) -> LocalVLM:
    torch_device = model_management.get_torch_device() if device == "auto" else torch.device(device)
    if hf_repo_id.strip():
        cache_dir = os.path.join(folder_paths.get_folder_paths(LLM_FOLDER)[0], ".hf_cache")
        return LocalVLM(hub_repo_id(hf_repo_id), torch_device, dtype, batch_size, allow_download, cache_dir,
                        stop=stop_if_interrupted)
    return LocalVLM(model_path(local_model), torch_device, dtype, batch_size, stop=stop_if_interrupted)


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

    COMBOS_AT_RUN = ("backend", "region_prompts", "on_region_failure", "device", "dtype", "after_use")
    """Dropdowns checked when the run starts (:meth:`caption`); validate_inputs names local_model alone."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MLLMRegionCaptioner",
            display_name="MLLM Region Captioner (cupscale)",
            category="cupscale",
            description=("Cuts the image into the tiles TiledBlendedDiffusion will use (same tile size and overlap) "
                         "and asks a multimodal LLM for a prompt per tile: a description (C-Upscale's regional "
                         "semantic prior) and/or degradation-aware tags (Zoomed-In). Optionally XPSR's high-level "
                         "and low-level descriptions of the whole image. Answers are cached; edit the JSON output "
                         "and feed it back through region_prompts_json to fix a caption by hand."),
            inputs=[
                io.Image.Input("image", tooltip="This stage's image at the size that will be sampled (after the "
                                                "pixel pre-upscale), so the regions match the tiles."),
                io.Combo.Input("backend", options=list(BACKENDS), tooltip="A transformers model folder in models/LLM, "
                                                                          "or a server with an OpenAI-compatible API."),
                io.Combo.Input("local_model", options=model_folders(LLM_FOLDER, depth=2),
                               tooltip="A vision-language model folder in models/LLM (LLaVA, Qwen2-VL, Qwen2.5-VL, "
                                       "SmolVLM, Idefics3, ...)."),
                io.String.Input("endpoint_url", default="http://127.0.0.1:11434/v1",
                                tooltip="The server's base URL up to /v1. A key, if the server needs one, is read "
                                        "from $CUPSCALE_MLLM_API_KEY."),
                io.String.Input("endpoint_model", default="",
                                tooltip="The model name the server serves (e.g. qwen2.5vl:7b)."),
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
                advanced(io.Combo.Input("device", options=["auto", "cpu"], optional=True,
                                        tooltip="auto: ComfyUI's device (the GPU if there is one).")),
                advanced(io.Combo.Input("dtype", options=["auto", *DTYPES], optional=True,
                                        tooltip="auto: half precision on a GPU, float32 on the CPU.")),
                advanced(io.Int.Input("batch_size", default=4, min=1, max=64, optional=True,
                                      tooltip="Regions per call of a local model.")),
                advanced(io.Combo.Input("after_use", options=list(AFTER_USE), optional=True,
                                        tooltip="Free the local model when done, or keep it in CPU memory so the "
                                                "next run loads faster.")),
                advanced(io.String.Input("hf_repo_id", default="", optional=True,
                                         tooltip="Instead of local_model: a Hugging Face repo id, looked up in "
                                                 "models/LLM/.hf_cache.")),
                advanced(io.Boolean.Input("allow_download", default=False, optional=True,
                                          tooltip="Let hf_repo_id download the model when it is not cached yet.")),
                advanced(io.Float.Input("timeout_s", default=120.0, min=1.0, max=3600.0, optional=True,
                                        tooltip="Seconds to wait for each endpoint reply.")),
                advanced(io.Int.Input("retries", default=2, min=0, max=10, optional=True,
                                      tooltip="Endpoint retries after a timeout or server error.")),
            ],
            outputs=[io.Custom(TYPE_NAME).Output(display_name="region_prompts"),
                     io.String.Output(display_name="region_prompts_json"),
                     io.String.Output(display_name="xpsr_high_level"),
                     io.String.Output(display_name="xpsr_low_level")],
        )

    @classmethod
    def validate_inputs(cls, local_model=None) -> bool | str:
        """The model folder only, before the run: the other dropdowns are checked when it starts
        (:meth:`caption`), so a missing folder stays the one input this check names."""
        return widgets_valid(cls, local_model=local_model)

    @classmethod
    def execute(cls, image, **inputs) -> io.NodeOutput:
        """:meth:`caption`, plus the payload of the region overlay and editor in the frontend
        (js/cupscale.js): the image it draws the regions on, its true size, the prompts' JSON."""
        result = cls.caption(image, **inputs)
        payload = {"image": save_preview(image), "width": image.shape[2], "height": image.shape[1],
                   "region_prompts_json": result[1]}
        return io.NodeOutput(*result, ui={"cupscale_regions": [payload]})

    @classmethod
    def caption(cls, image, backend, local_model, endpoint_url, endpoint_model, tile_width, tile_height, overlap,
                region_prompts, xpsr_descriptions, max_tokens, on_region_failure, global_prompt="", prefix="",
                suffix="", description_instruction=DESCRIPTION, tags_instruction=DEGRADATION_TAGS,
                high_level_instruction=XPSR_HIGH_LEVEL, low_level_instruction=XPSR_LOW_LEVEL,
                region_prompts_json="", device="auto", dtype="auto", batch_size=4, after_use="unload",
                hf_repo_id="", allow_download=False, timeout_s=120.0, retries=2):
        """The four outputs: region prompts, their JSON, XPSR's two descriptions."""
        check_combos(cls, backend=backend, region_prompts=region_prompts, on_region_failure=on_region_failure,
                     device=device, dtype=dtype, after_use=after_use)
        # Here, not in validate_inputs: the host would file a failure there under every input it names.
        check_numbers(cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap, max_tokens=max_tokens,
                      batch_size=batch_size, timeout_s=timeout_s, retries=retries)
        with widget_names(**WIDGETS):
            check_tile_settings(tile_width, tile_height, overlap)
            grid = image_grid(image.shape[1], image.shape[2], tile_height, tile_width, overlap)
            if region_prompts_json.strip():
                prompts = from_json(region_prompts_json)
                prompts.check_grid(grid, f"this node's image ({image.shape[2]}x{image.shape[1]}) and tile settings",
                                   "the region prompts JSON in region_prompts_json")
                return prompts, to_json(prompts), prompts.high_level, prompts.low_level

            local = chosen("backend", backend, BACKENDS) == BACKENDS[0]
            request = CaptionRequest(
                mode=REGION_PROMPTS[chosen("region_prompts", region_prompts, REGION_PROMPTS)],
                xpsr=xpsr_descriptions,
                instructions=Instructions(description_instruction, tags_instruction, high_level_instruction,
                                          low_level_instruction),
                global_prompt=global_prompt, prefix=prefix, suffix=suffix,
                fallback_to_global=FAILURE_POLICIES.get(on_region_failure, False))
            mllm = (local_backend(local_model, hf_repo_id, device, dtype, batch_size, allow_download) if local
                    else OpenAIEndpoint(endpoint_url, endpoint_model, timeout_s, retries, stop=stop_if_interrupted))
            try:
                prompts = caption_image(image, grid, Captioner(mllm, CACHE, max_tokens, progress_reporter()), request)
            finally:
                mllm.release(offload=AFTER_USE.get(after_use, False))
        return prompts, to_json(prompts), prompts.high_level, prompts.low_level


NODES = [MLLMRegionCaptioner]
