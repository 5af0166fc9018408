"""train/train_implicit_decoder.py on the CPU: a tiny VAE (ComfyUI's own classes) as the frozen
encoder, its decoder's shape for the trunk, 8 synthetic images, 50 steps of 64x64 crops."""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from train.train_implicit_decoder import TrainConfig, load_images, train


def synthetic_images(folder, count: int = 8, size: int = 72) -> None:
    """Smooth colour gradients with a soft wave: easy to learn, different per image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(count):
        base, gy, gx = rng.random(3), rng.random(3) - 0.5, rng.random(3) - 0.5
        wave = 0.15 * np.sin(2 * np.pi * (rng.integers(1, 3) * xx + rng.random()))[..., None]
        pixels = np.clip(base + gy * yy[..., None] + gx * xx[..., None] + wave, 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def setup(host, tiny, tmp_path_factory):
    import folder_paths
    root = tmp_path_factory.mktemp("train")
    (root / "images").mkdir()
    (root / "implicit_decoders").mkdir()
    synthetic_images(root / "images")
    folder_paths.add_model_folder_path("implicit_decoders", str(root / "implicit_decoders"))
    config = TrainConfig(images=str(root / "images"), out=str(root / "implicit_decoders" / "tiny.safetensors"),
                         latent="tiny-sd15", steps=50, batch_size=4, crop=64, sample_q=256, lr=2e-3,
                         hidden=(32, 32), save_every=25)
    vae = tiny.tiny_vae(0)
    return root, config, vae, train(config, vae, progress=False)


def test_loss_falls_by_at_least_30_percent(setup):
    _, _, _, losses = setup
    assert len(losses) == 50
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last <= 0.7 * first, f"L1 went from {first:.4f} to {last:.4f}"


def test_saved_decoder_loads_in_the_node_and_decodes_to_333x517(setup, pack_node):
    root, config, vae, _ = setup
    decoder = pack_node("ImplicitDecoderLoader").execute("tiny.safetensors")[0]
    assert decoder.info.latent == "tiny-sd15" and decoder.info.hidden == (32, 32)
    pixels = load_images(config.images, config.crop)[0][None, :64, :64].float() / 255
    latent = {"samples": vae.encode(pixels)}
    out = pack_node("ImplicitLatentDecode").execute(decoder, latent, 517, 333, 128)[0]
    assert out.shape == (1, 333, 517, 3) and out.std() > 0.01
    same_size = pack_node("ImplicitLatentDecode").execute(decoder, latent, 64, 64, 128)[0]
    assert (same_size - pixels).abs().mean() < 0.25  # it decodes an image it was trained on, roughly


def test_resumed_training_follows_the_uninterrupted_run(setup, tmp_path):
    """Stop after 4 steps, resume to 8: every loss, after the restart too, is the one of the
    uninterrupted run, so weights, optimiser and data sampling all came back."""
    _, config, vae, losses = setup
    split = replace(config, out=str(tmp_path / "resumed.safetensors"), steps=4, save_every=2)
    train(split, vae, progress=False)
    resumed = train(replace(split, steps=8, resume=True), vae, progress=False)
    assert resumed == pytest.approx(losses[:8], abs=1e-6)
    assert load_file(split.out).keys() == load_file(config.out).keys()
    with pytest.raises(ValueError, match=r"--resume: .* was made with .*resume with the same settings"):
        train(replace(split, steps=9, resume=True, lr=1e-3), vae, progress=False)
