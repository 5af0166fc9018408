"""TiledBlendedDiffusion in a real ComfyUI: equivalences, merging, seams, masks, patches, progress."""
from __future__ import annotations

import copy

import pytest
import torch

from cupscale.tiling.grid import region_grid
from cupscale.tiling.lowpass import gaussian_lowpass
from host_helpers import sample, smooth_latent

STEPS = 4






@pytest.fixture(scope="module")
def tiled(host):
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    return lambda model, tile=256, overlap=64, per_batch=4, **kw: node.execute(model, tile, tile, overlap, per_batch, **kw)[0]


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_one_tile_covering_the_latent_equals_plain_sampling(tiny, tiled, kind, sampler):
    model = tiny.tiny_model(kind)
    latent = smooth_latent(40, 48)
    pos, neg = tiny.conditioning(kind, 1), tiny.conditioning(kind, 2)
    plain = sample(model, latent, pos, neg, sampler=sampler)
    one = sample(tiled(model, tile=512, overlap=64), latent, pos, neg, sampler=sampler)
    assert (one - plain).abs().max() <= 1e-5


def feather(start: int, tile: int, starts: list[int]) -> torch.Tensor:
    """Independent 1D feather: rises over the overlap with the previous tile, falls over the next."""
    pos = torch.arange(tile) + 0.5
    w = torch.ones(tile)
    earlier = [s for s in starts if s < start]
    later = [s for s in starts if s > start]
    if earlier:
        shared = max(earlier) + tile - start
        w = torch.minimum(w, pos / shared)
    if later:
        shared = start + tile - min(later)
        w = torch.minimum(w, (tile - pos) / shared)
    return w


def test_merged_prediction_is_the_weighted_average_of_the_tile_predictions(tiny, tiled):
    model = tiny.tiny_model("sd15")
    patched = tiled(model, tile=256, overlap=64, per_batch=3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 48, 72, generator=g)
    t = torch.tensor([400.0, 400.0])
    ctx = torch.randn(2, 77, 64, generator=g)
    options = {"wrappers": patched.wrappers, "cond_or_uncond": [0, 1]}
    merged = model.model.apply_model(x, t, c_crossattn=ctx, transformer_options=options)

    grid = region_grid(48, 72, 32, 32, 8)
    ys = sorted({b.top for b in grid.boxes})
    xs = sorted({b.left for b in grid.boxes})
    total = torch.zeros_like(x)
    norm = torch.zeros(48, 72)
    for b in grid.boxes:
        rows, cols = b.slices()
        out = model.model.apply_model(x[:, :, rows, cols], t, c_crossattn=ctx, transformer_options={})
        w = feather(b.top, 32, ys)[:, None] * feather(b.left, 32, xs)[None, :]
        total[:, :, rows, cols] += out * w
        norm[rows, cols] += w
    assert len(grid) == 6
    expected = total / norm
    assert (merged - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_tiles_per_batch_does_not_change_the_result(tiny, tiled):
    model = tiny.tiny_model("sdxl")
    latent = smooth_latent(48, 64, batch=2)
    pos, neg = tiny.conditioning("sdxl", 1, batch=2), tiny.conditioning("sdxl", 2, batch=2)
    one = sample(tiled(model, per_batch=1), latent, pos, neg)
    four = sample(tiled(model, per_batch=4), latent, pos, neg)
    assert torch.allclose(one, four, rtol=1e-4, atol=1e-4 * one.abs().max().item())


def blur_denoiser(executor, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kw):
    """Stands in for the UNet: denoises by a zero-padded 5x5 box blur, so tiles disagree near
    their borders the way real models do, while a smooth latent stays smooth."""
    sigma = transformer_options["sigmas"].max()
    noisy = x * (sigma ** 2 + 1).sqrt()
    denoised = torch.nn.functional.conv2d(noisy, torch.ones(4, 1, 5, 5) / 25, padding=2, groups=4)
    return (noisy - denoised) / sigma


def border_gradient_ratio(out, grid) -> float:
    """Mean |horizontal gradient| at tile borders over the mean inside tiles (1 = no seam)."""
    width = out.shape[-1]
    borders = sorted({b.left for b in grid.boxes if b.left} | {b.right for b in grid.boxes if b.right < width})
    grad = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(0, 1, 2))  # column j -> j + 1
    at_border = torch.stack([grad[j - 1] for j in borders]).mean()
    # Inside: away from tile borders and from the latent's own edges (zero padding there).
    inside = torch.stack([grad[j] for j in range(3, width - 4) if all(abs(j + 1 - b) > 2 for b in borders)]).mean()
    return (at_border / inside).item()


def test_no_seam_across_tile_borders_on_a_smooth_input(tiny, tiled):
    import comfy.patcher_extension
    model = tiny.tiny_model("sd15").clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", blur_denoiser)
    ramp = torch.linspace(-2, 2, 64)
    latent = (ramp[None, :] + 0.5 * ramp[:, None]).expand(4, 4, 64, 64).clone()  # 4 noise draws
    pos, neg = tiny.conditioning("sd15", 1, batch=4), tiny.conditioning("sd15", 2, batch=4)
    feathered = sample(tiled(model, tile=256, overlap=64), latent, pos, neg, denoise=0.8)
    assert abs(border_gradient_ratio(feathered, region_grid(64, 64, 32, 32, 8)) - 1) <= 0.10
    # The measure sees seams where there are some: abutting tiles without overlap.
    abutting = sample(tiled(model, tile=256, overlap=0), latent, pos, neg, denoise=0.8)
    assert border_gradient_ratio(abutting, region_grid(64, 64, 32, 32, 0)) > 1.5


def test_mask_pins_the_outside_to_the_source_and_edits_the_inside(tiny, tiled):
    model = tiny.tiny_model("sd15")
    latent = smooth_latent(48, 64)
    mask = torch.zeros(1, 48 * 8, 64 * 8)
    mask[:, 80:240, 96:320] = 1.0
    out = sample(tiled(model, mask=mask), latent, tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2),
                 denoise=1.0)
    inside = torch.nn.functional.interpolate(mask[None], size=(48, 64), mode="area")[0, 0] > 0
    assert (out[..., ~inside] - latent[..., ~inside]).abs().max() <= 1e-5
    assert (out[..., inside] - latent[..., inside]).abs().mean() > 0.1


def test_low_passed_background_keeps_the_sources_low_frequencies(tiny, tiled):
    model = tiny.tiny_model("sd15")
    latent = smooth_latent(48, 64)
    mask = torch.zeros(1, 48 * 8, 64 * 8)
    mask[:, 128:256, 128:384] = 1.0
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    free = sample(tiled(model), latent, pos, neg, denoise=0.8)
    low = sample(tiled(model, mask=mask, background_lowpass=2.0), latent, pos, neg, denoise=0.8)
    outside = torch.nn.functional.interpolate(mask[None], size=(48, 64), mode="area")[0, 0] == 0

    def lf_error(x):
        return (gaussian_lowpass(x, 2.0) - gaussian_lowpass(latent, 2.0))[..., outside].abs().mean()
    assert lf_error(low) < 0.25 * lf_error(free)
    assert (low - latent)[..., outside].abs().mean() > 1e-3  # high frequencies are generated


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "ddim", "lcm"])
def test_every_sampler_runs_tiled_and_stays_finite(tiny, tiled, sampler):
    model = tiny.tiny_model("sd15")
    latent = smooth_latent(40, 56)
    out = sample(tiled(model, tile=192, overlap=32), latent, tiny.conditioning("sd15", 1),
                 tiny.conditioning("sd15", 2), sampler=sampler, denoise=0.5, steps=3)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert (out - latent).abs().mean() > 1e-3


def test_tile_being_run_is_published_to_attention_patches(tiny, tiled):
    model = tiny.tiny_model("sd15").clone()
    seen = []

    def record(q, k, v, extra_options):
        batch = extra_options.get("cupscale_tiles")
        seen.append((batch.boxes, batch.chunks, q.shape[0]))
        return q, k, v
    model.set_model_attn2_patch(record)
    sample(tiled(model, tile=256, overlap=64, per_batch=2), smooth_latent(48, 64), tiny.conditioning("sd15", 1),
           tiny.conditioning("sd15", 2), steps=1)
    grid = region_grid(48, 64, 32, 32, 8)
    # The pack is loaded by ComfyUI as its own module, so compare boxes as plain tuples.
    as_tuple = lambda b: (b.top, b.left, b.height, b.width)  # noqa: E731
    assert {as_tuple(b) for entry in seen for b in entry[0]} == {as_tuple(b) for b in grid.boxes}
    assert all(q_batch == chunks * len(bs) for bs, chunks, q_batch in seen)


def test_controlnet_runs_per_tile_on_its_crop_of_the_hint(host, tiny, tiled):
    model = tiny.tiny_model("sd15")
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    hint = torch.rand(1, 384, 512, 3, generator=torch.Generator().manual_seed(5))
    control = tiny.tiny_controlnet("sd15")
    apply = host.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"]()
    cpos, cneg = apply.apply_controlnet(pos, neg, control, hint, 0.8, 0.0, 1.0)
    latent = smooth_latent(48, 64)

    plain = sample(model, latent, pos, neg)
    controlled = sample(model, latent, cpos, cneg)
    one_tile = sample(tiled(model, tile=512), latent, cpos, cneg)
    assert (one_tile - controlled).abs().max() <= 1e-5

    hints_seen = []
    original = type(control).get_control

    def spy(self, x_noisy, t, cond, batched_number, transformer_options):
        out = original(self, x_noisy, t, cond, batched_number, transformer_options)
        hints_seen.append((transformer_options.get("cupscale_tiles"), self.cond_hint.clone(), x_noisy.shape))
        return out
    type(control).get_control = spy
    try:
        tiled_out = sample(tiled(model, tile=256, overlap=64), latent, cpos, cneg)
    finally:
        type(control).get_control = original
    assert (tiled_out - plain).abs().mean() > 1e-3
    full = hint.movedim(-1, 1)  # already the latent's size in pixels: no resize
    assert hints_seen and all(batch is not None for batch, _, _ in hints_seen)
    for batch, cond_hint, shape in hints_seen:
        assert shape[-2:] == (32, 32)
        per_chunk = cond_hint.shape[0] // batch.chunks
        for j, box in enumerate(batch.boxes):
            crop = full[:, :, box.top * 8:box.bottom * 8, box.left * 8:box.right * 8]
            assert torch.equal(cond_hint[j * batch.images:(j + 1) * batch.images], crop.expand(batch.images, -1, -1, -1))
        assert per_chunk == len(batch.boxes) * batch.images


def test_weight_patches_on_the_model_apply_inside_tiles(tiny, tiled):
    model = tiny.tiny_model("sd15")
    key = "diffusion_model.input_blocks.0.0.weight"
    lora_like = model.clone()
    weight = lora_like.model.state_dict()[key]
    lora_like.add_patches({key: (torch.full_like(weight, 0.05),)}, 1.0)
    latent = smooth_latent(40, 48)
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    patched_plain = sample(lora_like, latent, pos, neg)
    assert (sample(tiled(lora_like, tile=512), latent, pos, neg) - patched_plain).abs().max() <= 1e-5
    assert (sample(tiled(lora_like), latent, pos, neg) - sample(tiled(model), latent, pos, neg)).abs().mean() > 1e-3


def test_progress_counts_tiles_times_steps_and_interrupt_stops_within_a_step(host, tiny, tiled):
    import comfy.model_management
    import comfy.utils
    model = tiny.tiny_model("sd15")
    grid = region_grid(48, 64, 32, 32, 8)
    reports = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: reports.append((value, total)))
    try:
        sample(tiled(model, per_batch=1), smooth_latent(48, 64), tiny.conditioning("sd15", 1),
               tiny.conditioning("sd15", 2), steps=STEPS, disable_pbar=False)
        assert reports[-1] == (STEPS * len(grid), STEPS * len(grid))
        assert [v for v, _ in reports] == sorted(v for v, _ in reports)

        calls = []

        def interrupt_after_first_report(value, total, preview, node_id=None):
            calls.append(value)
            comfy.model_management.interrupt_current_processing(True)
        comfy.utils.set_progress_bar_global_hook(interrupt_after_first_report)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(tiled(model, per_batch=1), smooth_latent(48, 64), tiny.conditioning("sd15", 1),
                   tiny.conditioning("sd15", 2), steps=STEPS, disable_pbar=False)
        assert calls == [1]  # stopped before the second tile of the first step
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)


def test_a_cancel_is_heard_between_a_unets_blocks_inside_a_tile_batch(host, tiny, tiled):
    """On a CPU one batch of tiles takes seconds to minutes (bench/interrupt_latency.py): the cancel is heard at the
    next UNet block, not when the batch is done; the tiled clone gets the checks once, however often it is tiled."""
    import comfy.model_management
    blocks = []

    def cancel_at_third_block(h, transformer_options):
        blocks.append(transformer_options["block"])
        if len(blocks) == 3:
            comfy.model_management.interrupt_current_processing(True)
        return h
    model = tiny.tiny_model("sd15").clone()
    model.set_model_input_block_patch(cancel_at_third_block)
    patched = tiled(tiled(model, per_batch=4), per_batch=4)
    assert len(patched.model_options["transformer_options"]["patches"]["input_block_patch"]) == 2
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(patched, smooth_latent(48, 64), tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2), steps=STEPS)
        assert len(blocks) == 3  # the fourth block of the first batch never ran
    finally:
        comfy.model_management.interrupt_current_processing(False)


@pytest.mark.parametrize("kwargs,needle", [
    ({"tile_width": 56}, "tile_width = 56"),
    ({"tile_height": 100}, "tile_height = 100"),
    ({"overlap": 12}, "overlap = 12"),
    ({"overlap": 256, "tile_width": 256}, "smaller than the tile"),
    ({"tiles_per_batch": -1}, "tiles_per_batch = -1"),
    ({"mask": torch.ones(0, 64, 64)}, r"mask is empty \(shape \(0, 64, 64\)\)"),
    ({"background_lowpass": float("nan")}, "background_lowpass = nan must be a finite number from 0.0 to 64.0"),
])
def test_bad_tiling_inputs_name_the_input(tiny, host, kwargs, needle):
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    args = {"model": tiny.tiny_model("sd15"), "tile_width": 512, "tile_height": 512, "overlap": 64, "tiles_per_batch": 4}
    with pytest.raises(ValueError, match=needle):
        node.execute(**{**args, **kwargs})


def test_mask_of_an_image_with_partial_latent_cells_is_cropped_as_vae_encode_crops(tiny, tiled):
    model = tiny.tiny_model("sd15")
    latent = smooth_latent(48, 64)
    mask = torch.zeros(1, 48 * 8 + 5, 64 * 8 + 7)  # VAE Encode drops the 5 and 7 extra pixels
    mask[:, 82:242, 99:323] = 1.0
    out = sample(tiled(model, mask=mask), latent, tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2),
                 denoise=1.0)
    inside = torch.nn.functional.interpolate(mask[None, :, 2:2 + 384, 3:3 + 512], size=(48, 64), mode="area")[0, 0] > 0
    assert (out[..., ~inside] - latent[..., ~inside]).abs().max() <= 1e-5
    assert (out[..., inside] - latent[..., inside]).abs().mean() > 0.1


def test_mask_of_another_size_is_named_at_sampling(tiny, tiled):
    model = tiny.tiny_model("sd15")
    with pytest.raises(ValueError, match="mask is 100x100 pixels but the latent being sampled is 64x48"):
        sample(tiled(model, mask=torch.ones(1, 100, 100)), smooth_latent(48, 64), tiny.conditioning("sd15", 1),
               tiny.conditioning("sd15", 2))


def test_the_input_model_is_never_mutated(tiny, tiled):
    model = tiny.tiny_model("sd15")
    before = (copy.deepcopy(model.model_options), {k: dict(v) for k, v in model.wrappers.items()})
    patched = tiled(model, mask=torch.ones(1, 384, 512))
    sample(patched, smooth_latent(48, 64), tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2), steps=1)
    assert model.model_options == before[0]
    assert {k: dict(v) for k, v in model.wrappers.items()} == before[1] == {}
    assert patched.wrappers and patched is not model
