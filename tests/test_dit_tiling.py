"""TiledBlendedDiffusion, RegionalAttentionPrior and AttentionComposer on tiny Flux, SD3 and Qwen-Image models,
and Flux.2, Chroma, HiDream and Z-Image where the host has them, built from ComfyUI's own classes, sampled by
the host: the equalities issues #17 and #31 ask for."""
from __future__ import annotations

import sys

import pytest
import torch

from host_helpers import sample

NEW = ["flux2", "chroma", "hidream", "z_image"]
"""The 2026 models (issue #31): each skips, saying so, on a host that lacks it."""
DITS = ["flux", "sd3", "qwen_image", *NEW]
ROPE = ["flux", "qwen_image", *NEW]
PIXELS = (320, 384)  # 20x24 patches (2x2 of x8 cells, or Flux.2's 1x1 of x16 cells), inside SD3's 32x32 table
TILE_PATCHES = 8  # a tile of 128 px


@pytest.fixture(params=DITS)
def kind(request, tiny):
    if tiny.missing(request.param):
        pytest.skip(tiny.missing(request.param))
    return request.param


@pytest.fixture(params=ROPE)
def rope_kind(request, tiny):
    if tiny.missing(request.param):
        pytest.skip(tiny.missing(request.param))
    return request.param


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cells(kind: str) -> tuple[int, int]:
    from harness.tiny_models import downscale
    return PIXELS[0] // downscale(kind), PIXELS[1] // downscale(kind)


def latent(kind: str, seed: int = 5) -> torch.Tensor:
    """Noise-like latent of the kind's shape (Qwen-Image's carry a frame axis: b, 16, 1, h, w)."""
    from harness.tiny_models import latent_shape
    return torch.randn(latent_shape(kind, 1, *cells(kind)), generator=torch.Generator().manual_seed(seed))


def tiled(nodes_, model, tile: int, overlap: int = 64, per_batch: int = 4, **kw):
    return nodes_[0].execute(model, tile, tile, overlap, per_batch, **kw)[0]


def prior(nodes_, model, low: torch.Tensor, pos):
    return nodes_[1].execute(model, {"samples": low}, pos, "all", "1/2 and coarser", 0.0, 1.0)[0]


def identity_attention(func, q, k, v, heads, *args, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """Every token's attention output is its own value: the model becomes a function of each position alone."""
    if not skip_reshape:  # (batch, tokens, heads·d), SD3's values (batch, tokens, heads, d)
        v = v.reshape(v.shape[0], v.shape[1], heads, -1).transpose(1, 2)
    return v if skip_output_reshape else v.transpose(1, 2).flatten(-2)


def position_wise(model):
    model = model.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = identity_attention
    return model


def test_one_tile_covering_the_latent_equals_plain_sampling(tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent(kind), pos, neg)
    one = sample(tiled(nodes_, model, 512), latent(kind), pos, neg)
    assert rel(one, plain) <= 1e-5


def test_a_position_wise_model_tiled_equals_plain(tiny, nodes_, kind):
    """Patch-aligned tiles, each with the whole image's positions (SD3 adds its table to every token), merged
    with feathered weights: where the model only looks at each position, tiles change nothing."""
    model = position_wise(tiny.tiny_model(kind))
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent(kind), pos, neg)
    tiles = sample(tiled(nodes_, model, 128, overlap=32), latent(kind), pos, neg)
    assert rel(tiles, plain) <= 1e-5
    if kind == "sd3":  # positioned as images of their own, SD3's tiles read the wrong table entries
        own = sample(tiled(nodes_, model, 128, overlap=32, dit_tile_positions=False), latent(kind), pos, neg)
        assert rel(own, plain) > 1e-3


def recording_ids(patched, seen: list):
    """``patched`` with the ids its rotary embedder gets kept in ``seen``; tiled after this, the ids as the
    position patches left them."""
    from harness.comfy_host import pack_module
    positions = pack_module("nodes.dit_positions")
    name = f"diffusion_model.{positions.embedder_name(positions.dit_kind(patched))}"
    inner = patched.get_model_object(name)

    class Recording(torch.nn.Module):
        def forward(self, ids, *args, **kwargs):
            seen.append(ids.clone())
            return inner(ids, *args, **kwargs)
    patched.add_object_patch(name, Recording())
    return patched


def image_ids(ids: torch.Tensor, kind: str, patches: int) -> torch.Tensor | None:
    """The image's ids (every axis) out of one embedder call: where the model puts them (after the text for Flux and
    Chroma, before it for HiDream and Z-Image); None for a call without them (Z-Image's text)."""
    if kind == "z_image" and (ids.shape[1] < patches or not ids[0, :patches, 1:3].any()):
        return None
    return ids[:, :patches] if kind in ("hidream", "z_image") else ids[:, ids.shape[1] - patches:]


def test_each_tiles_rope_ids_are_the_whole_images_ids_at_the_tile(tiny, nodes_, rope_kind):
    """Through the host's own rotary embedder: each tile item's ids are the whole image's at the tile's patches
    (Qwen-Image's, centred, included), on every axis (the index, Z-Image's caption offset, Flux.2's fourth)."""
    kind, t = rope_kind, TILE_PATCHES
    ph, pw = PIXELS[0] // 16, PIXELS[1] // 16
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    seen = []
    sample(recording_ids(model.clone(), seen), latent(kind), pos, neg, steps=1)
    whole = next(i for i in (image_ids(ids, kind, ph * pw) for ids in seen) if i is not None)[0].reshape(ph, pw, -1)
    seen.clear()
    sample(tiled(nodes_, recording_ids(model.clone(), seen), 128, overlap=32, per_batch=3), latent(kind), pos, neg,
           steps=1)
    origins = []
    for ids in seen:
        found = image_ids(ids, kind, t * t)
        for item in [] if found is None else found:
            tile = item.reshape(t, t, -1)
            r, c = (int(tile[0, 0, i]) - int(whole[0, 0, i]) for i in (1, 2))
            assert torch.equal(tile, whole[r:r + t, c:c + t])
            origins.append((r, c))
    assert len(origins) == 2 * 12 and len(set(origins)) == 12  # cond and uncond items of the 3x4 tiles, each in place


def test_the_prior_at_its_own_size_for_one_step_is_plain_sampling(tiny, nodes_, kind):
    """At the first step the capture sees exactly the sampler's input (same latent, same noise): its text
    attention is the model's own, and (joint RAP) leaves the output as it was, through each model's real
    blocks and the host's attention."""
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent(kind), pos, neg, steps=1, denoise=1.0)
    with_prior = sample(prior(nodes_, model, latent(kind), pos), latent(kind), pos, neg, steps=1, denoise=1.0)
    assert rel(with_prior, plain) <= 1e-5


def test_the_prior_changes_tiles_and_the_composer_at_weight_zero_with_the_global_prompt_is_tiles_alone(
        tiny, nodes_, host, kind):
    model, clip = tiny.tiny_model(kind), tiny.tiny_clip()
    text = "a red fox in the snow"
    pos, neg = (tiny.with_guidance(kind, host.CLIPTextEncode().encode(clip, t)[0]) for t in (text, "blurry"))
    tiles = tiled(nodes_, model, 128, overlap=32)
    alone = sample(tiles, latent(kind), pos, neg)
    patched = prior(nodes_, tiles, latent(kind)[..., ::2, ::2], pos)
    with_prior = sample(patched, latent(kind), pos, neg)
    assert torch.isfinite(with_prior).all() and rel(with_prior, alone) > 1e-3
    composed = nodes_[2].execute(patched, clip, 0.0, text=text)[0]
    assert rel(sample(composed, latent(kind), pos, neg), alone) <= 1e-5
    other = nodes_[2].execute(patched, clip, 0.5, text="a dog")[0]
    assert rel(sample(other, latent(kind), pos, neg), with_prior) > 1e-3


def test_dit_tiles_must_be_whole_patches(tiny, nodes_):
    with pytest.raises(ValueError, match="multiple of 16"):
        tiled(nodes_, tiny.tiny_model("flux"), 136, overlap=32)


def test_dit_blocks_are_chosen_as_all(tiny, nodes_):
    with pytest.raises(ValueError, match="choose all"):
        nodes_[1].execute(tiny.tiny_model("flux"), {"samples": latent("flux")}, tiny.conditioning("flux", 1), "input",
                          "1/2 and coarser", 0.0, 1.0)


def test_a_model_the_pack_does_not_know_is_refused_by_name(tiny, nodes_):
    """Tiled as a UNet, an unknown DiT would run with every tile numbered as an image of its own: refused."""
    model = tiny.tiny_model("sd15")
    model.model.diffusion_model = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"does not know this model \(torch\.nn\.modules\.linear\.Identity\)"):
        tiled(nodes_, model, 128)


def test_each_tile_of_a_model_patch_controlnet_encodes_its_crop_of_the_hint(tiny, nodes_, host):
    """Z-Image's Fun ControlNet (a model patch, ModelPatchLoader's) resizes its whole hint to the latent it is
    called with: tiled, each tile batch's copy encodes exactly the tiles' crops of the hint, every tile once."""
    from cupscale.tiling.grid import region_grid
    if tiny.missing("z_image"):
        pytest.skip(tiny.missing("z_image"))
    hint = torch.rand(1, *PIXELS, 3, generator=torch.Generator().manual_seed(3))
    node = host.NODE_CLASS_MAPPINGS["ZImageFunControlnet"]()
    model_patch = sys.modules[type(node).__module__]  # as the host loaded it
    controlled = getattr(node, node.FUNCTION)(tiny.tiny_model("z_image"), tiny.tiny_z_image_control(),
                                              tiny.tiny_vae(0, "z_image"), image=hint, strength=1.0)[0]
    pos, neg = tiny.conditioning("z_image", 1), tiny.conditioning("z_image", 2)
    encoded, encode = [], model_patch.ZImageControlPatch.encode_latent_cond

    def recording(self, control_image=None, inpaint_image=None):
        encoded.append(control_image)
        return encode(self, control_image, inpaint_image)
    model_patch.ZImageControlPatch.encode_latent_cond = recording
    try:
        sample(tiled(nodes_, controlled, 128, overlap=32, per_batch=3), latent("z_image"), pos, neg, steps=2)
    finally:
        model_patch.ZImageControlPatch.encode_latent_cond = encode
    boxes = region_grid(*cells("z_image"), 16, 16, 4).boxes
    crops = {b: hint[:, b.top * 8:b.bottom * 8, b.left * 8:b.right * 8] for b in boxes}
    seen = []
    for images in encoded:
        assert images.shape[0] == 2 * 3  # cond and uncond items of 3 tiles
        for image in images[:3]:
            seen += [b for b, crop in crops.items() if torch.equal(image, crop[0])]
        assert torch.equal(images[:3], images[3:])
    assert len(seen) == len(set(seen)) == len(boxes) == 12  # each tile's crop, once in the run (two steps)
