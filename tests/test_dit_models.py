"""The tiny DiTs (Flux dev, SD3.5, Qwen-Image; Flux.2, Chroma, HiDream, Z-Image where the host has them) in the real
host: a stock graph, and LowFreqStructureGuide on each."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from cupscale.priors.structure import reference_at, working_band
from cupscale.tiling.lowpass import fft_lowpass
from test_structure_guide import (AMOUNT, REF, WORK, assert_guided_steps, guided, recording, reference_latent, rel,
                                  sample)

KINDS = ["flux", "sd3", "qwen_image"]
NEW = ["flux2", "chroma", "hidream", "z_image"]
"""The 2026 models (issue #31): each skips, saying so, on a host that lacks it."""


@pytest.fixture(params=KINDS + NEW)
def kind(request, tiny):
    if tiny.missing(request.param):
        pytest.skip(tiny.missing(request.param))
    return request.param


@pytest.mark.parametrize("kind,model_class,latent_format,channels", [
    ("flux", "Flux", "Flux", 16), ("sd3", "SD3", "SD3", 16), ("qwen_image", "QwenImage", "Wan21", 16),
    ("flux2", "Flux2", "Flux2", 128), ("chroma", "Chroma", "Flux", 16), ("hidream", "HiDream", "Flux", 16),
    ("z_image", "Lumina2", "Flux", 16)])
def test_tiny_dits_are_the_host_classes_with_the_real_latent_formats(tiny, kind, model_class, latent_format,
                                                                      channels):
    import comfy.latent_formats
    import comfy.model_base
    if tiny.missing(kind):
        pytest.skip(tiny.missing(kind))
    model = tiny.tiny_model(kind).model
    assert type(model) is getattr(comfy.model_base, model_class)
    assert type(model.latent_format) is getattr(comfy.latent_formats, latent_format)
    assert model.latent_format.latent_channels == tiny.latent_shape(kind, 1, 8, 8)[1] == channels


def stock_prompt(kind: str) -> dict:
    """A 96x64 two-colour image through the host's own nodes: VAEEncodeTiled, CLIPTextEncode (and FluxGuidance
    for Flux), KSampler, VAEDecodeTiled, SaveImage; VAEEncode of the same image beside it."""
    prompt = {
        "1": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0xC03020}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 32, "batch_size": 1, "color": 0x2040E0}},
        "4": {"class_type": "ImageCompositeMasked",
              "inputs": {"destination": ["2", 0], "source": ["3", 0], "x": 16, "y": 24, "resize_source": False}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue box on red", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "7": {"class_type": "VAEEncodeTiled", "inputs": {"pixels": ["4", 0], "vae": ["1", 2], "tile_size": 64,
                                                         "overlap": 16, "temporal_size": 64, "temporal_overlap": 8}},
        "8": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "10": {"class_type": "KSampler",
               "inputs": {"model": ["1", 0], "seed": 3, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                          "scheduler": "normal", "positive": ["5", 0], "negative": ["6", 0],
                          "latent_image": ["7", 0], "denoise": 0.7}},
        "11": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["10", 0], "vae": ["1", 2], "tile_size": 64,
                                                          "overlap": 16, "temporal_size": 64, "temporal_overlap": 8}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": kind}},
        "13": {"class_type": "CupscaleCapture", "inputs": {"value": ["10", 0], "key": "sampled"}},
        "14": {"class_type": "CupscaleCapture", "inputs": {"value": ["8", 0], "key": "encoded"}},
    }
    if kind == "flux":  # Flux dev reads its distilled guidance from the positive conditioning
        prompt["9"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": 3.5}}
        prompt["10"]["inputs"]["positive"] = ["9", 0]
    return prompt


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_dit_runs_a_stock_graph(host, folders, kind):
    from harness import comfy_host, tiny_models
    from harness.test_nodes import CAPTURED
    history = comfy_host.run_prompt(stock_prompt(kind))
    sampled, encoded = CAPTURED["sampled"]["samples"], CAPTURED["encoded"]["samples"]
    assert sampled.shape == encoded.shape == tiny_models.latent_shape(kind, 1, 8, 12)
    assert torch.isfinite(sampled).all() and sampled.std() > 0
    (saved,) = history["outputs"]["12"]["images"]
    with Image.open(folders / "out" / saved["subfolder"] / saved["filename"]) as image:
        assert image.size == (96, 64)


def test_structure_guide_at_strength_zero_is_bitwise_unpatched(tiny, pack_node, kind):
    base = tiny.tiny_model(kind)
    expected = sample(tiny, base, kind)
    assert torch.equal(sample(tiny, guided(pack_node, base, reference_latent(kind=kind), strength=0.0), kind), expected)


def test_structure_guide_over_the_last_steps_gives_the_output_the_reference_low_band(tiny, pack_node, kind):
    """Euler's last step returns the last denoised estimate, which the guide aligned: the sampled latent keeps LP(z_L)
    (the latent format's per-channel affine map commutes with the low-pass)."""
    base = tiny.tiny_model(kind)
    reference = reference_latent(kind=kind)
    out = sample(tiny, guided(pack_node, base, reference, "fft", start=0.5), kind)
    cutoff = working_band("fft", AMOUNT["fft"], WORK / REF)
    target = fft_lowpass(reference_at(reference["samples"], (WORK, WORK)), cutoff)
    assert rel(fft_lowpass(out, cutoff), target) <= 1e-3
    assert rel(fft_lowpass(sample(tiny, base, kind), cutoff), target) > 0.1


@pytest.mark.parametrize("lowpass", ["gaussian", "fft"])
def test_structure_guide_at_strength_one_aligns_every_step(tiny, pack_node, kind, lowpass):
    base = tiny.tiny_model(kind)
    unguided, final = [], []
    reference = reference_latent(kind=kind)
    sample(tiny, guided(pack_node, recording(base, unguided), reference, lowpass), kind, denoised=final)
    assert_guided_steps(base, reference, lowpass, unguided, final)
