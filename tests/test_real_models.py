"""The real SD1.5 and SDXL layouts (seeded random weights) as checkpoint files: the stock loader detects
them, and the shipped workflow runs on them unchanged but for the checkpoint, image, sizes and steps."""
from __future__ import annotations

import psutil
import pytest
from PIL import Image

from harness import workflows

# A 32x24 input, one step a stage, tiles that still split the latent; the model is the real one.
REAL_FAST = ["8.steps=1", "12.steps=1", "4.tile_width=64", "4.tile_height=64", "4.overlap=16",
             *(f"{n}.tile_size=128" for n in (7, 9, 11, 13)), *(f"{n}.overlap=32" for n in (7, 9, 11, 13))]
SD15_UNET_PARAMS = 859_520_964  # runwayml/stable-diffusion-v1-5's UNet
SDXL_UNET_PARAMS = 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0's UNet


@pytest.fixture(scope="module")
def real(host):
    from harness import real_models
    real_models.register_cache_folder()
    return real_models


def load_checkpoint(host, name):
    return host.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(name)


def test_stock_loader_detects_the_sd15_file(host, real):
    import comfy.model_base
    import comfy.supported_models
    path = real.ensure_checkpoint("sd15")
    model, clip, vae = load_checkpoint(host, path.name)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert type(model.model) is comfy.model_base.BaseModel
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) == SD15_UNET_PARAMS
    tokens = clip.tokenize("a photograph of a lighthouse")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 77, 768) and pooled.shape == (1, 768)
    assert vae.latent_channels == 4 and vae.downscale_ratio == 8


@pytest.mark.skipif(psutil.virtual_memory().available < 24 * 2**30,
                    reason="loading the SDXL file on the CPU needs ~20 GiB free (bench/real_scale.py loads it)")
def test_stock_loader_detects_the_sdxl_file(host, real):
    import comfy.supported_models
    path = real.ensure_checkpoint("sdxl")
    model, clip, _ = load_checkpoint(host, path.name)
    assert type(model.model.model_config) is comfy.supported_models.SDXL
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) == SDXL_UNET_PARAMS
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a lighthouse"), return_pooled=True)
    assert cond.shape == (1, 77, 2048) and pooled.shape == (1, 1280)


def real_prompt(name: str) -> dict:
    prompt = workflows.with_checkpoint(workflows.load("upscale_x4_two_stage.api.json"), name)
    return workflows.with_overrides(workflows.with_image(prompt, "input.png"), REAL_FAST)


def test_shipped_workflow_runs_on_the_real_sd15_file(host, real, folders):
    from harness.comfy_host import run_prompt
    Image.new("RGB", (32, 24), (120, 60, 200)).save(folders / "in" / "input.png")
    history = run_prompt(real_prompt(real.ensure_checkpoint("sd15").name))
    (image,) = history["outputs"]["14"]["images"]
    with Image.open(folders / "out" / image["subfolder"] / image["filename"]) as im:
        assert im.size == (128, 96)


@pytest.mark.server
def test_shipped_workflow_runs_on_the_real_sd15_file_through_a_server(real, tmp_path):
    from harness.server import ComfyServer
    path = real.ensure_checkpoint("sd15")
    (tmp_path / "comfy" / "input").mkdir(parents=True)
    (tmp_path / "comfy" / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "comfy" / "models" / "checkpoints" / path.name).symlink_to(path)
    Image.new("RGB", (32, 24), (200, 100, 50)).save(tmp_path / "comfy" / "input" / "input.png")
    with ComfyServer(tmp_path / "comfy") as server:
        reply = server.post("/prompt", {"prompt": real_prompt(path.name)})
        entry = server.wait_history(reply["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        (image,) = entry["outputs"]["14"]["images"]
        with Image.open(tmp_path / "comfy" / "output" / image["subfolder"] / image["filename"]) as im:
            assert im.size == (128, 96)
