"""MLLMRegionCaptioner through the host's own text generation: a tiny Qwen3-VL text encoder read by ComfyUI's
Load CLIP (v0.33.0 and later), and the plain message where the host has no text generation."""
from __future__ import annotations

import pytest

from harness.comfy_host import PromptError, new_executor, run_prompt
from host_helpers import host_generates_text, pack_module  # noqa: F401  (the first is read by skipif)

H, W, TILE, OVERLAP = 112, 144, 64, 16  # a 2x3 grid of regions


def captioner_graph(clip_node: dict) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": 1, "color": 0x336699}},
        "clip": clip_node,
        "vlm": {"class_type": "CLIPVLMLoader", "inputs": {"clip": ["clip", 0]}},
        "2": {"class_type": "MLLMRegionCaptioner", "inputs": {
            "image": ["1", 0], "vlm": ["vlm", 0], "tile_width": TILE, "tile_height": TILE, "overlap": OVERLAP,
            "region_prompts": "description (C-Upscale)", "xpsr_descriptions": True, "max_tokens": 4,
            "on_region_failure": "use global prompt", "global_prompt": "a walled garden"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


@pytest.mark.skipif("not host_generates_text()", reason="this ComfyUI has no text generation (v0.33.0 has it)")
def test_captioner_runs_on_a_clip_loaded_vlm_through_the_hosts_text_generation(qwen3vl_text_encoder, host,
                                                                                 monkeypatch):
    """Load CLIP reads a Qwen3-VL file; VLM from CLIP hands it to the captioner, which asks the host's
    CLIP.tokenize(image=...) / generate / decode once per region and twice for XPSR's descriptions, each call
    with one image, and writes a prompt per region."""
    import comfy.sd
    pack_module(host, "cupscale.captioning.cache").CACHE.clear()
    calls = []
    generate = comfy.sd.CLIP.generate

    def spy(self, tokens, **kw):
        embeds = [t[0] for batch in next(iter(tokens.values())) for t in batch if isinstance(t[0], dict)]
        calls.append(([e["type"] for e in embeds], tuple(embeds[0]["data"].shape), kw))
        return generate(self, tokens, **kw)
    monkeypatch.setattr(comfy.sd.CLIP, "generate", spy)
    graph = captioner_graph({"class_type": "CLIPLoader", "inputs": {"clip_name": qwen3vl_text_encoder,
                                                                   "type": "stable_diffusion"}})
    executor = new_executor()  # one server: the loaded CLIP stays in its cache between prompts
    out = run_prompt(graph, executor)
    prompts = pack_module(host, "cupscale.captioning.region_prompts").from_json(out["outputs"]["3"]["text"][0])
    assert len(prompts.prompts) == 6 and all(p.strip() for p in prompts.prompts)
    assert len(calls) == 6 + 2 and all(kinds == ["image"] for kinds, _, _ in calls)
    assert {shape for _, shape, _ in calls} == {(1, 64, 64, 3), (1, H, W, 3)}  # the regions, the whole image
    assert all(kw["do_sample"] is False and kw["max_length"] == 4 for _, _, kw in calls)
    graph["2"]["inputs"]["prefix"] = "photo"  # the captioner runs again, the loaded CLIP is the same
    prompts = pack_module(host, "cupscale.captioning.region_prompts").from_json(
        run_prompt(graph, executor)["outputs"]["3"]["text"][0])
    assert all(p.startswith("photo, ") for p in prompts.prompts)  # every answer from the caption cache
    assert len(calls) == 8


@pytest.mark.skipif("host_generates_text()", reason="this ComfyUI has text generation")
def test_vlm_from_clip_says_this_comfyui_needs_text_generation(host):
    graph = captioner_graph({"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}})
    graph["vlm"]["inputs"]["clip"] = ["clip", 1]
    with pytest.raises(PromptError, match=r"CLIPVLMLoader.*clip: this ComfyUI cannot generate text.*Update ComfyUI"):
        run_prompt(graph)
