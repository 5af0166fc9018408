"""tiles_per_batch = 0: the batch the free memory holds, by the model's own memory estimate."""
from __future__ import annotations

import pytest

import torch

from cupscale.tiling.grid import region_grid
from cupscale.tiling.multidiffusion import BatchTuner, auto_batch_size, doubling
from host_helpers import pack_module, sample, smooth_latent


@pytest.mark.parametrize("free, expected", [(10, 1), (250, 2), (399, 3), (400, 4), (10_000, 6)])
def test_auto_batch_is_the_largest_that_fits(free, expected):
    assert auto_batch_size(6, free, lambda k: 100 * k) == expected


def test_auto_batch_never_goes_below_one_tile():
    assert auto_batch_size(9, 0, lambda k: 1) == 1
    assert auto_batch_size(1, 10**12, lambda k: 1) == 1


@pytest.mark.parametrize("fits", [1, 3, 6])
def test_the_node_bounds_the_batch_by_free_memory_and_keeps_the_result(tiny, host, monkeypatch, fits):
    """With free memory for ``fits`` tiles by the model's estimate, no call carries more than ``fits`` tiles (on
    the CPU the tuner tries sizes up to that bound, then keeps the fastest), and the result is the fixed batch's."""
    td = pack_module(host, "nodes.tiled_sampling")
    node = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    model = tiny.tiny_model("sd15")
    per_tile = model.model.memory_required([2, 4, 24, 24])  # cond + uncond of one 192 px tile
    monkeypatch.setattr(td, "free_memory", lambda device: per_tile * (fits + 0.5))
    calls = []
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    out = {}
    for batch in (0, 1):
        m = node.execute(model, 192, 192, 32, batch)[0]
        m.add_wrapper_with_key(pack_module(host, "nodes.host").WrappersMP.DIFFUSION_MODEL, "test",
                               lambda executor, x, *a, **k: calls.append(x.shape[0]) or executor(x, *a, **k))
        calls.clear()
        out[batch] = sample(m, smooth_latent(32, 48), pos, neg, steps=3)
        if batch == 0:
            assert max(calls) == 2 * min(fits, 6)
            assert sum(calls) == 3 * 2 * 6
    assert (out[0] - out[1]).abs().max() < 1e-4


@pytest.mark.parametrize("fits", [1, 3, 6])
def test_off_the_cpu_the_batch_is_the_most_that_fits(tiny, host, monkeypatch, fits):
    td = pack_module(host, "nodes.tiled_sampling")
    model = tiny.tiny_model("sd15").model
    monkeypatch.setattr(td, "free_memory", lambda device: model.memory_required([2, 4, 24, 24]) * (fits + 0.5))
    patch = td.TiledDiffusion(24, 24, 4, 0, None, 0.0)
    x = torch.empty(2, 4, 32, 48, device="meta")
    evaluate = object()
    assert patch.batch_plan(model, x, region_grid(32, 48, 24, 24, 4), 2, None, None, evaluate) == (fits, evaluate)


def test_the_tuner_tries_doubling_sizes_within_the_bound():
    assert doubling(1) == [1] and doubling(6) == [1, 2, 4, 6] and doubling(8) == [1, 2, 4, 8]
    assert BatchTuner(8, 16).trials == [[1, 2, 4, 8]]
    assert BatchTuner(4, 4).trials == [[1, 2], [4]]  # 4 does not fit beside 1 + 2 in four tiles
    assert BatchTuner(1, 9).choice == 1 and BatchTuner(1, 9).sizes(0) == [1]


def fake_timed_run(tuner, per_tile, evaluation):
    """Run ``evaluation`` through the tuner with a clock that says ``per_tile[k]`` seconds per tile at batch k."""
    sizes, now = tuner.sizes(evaluation), [0.0]

    class Batch:
        def __init__(self, k):
            self.indices = tuple(range(k))

    def evaluate(batch, tile_x):
        now[0] += per_tile[len(batch.indices)] * len(batch.indices)
    timed = tuner.timed(evaluate)
    import cupscale.tiling.multidiffusion as md
    real = md.time.perf_counter
    md.time.perf_counter = lambda: now[0]
    try:
        left, call = tuner.tiles, 0
        while left:
            k = min(sizes[min(call, len(sizes) - 1)], left)
            timed(Batch(k), None)
            left, call = left - k, call + 1
    finally:
        md.time.perf_counter = real
    return sizes


def test_the_tuner_keeps_the_size_with_the_least_time_per_tile_and_plans_every_run_alike():
    per_tile = {1: 1.3, 2: 1.2, 4: 1.0, 8: 1.3}
    tuner = BatchTuner(8, 16)
    first = [fake_timed_run(tuner, per_tile, n) for n in range(3)]
    assert first == [[1, 2, 4, 8], [4] * 4, [4] * 4]  # the pick, split evenly over the 16 tiles
    # A later run of the same prompt: the same plans, the pick kept even where the clock now says otherwise.
    assert [fake_timed_run(tuner, {k: 1 / k for k in per_tile}, n) for n in range(3)] == first


@pytest.mark.hostfree
def test_a_larger_batch_must_save_a_tenth_of_the_time_to_be_picked():
    """Its longer ops keep a cancel waiting (2.1-2.6 s at four SD1.5 tiles on 2 cores, 0.4-0.7 s at one)."""
    tuner = BatchTuner(4, 4)
    assert [fake_timed_run(tuner, {1: 1.0, 2: 0.98, 4: 0.95}, n) for n in range(3)] == [[1, 2], [4], [1] * 4]
    tuner = BatchTuner(4, 4)
    assert [fake_timed_run(tuner, {1: 1.0, 2: 0.85, 4: 0.95}, n) for n in range(3)] == [[1, 2], [4], [2, 2]]


def test_zero_is_the_default_and_old_values_keep_their_meaning(host):
    schema = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"].define_schema()
    (batch,) = [i for i in schema.inputs if i.id == "tiles_per_batch"]
    assert batch.default == 0 and batch.min == 0
