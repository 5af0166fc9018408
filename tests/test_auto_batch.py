"""tiles_per_batch = 0: the batch the free memory holds, by the model's own memory estimate."""
from __future__ import annotations

import pytest

from cupscale.tiling.multidiffusion import auto_batch_size
from host_helpers import pack_module, sample, smooth_latent


@pytest.mark.parametrize("free, expected", [(10, 1), (250, 2), (399, 3), (400, 4), (10_000, 6)])
def test_auto_batch_is_the_largest_that_fits(free, expected):
    assert auto_batch_size(6, free, lambda k: 100 * k) == expected


def test_auto_batch_never_goes_below_one_tile():
    assert auto_batch_size(9, 0, lambda k: 1) == 1
    assert auto_batch_size(1, 10**12, lambda k: 1) == 1


@pytest.mark.parametrize("fits", [1, 3, 6])
def test_the_node_picks_the_batch_by_free_memory_and_keeps_the_result(tiny, host, monkeypatch, fits):
    """With free memory for ``fits`` tiles by the model's estimate, each step makes ceil(6 / fits) calls, and
    the result is the fixed batch's."""
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
        m.add_wrapper_with_key(td.WrappersMP.DIFFUSION_MODEL, "test",
                               lambda executor, x, *a, **k: calls.append(x.shape[0]) or executor(x, *a, **k))
        calls.clear()
        out[batch] = sample(m, smooth_latent(32, 48), pos, neg, steps=2)
        if batch == 0:
            assert len(calls) == 2 * -(-6 // fits) and max(calls) == 2 * min(fits, 6)
    assert (out[0] - out[1]).abs().max() < 1e-4


def test_zero_is_the_default_and_old_values_keep_their_meaning(host):
    schema = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"].define_schema()
    (batch,) = [i for i in schema.inputs if i.id == "tiles_per_batch"]
    assert batch.default == 0 and batch.min == 0
