"""TiledBlendedDiffusion's tiles across devices (nodes/tile_devices.py) in a real ComfyUI: two CPU "devices", each
with its own copy of the model made the host's way, give the one-device result bit for bit."""
from __future__ import annotations

import logging

import pytest
import torch

from host_helpers import pack_module, sample


@pytest.fixture(scope="module")
def tiled(host):
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    return lambda model, **kw: node.execute(model, 256, 256, 64, 1, **kw)[0]


def loaded_model(tiny, kind: str):
    """A tiny model that knows how to load itself again, as the host's own loaders leave it
    (``cached_patcher_init``: what the host copies a model to another device from)."""
    model = tiny.tiny_model(kind)
    model.cached_patcher_init = (tiny.tiny_model, (kind,))
    return model


def replicates(host) -> bool:
    return pack_module(host, "nodes.tile_devices").host_replicates()


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_two_devices_give_the_one_device_result_bitwise(host, tiny, tiled, kind):
    if not replicates(host):
        pytest.skip("this ComfyUI has no per-device model copies (multi-GPU support, v0.33 has it)")
    model = loaded_model(tiny, kind)
    latent = torch.randn(tiny.latent_shape(kind, 1, 48, 64), generator=torch.Generator().manual_seed(1))
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    one = sample(tiled(model), latent, pos, neg, steps=3)
    two_devices = tiled(model, devices="cpu, cpu")
    [replica] = two_devices.get_additional_models_with_key("cupscale_tile_devices")
    assert replica.model is not model.model  # its own weights, not the original's
    calls = []
    replica.model.diffusion_model.register_forward_pre_hook(lambda *_: calls.append(1))
    two = sample(two_devices, latent, pos, neg, steps=3)
    assert calls  # the replica ran some of the tiles
    assert torch.equal(one, two)


def test_a_model_added_to_after_the_node_reaches_every_device(host, tiny, tiled):
    """Patches added after TiledBlendedDiffusion (a LoRA-like weight patch here) reach the replica too."""
    if not replicates(host):
        pytest.skip("this ComfyUI has no per-device model copies (multi-GPU support, v0.33 has it)")
    model = loaded_model(tiny, "sd15")
    latent = torch.randn(1, 4, 48, 64, generator=torch.Generator().manual_seed(2))
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    key = next(k for k in model.model_state_dict() if k.endswith("out.2.weight"))
    one, two = tiled(model), tiled(model, devices="cpu,cpu")
    for m in (one, two):
        m.add_patches({key: (torch.full_like(model.model_state_dict()[key], 0.01),)}, 1.0, 1.0)
    assert torch.equal(sample(one, latent, pos, neg, steps=2), sample(two, latent, pos, neg, steps=2))


@pytest.mark.parametrize("devices, says", [
    ("cuda:7", "not on this machine"), ("gpu zero", "is not a device"), ("x" * 300, "characters long")])
def test_devices_that_cannot_be_used_are_refused_naming_the_input(host, pack_node, devices, says):
    verdict = pack_node("TiledBlendedDiffusion").validate_inputs(devices=devices)
    assert isinstance(verdict, str) and "devices" in verdict and says in verdict


def test_one_device_named_runs_there_and_an_older_host_says_it_runs_on_one(host, tiny, tiled, caplog):
    model = tiny.tiny_model("sd15")
    with caplog.at_level(logging.INFO):
        tiled(model, devices="cpu")
        assert "one device (cpu) named" in caplog.text
    if not replicates(host):
        with caplog.at_level(logging.WARNING):
            patched = tiled(model, devices="cpu, cpu")
        assert "tiles run on cpu only" in caplog.text
        assert not patched.get_additional_models_with_key("cupscale_tile_devices")
