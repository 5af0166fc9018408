"""CLIPRerank: keep the candidates that match the prompt best (core: cupscale.editing.rerank).

Multi-Stage Blended Diffusion's first stage makes a batch of edits and carries the best one by CLIP
similarity into the upscaling stages (seed 002). The CLIP model is a transformers folder in
``models/clip_rerank`` (e.g. openai/clip-vit-large-patch14, the model the paper's code ranks with).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

import comfy.model_management
import folder_paths

from ..cupscale.editing.rerank import best_k, clip_scores

CLIP_FOLDER = "clip_rerank"
NO_MODEL = "(no model folder in models/clip_rerank)"

folder_paths.add_model_folder_path(CLIP_FOLDER, os.path.join(folder_paths.models_dir, CLIP_FOLDER))

# One model stays loaded (on the offload device) so that the next run of the workflow skips loading.
_loaded: dict[str, tuple] = {}


def clip_folders() -> list[str]:
    """Folders holding a config.json directly in models/clip_rerank (wherever it is configured)."""
    names = {config.parent.name for root in folder_paths.get_folder_paths(CLIP_FOLDER)
             for config in Path(root).glob("*/config.json") if not config.parent.name.startswith(".")}
    return sorted(names) or [NO_MODEL]


def load_clip(name: str):
    """(CLIPModel, CLIPProcessor) from models/clip_rerank/<name>, offline."""
    roots = folder_paths.get_folder_paths(CLIP_FOLDER)
    path = next((Path(r) / name for r in roots if name != NO_MODEL and (Path(r) / name / "config.json").is_file()), None)
    if path is None:
        raise ValueError(f"clip_model = {name!r}: no such model folder in {', '.join(roots)}. Download a CLIP model "
                         f"folder there, e.g. `hf download openai/clip-vit-large-patch14 --local-dir "
                         f"{Path(roots[0]) / 'clip-vit-large-patch14'}`.")
    key = str(path)
    if key not in _loaded:
        from transformers import CLIPModel, CLIPProcessor
        try:
            model = CLIPModel.from_pretrained(key, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(key, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"clip_model = {name!r}: {path} is not a complete CLIP model folder (CLIPModel weights, "
                             f"tokenizer and image processor files): {e}") from None
        _loaded.clear()
        _loaded[key] = (model, processor)
    return _loaded[key]


class CLIPRerank:
    """IMAGE batch -> the ``keep`` images closest to the text in CLIP space, with every score."""

    CATEGORY = "cupscale/editing"
    FUNCTION = "rerank"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("best", "ranking")
    DESCRIPTION = ("Scores every image of a batch by CLIP image-text similarity to the prompt and returns the best "
                   "ones, best first (Multi-Stage Blended Diffusion picks the best of a batch of first-stage edits "
                   "this way). With a mask, each image is scored on a square crop around the masked area. "
                   "ranking lists every candidate's batch index and score, best first, as JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The candidates, as one batch."}),
                "clip_model": (clip_folders(), {"tooltip": "A transformers CLIP model folder in models/clip_rerank."}),
                "text": ("STRING", {"default": "", "multiline": True,
                                    "tooltip": "The edit's prompt (CLIP reads the first 77 tokens)."}),
                "keep": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many of the best to return."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "The edited area, at the candidates' size: score a square crop around it."}),
            },
        }

    def rerank(self, images, clip_model, text, keep, mask=None):
        if keep > images.shape[0]:
            raise ValueError(f"keep = {keep} but the batch holds {images.shape[0]} candidates: lower keep, or make "
                             f"more candidates (e.g. RepeatLatentBatch before sampling).")
        model, processor = load_clip(clip_model)
        device = comfy.model_management.get_torch_device()
        comfy.model_management.throw_exception_if_processing_interrupted()
        model.to(device)
        try:
            scores = clip_scores(model, processor, images, text, device, mask)
        finally:
            model.to(comfy.model_management.unet_offload_device())
        ranking = best_k(scores, keep)
        logging.info("CLIPRerank: %s", ranking.describe())
        best = images[torch.tensor(ranking.indices, device=images.device)]
        full = best_k(scores, len(scores))
        return best, json.dumps([{"index": i, "score": round(s, 4)} for i, s in zip(full.indices, full.scores)])


NODE_CLASS_MAPPINGS = {"CLIPRerank": CLIPRerank}
NODE_DISPLAY_NAME_MAPPINGS = {"CLIPRerank": "CLIP Rerank Candidates (cupscale)"}
