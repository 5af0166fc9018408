"""A node the tests and the main job's --tiny-models put in place of CheckpointLoaderSimple."""
from __future__ import annotations

from harness import tiny_models


class TinyCheckpointLoader:
    """MODEL, CLIP, VAE from seeded tiny models: for running shipped workflows without weights."""

    CATEGORY = "cupscale/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd15", "sdxl"],), "seed": ("INT", {"default": 0})}}

    def load(self, kind, seed):
        return tiny_models.tiny_model(kind, seed), tiny_models.tiny_clip(seed), tiny_models.tiny_vae(seed)


NODE_CLASS_MAPPINGS = {"CupscaleTinyCheckpointLoader": TinyCheckpointLoader}
