"""TiledBlendedDiffusion, RegionalAttentionPrior and AttentionComposer on tiny Flux, SD3 and Qwen-Image models
built from ComfyUI's own classes, sampled by the host: the equalities issue #17 asks for."""
from __future__ import annotations

import pytest
import torch

from host_helpers import sample

DITS = ["flux", "sd3", "qwen_image"]
HW = (40, 48)  # latent cells: 20x24 patches, inside SD3's 32x32 position table


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def latent(kind: str, seed: int = 5) -> torch.Tensor:
    """Noise-like latent of the kind's shape (Qwen-Image's carry a frame axis: b, 16, 1, h, w)."""
    from harness.tiny_models import latent_shape
    return torch.randn(latent_shape(kind, 1, *HW), generator=torch.Generator().manual_seed(seed))


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


@pytest.mark.parametrize("kind", DITS)
def test_one_tile_covering_the_latent_equals_plain_sampling(tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent(kind), pos, neg)
    one = sample(tiled(nodes_, model, 512), latent(kind), pos, neg)
    assert rel(one, plain) <= 1e-5


@pytest.mark.parametrize("kind", DITS)
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


@pytest.mark.parametrize("kind", ["flux", "qwen_image"])
def test_each_tiles_rope_ids_are_the_whole_images_ids_at_the_tile(tiny, nodes_, kind):
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    seen = []

    def recording(patched):
        inner = patched.get_model_object("diffusion_model.process_img")

        def record(x, **kw):
            out = inner(x, **kw)
            seen.append(out[1].clone())
            return out
        patched.add_object_patch("diffusion_model.process_img", record)
        return patched
    sample(recording(model.clone()), latent(kind), pos, neg, steps=1)
    whole = seen.pop().reshape(2, HW[0] // 2, HW[1] // 2, 3)[0]
    patched = tiled(nodes_, model, 128, overlap=32, per_batch=3)
    sample(recording(patched), latent(kind), pos, neg, steps=1)
    checked = 0
    for ids in seen:
        for item in ids:
            tile = item.reshape(8, 8, 3)
            r, c = [int(v) - int(whole[0, 0, i]) for i, v in ((1, tile[0, 0, 1]), (2, tile[0, 0, 2]))]
            assert torch.equal(tile, whole[r:r + 8, c:c + 8])
            checked += 1
    assert checked == 2 * 12  # cond and uncond items of the 3x4 tiles


@pytest.mark.parametrize("kind", DITS)
def test_the_prior_at_its_own_size_for_one_step_is_plain_sampling(tiny, nodes_, kind):
    """At the first step the capture sees exactly the sampler's input (same latent, same noise): its text
    attention is the model's own, and (joint RAP) leaves the output as it was, through each model's real
    blocks and the host's attention."""
    model = tiny.tiny_model(kind)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent(kind), pos, neg, steps=1, denoise=1.0)
    with_prior = sample(prior(nodes_, model, latent(kind), pos), latent(kind), pos, neg, steps=1, denoise=1.0)
    assert rel(with_prior, plain) <= 1e-5


@pytest.mark.parametrize("kind", DITS)
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
