"""The implicit-decoding nodes in the booted host: model folders registered through folder_paths,
API-format prompts from LoadImage, progress, cancel, and the errors users see."""
import numpy as np
import pytest
import torch
from PIL import Image

import tiny_liif
from cupscale.liif import model as liif
from cupscale.liif.checkpoints import load_implicit_decoder, load_liif
from harness.comfy_host import run_prompt
from host_helpers import progress_reports

@pytest.fixture(scope="module")
def models(host, tmp_path_factory):
    """Tiny official-layout files in folders added to the host's ``liif``/``implicit_decoders``."""
    import folder_paths
    root = tmp_path_factory.mktemp("models")
    (root / "liif").mkdir()
    (root / "implicit_decoders").mkdir()
    torch.save(tiny_liif.edsr_liif(seed=3), root / "liif" / "tiny-edsr-liif.pth")
    torch.save(tiny_liif.first_stage(seed=4, z=4), root / "implicit_decoders" / "tiny-first-stage.ckpt")
    torch.save({"conv_first.weight": torch.zeros(8, 3, 3, 3)}, root / "liif" / "RealESRGAN_x2.pth")
    for name in ("liif", "implicit_decoders"):
        folder_paths.add_model_folder_path(name, str(root / name))
    return root


@pytest.fixture(scope="module")
def input_image(host, tmp_path_factory):
    """A PNG in a temporary input folder, as LoadImage finds it; the host's folder is restored."""
    import folder_paths
    folder = tmp_path_factory.mktemp("input")
    pixels = (np.random.default_rng(7).random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "small.png")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(folder))
    yield "small.png", torch.from_numpy(pixels.astype(np.float32) / 255)[None]
    folder_paths.set_input_directory(previous)


def test_model_folders_are_registered_with_comfyui(host):
    import folder_paths
    for name in ("liif", "implicit_decoders"):
        paths, extensions = folder_paths.folder_names_and_paths[name]
        assert paths[0].endswith(f"models/{name}") and ".pth" in extensions and ".safetensors" in extensions


def test_prompt_upscales_a_loaded_image_by_2_5(models, input_image):
    name, pixels = input_image
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImplicitUpscaleModelLoader", "inputs": {"model_name": "tiny-edsr-liif.pth"}},
        "3": {"class_type": "ImplicitUpscale", "inputs": {"implicit_model": ["2", 0], "image": ["1", 0],
                                                          "scale_by": 2.5, "width": 0, "height": 0, "tile_size": 16}},
        "4": {"class_type": "CupscaleCapture", "inputs": {"value": ["3", 0], "key": "upscaled"}},
    }
    from harness.test_nodes import CAPTURED
    run_prompt(prompt)
    out = CAPTURED["upscaled"]
    assert out.shape == (1, 50, 70, 3) and out.dtype == torch.float32
    with torch.no_grad():
        expected = liif.to_image_(liif.render(load_liif(models / "liif" / "tiny-edsr-liif.pth"),
                                              liif.to_signed(pixels), (50, 70)))
    assert (out - expected).abs().max() <= 1e-6
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0.01


def test_prompt_decodes_a_vae_latent_to_any_size(models, input_image, tiny):
    name, pixels = input_image
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "4": {"class_type": "ImplicitDecoderLoader", "inputs": {"decoder_name": "tiny-first-stage.ckpt"}},
        "5": {"class_type": "ImplicitLatentDecode", "inputs": {"decoder": ["4", 0], "samples": ["3", 0],
                                                               "width": 131, "height": 75, "tile_size": 8}},
        "6": {"class_type": "CupscaleCapture", "inputs": {"value": ["5", 0], "key": "decoded"}},
    }
    from harness.test_nodes import CAPTURED
    run_prompt(prompt)
    out = CAPTURED["decoded"]
    assert out.shape == (1, 75, 131, 3)
    latent = tiny.tiny_vae(0).encode(pixels)
    with torch.no_grad():
        decoder = load_implicit_decoder(models / "implicit_decoders" / "tiny-first-stage.ckpt")
        expected = liif.to_image_(liif.render(decoder.model, latent, (75, 131)))
    assert (out - expected).abs().max() <= 1e-5


def test_progress_reaches_the_end_and_cancel_stops_the_node(models, pack_node):
    import comfy.model_management
    model = pack_node("ImplicitUpscaleModelLoader").execute("tiny-edsr-liif.pth")[0]
    node = pack_node("ImplicitUpscale")
    img = torch.rand(1, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    with progress_reports() as seen:
        out = node.execute(model, img, 1.5, 0, 0, 16)[0]
    assert out.shape == (1, 36, 36, 3)
    assert len(seen) >= 4 and seen[-1][0] == seen[-1][1] and [v for v, _ in seen] == sorted(v for v, _ in seen)
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            node.execute(model, img, 1.5, 0, 0, 16)
    finally:
        comfy.model_management.interrupt_current_processing(False)


def test_bad_inputs_name_the_input_and_the_fix(models, pack_node):
    with pytest.raises(ValueError, match=r"RealESRGAN_x2.pth is not a LIIF checkpoint.*'Load Upscale Model'"):
        pack_node("ImplicitUpscaleModelLoader").execute("RealESRGAN_x2.pth")
    model = pack_node("ImplicitUpscaleModelLoader").execute("tiny-edsr-liif.pth")[0]
    img = torch.rand(1, 8, 8, 3)
    upscale = pack_node("ImplicitUpscale").execute
    with pytest.raises(ValueError, match=r"scale_by = 0.0: the scale factor must be positive"):
        upscale(model, img, 0.0, 0, 0, 64)
    with pytest.raises(ValueError, match=r"beyond the maximum of 16384 per side"):
        upscale(model, img, 1.0, 20000, 0, 64)
    with pytest.raises(ValueError, match=r"LIIF models take RGB images"):
        upscale(model, torch.rand(1, 8, 8, 4), 2.0, 0, 0, 64)
    for empty in (torch.rand(0, 8, 8, 3), torch.rand(1, 0, 8, 3)):  # were a ZeroDivisionError
        with pytest.raises(ValueError, match=r"image is empty \(shape .*\): give at least one image"):
            upscale(model, empty, 2.0, 0, 0, 64)
    with pytest.raises(ValueError, match=r"16384x16384 output of 1 image\(s\) is 268 megapixels .* lower scale_by "
                                         r"\(or width, height\), or raise \$CUPSCALE_MAX_OUTPUT_MEGAPIXELS"):
        upscale(model, img, 1.0, 16384, 16384, 64)
    decoder = pack_node("ImplicitDecoderLoader").execute("tiny-first-stage.ckpt")[0]
    with pytest.raises(ValueError, match=r"samples has shape \(1, 16, 8, 8\), but the decoder takes 4-channel"):
        pack_node("ImplicitLatentDecode").execute(decoder, {"samples": torch.zeros(1, 16, 8, 8)}, 64, 64, 64)
    with pytest.raises(ValueError, match=r"samples is empty \(shape \(0, 4, 8, 8\)\)"):
        pack_node("ImplicitLatentDecode").execute(decoder, {"samples": torch.zeros(0, 4, 8, 8)}, 64, 64, 64)
