"""DiTPositionExtrapolation on tiny Flux and Qwen-Image models built from ComfyUI's own classes: below the base
resolution the model is unchanged; past it a tile's rotary table is the whole image's at the tile (not so for
tiles positioned as images of their own); every mode samples end to end, with tiles and the priors."""
from __future__ import annotations

import pytest
import torch

from host_helpers import pack_module, sample
from test_dit_tiling import PIXELS, latent, prior, rel, tiled

ROPE_DITS = ["flux", "qwen_image"]
MODES = ["ntk", "yarn", "vision_yarn"]
PATCHES = (PIXELS[0] // 16, PIXELS[1] // 16)  # 20 x 24 patches of 16 px: a 320 x 384 px image


def extrapolated(host, model, method: str, base_resolution: int, dype: bool = True):
    return host.NODE_CLASS_MAPPINGS["DiTPositionExtrapolation"]().execute(model, method, dype, base_resolution)[0]


@pytest.mark.parametrize("kind", ROPE_DITS)
def test_at_or_below_the_base_resolution_every_mode_equals_plain_whole_sampling(host, tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    whole = sample(tiled(nodes_, model, 128, overlap=32), latent(kind), pos, neg, steps=2)
    plain = sample(model, latent(kind), pos, neg, steps=2)
    for method in MODES:
        for dype in (True, False):
            patched = extrapolated(host, model, method, 384, dype)  # 24 patches a side: the image fits
            assert rel(sample(tiled(nodes_, patched, 128, overlap=32), latent(kind), pos, neg, steps=2), whole) <= 1e-6
            assert rel(sample(patched, latent(kind), pos, neg, steps=2), plain) <= 1e-6


@pytest.mark.parametrize("method", MODES)
@pytest.mark.parametrize("kind", ROPE_DITS)
def test_a_tiles_rotary_table_is_the_whole_images_at_the_tile(host, tiny, kind, method):
    """Past the base (4 patches a side), at sigma 0.6: the table the model gets for an 8 x 8 tile at (6, 10) is the
    whole image's at those patches; a tile positioned as an image of its own gets another."""
    places = pack_module(host, "nodes.dit_positions")
    patched = extrapolated(host, tiny.tiny_model(kind), method, 64)
    embedder = patched.get_model_object("diffusion_model.pe_embedder")
    net = patched.model.diffusion_model
    ids = net.process_img(latent(kind))[1]
    grid = ids.reshape(1, *PATCHES, ids.shape[-1])
    tile_ids = grid[:, 6:14, 10:18].reshape(1, 64, -1)
    sigma = torch.tensor(0.6) * embedder.sigma_max

    def table(ids, hw, place=None):
        call = places.CALL.set(places.ModelCall(sigma, (2 * hw[0], 2 * hw[1])))
        active = places.ACTIVE.set(place)
        try:
            return embedder(ids)
        finally:
            places.CALL.reset(call)
            places.ACTIVE.reset(active)
    whole = table(ids, PATCHES).reshape(1, 1, *PATCHES, *table(ids, PATCHES).shape[-3:])
    at_tile = whole[:, :, 6:14, 10:18].reshape(1, 1, 64, *whole.shape[-3:])
    in_place = table(tile_ids, (8, 8), places.TilePlace(((6, 10),), (8, 8), PATCHES))
    assert torch.equal(in_place, at_tile)
    own = table(tile_ids, (8, 8), places.TilePlace(((6, 10),), (8, 8), PATCHES, whole=False))
    assert not torch.allclose(own, at_tile)


@pytest.mark.parametrize("kind", ROPE_DITS)
def test_every_mode_samples_past_the_base_resolution_with_tiles_in_place_or_on_their_own(host, tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    whole = sample(tiled(nodes_, model, 128, overlap=32), latent(kind), pos, neg, steps=2)
    for method in MODES:
        patched = extrapolated(host, model, method, 64)
        out = sample(tiled(nodes_, patched, 128, overlap=32), latent(kind), pos, neg, steps=2)
        assert torch.isfinite(out).all() and rel(out, whole) > 1e-4, method
        own = sample(tiled(nodes_, patched, 128, overlap=32, dit_tile_positions=False), latent(kind), pos, neg, steps=2)
        assert torch.isfinite(own).all() and rel(own, out) > 1e-4, method


@pytest.mark.parametrize("kind", ROPE_DITS)
def test_it_composes_with_the_prior_and_the_structure_guide(host, tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    low = latent(kind, seed=9)[..., ::2, ::2]
    guide = host.NODE_CLASS_MAPPINGS["LowFreqStructureGuide"]()
    chain = prior(nodes_, tiled(nodes_, extrapolated(host, model, "yarn", 64), 128, overlap=32), low, pos)
    settings = (0.5, "gaussian", 1.0, 0.5, 0.0, 1.0, "constant")
    chain = guide.execute(chain, {"samples": low}, *settings)[0]
    plain_chain = guide.execute(prior(nodes_, tiled(nodes_, model, 128, overlap=32), low, pos), {"samples": low},
                                *settings)[0]
    out = sample(chain, latent(kind), pos, neg, steps=2)
    assert torch.isfinite(out).all() and rel(out, sample(plain_chain, latent(kind), pos, neg, steps=2)) > 1e-4


@pytest.mark.parametrize("kind", ["sd3", "sd15"])
def test_models_without_rotary_positions_are_refused_naming_the_model(host, tiny, kind):
    with pytest.raises(ValueError, match=r"model is .*: DiTPositionExtrapolation stretches rotary positions"):
        extrapolated(host, tiny.tiny_model(kind), "yarn", 0)
