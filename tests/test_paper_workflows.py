"""The paper workflows run in ComfyUI's executor on tiny models and produce images of the right size.

- ``cupscale_sdxl_1024_to_4096``: C-Upscale, two x2 stages with all four priors;
- ``cupscale_flux_x2``: C-Upscale on Flux dev, one x2 stage with all four priors (a tiny Flux DiT);
- ``cupscale_zimage_turbo_x2``: the same on Z-Image Turbo (a tiny Z-Image, where the host has it);
- ``xpsr_restore_x4``: XPSR's SFA ControlNet fed by the captioner's two descriptions;
- ``zoomed_in_x4``: Zoomed-In, degradation-aware tags per tile through the Attention Composer.

Only what a user downloads is swapped: the checkpoint loader (or the split UNET, CLIP and VAE loaders) for the
tiny seeded one; the XPSR release
and the VLM folders are built tiny, under the very names the workflows ship with, in temporary model
folders (a tiny Qwen2-VL answers for Qwen2.5-VL-3B-Instruct, a tiny LLaVA for llava-1.5-7b-hf). The
captioner runs for real on them (the local transformers backend); sizes, steps and tiles are overridden
for the CPU. Spies on the pack's own modules (as ComfyUI loaded them) show each prior at work per stage.
"""
from __future__ import annotations

import asyncio
import json
import sys

import pytest
from PIL import Image

import tiny_vlms
from cupscale.captioning.instructions import DEGRADATION_TAGS
from harness import workflows
from harness.comfy_host import run_prompt
from host_helpers import host_generates_text, pack_module  # noqa: F401  (the first is read by skipif)
from tiny_xpsr import release

CAPTION, VLM = {"max_tokens": 4}, {"device": "cpu"}  # the captioners; their one Local VLM Loader
VAE = {"tile_size": 128, "overlap": 32}
TILES = {"value": 64}, {"value": 16}  # the workflows' tile size and overlap primitives: 8 and 2 latent cells
XPSR_ADDED = "clean, high-resolution, 8k, high quality, clear text."
ZOOMED_IN_ADDED = "clean, high-resolution, 8k"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """The model files the README names, built tiny under the names the workflows ship with."""
    root = tmp_path_factory.mktemp("models")
    tiny_vlms.qwen2_vl(root / "LLM" / "Qwen2.5-VL-3B-Instruct")
    tiny_vlms.llava(root / "LLM" / "llava-1.5-7b-hf")
    release(root / "xpsr", "checkpoint-300000", "safetensors")
    return root


@pytest.fixture
def models(model_root):
    """Registered for one test only: the validation test below must not find them."""
    import folder_paths
    names = ("LLM", "xpsr")
    for name in names:
        folder_paths.add_model_folder_path(name, str(model_root / name))
    yield model_root
    for name in names:
        folder_paths.folder_names_and_paths[name][0].remove(str(model_root / name))
        folder_paths.filename_list_cache.pop(name, None)  # its check misses a removed folder


def pack(host, node: str):
    """The module of a pack node as ComfyUI loaded it (its classes are not the tests' ``cupscale.*``)."""
    return sys.modules[host.NODE_CLASS_MAPPINGS[node].__module__]


@pytest.fixture
def seen(host, monkeypatch):
    """What the priors did, as plain values: structure-guide calls, captures, composed tiles, XPSR controls
    and the instructions the VLM was asked; on a DiT, the region of each cond item given its region prompt as
    text and the composer weight of each joint attention that read the prior."""
    ra, sg = pack(host, "RegionalAttentionPrior"), pack(host, "LowFreqStructureGuide")
    captioner = pack(host, "MLLMRegionCaptioner")
    backends = pack_module(host, "cupscale.captioning.backends")
    processors = pack_module(host, "cupscale.priors.processors")
    control, joint = pack_module(host, "nodes.sfa_control"), pack_module(host, "nodes.joint_blocks")
    composer = pack_module(host, "cupscale.priors.composer")
    log = {"structure": [], "captures": [], "tiles": [], "control": [], "asked": [], "texts": [], "joint": []}

    def structure(self, args):
        log["structure"].append(tuple(args["denoised"].shape[-2:]))
        return structure.original(self, args)

    def capture(self, run, model, like, sigma, model_options):
        log["captures"].append(tuple(self.low.shape[-2:]))
        return capture.original(self, run, model, like, sigma, model_options)

    def composed(self, q, k, v, call):
        grid = call.where.grid
        log["tiles"].append({"latent": (grid.height, grid.width), "tiles": len(grid.boxes),
                             "prior": self.prior.layer in call.maps, "weight": call.composer.settings.weight})
        return composed.original(self, q, k, v, call)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        log["control"].append((tuple(x_noisy.shape[-2:]), "cupscale_tiles" in transformer_options))
        return get_control.original(self, x_noisy, t, cond, batched_number, transformer_options)

    def caption(self, images, instruction, max_tokens):
        log["asked"].append(instruction)
        return caption.original(self, images, instruction, max_tokens)

    def region_contexts(self, context, labels, regions):
        log["texts"].append((tuple(labels), tuple(regions)))
        return region_contexts.original(self, context, labels, regions)

    def joint_prior_attention(attend, q, k, v, text, read, weight):
        log["joint"].append(weight)
        return joint_prior_attention.original(attend, q, k, v, text, read, weight)

    for owner, name, spy in ((sg.StructureGuide, "__call__", structure), (ra.AttentionPrior, "capture", capture),
                             (processors.ComposerProcessor, "__call__", composed),
                             (control.SFAControl, "get_control", get_control), (backends.LocalVLM, "caption", caption),
                             (composer.ComposerRun, "region_contexts", region_contexts),
                             (joint, "joint_prior_attention", joint_prior_attention)):
        spy.original = getattr(owner, name)
        monkeypatch.setattr(owner, name, spy)
    captioner.CACHE.clear()  # every test asks the VLM itself
    return log


def fast(prompt: dict, per_node: dict[str, dict]) -> dict:
    return workflows.with_overrides(prompt, [f"{node}.{k}={json.dumps(v)}" for node, inputs in per_node.items()
                                             for k, v in inputs.items()])


def with_captures(prompt: dict, values: dict[str, list]) -> dict:
    """CupscaleCapture nodes keeping intermediate values (strings, JSON) for the test to read."""
    prompt = dict(prompt)
    for key, link in values.items():
        prompt[f"capture_{key}"] = {"class_type": "CupscaleCapture", "inputs": {"value": link, "key": key}}
    return prompt


def run(prompt: dict) -> tuple[dict, dict]:
    from harness.test_nodes import CAPTURED
    CAPTURED.clear()
    history = run_prompt(prompt)
    return history, dict(CAPTURED)


def saved_size(folders, history: dict, node: str) -> tuple[int, int]:
    (image,) = history["outputs"][node]["images"]
    with Image.open(folders / "out" / image["subfolder"] / image["filename"]) as im:
        return im.size


def regions(doc: str) -> tuple[dict, list[str]]:
    parsed = json.loads(doc)
    return parsed["grid_in_latent_cells"], [r["prompt"] for r in parsed["regions"]]


def tile_grid(latent_h: int, latent_w: int) -> dict:
    return {"height": latent_h, "width": latent_w, "tile_height": 8, "tile_width": 8, "overlap": 2}


def cupscale_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("cupscale_sdxl_1024_to_4096.api.json"), "sdxl")
    return fast(prompt, {"5": TILES[0], "6": TILES[1], "12": CAPTION, "21": CAPTION, "28": VLM, "16": {"steps": 2},
                         "25": {"steps": 2}, **{n: VAE for n in ("9", "11", "17", "20", "26")}})


def flux_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("cupscale_flux_x2.api.json"), "flux")
    return fast(prompt, {"6": TILES[0], "7": TILES[1], "13": CAPTION, "20": VLM, "17": {"steps": 2},
                         **{n: VAE for n in ("10", "12", "18")}})


def zimage_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("cupscale_zimage_turbo_x2.api.json"), "z_image")
    return fast(prompt, {"8": TILES[0], "9": TILES[1], "16": CAPTION, "15": VLM, "20": {"steps": 2},
                         **{n: VAE for n in ("12", "14", "21")}})


@pytest.fixture
def zimage(tiny):
    """The tiny Z-Image's kind, or a skip on a host without Z-Image (v0.3.64)."""
    if tiny.missing("z_image"):
        pytest.skip(tiny.missing("z_image"))
    return "z_image"


def flux_4k_prompt() -> dict:
    """The 4K graph at 48x32 -> 192x128 px, its positions extrapolated past 32 px (2 patches), so both stages run
    past the base resolution as the shipped graph does past Flux's 1024 px."""
    prompt = workflows.with_tiny_models(workflows.load("cupscale_flux_4k.api.json"), "flux")
    return fast(prompt, {"6": TILES[0], "7": TILES[1], "13": CAPTION, "24": CAPTION, "31": VLM, "17": {"steps": 2},
                         "28": {"steps": 2}, "20": {"base_resolution": 32},
                         **{n: VAE for n in ("10", "12", "18", "21", "23", "29")}})


def xpsr_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("xpsr_restore_x4.api.json"), "sd15")
    return fast(prompt, {"3": CAPTION, "17": VLM, "12": {"tile_width": 64, "tile_height": 64, "overlap": 16},
                         "14": {"steps": 2}, "13": VAE, "15": VAE})


def zoomed_in_prompt() -> dict:
    prompt = workflows.with_tiny_models(workflows.load("zoomed_in_x4.api.json"), "sd15")
    return fast(prompt, {"5": TILES[0], "6": TILES[1], "12": CAPTION, "19": CAPTION, "25": VLM, "15": {"steps": 2},
                         "22": {"steps": 2}, **{n: VAE for n in ("9", "11", "16", "18", "23")}})


def test_cupscale_sdxl_runs_both_stages_with_all_four_priors(models, folders, seen):
    Image.new("RGB", (48, 32), (120, 60, 200)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(cupscale_prompt(), {"stage1": ["12", 1], "stage2": ["21", 1]}))

    assert saved_size(folders, history, "18") == (96, 64)
    assert saved_size(folders, history, "27") == (192, 128)
    # Region prompts from the VLM on each stage's upscaled image, on the tiles' grid.
    for key, (h, w) in (("stage1", (8, 12)), ("stage2", (16, 24))):
        grid, prompts = regions(captured[key])
        assert grid == tile_grid(h, w) and len(prompts) > 1 and all(p.strip() for p in prompts)
    assert set(seen["asked"]) == {"Describe this image in one or two sentences as a prompt for a text-to-image "
                                  "model: name the objects, materials, textures and colours you see. Reply with "
                                  "the description only."}
    # Per stage: the structure guide at the sampled size, one capture per step on that stage's low-res latent,
    # and tiles whose cond items get the prior's maps composed with their region prompt (w = 0.5).
    assert set(seen["structure"]) == {(8, 12), (16, 24)}
    assert seen["captures"] == [(4, 6)] * 2 + [(8, 12)] * 2
    tiles = {(t["latent"], t["tiles"], t["prior"], t["weight"]) for t in seen["tiles"]}
    assert tiles == {((8, 12), 2, True, 0.5), ((16, 24), 12, True, 0.5)}


def test_cupscale_flux_runs_its_x2_stage_with_all_four_priors(models, folders, seen):
    """The tiny Flux (16-channel latents, 2x2 patches) through the shipped graph: FluxGuidance, cfg 1 (no
    uncond pass), tiles of 64 px = 4x4 patches whose region prompts become each tile's text."""
    Image.new("RGB", (48, 32), (120, 60, 200)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(flux_prompt(), {"regions": ["13", 1]}))

    assert saved_size(folders, history, "19") == (96, 64)
    grid, prompts = regions(captured["regions"])
    assert grid == tile_grid(8, 12) and len(prompts) == 2 and all(p.strip() for p in prompts)
    assert set(seen["structure"]) == {(8, 12)}
    assert seen["captures"] == [(4, 6)] * 2  # one capture pass per step on the low-res latent
    # Cond items only (cfg 1), each tile with its own region's prompt as its text. How the two tiles are batched
    # is the automatic batch's choice (on the CPU it tries one tile, then two).
    assert {labels for labels, _ in seen["texts"]} == {(0,)}
    assert all(len(regions) == len(set(regions)) for _, regions in seen["texts"])
    assert {region for _, regions in seen["texts"] for region in regions} == {0, 1}
    assert seen["joint"] and set(seen["joint"]) == {0.5}  # the prior read in the double blocks, composed at w


def test_cupscale_zimage_turbo_runs_its_x2_stage_with_all_four_priors(zimage, models, folders, seen):
    """The tiny Z-Image (single-stream, 2x2 patches) through the shipped graph, its split loaders swapped for the
    tiny one: ModelSamplingAuraFlow, cfg 1 (no uncond pass), each tile's region prompt as its text, the prior read
    in the main layers."""
    Image.new("RGB", (48, 32), (120, 60, 200)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(zimage_prompt(), {"regions": ["16", 1]}))

    assert saved_size(folders, history, "22") == (96, 64)
    grid, prompts = regions(captured["regions"])
    assert grid == tile_grid(8, 12) and len(prompts) == 2 and all(p.strip() for p in prompts)
    assert set(seen["structure"]) == {(8, 12)}
    assert seen["captures"] == [(4, 6)] * 2
    assert {labels for labels, _ in seen["texts"]} == {(0,)}
    assert {region for _, regions in seen["texts"] for region in regions} == {0, 1}
    assert seen["joint"] and set(seen["joint"]) == {0.5}


def test_cupscale_flux_4k_runs_two_stages_with_extrapolated_positions_and_all_four_priors(host, models, folders,
                                                                                         seen, monkeypatch):
    rope = pack(host, "DiTPositionExtrapolation")
    tables = []

    def forward(self, ids, *args, **kwargs):
        call, place = rope.CALL.get(), rope.ACTIVE.get()
        if call is not None:
            tables.append(place.image_hw if place is not None else (call.cells[0] // 2, call.cells[1] // 2))
        return forward.original(self, ids, *args, **kwargs)
    forward.original = rope.ExtrapolatedRope.forward
    monkeypatch.setattr(rope.ExtrapolatedRope, "forward", forward)
    Image.new("RGB", (48, 32), (120, 60, 200)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(flux_4k_prompt(), {"stage1": ["13", 1], "stage2": ["24", 1]}))

    assert saved_size(folders, history, "19") == (96, 64)
    assert saved_size(folders, history, "30") == (192, 128)
    for key, (h, w) in (("stage1", (8, 12)), ("stage2", (16, 24))):
        grid, prompts = regions(captured[key])
        assert grid == tile_grid(h, w) and len(prompts) > 1
    assert set(seen["structure"]) == {(8, 12), (16, 24)} and seen["joint"]
    # Each table is for a whole image, in patches: the tiles' of each stage, the prior's capture pass on its low-res
    # latent (48x32 px for stage 1; stage 2's is stage 1's output, the size of stage 1's tiles' image).
    assert set(tables) == {(4, 6), (8, 12), (2, 3)}


def test_xpsr_restores_x4_with_the_captioners_two_descriptions(models, folders, seen):
    Image.new("RGB", (32, 32), (90, 140, 30)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(xpsr_prompt(), {"high": ["3", 2], "low": ["3", 3], "positive": ["4", 0]}))

    assert saved_size(folders, history, "16") == (128, 128)
    assert captured["high"].strip() and captured["low"].strip()
    assert captured["positive"] == f"{captured['high']} {XPSR_ADDED}"
    assert {"Please provide a descriptive summary of the content of this image",
            "Please describe the quality of this image and evaluate it based on factors such as clarity, color, "
            "noise, and lighting"} <= set(seen["asked"])
    # The SFA ControlNet ran on the tiles (8x8 latent cells) of the 16x16 latent, never on the whole of it.
    assert seen["control"] and set(seen["control"]) == {((8, 8), True)}


def test_zoomed_in_gives_each_tile_its_own_degradation_aware_tags(models, folders, seen):
    Image.new("RGB", (48, 32), (30, 80, 160)).save(folders / "in" / "input.png")
    history, captured = run(with_captures(zoomed_in_prompt(), {"stage1": ["12", 1], "stage2": ["19", 1]}))

    assert saved_size(folders, history, "24") == (192, 128)
    assert set(seen["asked"]) == {DEGRADATION_TAGS}
    for key, (h, w) in (("stage1", (8, 12)), ("stage2", (16, 24))):
        grid, prompts = regions(captured[key])
        assert grid == tile_grid(h, w) and len(prompts) > 1
        assert all(p.endswith(ZOOMED_IN_ADDED) for p in prompts)  # tags, then the prompt added to every tile
    tiles = {(t["latent"], t["tiles"], t["weight"]) for t in seen["tiles"]}
    assert tiles == {((8, 12), 2, 0.0), ((16, 24), 12, 0.0)}  # each tile its own tags only


@pytest.mark.parametrize("name, needs", [
    ("cupscale_sdxl_1024_to_4096.api.json",
     {"1": {"ckpt_name"}, "7": {"image"}, "28": {"local_model"}}),
    ("xpsr_restore_x4.api.json", {"1": {"ckpt_name"}, "2": {"image"}, "17": {"local_model"},
                                  "9": {"controlnet", "unet"}}),
    ("zoomed_in_x4.api.json", {"1": {"ckpt_name"}, "7": {"image"}, "25": {"local_model"}}),
    ("cupscale_flux_x2.api.json", {"1": {"ckpt_name"}, "8": {"image"}, "20": {"local_model"}}),
    ("cupscale_flux_4k.api.json", {"1": {"ckpt_name"}, "8": {"image"}, "31": {"local_model"}}),
    ("cupscale_zimage_turbo_x2.api.json", {"1": {"unet_name"}, "2": {"clip_name"}, "3": {"vae_name"},
                                           "10": {"image"}, "15": {"local_model"}}),
])
def test_unchanged_workflows_load_and_fail_validation_only_for_the_files_users_download(host, folders, name, needs):
    import execution
    prompt = workflows.load(name)
    assert {v["class_type"] for v in prompt.values()} <= set(host.NODE_CLASS_MAPPINGS)
    ok, _, _, node_errors = asyncio.run(execution.validate_prompt("t", prompt, None))
    assert not ok
    named = {k: {e["extra_info"]["input_name"] for e in v["errors"]} for k, v in node_errors.items()}
    # XPSR's unet is named here where the host checks V3 dropdowns itself (v0.33); older hosts name it when the
    # run starts (tests/test_sfa_controlnet.py).
    assert named in (needs, {k: v - {"unet"} for k, v in needs.items()})


SHIPPED_VLM = {"cupscale_sdxl_1024_to_4096.api.json": ("sdxl", "28", "7"), "cupscale_flux_x2.api.json": ("flux", "20", "8"),
               "cupscale_flux_4k.api.json": ("flux", "31", "8"),
               "cupscale_zimage_turbo_x2.api.json": ("z_image", "15", "10")}
"""The SDXL, Flux and Z-Image workflows: the kind of tiny model, their one VLM loader, their LoadImage."""


@pytest.mark.parametrize("name", SHIPPED_VLM)
def test_workflows_set_to_an_endpoint_validate_where_models_llm_is_empty(tiny, folders, monkeypatch, name):
    """Issue 23: the loader swapped for an Endpoint VLM Loader, the graph names no local model, so it validates
    on a machine whose models/LLM is empty (the checkpoint and the image present)."""
    import execution
    import folder_paths
    kind, loader, image = SHIPPED_VLM[name]
    if tiny.missing(kind):
        pytest.skip(tiny.missing(kind))
    (folders / "LLM").mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "LLM",
                        ([str(folders / "LLM")], folder_paths.folder_names_and_paths["LLM"][1]))
    Image.new("RGB", (48, 32)).save(folders / "in" / "input.png")
    prompt = workflows.with_tiny_models(workflows.load(name), kind)
    ok, *_, node_errors = asyncio.run(execution.validate_prompt("t", prompt, None))
    assert not ok and set(node_errors) == {loader}  # as shipped: the local folder, and nothing else
    prompt[loader] = {"class_type": "EndpointVLMLoader", "inputs": {
        "endpoint_url": "http://127.0.0.1:11434/v1", "endpoint_model": "qwen2.5vl:7b", "in_flight": 4}}
    ok, error, _, node_errors = asyncio.run(execution.validate_prompt("t", prompt, None))
    assert ok, (error, node_errors)


@pytest.mark.skipif("not host_generates_text()", reason="this ComfyUI has no text generation (v0.33.0 has it)")
@pytest.mark.parametrize("name", ["cupscale_sdxl_1024_to_4096.api.json", "cupscale_flux_x2.api.json"])
def test_workflows_set_to_the_hosts_text_generation_run_on_a_clip_loaded_vlm(host, folders, qwen3vl_text_encoder,
                                                                            monkeypatch, name):
    """The loader swapped for Load CLIP (a tiny Qwen3-VL file) -> VLM from CLIP: every stage's captioner asks
    the host's CLIP.generate, one image a call, and the upscale saves its image."""
    import comfy.sd
    pack_module(host, "cupscale.captioning.cache").CACHE.clear()
    asked = []
    generate = comfy.sd.CLIP.generate
    monkeypatch.setattr(comfy.sd.CLIP, "generate", lambda self, tokens, **kw: asked.append(1) or generate(
        self, tokens, **kw))
    Image.new("RGB", (48, 32), (120, 60, 200)).save(folders / "in" / "input.png")
    _, loader, _ = SHIPPED_VLM[name]
    prompt, save, size, regions_in = ((cupscale_prompt(), "27", (192, 128), 2 + 12) if "sdxl" in name
                                      else (flux_prompt(), "19", (96, 64), 2))
    prompt[loader] = {"class_type": "CLIPVLMLoader", "inputs": {"clip": ["clip_vlm", 0]}}
    prompt["clip_vlm"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": qwen3vl_text_encoder,
                                                                 "type": "stable_diffusion"}}
    history = run_prompt(prompt)
    assert saved_size(folders, history, save) == size
    assert len(asked) == regions_in


@pytest.mark.server
def test_the_paper_workflows_run_through_a_real_comfyui_server(tiny, model_root, tmp_path):
    """Queued over HTTP to ``main.py`` whose models/ holds the tiny files; one 48x32 image for all of them (Z-Image's
    where the host has it)."""
    from harness.server import ComfyServer
    base = tmp_path / "comfy"
    (base / "models").mkdir(parents=True)
    for name in ("LLM", "xpsr"):
        (base / "models" / name).symlink_to(model_root / name, target_is_directory=True)
    (base / "input").mkdir()
    Image.new("RGB", (48, 32), (200, 100, 50)).save(base / "input" / "input.png")
    with ComfyServer(base) as server:
        # Each by its final SaveImage and the size it saves: x4, or x2 for Flux.
        prompts = [(cupscale_prompt(), "27", (192, 128)), (xpsr_prompt(), "16", (192, 128)),
                   (zoomed_in_prompt(), "24", (192, 128)), (flux_prompt(), "19", (96, 64))]
        if not tiny.missing("z_image"):
            prompts.append((zimage_prompt(), "22", (96, 64)))
        assert {v["class_type"] for p, _, _ in prompts for v in p.values()} <= set(server.get("/object_info"))
        queued = [(server.post("/prompt", {"prompt": p})["prompt_id"], save, size) for p, save, size in prompts]
        for prompt_id, save, size in queued:
            entry = server.wait_history(prompt_id)
            assert entry["status"]["status_str"] == "success", entry["status"]
            (image,) = entry["outputs"][save]["images"]
            with Image.open(base / "output" / image["subfolder"] / image["filename"]) as im:
                assert im.size == size
