"""Nodes the harness adds to the host: a tiny checkpoint loader (tests, --tiny-models), a capture node that
keeps a prompt's intermediate values for the tests to read, a report of the server's state, and tensors of
shapes no core node makes (the hostile-input suite)."""
from __future__ import annotations

import ctypes

from comfy.comfy_types import IO

from harness import tiny_models
from harness.hostile_cases import SHAPES, TENSOR_TYPES


class TinyCheckpointLoader:
    """MODEL, CLIP, VAE from seeded tiny models: for running shipped workflows without weights. Every kind shares
    the tiny CLIP (the DiTs read its widths); the VAE is the kind's own (tiny_models.tiny_vae)."""

    CATEGORY = "cupscale/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(tiny_models.MODELS),), "seed": ("INT", {"default": 0})}}

    def load(self, kind, seed):
        return tiny_models.tiny_model(kind, seed), tiny_models.tiny_clip(seed), tiny_models.tiny_vae(seed, kind)


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


def pack_module(suffix: str):
    """A module of the pack as the host loaded it (under its custom_nodes name), by its dotted tail."""
    import sys
    return next(m for name, m in list(sys.modules.items()) if name.endswith(suffix) and "cupscale_test" not in name)


def model_state(model) -> dict:
    """What a MODEL carries beyond its weights: wrappers, attention replacements, post-CFG functions, and any
    other transformer_options key (run state left behind would show here)."""
    options = model.model_options.get("transformer_options", {})
    wrappers = {kind: sorted(keys) for kind, keys in options.get("wrappers", {}).items() if keys}
    return {"wrappers": wrappers, "attn2_replaced": len(options.get("patches_replace", {}).get("attn2", {})),
            "post_cfg": len(model.model_options.get("sampler_post_cfg_function", [])),
            "keys": sorted(k for k in options if k not in ("wrappers", "patches_replace", "patches"))}


class StateReport:
    """Output node: the server's resident memory, the pack's cache sizes and limits, and the state of the MODELs
    given (the shared, unpatched one and a patched clone), as JSON in the history's ``text``."""

    CATEGORY = "cupscale/testing"
    FUNCTION = "report"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tag": ("STRING", {"default": ""}),
                             "clear_caption_cache": ("BOOLEAN", {"default": False})},
                "optional": {"shared": ("MODEL",), "patched": ("MODEL",),
                             "trim_heap": ("BOOLEAN", {"default": False})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always runs: a report of now

    def report(self, tag, clear_caption_cache=False, shared=None, patched=None, trim_heap=False):
        import gc
        import json

        import psutil
        gc.collect()
        if trim_heap:  # what the C allocator keeps of freed memory goes back to the system (glibc)
            trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
            if trim is not None:
                trim(0)
        caption = pack_module(".cupscale.captioning.cache").CACHE
        if clear_caption_cache:  # the next run asks the VLM again: an interrupt can then fall in captioning
            caption.clear()
        grids = pack_module(".cupscale.priors.attention_prior").sampling_grid.cache_info()
        peaks = pack_module(".cupscale.lru").PEAKS
        doc = {"tag": tag, "rss": psutil.Process().memory_info().rss, "objects": len(gc.get_objects()),
               "caches": {"caption cache": {"entries": len(caption), "max_entries": caption.max_entries},
                          "sampling grids": {"entries": grids.currsize, "max_entries": grids.maxsize},
                          "peaks": peaks},
               "shared": model_state(shared) if shared is not None else None,
               "patched": model_state(patched) if patched is not None else None}
        return {"ui": {"text": [json.dumps(doc)]}}


NODE_CLASS_MAPPINGS["CupscaleStateReport"] = StateReport


class HostileTensor:
    """An IMAGE, MASK or LATENT of a shape no core node makes (batch 0, 1 x 1, 1 x 100000), for the hostile-input
    suite (harness/hostile_cases.py). Its output is typed ANY so it links into any of the three."""

    CATEGORY = "cupscale/testing"
    FUNCTION = "make"
    RETURN_TYPES = (IO.ANY,)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(TENSOR_TYPES),), "shape": (list(SHAPES),)}}

    def make(self, kind, shape):
        import torch
        batch, height, width = SHAPES[shape]
        if kind == "IMAGE":
            return (torch.full((batch, height, width, 3), 0.5),)
        if kind == "MASK":
            return (torch.ones((batch, height, width)),)
        return ({"samples": torch.zeros((batch, 4, max(height // 8, 1), max(width // 8, 1)))},)


NODE_CLASS_MAPPINGS["CupscaleHostileTensor"] = HostileTensor
