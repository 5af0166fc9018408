"""The per-step loop is GPU-ready: no host-device syncs made by the pack, and the whole chain runs in bf16.

On a GPU, ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()`` or ``.cpu()`` on a device tensor stalls the
host until the device has finished all queued work. Here (CPU) every such call is counted where it is made:
the calls the pack's own code makes must not grow with the steps or the tiles.
"""
from __future__ import annotations

import sys

import pytest
import torch

from harness.comfy_host import PACK_DIR
from host_helpers import pack_module, sample, smooth_latent

SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
PACK_CODE = (str(PACK_DIR / "cupscale"), str(PACK_DIR / "nodes"))
H, W, TILE, OVERLAP = 32, 48, 192, 32


@pytest.fixture
def sync_counter(monkeypatch):
    """Counts sync-making Tensor calls: {"pack": calls from the pack's code, "all": every call}."""
    counts = {"pack": 0, "all": 0}

    def counting(name, original):
        def call(self, *args, **kwargs):
            counts["all"] += 1
            if sys._getframe(1).f_code.co_filename.startswith(PACK_CODE):
                counts["pack"] += 1
            return original(self, *args, **kwargs)
        return call

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return counts


def all_priors(host, tiny, model, clip, low, pos):
    n = host.NODE_CLASS_MAPPINGS
    model = n["TiledBlendedDiffusion"]().execute(model, TILE, TILE, OVERLAP, 4)[0]
    model = n["LowFreqStructureGuide"]().execute(model, {"samples": low}, 1.0, "gaussian", 1.0, 0.5, 0.0, 1.0,
                                                 "cosine")[0]
    model = n["RegionalAttentionPrior"]().execute(model, {"samples": low}, pos, "all", "1/2 and coarser", 0.0, 1.0)[0]
    return n["AttentionComposer"]().execute(model, clip, 0.5, text="a wooden wall")[0]


def encode(host, clip, text, kind="sd15"):
    from harness.tiny_models import with_guidance
    return with_guidance(kind, host.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, text)[0])


def latent(tiny, kind: str, h: int, w: int) -> torch.Tensor:
    """smooth_latent in ``kind``'s layout (16 channels for the DiTs; Qwen-Image's with a frame axis)."""
    shape = tiny.latent_shape(kind, 1, h, w)
    return smooth_latent(h, w).repeat(1, shape[1] // 4, 1, 1).reshape(shape)


@pytest.mark.parametrize("kind", ["sd15", "flux", "sd3", "qwen_image", "flux2", "chroma", "hidream", "z_image"])
def test_the_pack_makes_no_sync_per_step_or_tile(host, tiny, sync_counter, kind):
    if tiny.missing(kind):
        pytest.skip(tiny.missing(kind))
    clip = tiny.tiny_clip()
    pos, neg = encode(host, clip, "a red barn", kind), encode(host, clip, "blurry", kind)
    low = latent(tiny, kind, H // 2, W // 2)
    models = {"plain": tiny.tiny_model(kind), "pack": all_priors(host, tiny, tiny.tiny_model(kind), clip, low, pos)}
    counts = {}
    for name, model in models.items():
        for steps in (2, 4, 2):
            sync_counter.update(pack=0, all=0)
            sample(model, latent(tiny, kind, H, W), pos, neg, steps=steps)
            counts[name, steps] = dict(sync_counter)
    assert counts["pack", 2]["pack"] == counts["pack", 4]["pack"] == 0, counts
    # Against plain sampling: with 6 tiles, a capture pass and three priors a step, each step makes no more
    # syncs than the host's own sampler makes in a step without the pack.
    per_step = {name: (counts[name, 4]["all"] - counts[name, 2]["all"]) / 2 for name in models}
    assert per_step["pack"] == per_step["plain"], counts


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_the_chain_runs_in_bf16_and_keeps_the_model_dtype(host, tiny, kind):
    ra = pack_module(host, "nodes.attention_runs")
    clip = tiny.tiny_clip()
    pos, neg = encode(host, clip, "a red barn", kind), encode(host, clip, "blurry", kind)
    low = latent(tiny, kind, H // 2, W // 2)
    captured = []
    capture = ra.AttentionPrior.capture

    def spy(self, *args):
        maps = capture(self, *args)
        captured.append(maps)
        return maps
    ra.AttentionPrior.capture = spy
    try:
        out = {dtype: sample(all_priors(host, tiny, tiny.tiny_model(kind, dtype=dtype), clip, low, pos),
                             latent(tiny, kind, H, W), pos, neg, steps=2)
               for dtype in (torch.float32, torch.bfloat16)}
    finally:
        ra.AttentionPrior.capture = capture

    def dtypes(capture):  # maps of a UNet's cross-attention, or a DiT's captured text attention
        return {getattr(c, "maps", getattr(c, "features", None)).dtype for c in capture.values()}
    assert dtypes(captured[-1]) == {torch.bfloat16}
    assert dtypes(captured[0]) == {torch.float32}
    assert torch.isfinite(out[torch.bfloat16]).all()
    error = (out[torch.bfloat16] - out[torch.float32]).norm() / out[torch.float32].norm()
    # The same chain, to bf16's precision beyond the model's own: the tiny random Flux alone already differs
    # by about 0.48 between bf16 and float32 (its modulations amplify rounding); the tiny SD1.5 by little.
    plain = {dtype: sample(tiny.tiny_model(kind, dtype=dtype), latent(tiny, kind, H, W), pos, neg, steps=2)
             for dtype in (torch.float32, torch.bfloat16)}
    own = (plain[torch.bfloat16] - plain[torch.float32]).norm() / plain[torch.float32].norm()
    assert error < 0.05 + own, (error, own)


@pytest.mark.parametrize("sigma, hw", [(1.0, (16, 24)), (2.5, (9, 40)), (6.0, (12, 12))])
def test_the_gaussian_lowpass_equals_kornias(sigma, hw):
    """The guide's blur, now made without kornia's per-call host check, is kornia's blur (the reference)."""
    import math

    import kornia
    from cupscale.tiling.lowpass import gaussian_lowpass
    x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(0))
    k = 2 * min(max(1, math.ceil(3 * sigma)), min(hw) - 1) + 1
    expected = kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")
    assert torch.allclose(gaussian_lowpass(x, sigma), expected, atol=1e-6)
    assert gaussian_lowpass(x.bfloat16(), sigma).dtype == torch.bfloat16
