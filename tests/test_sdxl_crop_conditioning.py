"""SDXL tiles conditioned as crops of the whole image: each tile's ``y`` carries its own offset in pixels."""
from __future__ import annotations

import pytest
import torch

from cupscale.tiling.grid import region_grid
from cupscale.tiling.micro_conditioning import with_tile_crops
from host_helpers import sample, smooth_latent
from test_hot_loop import sync_counter  # noqa: F401 (a fixture)

H, W, TILE, OVERLAP = 48, 64, 256, 64  # latent cells; tile and overlap in pixels: a 2 x 3 grid


@pytest.fixture(scope="module")
def tiled(host):
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    return lambda model, per_batch=4, **kw: node.execute(model, TILE, TILE, OVERLAP, per_batch, **kw)[0]


def recording(model):
    """A clone of ``model`` whose UNet calls are recorded: (y, the tile batch, cond_or_uncond) per call."""
    import comfy.patcher_extension
    calls = []

    def spy(executor, x, timesteps, context, y=None, control=None, transformer_options={}, **kw):
        calls.append((y.clone(), transformer_options.get("cupscale_tiles"), list(transformer_options["cond_or_uncond"])))
        return executor(x, timesteps, context, y, control, transformer_options, **kw)
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", spy)
    return model, calls


def expected_y(model, cond, image: int, crop: tuple[int, int]) -> torch.Tensor:
    """The reference: SDXL's own encode_adm for this conditioning, the whole latent's size, and ``crop``."""
    extra = cond[0][1]
    sizes = {k: extra[k] for k in ("width", "height", "target_width", "target_height") if k in extra}
    sizes.setdefault("width", W * 8)
    sizes.setdefault("height", H * 8)
    y = model.model.encode_adm(pooled_output=extra["pooled_output"], crop_h=crop[0], crop_w=crop[1], **sizes)
    return y[image]


def check_every_item(model, calls, conds, offset) -> int:
    """Asserts each recorded item's y against the reference for its chunk, image and tile; returns items seen."""
    seen = 0
    for y, batch, cond_or_uncond in calls:
        assert batch is not None
        images = batch.images
        for item in range(y.shape[0]):
            chunk = item // (len(batch.indices) * images)
            box = batch.grid.boxes[batch.tile_of_item(item)]
            want = expected_y(model, conds[cond_or_uncond[chunk]], item % images, offset(box))
            assert torch.allclose(y[item], want, atol=1e-6), (item, box)
            seen += 1
    return seen


def test_each_sdxl_tiles_y_carries_its_own_offset(tiny, tiled):
    model = tiny.tiny_model("sdxl")
    pos, neg = tiny.conditioning("sdxl", 1, batch=2), tiny.conditioning("sdxl", 2, batch=2)
    # The original and target size the conditioning carries (CLIPTextEncodeSDXL) stay the tiles' too.
    pos[0][1].update(width=2048, height=1536, target_width=1024, target_height=768)
    patched, calls = recording(tiled(model))
    sample(patched, smooth_latent(H, W, batch=2), pos, neg, steps=2)
    grid = region_grid(H, W, TILE // 8, TILE // 8, OVERLAP // 8)
    assert len(grid) == 6 and {b.indices for _, b, _ in calls} == {(0, 1, 2), (3, 4, 5)}  # 4 a call at most, even
    seen = check_every_item(model, calls, [pos, neg], lambda box: (box.top * 8, box.left * 8))
    assert seen == 2 * 2 * 2 * 6  # steps x (cond, uncond) x images x tiles
    offsets = {(box.top * 8, box.left * 8) for box in grid.boxes}
    assert len(offsets) == 6 and max(offsets) > (0, 0)


def test_with_the_option_off_every_tile_keeps_the_conditionings_y(tiny, tiled):
    model = tiny.tiny_model("sdxl")
    pos, neg = tiny.conditioning("sdxl", 1), tiny.conditioning("sdxl", 2)
    neg[0][1].update(crop_w=16, crop_h=8)
    patched, calls = recording(tiled(model, sdxl_crop_conditioning=False))
    sample(patched, smooth_latent(H, W), pos, neg, steps=2)
    crops = [(0, 0), (8, 16)]  # pos's and neg's own
    for y, batch, cond_or_uncond in calls:
        for item in range(y.shape[0]):
            chunk = item // len(batch.indices)
            cond = cond_or_uncond[chunk]
            assert torch.equal(y[item], expected_y(model, [pos, neg][cond], 0, crops[cond]))


def test_the_offset_changes_the_result_and_batching_does_not(tiny, tiled):
    model = tiny.tiny_model("sdxl")
    latent = smooth_latent(H, W)
    pos, neg = tiny.conditioning("sdxl", 1), tiny.conditioning("sdxl", 2)
    on = sample(tiled(model), latent, pos, neg)
    one_by_one = sample(tiled(model, per_batch=1), latent, pos, neg)
    off = sample(tiled(model, sdxl_crop_conditioning=False), latent, pos, neg)
    assert torch.allclose(on, one_by_one, rtol=1e-4, atol=1e-4 * on.abs().max().item())
    assert (on - off).abs().max() > 1e-3


def test_one_tile_with_crops_equals_plain_sampling(tiny, host):
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    model = tiny.tiny_model("sdxl")
    latent = smooth_latent(40, 48)
    pos, neg = tiny.conditioning("sdxl", 1), tiny.conditioning("sdxl", 2)
    plain = sample(model, latent, pos, neg)
    one = sample(node.execute(model, 512, 512, 64, 0, sdxl_crop_conditioning=True)[0], latent, pos, neg)
    assert (one - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_sd15_is_unaffected(tiny, tiled):
    model = tiny.tiny_model("sd15")
    latent = smooth_latent(H, W)
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    assert torch.equal(sample(tiled(model), latent, pos, neg),
                       sample(tiled(model, sdxl_crop_conditioning=False), latent, pos, neg))


def test_sdxl_crops_make_no_sync_per_step_or_tile(tiny, tiled, sync_counter):  # noqa: F811
    model = tiled(tiny.tiny_model("sdxl"))
    pos, neg = tiny.conditioning("sdxl", 1), tiny.conditioning("sdxl", 2)
    for steps in (2, 4):
        sync_counter.update(pack=0, all=0)
        sample(model, smooth_latent(H, W), pos, neg, steps=steps)
        assert sync_counter["pack"] == 0, (steps, sync_counter)


def test_the_crop_slots_follow_the_chunk_major_layout():
    """Independent of the host: (chunk, tile, image) items get their tile's crop, other columns untouched."""
    chunks, images, width = 2, 3, 70 + 6 * 256
    indices = (4, 1)
    crops = torch.randn(6, 512)
    y = torch.randn(chunks * len(indices) * images, width)
    out = with_tile_crops(y, crops, indices, chunks)
    start = width - 4 * 256
    for item in range(y.shape[0]):
        tile = indices[(item % (len(indices) * images)) // images]
        assert torch.equal(out[item, start:start + 512], crops[tile])
        assert torch.equal(out[item, :start], y[item, :start]) and torch.equal(out[item, start + 512:], y[item, start + 512:])
