"""A tiny random CLIP model folder, saved as a user's models/clip_rerank/<name> would be.

The tokenizer is CLIP's real BPE vocabulary from the host (ComfyUI ships it in comfy/sd1_tokenizer);
the image processor is CLIP's at 32 px; the model is CLIPModel built from a small config. No hub.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.comfy_host import host_path

SIZE = 32


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast
    tokenizer = CLIPTokenizerFast.from_pretrained(str(host_path() / "comfy" / "sd1_tokenizer"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                                 crop_size={"height": SIZE, "width": SIZE}),
                              tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": SIZE, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
