"""Nodes the harness adds to the host: a tiny checkpoint loader (tests, --tiny-models) and a capture
node that keeps a prompt's intermediate values for the tests to read."""
from __future__ import annotations

from comfy.comfy_types import IO

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


CAPTURED: dict[str, object] = {}


class Capture:
    """Output node: keeps whatever it is given (an IMAGE, a LATENT, ...) in CAPTURED[key]."""

    CATEGORY = "cupscale/testing"
    FUNCTION = "capture"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (IO.ANY,), "key": ("STRING", {"default": "value"})}}

    def capture(self, value, key):
        CAPTURED[key] = value
        return {}


NODE_CLASS_MAPPINGS = {"CupscaleTinyCheckpointLoader": TinyCheckpointLoader, "CupscaleCapture": Capture}
