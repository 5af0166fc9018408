"""The ×2.5 LIIF upscale, the multi-stage blended edit and the region-captioning workflows run in
ComfyUI's executor with tiny models in place of the files the README tells users to download."""
from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_clip
import tiny_liif
import tiny_vlms
from harness import workflows
from harness.comfy_host import run_prompt

VAE_TILES = ["tile_size=128", "overlap=32"]
TILES = ["tile_width=64", "tile_height=64", "overlap=16"]


def fast(prompt: dict, **per_node: list[str]) -> dict:
    """Overrides for the CPU: ``fast(p, n8=VAE_TILES)`` sets node 8's inputs."""
    return workflows.with_overrides(prompt, [f"{k[1:]}.{v}" for k, values in per_node.items() for v in values])


@pytest.fixture(scope="module")
def model_files(host, tmp_path_factory):
    """The README's model files, tiny: LIIF under its real name, a CLIP folder, a VLM folder."""
    import folder_paths
    root = tmp_path_factory.mktemp("models")
    (root / "liif").mkdir()
    torch.save(tiny_liif.edsr_liif(seed=5), root / "liif" / "edsr-baseline-liif.pth")
    tiny_clip.tiny_clip(root / "clip_rerank" / "tiny-clip")
    tiny_vlms.llava(root / "LLM" / "tiny-llava")
    for name in ("liif", "clip_rerank", "LLM"):
        folder_paths.add_model_folder_path(name, str(root / name))
    return root


def saved(folders, history: dict, node: str, kind: str = "out") -> list[Image.Image]:
    return [Image.open(folders / kind / i["subfolder"] / i["filename"]) for i in history["outputs"][node]["images"]]


def x2_5_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("upscale_x2_5_implicit.api.json"))
    return fast(prompt, n4=TILES, n8=VAE_TILES, n10=VAE_TILES, n12=VAE_TILES, n14=VAE_TILES,
                n9=["steps=2"], n13=["steps=2"])


def test_x2_5_upscale_runs_two_liif_stages(model_files, folders):
    Image.new("RGB", (48, 32), (90, 140, 30)).save(folders / "in" / "input.png")
    history = run_prompt(x2_5_prompt())
    (image,) = saved(folders, history, "15")
    assert image.size == (120, 80)  # 48x32 -> x2 -> x1.25


def msbd_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("edit_multistage_blended.api.json"))
    vae = {f"n{k}": VAE_TILES for k in (14, 20, 35, 37, 42, 44)}
    return fast(prompt, n13=TILES, n34=TILES, n41=TILES, n15=["amount=3"], n17=["jump_length=1", "resample_count=2"],
                n18=["steps=3"], n36=["steps=2"], n43=["steps=2"], n22=["clip_model=tiny-clip"], **vae)


def test_multistage_blended_edit_changes_only_the_masked_area(model_files, folders):
    rng = np.random.default_rng(3)
    rgba = np.concatenate([(rng.random((96, 128, 3)) * 255).astype(np.uint8), np.full((96, 128, 1), 255, np.uint8)], -1)
    rgba[32:64, 40:88, 3] = 0  # transparent: LoadImage's mask is 1 there, the area to edit
    Image.fromarray(rgba, "RGBA").save(folders / "in" / "input.png")
    history = run_prompt(msbd_prompt())
    candidates = saved(folders, history, "21", "temp")
    assert len(candidates) == 3 and candidates[0].size == (64, 48)  # stage 1 at half size, one per candidate
    (edit,) = saved(folders, history, "46")
    assert edit.size == (128, 96)
    out = np.asarray(edit.convert("RGB")).astype(int)
    keep = np.ones((96, 128), bool)
    keep[32:64, 40:88] = False
    assert np.array_equal(out[keep], rgba[..., :3][keep].astype(int))
    assert np.abs(out[~keep] - rgba[..., :3][~keep]).mean() > 5


def test_captioned_regions_come_with_the_overlay_payload(model_files, folders):
    Image.new("RGB", (72, 40), (30, 80, 160)).save(folders / "in" / "input.png")
    prompt = workflows.with_overrides(workflows.load("caption_regions.api.json"), [
        "5.local_model=tiny-llava", "3.tile_width=64", "3.tile_height=64", "3.overlap=16", "3.max_tokens=4",
        "5.device=cpu", '3.global_prompt="a lake"', '3.on_region_failure="use global prompt"'])
    history = run_prompt(prompt)
    (payload,) = history["outputs"]["3"]["cupscale_regions"]
    assert (payload["width"], payload["height"]) == (144, 80)
    with Image.open(folders / "temp" / payload["image"]["subfolder"] / payload["image"]["filename"]) as preview:
        assert preview.size == (144, 80)
    doc = json.loads(history["outputs"]["4"]["text"][0])
    assert json.loads(payload["region_prompts_json"]) == doc
    assert doc["grid_in_latent_cells"] == {"height": 10, "width": 18, "tile_height": 8, "tile_width": 8, "overlap": 2}
    assert len(doc["regions"]) == 2 * 3


@pytest.mark.parametrize("name, needs", [
    ("upscale_x2_5_implicit.api.json", {"1", "5"}),
    ("edit_multistage_blended.api.json", {"1", "5", "22"}),
    ("caption_regions.api.json", {"1", "5"}),  # the image, the Local VLM Loader
])
def test_unchanged_workflows_fail_validation_only_for_the_files_users_download(model_files, folders, name, needs):
    """Checkpoint, input image, CLIP and VLM folders are absent here; the LIIF file has its real name."""
    import execution
    ok, _, _, node_errors = asyncio.run(execution.validate_prompt("t", workflows.load(name), None))
    assert not ok and set(node_errors) == needs, node_errors
    assert not os.listdir(folders / "in")
