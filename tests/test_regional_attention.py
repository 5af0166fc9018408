"""RegionalAttentionPrior and AttentionComposer in a real ComfyUI: equivalences, the capture, the chain, bad input."""
from __future__ import annotations

import pytest
import torch

from cupscale.tiling.grid import region_grid
from cupscale.captioning.region_prompts import RegionPrompts, to_json
from harness.comfy_host import run_prompt
from host_helpers import pack_module, sample, smooth_latent

GLOBAL = "a red barn in a field of sunflowers"
NEGATIVE = "blurry, low quality"
H, W = 32, 48            # working latent; 192 px tiles with 32 px overlap make a 2 x 3 grid of 24-cell tiles
TILE, OVERLAP = 192, 32
GRID = region_grid(H, W, TILE // 8, TILE // 8, OVERLAP // 8)


def as_tuple(box):
    return box.top, box.left, box.height, box.width


@pytest.fixture(scope="module")
def ra(host):
    """The pack's modules the tests look into, as ComfyUI loaded them (their classes differ from ``cupscale.*``)."""
    class Modules:
        layers = pack_module(host, "nodes.unet_layers")
        runs = pack_module(host, "nodes.attention_runs")
        prior = pack_module(host, "cupscale.priors.attention_prior")
    return Modules


@pytest.fixture(scope="module")
def nodes_(host, tiny):
    n = host.NODE_CLASS_MAPPINGS
    clip = tiny.tiny_clip()

    class Nodes:
        encode = staticmethod(lambda text: n["CLIPTextEncode"]().encode(clip, text)[0])
        tiled = staticmethod(lambda model, tile=TILE, overlap=OVERLAP: n["TiledBlendedDiffusion"]().execute(
            model, tile, tile, overlap, 4)[0])
        prior = staticmethod(lambda model, low, cond, blocks="all", res="1/2 and coarser", start=0.0, end=1.0:
                             n["RegionalAttentionPrior"]().execute(model, {"samples": low}, cond, blocks, res, start, end)[0])
        composer = staticmethod(lambda model, weight, text="", region_prompts=None: n["AttentionComposer"]().execute(
            model, clip, weight, region_prompts=region_prompts, text=text)[0])
    Nodes.clip = clip
    return Nodes


@pytest.fixture
def spy(ra, monkeypatch):
    """Records the capture passes (sigma) and every reading of the maps at a tile (maps, box, sizes)."""
    seen = {"captures": [], "captured": [], "reads": []}
    capture, read = ra.runs.AttentionPrior.capture, ra.prior.region_prior

    def spy_capture(self, run, model, like, sigma, model_options):
        maps = capture(self, run, model, like, sigma, model_options)
        seen["captures"].append(float(sigma.max()))
        seen["captured"].append(maps)
        return maps

    def spy_read(maps, box, working_hw, target_hw):
        seen["reads"].append((maps, as_tuple(box), tuple(working_hw), tuple(target_hw)))
        return read(maps, box, working_hw, target_hw)
    monkeypatch.setattr(ra.runs.AttentionPrior, "capture", spy_capture)
    monkeypatch.setattr(ra.prior, "region_prior", spy_read)
    return seen


def lora_on_cross_attention(model, seed=3):
    """A clone with a weight patch (as a LoRA is applied) on the keys and values of every cross-attention."""
    patched = model.clone()
    g = torch.Generator().manual_seed(seed)
    keys = [k for k in patched.model.state_dict() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]
    shapes = patched.model.state_dict()
    patched.add_patches({k: (0.3 * torch.randn(shapes[k].shape, generator=g),) for k in keys}, 1.0)
    return patched


# --- Layers -----------------------------------------------------------------------------------------------

def test_layers_of_the_real_sd15_and_sdxl_unets_and_their_default_selection(ra):
    from harness.unet_layouts import meta_unet
    found = {name: ra.layers.cross_attention_layers(meta_unet(name)) for name in ("SD1.5", "SDXL")}
    assert ra.layers.describe_layers(found["SD1.5"]) == ("2 in input blocks at 1/1, 2 in input blocks at 1/2, 2 in input blocks "
                                                  "at 1/4, 1 in middle blocks at 1/8, 3 in output blocks at 1/4, 3 in "
                                                  "output blocks at 1/2, 3 in output blocks at 1/1")
    assert len(found["SDXL"]) == 70 and {layer.downscale for layer, _ in found["SDXL"]} == {2, 4}
    default = lambda layers: [layer for layer, _ in layers if layer.downscale >= 2]  # noqa: E731
    assert len(default(found["SD1.5"])) == 11 and len(default(found["SDXL"])) == 70
    assert ("output", 11, 0) in [layer.key for layer, _ in found["SD1.5"]]
    assert ("middle", 0, 9) in [layer.key for layer, _ in found["SDXL"]]


# --- Equivalences -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_weight_zero_with_the_global_prompt_for_every_region_equals_tiled_diffusion_alone(tiny, nodes_, spy, kind):
    """Also under a LoRA-like weight patch: the region prompt is projected with the weights the run loaded."""
    model = lora_on_cross_attention(tiny.tiny_model(kind))
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    low = smooth_latent(H // 2, W // 2)
    latent = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear")
    tiled = nodes_.tiled(model)
    prior = nodes_.prior(tiled, low, pos)
    alone = sample(tiled, latent, pos, neg, steps=3)
    composed = sample(nodes_.composer(prior, 0.0, text=GLOBAL), latent, pos, neg, steps=3)
    assert (composed - alone).abs().max() <= 1e-5
    # At w = 0 the maps would go unused, so no capture pass runs.
    assert len(spy["captures"]) == 0
    # Not vacuous: on its own (w = 1) the prior captures every step and changes the result, and so does
    # another region prompt at w = 0.
    assert (sample(prior, latent, pos, neg, steps=3) - alone).abs().max() > 1e-3
    assert len(spy["captures"]) == 3
    assert (sample(nodes_.composer(prior, 0.0, text="a blue car"), latent, pos, neg, steps=3) - alone).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_weight_one_on_one_tile_at_the_low_res_size_uses_the_captured_maps_and_equals_plain_sampling(
        tiny, nodes_, spy, kind):
    """Exactly what is tested: one euler step at denoise 0.5, so the sampler evaluates the model once, at
    x = z + sigma_0·n with its own noise n. The working latent is the low-res latent z and the tile covers it, so
    the capture pass sees the same x (the sampler's noise is used when sizes match) with the same prompt: its
    maps A_L are the probabilities plain cross-attention computes there, and A_R V_g = A_L V_g is plain
    cross-attention. The uncond branch is untouched. So w = 1 reproduces plain sampling. Two different images
    in the batch, each with its own low-res latent: each must read its own maps."""
    model = tiny.tiny_model(kind)
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    low = torch.cat([smooth_latent(24, 32), -smooth_latent(24, 32).flip(-1)])
    prior = nodes_.prior(nodes_.tiled(model, tile=512), low, pos)
    plain = sample(model, low, pos, neg, steps=1, denoise=0.5)
    out = sample(nodes_.composer(prior, 1.0, text="a blue car"), low, pos, neg, steps=1, denoise=0.5)
    assert (out - plain).abs().max() <= 1e-5
    # The maps each layer used are the ones captured at that sigma, for that image.
    (captured,) = spy["captured"]
    assert len(spy["reads"]) == 2 * len(captured) > 0
    ptrs = {c.maps[i].data_ptr() for c in captured.values() for i in range(2)}
    assert {maps.data_ptr() for maps, *_ in spy["reads"]} == ptrs
    assert all(read[1:] == ((0, 0, 24, 32), (24, 32), (12, 16)) for read in spy["reads"])
    # The prior on its own is the w = 1 composition.
    assert (sample(prior, low, pos, neg, steps=1, denoise=0.5) - plain).abs().max() <= 1e-5
    # And the maps matter: the prior's prompt, not the sampler's, is what the cond branch attends with.
    other = nodes_.prior(model, low, nodes_.encode("a snowy mountain at night"))
    assert (sample(other, low, pos, neg, steps=1, denoise=0.5) - plain).abs().max() > 1e-3


def test_each_tile_reads_the_maps_at_its_own_box_on_its_token_grid(tiny, nodes_, spy):
    model = tiny.tiny_model("sd15")
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    low = smooth_latent(20, 30)  # x1.6
    # The other order of the chain: TiledBlendedDiffusion after the prior.
    sample(nodes_.tiled(nodes_.prior(model, low, pos)), smooth_latent(H, W), pos, neg, steps=1)
    assert {read[1] for read in spy["reads"]} == {as_tuple(b) for b in GRID.boxes}
    assert {read[2:] for read in spy["reads"]} == {((H, W), (12, 12))}  # 24-cell tiles, layers at 1/2
    assert {tuple(c.maps.shape[-2:]) for c in spy["captured"][0].values()} == {(10, 15)}


def test_capture_size_bounds_the_maps_and_the_pass_however_large_the_low_res_latent(host, tiny, nodes_, spy):
    """A low-res latent over capture_size is captured at that area (same aspect): the maps, and the UNet pass
    that makes them, no longer grow with it, and the tiles still read them over the whole image."""
    model = tiny.tiny_model("sd15")
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    prior = host.NODE_CLASS_MAPPINGS["RegionalAttentionPrior"]()
    sizes = {}
    for low_hw in ((16, 24), (32, 48)):
        spy["captured"].clear()
        patched = prior.execute(nodes_.tiled(model), {"samples": smooth_latent(*low_hw)}, pos, "all", "all", 0.0, 1.0,
                                128)[0]  # 128 px: at most 16 x 16 latent cells
        sample(patched, smooth_latent(H, W), pos, neg, steps=1)
        maps = spy["captured"][0]
        sizes[low_hw] = {tuple(c.maps.shape[-2:]) for c in maps.values()}, sum(c.nbytes for c in maps.values())
    assert sizes[(16, 24)] == sizes[(32, 48)]  # the same capture for 4x the low-res area
    assert max(h * w for h, w in sizes[(32, 48)][0]) <= 16 * 16
    assert {read[1] for read in spy["reads"]} == {as_tuple(b) for b in GRID.boxes}


def test_capture_size_keeps_the_aspect_in_whole_cells():
    from cupscale.priors.attention_prior import capture_size
    assert capture_size((64, 64), 128 * 128) == (64, 64)  # within the native area: untouched
    assert capture_size((256, 256), 128 * 128) == (128, 128)
    assert capture_size((256, 384), 128 * 128) == (104, 152)  # 2:3 within 128², multiples of 8
    assert capture_size((512, 16), 64) == (40, 8)  # the narrow side never below one multiple, the aspect kept


@pytest.mark.parametrize("sampler, steps, start, captured_steps", [("heun", 3, 0.0, None), ("euler", 4, 0.5, 2)])
def test_capture_runs_once_per_distinct_sigma_within_the_step_range(tiny, nodes_, spy, sampler, steps, start,
                                                                    captured_steps):
    model = tiny.tiny_model("sd15").clone()
    evaluated = []
    model.set_model_sampler_post_cfg_function(lambda args: evaluated.append(float(args["sigma"].max())) or args["denoised"])
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    prior = nodes_.prior(nodes_.tiled(model), smooth_latent(H // 2, W // 2), pos, start=start)
    sample(prior, smooth_latent(H, W), pos, neg, steps=steps, sampler=sampler)
    distinct = list(dict.fromkeys(evaluated))
    if captured_steps is None:
        assert len(evaluated) > len(distinct)  # heun evaluates the same sigma twice in a row
        assert spy["captures"] == distinct
    else:
        assert spy["captures"] == distinct[-captured_steps:]


# --- The chain in a graph ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_chain_runs_in_a_graph_with_typed_or_captioned_region_prompts(host, spy, kind):
    """TiledBlendedDiffusion -> RegionalAttentionPrior -> AttentionComposer -> KSampler, as an API prompt. SD1.5
    types one line per tile; SDXL takes REGION_PROMPTS from MLLMRegionCaptioner's edited JSON."""
    prompts = RegionPrompts(GRID, tuple(f"region {i}: a wooden wall" for i in range(len(GRID))), GLOBAL)
    graph = {
        "1": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": GLOBAL}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": NEGATIVE}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": W * 4, "height": H * 4, "batch_size": 1,
                                                     "color": 0x8844CC}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "bilinear",
                                                          "scale_by": 2.0}},
        "7": {"class_type": "TiledBlendedDiffusion", "inputs": {"model": ["1", 0], "tile_width": TILE,
                                                                "tile_height": TILE, "overlap": OVERLAP,
                                                                "tiles_per_batch": 4}},
        "8": {"class_type": "RegionalAttentionPrior", "inputs": {
            "model": ["7", 0], "low_res_latent": ["5", 0], "global_conditioning": ["2", 0], "blocks": "all",
            "resolutions": "1/2 and coarser", "start_percent": 0.0, "end_percent": 1.0}},
        "9": {"class_type": "AttentionComposer", "inputs": {"model": ["8", 0], "clip": ["1", 1], "weight": 0.5}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["9", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["6", 0], "seed": 1,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    if kind == "sd15":
        graph["9"]["inputs"]["text"] = "\n".join(prompts.prompts)
    else:
        captioner = host.NODE_CLASS_MAPPINGS["MLLMRegionCaptioner"].INPUT_TYPES()["required"]
        graph["13"] = {"class_type": "EmptyImage", "inputs": {"width": W * 8, "height": H * 8, "batch_size": 1,
                                                              "color": 0}}
        graph["14"] = {"class_type": "MLLMRegionCaptioner", "inputs": {  # no VLM: its edited JSON
            "image": ["13", 0], "tile_width": TILE, "tile_height": TILE, "overlap": OVERLAP,
            "region_prompts": captioner["region_prompts"][1]["options"][0],
            "xpsr_descriptions": False, "max_tokens": 8, "on_region_failure": "stop with an error",
            "region_prompts_json": to_json(prompts)}}
        graph["9"]["inputs"]["region_prompts"] = ["14", 0]
    out = run_prompt(graph)
    assert len(out["outputs"]["12"]["images"]) == 1
    assert len(spy["captures"]) == 2 and len(spy["reads"]) > 0


# --- Bad input, and the input model --------------------------------------------------------------------------

def test_region_prompts_made_for_another_grid_stop_sampling_with_the_fix(tiny, nodes_):
    model = tiny.tiny_model("sd15")
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    prior = nodes_.prior(nodes_.tiled(model), smooth_latent(H // 2, W // 2), pos)
    other = region_grid(H, W, 16, 16, 4)
    text = to_json(RegionPrompts(other, ("p",) * len(other), GLOBAL))
    with pytest.raises(ValueError, match=r"region prompts JSON in AttentionComposer's text was made for 3x4 tiles of "
                                         r"16x16 .* but TiledBlendedDiffusion's tiles .* uses 2x3 tiles of 24x24 .* Give "
                                         r"both the same image size, tile size and overlap"):
        sample(nodes_.composer(prior, 0.5, text=text), smooth_latent(H, W), pos, neg, steps=1)
    with pytest.raises(ValueError, match=r"AttentionComposer's text has 4 lines, but TiledBlendedDiffusion's tiles .* "
                                         r"6 regions\. Write one line per region"):
        sample(nodes_.composer(prior, 0.5, text="a\nb\nc\nd"), smooth_latent(H, W), pos, neg, steps=1)


def test_a_model_without_cross_attention_is_refused_with_what_the_node_needs(host, tiny, nodes_):
    import comfy.model_patcher

    class NoCrossAttention(tiny.TinySD15):
        unet_config = {**tiny.UNET["sd15"], "transformer_depth": [0, 0], "transformer_depth_output": [0, 0, 0, 0],
                       "transformer_depth_middle": -1}
    config = NoCrossAttention(dict(NoCrossAttention.unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_patcher.ModelPatcher(config.get_model({}, device="cpu"), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"RegionalAttentionPrior needs a UNet with cross-attention layers \(SD1.x, "
                                         r"SD2.x, SDXL\); this model \(BaseModel\) has none\."):
        nodes_.prior(model, smooth_latent(8, 8), nodes_.encode(GLOBAL))


def test_bad_inputs_are_refused_with_the_fix(tiny, nodes_):
    model = tiny.tiny_model("sd15")
    pos = nodes_.encode(GLOBAL)
    low = smooth_latent(H // 2, W // 2)
    with pytest.raises(ValueError, match=r"resolutions = '1/1' selects none of this model's cross-attention layers "
                                         r"\(1 in input blocks at 1/2, 1 in middle blocks at 1/2, 2 in output blocks "
                                         r"at 1/2\)"):
        nodes_.prior(model, low, pos, res="1/1")
    with pytest.raises(ValueError, match=r"global_conditioning has 32 channels per token but the model's "
                                         r"cross-attention takes 64: encode the global prompt with this checkpoint"):
        nodes_.prior(model, low, [[torch.zeros(1, 77, 32), {}]])
    with pytest.raises(ValueError, match=r"global_conditioning holds 2 prompts"):
        nodes_.prior(model, low, pos + pos)
    with pytest.raises(ValueError, match=r"low_res_latent has shape \(1, 3, 16, 24\): .* 4 channels"):
        nodes_.prior(model, low[:, :3], pos)
    for shape in ((1, 1), (1, 12500)):  # a 1 x 1 latent failed in the model's GroupNorm, at the KSampler
        with pytest.raises(ValueError, match=rf"low_res_latent is {shape[0]}x{shape[1]} latent cells: .* at least 2"):
            nodes_.prior(model, low[:, :, :1, :1].expand(1, 4, *shape), pos)
    with pytest.raises(ValueError, match=r"AttentionComposer needs RegionalAttentionPrior before it"):
        nodes_.composer(model, 0.5, text=GLOBAL)
    prior = nodes_.prior(model, smooth_latent(H // 2, H // 2), pos)
    with pytest.raises(ValueError, match=r"got both region_prompts and text"):
        nodes_.composer(prior, 0.5, text="a", region_prompts=RegionPrompts(GRID, ("a",) * len(GRID), GLOBAL))
    with pytest.raises(ValueError, match=r"low_res_latent is 16x16 cells but the latent being sampled is 48x32: their "
                                         r"aspect ratios differ"):
        sample(prior, smooth_latent(H, W), pos, nodes_.encode(NEGATIVE), steps=1)


def test_the_input_model_is_never_mutated(tiny, nodes_):
    model = nodes_.tiled(tiny.tiny_model("sdxl"))
    pos, neg = nodes_.encode(GLOBAL), nodes_.encode(NEGATIVE)
    latent = smooth_latent(H, W)

    def state(m):
        options = m.model_options["transformer_options"]
        return ({k: {kk: list(vv) for kk, vv in v.items()} for k, v in m.wrappers.items()},
                {k: dict(v) for k, v in options.get("patches_replace", {}).items()}, set(options))
    before, out_before = state(model), sample(model, latent, pos, neg, steps=2)
    prior = nodes_.prior(model, smooth_latent(H // 2, W // 2), pos)
    composed = nodes_.composer(prior, 0.5, text=GLOBAL)
    sample(composed, latent, pos, neg, steps=2)
    prior_state = state(prior)
    nodes_.composer(prior, 0.3, text="another")
    assert state(model) == before and state(prior) == prior_state
    assert torch.equal(sample(model, latent, pos, neg, steps=2), out_before)
