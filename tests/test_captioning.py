"""Captioning core (no host): grid and crops, JSON, cache, batching, failures, composition."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from cupscale.captioning.cache import CaptionCache
from cupscale.captioning.captioner import CaptionFailure, Captioner
from cupscale.captioning.compose import caption_image
from cupscale.captioning.instructions import CaptionRequest, Instructions
from cupscale.captioning.regions import image_grid, region_crops, to_uint8_rgb
from cupscale.tiling.grid import region_grid
from cupscale.captioning.region_prompts import MAX_REGIONS, RegionPrompts, from_json, to_json
from cupscale.errors import InputError
from cupscale.guards import MAX_TEXT_CHARS

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host


class FakeMLLM:
    """Answers with each image's size and mean colour, so answers tell which crop they came from."""

    def __init__(self, batch_size=2, model_id="fake", fail_if=lambda image: False, empty_if=lambda image: False):
        self.batch_size, self.model_id = batch_size, model_id
        self.fail_if, self.empty_if = fail_if, empty_if
        self.calls: list[tuple[int, str]] = []

    def caption(self, images, instruction, max_tokens):
        self.calls.append((len(images), instruction))
        if any(self.fail_if(im) for im in images):
            raise CaptionFailure("server error 500")
        return ["" if self.empty_if(im) else f"{instruction[:4]} {im.size[0]}x{im.size[1]} red={mean_red(im)}"
                for im in images]


def mean_red(image) -> int:
    return round(float(np.asarray(image)[..., 0].mean()))


def gradient_image(h=80, w=104):
    """Red grows down the rows, green across the columns: every region has its own mean colour."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([yy, xx, torch.full_like(yy, 0.5)], dim=-1)[None]


def run(image, mllm, cache=None, tile=48, overlap=16, max_tokens=16, **request):
    grid = image_grid(image.shape[1], image.shape[2], tile, tile, overlap)
    captioner = Captioner(mllm, cache if cache is not None else CaptionCache(), max_tokens)
    return caption_image(image, grid, captioner, CaptionRequest(**request)), captioner


@pytest.mark.parametrize("h,w,tile_h,tile_w,overlap", [(80, 104, 48, 48, 16), (1024, 1536, 512, 768, 128),
                                                      (1000, 700, 256, 256, 64), (200, 200, 1024, 1024, 128)])
def test_grid_is_tiled_diffusions_grid_for_the_same_pixel_sizes(h, w, tile_h, tile_w, overlap):
    # nodes/tiled_diffusion.py: region_grid(latent h, w, tile_h // 8, tile_w // 8, overlap // 8)
    expected = region_grid(h // 8, w // 8, tile_h // 8, tile_w // 8, overlap // 8)
    assert image_grid(h, w, tile_h, tile_w, overlap) == expected


def test_crops_are_the_grid_boxes_in_pixels():
    image = gradient_image(83, 104)  # 83 is no multiple of 8: the last 3 rows lie outside every tile
    grid = image_grid(83, 104, 48, 48, 16)
    pixels = to_uint8_rgb(image)
    crops = region_crops(pixels, grid)
    assert len(crops) == len(grid) == 6
    for crop, box in zip(crops, grid.boxes):
        assert crop.box == (box.top * 8, box.left * 8, box.height * 8, box.width * 8)
        assert crop.image().size == (box.width * 8, box.height * 8)
        assert (crop.pixels == pixels[box.top * 8:box.bottom * 8, box.left * 8:box.right * 8]).all()


def test_one_prompt_per_region_in_grid_order_with_prefix_and_suffix():
    image, mllm = gradient_image(), FakeMLLM(batch_size=4)
    prompts, _ = run(image, mllm, global_prompt="a garden", prefix="photo", suffix="detailed")
    grid = prompts.grid
    assert len(prompts.prompts) == len(grid) == 6 and prompts.global_prompt == "a garden"
    crops = region_crops(to_uint8_rgb(image), grid)
    for text, crop in zip(prompts.prompts, crops):
        assert text == f"photo, Desc {crop.box[3]}x{crop.box[2]} red={mean_red(crop.image())}, detailed"
    assert [n for n, _ in mllm.calls] == [4, 2]  # 6 regions in batches of 4
    assert prompts.high_level == prompts.low_level == ""


def test_description_plus_tags_and_xpsr_descriptions():
    image, mllm = gradient_image(), FakeMLLM()
    prompts, _ = run(image, mllm, mode="description + tags", xpsr=True, global_prompt="a garden")
    assert all(p.startswith("Desc ") and ", List " in p for p in prompts.prompts)
    assert prompts.high_level.startswith("Plea 104x80") and prompts.low_level.startswith("Plea 104x80")
    asked = {ins for _, ins in mllm.calls}
    assert asked == {Instructions().description, Instructions().tags, Instructions().high_level,
                     Instructions().low_level}


def test_empty_global_prompt_is_the_whole_image_summary_asked_once():
    mllm = FakeMLLM()
    prompts, _ = run(gradient_image(), mllm, xpsr=True)
    assert prompts.global_prompt == prompts.high_level != ""
    assert sum(n for n, ins in mllm.calls if ins == Instructions().high_level) == 1


def test_second_identical_run_makes_no_model_call_and_instruction_change_does():
    image, mllm, cache = gradient_image(), FakeMLLM(), CaptionCache()
    first, _ = run(image, mllm, cache, global_prompt="g")
    calls = len(mllm.calls)
    second, captioner = run(image, mllm, cache, global_prompt="g", prefix="new prefix")
    assert len(mllm.calls) == calls and captioner.model_calls == 0
    assert second.prompts == tuple(f"new prefix, {p}" for p in first.prompts)
    changed = Instructions(description="Name the main object.")
    third, _ = run(image, mllm, cache, global_prompt="g", instructions=changed)
    assert len(mllm.calls) > calls and all(p.startswith("Name ") for p in third.prompts)


def test_cache_is_keyed_by_region_content_model_and_token_budget():
    image, mllm, cache = gradient_image(), FakeMLLM(batch_size=1), CaptionCache()
    run(image, mllm, cache, global_prompt="g")
    edited = image.clone()
    edited[0, 0:8, 0:8] = 0  # only the first region holds these pixels
    before = len(mllm.calls)
    run(edited, mllm, cache, global_prompt="g")
    assert len(mllm.calls) - before == 1
    run(image, FakeMLLM(model_id="another model"), cache, global_prompt="g")
    before = len(mllm.calls)
    run(image, mllm, cache, global_prompt="g", max_tokens=99)
    assert len(mllm.calls) - before == 6


def test_cache_forgets_least_recently_used():
    cache = CaptionCache(max_entries=2)
    for k in "abc":
        cache.put((k,), k)
    assert cache.get(("a",)) is None and cache.get(("c",)) == "c"


def dark_top_row(image):
    return mean_red(image) < 100  # the regions of the first row (red grows downwards)


def test_failed_regions_stop_the_run_by_default_naming_them():
    with pytest.raises(RuntimeError, match=r"3 of 6 regions got no caption: region 0 \(row 0, col 0\).*"
                                           r"on_region_failure"):
        run(gradient_image(), FakeMLLM(batch_size=1, fail_if=dark_top_row), global_prompt="g")


def test_failed_and_empty_regions_fall_back_to_global_prompt_with_a_warning(caplog):
    mllm, cache = FakeMLLM(batch_size=1, empty_if=dark_top_row), CaptionCache()
    with caplog.at_level(logging.WARNING):
        prompts, _ = run(gradient_image(), mllm, cache, global_prompt="a garden", fallback_to_global=True)
    assert prompts.prompts[:3] == ("a garden",) * 3 and all(p.startswith("Desc") for p in prompts.prompts[3:])
    assert "3 of 6 regions" in caplog.text and "region 2 (row 0, col 2): the model's answer was empty" in caplog.text
    before = len(mllm.calls)
    run(gradient_image(), mllm, cache, global_prompt="a garden", fallback_to_global=True)
    assert len(mllm.calls) - before == 3  # failures are not cached: only they are asked again


def test_whole_image_failure_is_an_error_that_names_the_global_prompt():
    mllm = FakeMLLM(batch_size=1, fail_if=lambda im: im.size == (104, 80))
    with pytest.raises(RuntimeError, match="no high-level description of the whole image.*global_prompt"):
        run(gradient_image(), mllm, fallback_to_global=True)


@pytest.mark.parametrize("request_kw,match", [
    ({"instructions": Instructions(description="  ")}, "description_instruction is empty"),
    ({"mode": "poems"}, "region_prompts = 'poems': choose one of"),
])
def test_bad_requests_name_the_input(request_kw, match):
    with pytest.raises(ValueError, match=match):
        run(gradient_image(), FakeMLLM(), **request_kw)


def test_free_texts_are_bounded_before_a_request_is_made():
    """A 5 MB instruction kept a local VLM busy past the queue's interrupt; now it never reaches a model."""
    for make, name in [(lambda t: Instructions(description=t), "description_instruction"),
                       (lambda t: Instructions(low_level=t), "low_level_instruction"),
                       (lambda t: CaptionRequest(global_prompt=t), "global_prompt"),
                       (lambda t: CaptionRequest(prefix=t), "prefix"), (lambda t: CaptionRequest(suffix=t), "suffix")]:
        make("x" * MAX_TEXT_CHARS)
        with pytest.raises(InputError) as long:
            make("x" * 5 * 2 ** 20)
        assert str(long.value) == f"{name} holds 5,242,880 characters, more than the 16,000 this node reads: shorten it."


def test_bad_images_and_token_budget_are_named():
    with pytest.raises(ValueError, match="batch of 1"):
        run(torch.rand(2, 64, 64, 3), FakeMLLM())
    with pytest.raises(ValueError, match="max_tokens = 0"):
        run(gradient_image(), FakeMLLM(), max_tokens=0)
    with pytest.raises(ValueError, match="at least 8x8"):
        image_grid(4, 64, 64, 64, 8)


def sample_prompts():
    grid = image_grid(80, 104, 48, 48, 16)
    return RegionPrompts(grid, tuple(f"region {i}, \"quoted\" ü" for i in range(len(grid))), "a garden",
                         "a summary", "sharp, low noise")


def test_json_round_trips_and_keeps_hand_edits():
    prompts = sample_prompts()
    text = to_json(prompts)
    assert from_json(text) == prompts
    doc = json.loads(text)
    assert doc["regions"][1]["box_px"] == {"x": 32, "y": 0, "width": 48, "height": 48}
    doc["regions"][1]["prompt"] = "a red door"
    edited = from_json(json.dumps(doc))
    assert edited.prompts[1] == "a red door" and edited.prompts[0] == prompts.prompts[0]


def edited_json(edit):
    doc = json.loads(to_json(sample_prompts()))
    edit(doc)
    return json.dumps(doc)


@pytest.mark.parametrize("text,match", [
    ("{not json", r"region_prompts_json is not valid JSON .*line 1"),
    ("[]", "needs \"format\""),
    (edited_json(lambda d: d["regions"].pop()), "lists 5 regions but its grid"),
    (edited_json(lambda d: d["regions"][2]["box_px"].update(x=0)), "region 2 has box_px .* edit only the prompts"),
    (edited_json(lambda d: d["regions"][0].pop("prompt")), "region 0 needs a \"prompt\" string"),
    (edited_json(lambda d: d["grid_in_latent_cells"].pop("overlap")), "grid_in_latent_cells\" is broken"),
    (edited_json(lambda d: d.update(global_prompt=3)), "\"global_prompt\" must be a str"),
    (edited_json(lambda d: d.update(regions=[{}] * (MAX_REGIONS + 1))), "lists 4,097 regions, more than the 4,096"),
])
def test_broken_json_says_what_to_fix(text, match):
    with pytest.raises(ValueError, match=match):
        from_json(text)


def test_prompts_for_another_grid_are_refused_downstream_with_both_grids_named():
    prompts = sample_prompts()
    prompts.check_grid(region_grid(10, 13, 6, 6, 2), "the tiles")  # the same grid: no error
    with pytest.raises(ValueError, match=r"the region prompts \(MLLMRegionCaptioner\) was made for 2x3 tiles of 6x6 "
                                         r".* but the tiles uses 1x2 tiles of 10x8"):
        prompts.check_grid(region_grid(10, 13, 10, 8, 2), "the tiles")


def test_region_prompts_need_one_prompt_per_region():
    with pytest.raises(ValueError, match="5 region prompts for a grid of 6 regions"):
        RegionPrompts(image_grid(80, 104, 48, 48, 16), ("x",) * 5, "g")


def test_generated_text_asks_one_image_a_call_and_stop_before_each():
    """The host's text generation as a backend (cupscale.captioning.backends.GeneratedText): one image per call of
    ``generate``, ``stop`` asked before each, the answers cached under its model_id like any backend's."""
    from cupscale.captioning.backends import GeneratedText
    asked, stops = [], []
    backend = GeneratedText(lambda image, instruction, max_tokens: asked.append(image.size) or f"w{len(asked)}",
                            "host-clip:test", stop=lambda: stops.append(1))
    image = torch.rand(1, 112, 144, 3, generator=torch.Generator().manual_seed(0))
    captioner = Captioner(backend, CaptionCache(), 4)
    request = CaptionRequest(global_prompt="g")
    prompts = caption_image(image, image_grid(112, 144, 64, 64, 16), captioner, request)
    assert prompts.prompts == tuple(f"w{i}" for i in range(1, 7)) and asked == [(64, 64)] * 6 and len(stops) == 6
    assert captioner.model_calls == 6
    caption_image(image, image_grid(112, 144, 64, 64, 16), captioner, request)
    assert len(asked) == 6  # the second run from the cache
