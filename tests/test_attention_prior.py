"""The regional priors' core alone: (RAP) capture, reading the maps at a tile, (AC), region prompts."""
from __future__ import annotations

import math

import pytest
import torch

from cupscale.priors.composer import RegionTexts, compose, parse_region_text
from cupscale.priors.attention_prior import (attend_with, attention_probabilities, capture_attention, capture_bytes,
                                      region_prior, sampling_grid)
from cupscale.tiling.grid import Box, region_grid
from cupscale.captioning.region_prompts import RegionPrompts, to_json

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host


def synthetic_maps(heads: int, tokens: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Captured maps as the layer leaves them: a distribution over the prompt's tokens at every position."""
    logits = torch.randn(heads, tokens, h, w, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(3 * logits, dim=1)


def bilinear_at(maps: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Independent bilinear read of ``maps`` (heads, l, h, w) at continuous (y, x) in token units, where token
    (r, c) has its centre at (r + ½, c + ½); beyond the outer centres the edge value holds."""
    h, w = maps.shape[-2:]
    y = min(max(y - 0.5, 0.0), h - 1.0)
    x = min(max(x - 0.5, 0.0), w - 1.0)
    r0, c0 = math.floor(y), math.floor(x)
    r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
    fy, fx = y - r0, x - c0
    return ((1 - fy) * (1 - fx) * maps[..., r0, c0] + (1 - fy) * fx * maps[..., r0, c1]
            + fy * (1 - fx) * maps[..., r1, c0] + fy * fx * maps[..., r1, c1])


def expected_prior(maps, box: Box, working_hw, low_hw, target_hw) -> torch.Tensor:
    """What the tile at ``box`` should receive, step by step as the prior is defined: each tile token's centre
    in working cells, / scale to low-res cells, x tokens-per-cell of the captured layer, read bilinearly."""
    (H, W), (h_low, w_low), (th, tw) = working_hw, low_hw, target_hw
    layer_h, layer_w = maps.shape[-2:]
    rows = []
    for i in range(th):
        for j in range(tw):
            y_work = box.top + (i + 0.5) * box.height / th
            x_work = box.left + (j + 0.5) * box.width / tw
            y_low, x_low = y_work * h_low / H, x_work * w_low / W
            rows.append(bilinear_at(maps.double(), y_low * layer_h / h_low, x_low * layer_w / w_low))
    return torch.stack(rows, dim=1).float()  # (heads, th*tw, l)


# --- (RAP): the capture ----------------------------------------------------------------------------------

def test_capture_records_a_distribution_per_low_res_token_and_returns_plain_attention():
    g = torch.Generator().manual_seed(1)
    heads, d, n_ctx, (h, w) = 2, 8, 7, (3, 5)
    q, k, v = torch.randn(2, h * w, heads * d, generator=g), torch.randn(2, n_ctx, heads * d, generator=g), \
        torch.randn(2, n_ctx, heads * d, generator=g)
    captured, out = capture_attention(q, k, v, heads, (h, w))
    assert captured.maps.shape == (2, heads, n_ctx, h, w) and captured.values.shape == (2, heads, n_ctx, d)
    assert torch.allclose(captured.maps.sum(dim=2), torch.ones(2, heads, h, w), atol=1e-6)
    split = lambda t: t.reshape(2, -1, heads, d).transpose(1, 2)  # noqa: E731
    plain = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    assert (out - plain.transpose(1, 2).reshape(2, h * w, heads * d)).abs().max() <= 1e-5
    # Token (r, c) of the flattened layer is map position (r, c).
    probs = attention_probabilities(q, k, heads)
    assert torch.equal(captured.maps[1, 0, :, 2, 4], probs[1, 0, 2 * w + 4])


def test_capture_is_stored_in_the_layers_dtype_and_its_memory_is_known_from_shapes():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, n, 16, generator=g).half() for n in (64, 77, 77))
    captured, out = capture_attention(q, k, v, 2, (8, 8))
    assert captured.maps.dtype == torch.float16 and out.dtype == torch.float16
    assert captured.nbytes == capture_bytes([(2, 8, 64)], 77, element_size=2)


# --- Reading the maps at a tile ----------------------------------------------------------------------------

def test_at_the_capture_scale_a_tile_receives_exactly_the_map_under_it():
    # Low-res latent = working latent (64x64), layer at 1/2 (32x32 tokens); the tile (32x32 cells) has 16x16
    # tokens at that layer, which lie exactly on the captured tokens rows 8..23, columns 16..31.
    maps = synthetic_maps(2, 5, 32, 32)
    box = Box(16, 32, 32, 32)
    prior = region_prior(maps, box, (64, 64), (16, 16))
    expected = maps[:, :, 8:24, 16:32].reshape(2, 5, -1).transpose(1, 2)
    assert (prior - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("working_hw, low_hw, layer_hw, box, target_hw", [
    ((64, 64), (32, 32), (16, 16), Box(16, 32, 32, 32), (16, 16)),   # x2: box / 2 = (8, 16, 16, 16) low-res cells
    ((40, 40), (16, 16), (8, 8), Box(8, 12, 20, 24), (10, 12)),      # x2.5, a box off the token grid
    ((48, 72), (20, 30), (10, 15), Box(5, 41, 28, 31), (7, 8)),      # x2.4, odd tile, fewer tokens than cells
])
def test_a_tile_receives_the_low_res_map_at_its_box_over_the_scale_resized_to_its_tokens(
        working_hw, low_hw, layer_hw, box, target_hw):
    maps = synthetic_maps(3, 4, *layer_hw, seed=sum(layer_hw))
    prior = region_prior(maps, box, working_hw, target_hw)
    expected = expected_prior(maps, box, working_hw, low_hw, target_hw)
    assert prior.shape == (3, target_hw[0] * target_hw[1], 4)
    assert (prior - expected).abs().max() <= 1e-5
    assert torch.allclose(prior.sum(-1), torch.ones(3, target_hw[0] * target_hw[1]), atol=1e-5)  # still distributions


def test_overlapping_tiles_receive_the_same_prior_where_their_tokens_coincide():
    maps = synthetic_maps(2, 3, 16, 16, seed=4)
    a = region_prior(maps, Box(0, 0, 32, 32), (64, 64), (16, 16)).reshape(2, 16, 16, 3)
    b = region_prior(maps, Box(0, 16, 32, 32), (64, 64), (16, 16)).reshape(2, 16, 16, 3)
    # Working columns 16..31 are columns 8..15 of tile a and 0..7 of tile b (2 cells per token).
    assert (a[:, :, 8:] - b[:, :, :8]).abs().max() <= 1e-6


def test_the_whole_latent_at_the_capture_grid_is_the_captured_map_itself():
    maps = synthetic_maps(2, 3, 12, 20, seed=5)
    prior = region_prior(maps, Box(0, 0, 24, 40), (24, 40), (12, 20))
    assert torch.equal(prior, maps.reshape(2, 3, -1).transpose(1, 2))


def test_sampling_grid_puts_token_centres_in_normalised_coordinates():
    grid = sampling_grid(Box(2, 4, 4, 8), (8, 16), (2, 2))
    # Token (0, 0) centre: working cell (2 + 1, 4 + 2) = (3, 6) of (8, 16) -> y = 2*3/8 - 1, x = 2*6/16 - 1.
    assert torch.allclose(grid[0, 0], torch.tensor([2 * 6 / 16 - 1, 2 * 3 / 8 - 1]))
    assert torch.allclose(grid[1, 1], torch.tensor([2 * 10 / 16 - 1, 2 * 5 / 8 - 1]))


def test_attending_with_the_prior_applies_each_heads_probabilities_to_its_values():
    probs = torch.softmax(torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(6)), dim=-1)
    values = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(7))
    out = attend_with(probs, values)
    assert out.shape == (1, 3, 10)
    assert torch.allclose(out[0, 1, 5:], probs[0, 1, 1] @ values[0, 1])


# --- (AC) and the region prompts ---------------------------------------------------------------------------

def test_composition_weights_the_two_terms():
    prior, region = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    assert torch.equal(compose(prior, region, 1.0), prior)
    assert torch.equal(compose(prior, region, 0.0), region)
    assert torch.allclose(compose(prior, region, 0.25), torch.full((2, 3), 0.25 * 2 - 0.75))


def test_region_text_one_line_per_region_or_one_for_all_is_checked_against_the_tiles():
    tiles = region_grid(48, 64, 32, 32, 8)  # 2 x 3
    six = parse_region_text("a\n b \n\nc\nd\ne\nf\n", "text")
    assert six.prompts == ("a", "b", "c", "d", "e", "f") and six.prompt_index(4) == 4
    six.check(tiles, "the tiles")
    one = parse_region_text("a red roof", "text")
    one.check(tiles, "the tiles")
    assert one.prompt_index(5) == 0
    with pytest.raises(ValueError, match=r"text has 4 lines, but the tiles 2x3 tiles .* 6 regions\. Write one line "
                                         r"per region, row by row"):
        parse_region_text("a\nb\nc\nd", "text").check(tiles, "the tiles")
    with pytest.raises(ValueError, match=r"text is empty: write one prompt per region"):
        parse_region_text(" \n ", "text")
    # Refused before a prompt is encoded: 100,000 lines used to be encoded one by one, and held after the error.
    with pytest.raises(ValueError, match=r"text holds 100,000 lines, more than the 4,096 regions"):
        parse_region_text("a\n" * 100_000, "text")
    with pytest.raises(ValueError, match=r"text holds 5,000,000 characters, more than region prompts need"):
        parse_region_text("a" * 5_000_000, "text")


def test_region_prompts_made_for_another_grid_are_refused_with_the_fix():
    made_for = region_grid(48, 64, 24, 24, 8)
    prompts = RegionPrompts(made_for, tuple(f"region {i}" for i in range(len(made_for))), "global")
    texts = parse_region_text(to_json(prompts), "text")
    assert texts.prompts == prompts.prompts and texts.grid == made_for
    texts.check(made_for, "the tiles")
    with pytest.raises(ValueError, match=r"region prompts JSON in text was made for 3x4 tiles of 24x24 .* but the "
                                         r"tiles uses 2x3 tiles of 32x32 .* Give both the same image size, tile size"):
        texts.check(region_grid(48, 64, 32, 32, 8), "the tiles")
    with pytest.raises(ValueError, match=r"region prompts \(MLLMRegionCaptioner\) was made for"):
        RegionTexts(prompts.prompts, made_for).check(region_grid(48, 64, 32, 32, 8), "the tiles")
