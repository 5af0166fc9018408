"""Region grids and feathered blend weights (core, no host)."""
import pytest
import torch

from cupscale.tiling.grid import check_same_grid, region_grid, tile_starts
from cupscale.tiling.multidiffusion import TileMerger, gather_tiles, repeat_per_tile, tile_weights


@pytest.mark.parametrize("length,tile,overlap", [(64, 32, 8), (100, 32, 4), (33, 32, 8), (250, 128, 16), (32, 64, 8)])
def test_tiles_cover_the_latent_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, min(tile, length), overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    for a, b in zip(starts, starts[1:]):
        assert a + t - b >= overlap


def test_tile_larger_than_latent_is_clamped_to_one_tile():
    grid = region_grid(40, 24, 128, 128, 16)
    assert len(grid) == 1 and grid.boxes[0].height == 40 and grid.boxes[0].width == 24


def test_grid_is_a_pure_function_and_mismatch_is_named():
    a = region_grid(96, 128, 64, 64, 8)
    assert a == region_grid(96, 128, 64, 64, 8)
    with pytest.raises(ValueError, match="region prompts was made for .* but the tiles uses"):
        check_same_grid(a, region_grid(96, 128, 48, 48, 8), "region prompts", "the tiles")


@pytest.mark.parametrize("h,w,tile,overlap", [(64, 96, 32, 8), (100, 70, 48, 16), (33, 33, 32, 4)])
def test_feathered_weights_are_a_partition_of_unity_in_two_tile_overlaps(h, w, tile, overlap):
    grid = region_grid(h, w, tile, tile, overlap)
    weights = tile_weights(grid)
    total = torch.zeros(h, w)
    for b, wt in zip(grid.boxes, weights):
        total[b.slices()] += wt
        assert wt.min() > 0
    assert torch.allclose(total, torch.ones(h, w), atol=1e-6)


def test_merge_of_identical_predictions_is_identity_and_layout_round_trips():
    grid = region_grid(40, 56, 24, 24, 8)
    x = torch.randn(2 * 3, 4, 40, 56)  # 2 chunks x 3 images
    merger = TileMerger(x, grid, tile_weights(grid))
    for start in range(0, len(grid), 3):
        idx = tuple(range(start, min(len(grid), start + 3)))
        merger.add(gather_tiles(x, tuple(grid.boxes[i] for i in idx), chunks=2), idx, chunks=2)
    assert torch.allclose(merger.result(), x, atol=1e-6)


def test_repeat_per_tile_is_chunk_major():
    t = torch.arange(4).float()  # 2 chunks x 2 images
    assert repeat_per_tile(t, chunks=2, tiles=3).tolist() == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]


def test_tile_batches_split_evenly_within_the_bound():
    from cupscale.tiling.multidiffusion import balanced_sizes
    assert balanced_sizes(9, 4) == [3, 3, 3] and balanced_sizes(10, 4) == [4, 3, 3] and balanced_sizes(8, 4) == [4, 4]
    assert balanced_sizes(1, 4) == [1] and balanced_sizes(5, 1) == [1] * 5
    for tiles in range(1, 40):
        for most in range(1, 12):
            sizes = balanced_sizes(tiles, most)
            assert sum(sizes) == tiles and max(sizes) <= most and len(sizes) == -(-tiles // most)
            assert max(sizes) - min(sizes) <= 1
