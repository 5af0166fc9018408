"""MLLMRegionCaptioner: a prompt per region from a multimodal LLM, local or over an endpoint.

The core (cupscale.captioning.captioner, cupscale.captioning.backends, cupscale.captioning.region_prompts) does the work; this
shell registers models/LLM with ComfyUI, turns widgets into a request and reports progress.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from PIL import Image

from ..cupscale.captioning import captioner as captioning
from ..cupscale.captioning.captioner import (CACHE, MODES, Captioner, CaptionRequest, Instructions, caption_image, image_grid,
                                   to_uint8_rgb)
from ..cupscale.captioning.backends import DTYPES, LocalVLM, OpenAIEndpoint
from ..cupscale.captioning.region_prompts import TYPE_NAME, from_json, to_json
from .host_services import progress_reporter
from ..cupscale.tiling.grid import check_tile_settings
from .inputs import tile_inputs_v1, widget_names

LLM_FOLDER = "LLM"
NO_MODEL = "(no model folder in models/LLM)"
BACKENDS = ("local model", "endpoint")
FAILURE_POLICIES = ("stop with an error", "use global prompt")
AFTER_USE = ("unload", "offload to CPU")
PREVIEW_SIDE = 1024  # longest side of the preview the region overlay (js/cupscale.js) draws on

folder_paths.add_model_folder_path(LLM_FOLDER, os.path.join(folder_paths.models_dir, LLM_FOLDER))


def model_folders() -> list[str]:
    """Model folders (holding a config.json) directly in models/LLM or one level down (owner/name)."""
    names = set()
    for root in map(Path, folder_paths.get_folder_paths(LLM_FOLDER)):
        for config in [*root.glob("*/config.json"), *root.glob("*/*/config.json")]:
            name = config.parent.relative_to(root)
            if not any(part.startswith(".") for part in name.parts):
                names.add(name.as_posix())
    return sorted(names) or [NO_MODEL]


def model_path(name: str) -> str:
    roots = folder_paths.get_folder_paths(LLM_FOLDER)
    for root in roots:
        if name != NO_MODEL and (Path(root) / name).is_dir():
            return str(Path(root) / name)
    raise ValueError(f"local_model = {name!r}: no such model folder in {', '.join(roots)}. Put a vision-language "
                     f"model folder (config.json, weights, tokenizer, processor) there, or set backend to endpoint.")


def local_backend(local_model: str, hf_repo_id: str, device: str, dtype: str, batch_size: int,
                  allow_download: bool) -> LocalVLM:
    torch_device = comfy.model_management.get_torch_device() if device == "auto" else torch.device(device)
    if hf_repo_id.strip():
        cache_dir = os.path.join(folder_paths.get_folder_paths(LLM_FOLDER)[0], ".hf_cache")
        return LocalVLM(hf_repo_id.strip(), torch_device, dtype, batch_size, allow_download, cache_dir)
    return LocalVLM(model_path(local_model), torch_device, dtype, batch_size)


def save_preview(image: torch.Tensor) -> dict:
    """The image as a PNG of at most PREVIEW_SIDE pixels in ComfyUI's temp folder, as /view serves it."""
    pil = Image.fromarray(to_uint8_rgb(image))
    pil.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        "cupscale_regions", folder_paths.get_temp_directory(), pil.width, pil.height)
    filename = f"{name}_{counter:05}_.png"
    pil.save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": subfolder, "type": "temp"}


def multiline(default: str, tooltip: str) -> tuple:
    return ("STRING", {"default": default, "multiline": True, "tooltip": tooltip})


class MLLMRegionCaptioner:
    """IMAGE -> REGION_PROMPTS over the same tiles as TiledBlendedDiffusion, plus XPSR's descriptions."""

    CATEGORY = "cupscale"
    FUNCTION = "caption_with_preview"
    RETURN_TYPES = (TYPE_NAME, "STRING", "STRING", "STRING")
    RETURN_NAMES = ("region_prompts", "region_prompts_json", "xpsr_high_level", "xpsr_low_level")
    DESCRIPTION = ("Cuts the image into the tiles TiledBlendedDiffusion will use (same tile size and overlap) and "
                   "asks a multimodal LLM for a prompt per tile: a description (C-Upscale's regional semantic "
                   "prior) and/or degradation-aware tags (Zoomed-In). Optionally XPSR's high-level and low-level "
                   "descriptions of the whole image. Answers are cached; edit the JSON output and feed it back "
                   "through region_prompts_json to fix a caption by hand.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "This stage's image at the size that will be sampled (after the "
                                               "pixel pre-upscale), so the regions match the tiles."}),
                "backend": (list(BACKENDS), {"tooltip": "A transformers model folder in models/LLM, or a server "
                                                        "with an OpenAI-compatible API."}),
                "local_model": (model_folders(), {"tooltip": "A vision-language model folder in models/LLM "
                                                             "(LLaVA, Qwen2-VL, Qwen2.5-VL, SmolVLM, Idefics3, ...)."}),
                "endpoint_url": ("STRING", {"default": "http://127.0.0.1:11434/v1",
                                            "tooltip": "Base URL up to /v1 (Ollama :11434, LM Studio :1234, "
                                                       "llama.cpp :8080, vLLM :8000). A key, if the server needs "
                                                       "one, is read from $CUPSCALE_MLLM_API_KEY."}),
                "endpoint_model": ("STRING", {"default": "", "tooltip": "The model name the server serves "
                                                                        "(e.g. qwen2.5vl:7b)."}),
                **tile_inputs_v1("Region", "the same as TiledBlendedDiffusion's tiles"),
                "region_prompts": (list(MODES), {"tooltip": "What each region's prompt says."}),
                "xpsr_descriptions": ("BOOLEAN", {"default": False,
                                                  "tooltip": "Also write XPSR's high-level (content) and low-level "
                                                             "(quality) descriptions of the whole image."}),
                "max_tokens": ("INT", {"default": 120, "min": 1, "max": 4096,
                                       "tooltip": "Longest answer, in tokens."}),
                "on_region_failure": (list(FAILURE_POLICIES), {"tooltip": "A region whose caption failed (empty "
                                                                          "answer, timeout, server error): stop, or "
                                                                          "give it the global prompt with a warning."}),
            },
            "optional": {
                "global_prompt": multiline("", "The prompt for the whole image (e.g. the one it was made with). "
                                               "Empty: the model's high-level description of the whole image."),
                "prefix": ("STRING", {"default": "", "tooltip": "Put before every region's caption."}),
                "suffix": ("STRING", {"default": "", "tooltip": "Put after every region's caption."}),
                "description_instruction": multiline(captioning.DESCRIPTION,
                                                     "Asked about each region for its description."),
                "tags_instruction": multiline(captioning.DEGRADATION_TAGS, "Asked about each region for its tags."),
                "high_level_instruction": multiline(captioning.XPSR_HIGH_LEVEL,
                                                    "XPSR's high-level instruction (Sec. 3.3)."),
                "low_level_instruction": multiline(captioning.XPSR_LOW_LEVEL,
                                                   "XPSR's low-level instruction (Sec. 3.3)."),
                "region_prompts_json": multiline("", "Edited region prompts JSON (this node's second output). "
                                                     "When not empty it is used instead of captioning."),
                "device": (["auto", "cpu"], {"tooltip": "auto: ComfyUI's device (the GPU if there is one)."}),
                "dtype": (["auto", *DTYPES], {"tooltip": "auto: half precision on a GPU, float32 on the CPU."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                                       "tooltip": "Regions per call of a local model."}),
                "after_use": (list(AFTER_USE), {"tooltip": "Free the local model when done, or keep it in CPU "
                                                           "memory so the next run loads faster."}),
                "hf_repo_id": ("STRING", {"default": "", "tooltip": "Instead of local_model: a Hugging Face repo id, "
                                                                    "looked up in models/LLM/.hf_cache."}),
                "allow_download": ("BOOLEAN", {"default": False, "tooltip": "Let hf_repo_id download the model "
                                                                            "when it is not cached yet."}),
                "timeout_s": ("FLOAT", {"default": 120.0, "min": 1.0, "max": 3600.0,
                                        "tooltip": "Seconds to wait for each endpoint reply."}),
                "retries": ("INT", {"default": 2, "min": 0, "max": 10,
                                    "tooltip": "Endpoint retries after a timeout or server error."}),
            },
        }

    def caption_with_preview(self, image, **inputs):
        """What the graph runs: :meth:`caption`, plus the payload of the region overlay and editor in the
        frontend (js/cupscale.js): the image it draws the regions on, its true size, the prompts' JSON."""
        result = self.caption(image, **inputs)
        payload = {"image": save_preview(image), "width": image.shape[2], "height": image.shape[1],
                   "region_prompts_json": result[1]}
        return {"ui": {"cupscale_regions": [payload]}, "result": result}

    def caption(self, image, backend, local_model, endpoint_url, endpoint_model, tile_width, tile_height, overlap,
                region_prompts, xpsr_descriptions, max_tokens, on_region_failure, global_prompt="", prefix="",
                suffix="", description_instruction=captioning.DESCRIPTION,
                tags_instruction=captioning.DEGRADATION_TAGS, high_level_instruction=captioning.XPSR_HIGH_LEVEL,
                low_level_instruction=captioning.XPSR_LOW_LEVEL, region_prompts_json="", device="auto",
                dtype="auto", batch_size=4, after_use="unload", hf_repo_id="", allow_download=False,
                timeout_s=120.0, retries=2):
        with widget_names():
            check_tile_settings(tile_width, tile_height, overlap)
        grid = image_grid(image.shape[1], image.shape[2], tile_height, tile_width, overlap)
        if region_prompts_json.strip():
            prompts = from_json(region_prompts_json)
            prompts.check_grid(grid, f"this node's image ({image.shape[2]}x{image.shape[1]}) and tile settings")
            return prompts, to_json(prompts), prompts.high_level, prompts.low_level

        if backend not in BACKENDS:
            raise ValueError(f"backend = {backend!r}: choose one of {', '.join(BACKENDS)}.")
        request = CaptionRequest(
            mode=region_prompts, xpsr=xpsr_descriptions,
            instructions=Instructions(description_instruction, tags_instruction, high_level_instruction,
                                      low_level_instruction),
            global_prompt=global_prompt, prefix=prefix, suffix=suffix,
            fallback_to_global=on_region_failure == FAILURE_POLICIES[1])
        mllm = (local_backend(local_model, hf_repo_id, device, dtype, batch_size, allow_download)
                if backend == BACKENDS[0] else OpenAIEndpoint(endpoint_url, endpoint_model, timeout_s, retries))
        try:
            prompts = caption_image(image, grid, Captioner(mllm, CACHE, max_tokens, progress_reporter()), request)
        finally:
            mllm.release(offload=after_use == AFTER_USE[1])
        return prompts, to_json(prompts), prompts.high_level, prompts.low_level


NODE_CLASS_MAPPINGS = {"MLLMRegionCaptioner": MLLMRegionCaptioner}
NODE_DISPLAY_NAME_MAPPINGS = {"MLLMRegionCaptioner": "MLLM Region Captioner (cupscale)"}
