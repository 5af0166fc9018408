"""CLIPRerank: keep the candidates that match the prompt best (core: cupscale.editing.rerank).

Multi-Stage Blended Diffusion's first stage makes a batch of edits and carries the best one by CLIP
similarity into the upscaling stages. The CLIP model is a transformers folder in
``models/clip_rerank`` (e.g. openai/clip-vit-large-patch14, the model the paper's code ranks with).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..cupscale.editing.rerank import best_k, clip_scores
from ..cupscale.guards import check_not_empty
from .host import folder_paths, io, model_management
from .host_services import model_folder_path, model_folders, register_model_folder, stop_if_interrupted
from .inputs import widget_names, widgets_valid

CLIP_FOLDER = "clip_rerank"

register_model_folder(CLIP_FOLDER)

# One model stays loaded (on the offload device) so that the next run of the workflow skips loading.
_loaded: dict[str, tuple] = {}


def load_clip(name: str):
    """(CLIPModel, CLIPProcessor) from models/clip_rerank/<name>, offline."""
    path = model_folder_path(CLIP_FOLDER, name)
    if path is None or not (path / "config.json").is_file():
        roots = folder_paths.get_folder_paths(CLIP_FOLDER)
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


class CLIPRerank(io.ComfyNode):
    """IMAGE batch -> the ``keep`` images closest to the text in CLIP space, with every score."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIPRerank",
            display_name="CLIP Rerank Candidates (cupscale)",
            category="cupscale/editing",
            description=("Scores every image of a batch by CLIP image-text similarity to the prompt and returns the "
                         "best ones, best first (Multi-Stage Blended Diffusion picks the best of a batch of "
                         "first-stage edits this way). With a mask, each image is scored on a square crop around "
                         "the masked area. ranking lists every candidate's batch index and score, best first, as "
                         "JSON."),
            inputs=[
                io.Image.Input("images", tooltip="The candidates, as one batch."),
                io.Combo.Input("clip_model", options=model_folders(CLIP_FOLDER),
                               tooltip="A transformers CLIP model folder in models/clip_rerank."),
                io.String.Input("text", default="", multiline=True,
                                tooltip="The edit's prompt (CLIP reads the first 77 tokens)."),
                io.Int.Input("keep", default=1, min=1, max=4096, tooltip="How many of the best to return."),
                io.Mask.Input("mask", optional=True,
                              tooltip="The edited area, at the candidates' size: score a square crop around it."),
            ],
            outputs=[io.Image.Output(display_name="best"), io.String.Output(display_name="ranking")],
        )

    @classmethod
    def validate_inputs(cls, clip_model=None) -> bool | str:
        return widgets_valid(cls, clip_model=clip_model)

    @classmethod
    def execute(cls, images, clip_model, text, keep, mask=None) -> io.NodeOutput:
        with widget_names(f="images", m="mask"):
            check_not_empty(images, "f")
            if mask is not None:
                check_not_empty(mask, "m")
        if keep > images.shape[0]:
            raise ValueError(f"keep = {keep} but images holds {images.shape[0]} candidates: lower keep, or make "
                             f"more candidates (e.g. RepeatLatentBatch before sampling).")
        model, processor = load_clip(clip_model)
        device = model_management.get_torch_device()
        stop_if_interrupted()
        model.to(device)
        try:
            with widget_names():
                scores = clip_scores(model, processor, images, text, device, mask)
        finally:
            model.to(model_management.unet_offload_device())
        with widget_names():
            ranking = best_k(scores, keep)
        logging.info("CLIPRerank: %s", ranking.describe())
        best = images[torch.tensor(ranking.indices, device=images.device)]
        full = best_k(scores, len(scores))
        return io.NodeOutput(best, json.dumps([{"index": i, "score": round(s, 4)} for i, s in zip(full.indices,
                                                                                                  full.scores)]))


NODES = [CLIPRerank]
