"""The VLM loaders: a vision-language model as a value (CUPSCALE_VLM) that MLLMRegionCaptioner takes.

ComfyUI's convention is a loader that outputs a model and nodes that use it: one loaded VLM serves every
captioner of a graph (both stages of a two-stage upscale), and a graph set to an endpoint names no local
folder, so it validates on any machine. The backends are the core's (cupscale.captioning.backends); this
module turns widgets into one, and adapts the host's own text generation (a CLIP-loaded Qwen-VL or Gemma,
as ComfyUI's Generate Text node runs it) to the core's :class:`GeneratedText`.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..cupscale.captioning.backends import (DTYPES, MAX_IN_FLIGHT, MAX_RETRIES, MAX_TIMEOUT_S, GeneratedText,
                                            LocalVLM, OpenAIEndpoint, hub_repo_id)
from ..cupscale.captioning.captioner import VLM
from .host import folder_paths, io, model_management, model_patcher
from .host_services import model_folder_path, model_folders, register_model_folder, stop_if_interrupted
from .inputs import advanced, check_combos, check_numbers, widget_names, widgets_valid

VLM_TYPE = "CUPSCALE_VLM"
LLM_FOLDER = "LLM"
AFTER_USE = {"offload to CPU": True, "unload": False}
WIDGETS = {"model_folder": "local_model", "repo_id": "hf_repo_id", "model_folders": f"models/{LLM_FOLDER}",
           "base_url": "endpoint_url", "model": "endpoint_model"}
"""The core's field names as the loaders' widgets show them."""

register_model_folder(LLM_FOLDER)


def vlm_output() -> io.Output:
    return io.Custom(VLM_TYPE).Output(display_name="vlm")


class HeldModel(torch.nn.Module):
    """A transformers model as ComfyUI's ModelPatcher can hold it: the patcher sets ``device`` and its bookkeeping
    on what it holds, which a transformers model has as read-only properties."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.held = model


class ModelManagement:
    """A local VLM as one of ComfyUI's loaded models (a ModelPatcher in its list, core: Residency): loading it
    unloads the host's other models until it fits, and a diffusion model loaded after it unloads it to the CPU
    when it needs the room, as ComfyUI does between its own text encoders and diffusion models."""

    def __init__(self):
        self.patchers: dict[int, object] = {}

    def place(self, model: torch.nn.Module, device: torch.device) -> None:
        patcher = self.patchers.get(id(model))
        if patcher is None or patcher.model.held is not model:
            patcher = model_patcher.ModelPatcher(HeldModel(model), load_device=device,
                                                 offload_device=torch.device("cpu"))
            self.patchers[id(model)] = patcher
        model_management.load_models_gpu([patcher])

    def drop(self, model: torch.nn.Module) -> None:
        patcher = self.patchers.pop(id(model), None)
        if patcher is None:
            return
        loaded = model_management.current_loaded_models
        for entry in [m for m in loaded if m.model is patcher]:
            entry.model_unload()
            loaded.remove(entry)


MODEL_MANAGEMENT = ModelManagement()


def model_path(name: str) -> str:
    path = model_folder_path(LLM_FOLDER, name)
    if path is None:
        raise ValueError(f"local_model = {name!r}: no such model folder in "
                         f"{', '.join(folder_paths.get_folder_paths(LLM_FOLDER))}. Put a vision-language model "
                         f"folder (config.json, weights, tokenizer, processor) there, or caption through an "
                         f"Endpoint VLM Loader instead.")
    return str(path)


class LocalVLMLoader(io.ComfyNode):
    """A transformers VLM folder in models/LLM (or a cached hub id), loaded at the first uncached caption."""

    COMBOS_AT_RUN = ("device", "dtype", "after_use")
    """Dropdowns checked when the run starts; validate_inputs names local_model alone."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LocalVLMLoader",
            display_name="Local VLM Loader (cupscale)",
            category="cupscale/loaders",
            description="A vision-language model folder in models/LLM for MLLMRegionCaptioner, run with "
                        "transformers in ComfyUI's process. Connect one loader to every captioner of the graph.",
            inputs=[
                io.Combo.Input("local_model", options=model_folders(LLM_FOLDER, depth=2),
                               tooltip="A vision-language model folder in models/LLM (LLaVA, Qwen2-VL, Qwen2.5-VL, "
                                       "SmolVLM, Idefics3, ...)."),
                io.Combo.Input("device", options=["auto", "cpu"],
                               tooltip="auto: ComfyUI's device (the GPU if there is one)."),
                advanced(io.Combo.Input("dtype", options=["auto", *DTYPES], optional=True,
                                        tooltip="auto: half precision on a GPU, float32 on the CPU.")),
                advanced(io.Int.Input("batch_size", default=4, min=1, max=64, optional=True,
                                      tooltip="Regions per call of the model.")),
                io.Combo.Input("after_use", options=list(AFTER_USE),
                               tooltip="After each captioner: keep the model loaded, so the next stage and the "
                                       "next run skip the disk (ComfyUI moves it to CPU memory when another model "
                                       "needs the room), or free it."),
                advanced(io.String.Input("hf_repo_id", default="", optional=True,
                                         tooltip="Instead of local_model: a Hugging Face repo id (owner/name, "
                                                 "never a path), looked up in models/LLM/.hf_cache.")),
                advanced(io.Boolean.Input("allow_download", default=False, optional=True,
                                          tooltip="Let hf_repo_id download the model when it is not cached yet.")),
            ],
            outputs=[vlm_output()],
        )

    @classmethod
    def validate_inputs(cls, local_model=None) -> bool | str:
        """The model folder only, before the run: the host would file a failure here under every input named,
        so a missing folder stays the one input marked; the rest is checked when the run starts."""
        return widgets_valid(cls, local_model=local_model)

    @classmethod
    def execute(cls, local_model, device, after_use, dtype="auto", batch_size=4, hf_repo_id="",
                allow_download=False) -> io.NodeOutput:
        check_combos(cls, device=device, dtype=dtype, after_use=after_use)
        check_numbers(cls, batch_size=batch_size)
        torch_device = model_management.get_torch_device() if device == "auto" else torch.device(device)
        with widget_names(**WIDGETS):
            if hf_repo_id.strip():
                cache_dir = os.path.join(folder_paths.get_folder_paths(LLM_FOLDER)[0], ".hf_cache")
                backend = LocalVLM(hub_repo_id(hf_repo_id), torch_device, dtype, batch_size, allow_download,
                                   cache_dir, stop=stop_if_interrupted, residency=MODEL_MANAGEMENT)
            else:
                backend = LocalVLM(model_path(local_model), torch_device, dtype, batch_size,
                                   stop=stop_if_interrupted, residency=MODEL_MANAGEMENT)
        return io.NodeOutput(VLM(backend, offload=AFTER_USE[after_use]))


class EndpointVLMLoader(io.ComfyNode):
    """A server with an OpenAI-compatible API: nothing to load here, nothing on this machine to name."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EndpointVLMLoader",
            display_name="Endpoint VLM Loader (cupscale)",
            category="cupscale/loaders",
            description="A vision-language model behind an OpenAI-compatible server (Ollama, llama.cpp, LM Studio, "
                        "vLLM) for MLLMRegionCaptioner. A key, if the server needs one, is read from "
                        "$CUPSCALE_MLLM_API_KEY.",
            inputs=[
                io.String.Input("endpoint_url", default="http://127.0.0.1:11434/v1",
                                tooltip="The server's base URL up to /v1."),
                io.String.Input("endpoint_model", default="",
                                tooltip="The model name the server serves (e.g. qwen2.5vl:7b)."),
                io.Int.Input("in_flight", default=4, min=1, max=MAX_IN_FLIGHT,
                             tooltip="Requests open at once: servers batch the requests they hold. 1 asks one "
                                     "region at a time."),
                advanced(io.Float.Input("timeout_s", default=120.0, min=1.0, max=MAX_TIMEOUT_S, optional=True,
                                        tooltip="Seconds to wait for each reply.")),
                advanced(io.Int.Input("retries", default=2, min=0, max=MAX_RETRIES, optional=True,
                                      tooltip="Retries of a request after a timeout or server error.")),
            ],
            outputs=[vlm_output()],
        )

    @classmethod
    def validate_inputs(cls, in_flight=None, timeout_s=None, retries=None) -> bool | str:
        return widgets_valid(cls, in_flight=in_flight, timeout_s=timeout_s, retries=retries)

    @classmethod
    def execute(cls, endpoint_url, endpoint_model, in_flight, timeout_s=120.0, retries=2) -> io.NodeOutput:
        check_numbers(cls, in_flight=in_flight, timeout_s=timeout_s, retries=retries)
        with widget_names(**WIDGETS):
            backend = OpenAIEndpoint(endpoint_url, endpoint_model, timeout_s, retries, in_flight=in_flight,
                                     stop=stop_if_interrupted)
        return io.NodeOutput(VLM(backend))


def clip_generate(clip):
    """The host's text generation as the core's ``Generate``: what ComfyUI's Generate Text node does for one
    image, greedy (do_sample off)."""
    def generate(image: Image.Image, instruction: str, max_tokens: int) -> str:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
        tokens = clip.tokenize(instruction, image=pixels, min_length=1)
        return clip.decode(clip.generate(tokens, do_sample=False, max_length=max_tokens))
    return generate


class CLIPVLMLoader(io.ComfyNode):
    """ComfyUI's own text generation from a VLM its CLIPLoader loaded, under its model management."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIPVLMLoader",
            display_name="VLM from CLIP (cupscale)",
            category="cupscale/loaders",
            description="A vision-language text encoder loaded by ComfyUI's Load CLIP (Qwen3-VL, Qwen2.5-VL, "
                        "Gemma, ...) as MLLMRegionCaptioner's model: ComfyUI runs it as its Generate Text node "
                        "does and frees it for the diffusion model as it frees any model. Needs a ComfyUI with "
                        "text generation (v0.33.0 has it).",
            inputs=[io.Clip.Input("clip", tooltip="From Load CLIP: a text encoder that can look at images.")],
            outputs=[vlm_output()],
        )

    @classmethod
    def execute(cls, clip) -> io.NodeOutput:
        if not all(callable(getattr(clip, name, None)) for name in ("tokenize", "generate", "decode")):
            raise ValueError("clip: this ComfyUI cannot generate text with a CLIP-loaded model (its CLIP has no "
                             "generate). Update ComfyUI to a release with the Generate Text node (v0.33.0 has "
                             "it), or connect a Local VLM Loader or an Endpoint VLM Loader instead.")
        model = getattr(clip, "cond_stage_model", clip)
        patches = getattr(getattr(clip, "patcher", None), "patches_uuid", "")  # a LoRA on the CLIP answers anew
        model_id = f"host-clip:{type(model).__name__}:{id(model):x}:{patches}"
        return io.NodeOutput(VLM(GeneratedText(clip_generate(clip), model_id, stop=stop_if_interrupted)))


NODES = [LocalVLMLoader, EndpointVLMLoader, CLIPVLMLoader]
