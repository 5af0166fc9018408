"""Region grids and feathered blend weights (core, no host)."""
import copy
import threading

import pytest
import torch

from cupscale.liif.encoders import EDSR
from cupscale.tiling.grid import check_same_grid, region_grid, tile_starts
from cupscale.tiling.multidiffusion import TileMerger, gather_tiles, repeat_per_tile, run_tiles, tile_weights

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host


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


def replica_evaluators(copies: int, seen: list, fail_on: int | None = None):
    """One evaluate per "device": a replica of one small conv net (the core's EDSR) on the CPU, noting its thread
    and tiles."""
    torch.manual_seed(0)
    net = EDSR(n_resblocks=1, n_feats=4, in_channels=4)
    replicas = [net] + [copy.deepcopy(net) for _ in range(copies - 1)]

    def on(d):
        def evaluate(batch, tile_x):
            seen.append((d, threading.current_thread().name, batch.indices))
            if batch.indices[0] == fail_on:
                raise RuntimeError(f"device {d} ran out of memory")
            with torch.no_grad():
                return replicas[d](tile_x)
        return evaluate
    return [on(d) for d in range(copies)]


def test_tiles_spread_over_two_devices_equal_one_device_bitwise():
    x = torch.randn(2 * 2, 4, 40, 56)  # 2 chunks (cond, uncond) of 2 images
    grid = region_grid(40, 56, 16, 16, 4)
    weights = tile_weights(grid)
    seen_one, seen_two, reported = [], [], []
    one = run_tiles(x, grid, weights, 3, replica_evaluators(1, seen_one)[0], chunks=2)
    two = run_tiles(x, grid, weights, 3, replica_evaluators(2, seen_two), chunks=2,
                    report=lambda done, total: reported.append((done, total)))
    assert torch.equal(one, two)
    assert sorted(i for _, _, i in seen_two) == sorted(i for _, _, i in seen_one) and len(seen_one) == len(grid) // 3
    by_device = {d: [i for e, _, i in seen_two if e == d] for d in (0, 1)}
    assert by_device[0] == [i for _, _, i in seen_one][0::2] and by_device[1] == [i for _, _, i in seen_one][1::2]
    assert len({thread for _, thread, _ in seen_two}) == 2  # each device in a thread of its own
    assert reported == [(3 * (k + 1), len(grid)) for k in range(len(grid) // 3)]  # merged in batch order


def test_a_failing_device_fails_the_evaluation():
    x = torch.randn(2, 4, 40, 56)
    grid = region_grid(40, 56, 16, 16, 4)
    with pytest.raises(RuntimeError, match="device 1 ran out of memory"):
        run_tiles(x, grid, tile_weights(grid), 2, replica_evaluators(2, [], fail_on=2))
