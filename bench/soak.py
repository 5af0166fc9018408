"""Soak and faults against one real ComfyUI server (main.py on 127.0.0.1) with tiny models (issue 15).

    .venv/bin/python bench/soak.py --runs 200 --interrupts 20

- Soak: the C-Upscale workflow queued ``--runs`` times with varying seeds and image sizes, alternated (every
  ``--alternate`` runs) with the XPSR and Multi-Stage Blended workflows. Resident memory of the server after the
  warm-up (one run of each) and at the end; every output's size; run 1 and run N (same prompt and seed) compared
  bitwise; the pack's caches at their bound (small limits are set through the CUPSCALE_* variables).
- Interrupts: POST /interrupt at random points (during captioning, or at a random tile of a random step, which
  falls in the capture pass or mid-tile batch); the same prompt then reruns, bitwise equal to the uninterrupted
  run, and the shared MODEL carries no patch or run state.
- Hostile input over HTTP: each case answered by a validation or node error naming the input; a small prompt
  then runs to show the server alive. Then the cases made from the nodes' own schemas (harness/hostile_cases.py):
  every input of every pack node, a table of cases per node, and the server's memory before and after them.
- Concurrency: four websocket clients queue at once; each receives its own results only.

tests/test_soak.py runs the same functions, shorter. The tiny model builders live with the tests (tests/).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import random
import socketserver
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):  # appended: the host's own top-level modules (nodes, ...) come first
    if str(path) not in sys.path:
        sys.path.append(str(path))

LIMITS = {"CUPSCALE_CAPTION_CACHE_ENTRIES": "24", "CUPSCALE_GRID_CACHE_ENTRIES": "64", "CUPSCALE_TILE_GRIDS": "2",
          "CUPSCALE_COMPOSER_KEYS_MB": "1"}
"""Small cache limits, so a soak of a few hundred runs reaches them."""
SIZES = [(48, 32), (32, 32), (64, 32)]
CUPSCALE_SAVE, XPSR_SAVE, MSBD_SAVE = "27", "16", "46"


# ---------------------------------------------------------------- models, prompts, server
def build_models(root: Path) -> Path:
    """The README's model files, tiny, under the names the workflows ship with; hostile files beside them."""
    import torch

    import tiny_clip
    import tiny_liif
    import tiny_vlms
    from tiny_xpsr import release
    tiny_vlms.qwen2_vl(root / "LLM" / "Qwen2.5-VL-3B-Instruct")
    tiny_vlms.llava(root / "LLM" / "llava-1.5-7b-hf")
    release(root / "xpsr", "checkpoint-300000", "safetensors")
    tiny_clip.tiny_clip(root / "clip_rerank" / "tiny-clip")
    liif = root / "liif"
    liif.mkdir(parents=True)
    torch.save(tiny_liif.edsr_liif(seed=5), liif / "tiny.pth")
    data = (liif / "tiny.pth").read_bytes()
    (liif / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"not": "tensors", "n": [1, 2, 3]}, liif / "not_tensors.pth")
    (liif / "text.safetensors").write_text("this is not a safetensors file")
    torch.save(RunsCode(str(root / "PWNED")), liif / "runs_code.pth")
    (root / "implicit_decoders").mkdir()
    torch.save(tiny_liif.first_stage(seed=4, z=4), root / "implicit_decoders" / "tiny-first-stage.ckpt")
    return root


class RunsCode:
    """Unpickling this runs code (writes a marker file): the pack must refuse it, never run it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def images(input_dir: Path) -> None:
    from PIL import Image
    for w, h in SIZES:
        Image.new("RGB", (w, h), (200 - w, 100, 50 + h)).save(input_dir / f"in_{w}x{h}.png")
    rng = np.random.default_rng(3)
    rgba = np.concatenate([(rng.random((96, 128, 3)) * 255).astype(np.uint8), np.full((96, 128, 1), 255, np.uint8)], -1)
    rgba[32:64, 40:88, 3] = 0
    Image.fromarray(rgba, "RGBA").save(input_dir / "msbd.png")


def prompts():
    """The three workflows' API prompts, fast on the CPU (the tests' overrides)."""
    import test_more_workflows
    import test_paper_workflows
    return test_paper_workflows.cupscale_prompt(), test_paper_workflows.xpsr_prompt(), test_more_workflows.msbd_prompt()


def cupscale(base: dict, seed: int, size: tuple[int, int], prefix: str = "cupscale") -> dict:
    from harness import workflows
    p = workflows.with_image(base, f"in_{size[0]}x{size[1]}.png")
    for node in ("16", "25"):
        p[node]["inputs"]["seed"] = seed
    p[CUPSCALE_SAVE]["inputs"]["filename_prefix"] = prefix
    return p


def with_image(prompt: dict, name: str) -> dict:
    from harness import workflows
    return workflows.with_image(prompt, name)


@contextlib.contextmanager
def server(root: Path, tmp: Path):
    """A ComfyServer whose models/ links the tiny files, with the soak's cache limits."""
    from harness.server import ComfyServer
    base = tmp / "comfy"
    (base / "models").mkdir(parents=True)
    for name in ("LLM", "xpsr", "clip_rerank", "liif", "implicit_decoders"):
        (base / "models" / name).symlink_to(root / name, target_is_directory=True)
    (base / "input").mkdir()
    images(base / "input")
    old = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)
    try:
        with ComfyServer(base) as s:
            yield s
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def queue(s, prompt: dict, client_id: str | None = None) -> str:
    body = {"prompt": prompt, **({"client_id": client_id} if client_id else {})}
    return s.post("/prompt", body)["prompt_id"]


def run(s, prompt: dict, timeout: float = 900) -> dict:
    try:
        prompt_id = queue(s, prompt)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"/prompt refused a prompt the soak expects to run: {e.read()[:2000]!r}") from None
    return s.wait_history(prompt_id, timeout)


def output_files(s, entry: dict, node: str) -> list[Path]:
    return [s.base / i["type"] / i["subfolder"] / i["filename"] for i in entry["outputs"][node]["images"]]


def pixels(path: Path) -> bytes:
    from PIL import Image
    with Image.open(path) as im:
        return im.size, im.tobytes()


def report(s, tag: str = "", with_models: dict | None = None, clear: bool = False) -> dict:
    """The server's StateReport: rss, caches, and the state of MODELs (``with_models``: input -> link)."""
    prompt = {**(with_models or {}).get("graph", {}),
              "report": {"class_type": "CupscaleStateReport",
                         "inputs": {"tag": tag, "clear_caption_cache": clear, **{k: v for k, v in (with_models or {}).items() if k != "graph"}}}}
    entry = run(s, prompt)
    return json.loads(entry["outputs"]["report"]["text"][0])


def post_only(s, path: str, body: dict) -> None:
    """POST to an endpoint that answers with no JSON (/free, /interrupt)."""
    req = urllib.request.Request(s.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def free(s) -> None:
    """POST /free: ComfyUI then drops its cache of node outputs (and models) before the next prompt."""
    post_only(s, "/free", {"free_memory": True, "unload_models": True})


def rss(s) -> int:
    import psutil
    return psutil.Process(s.proc.pid).memory_info().rss


# ---------------------------------------------------------------- soak
@dataclass
class Soak:
    runs: int = 0
    seconds: float = 0.0
    rss_warm: int = 0
    rss_end: int = 0
    sizes: dict = field(default_factory=dict)  # workflow -> {(w, h): count}
    failures: list = field(default_factory=list)
    first_equals_last: bool | None = None
    caches: dict = field(default_factory=dict)


def soak(s, runs: int, alternate: int = 10, log=print) -> Soak:
    base_c, base_x, base_m = prompts()
    xpsr = with_image(base_x, "in_32x32.png")
    msbd = with_image(base_m, "msbd.png")
    result = Soak()

    def record(name: str, entry: dict, node: str) -> list[Path]:
        if entry["status"]["status_str"] != "success":
            result.failures.append((name, entry["status"]))
            return []
        files = output_files(s, entry, node)
        for f in files:
            size = pixels(f)[0]
            result.sizes.setdefault(name, {}).setdefault(size, 0)
            result.sizes[name][size] += 1
        return files

    first = record("C-Upscale", run(s, cupscale(base_c, 0, SIZES[0])), CUPSCALE_SAVE)
    record("XPSR", run(s, xpsr), XPSR_SAVE)
    record("MSBD", run(s, msbd), MSBD_SAVE)
    result.rss_warm = rss(s)
    start = time.time()
    for i in range(1, runs):
        same = i == runs - 1  # the last run repeats the first prompt and seed
        seed, size = (0, SIZES[0]) if same else (i, SIZES[i % len(SIZES)])
        last = record("C-Upscale", run(s, cupscale(base_c, seed, size, "cupscale_last" if same else "cupscale")),
                      CUPSCALE_SAVE)
        if i % alternate == 0:
            record("XPSR", run(s, xpsr), XPSR_SAVE)
            record("MSBD", run(s, msbd), MSBD_SAVE)
        if i % 10 == 0:
            log(f"  run {i}/{runs}: rss {rss(s) / 2 ** 20:.0f} MiB, {time.time() - start:.0f} s")
    result.seconds = time.time() - start
    result.runs = runs
    result.rss_end = rss(s)
    if first and runs > 1:
        result.first_equals_last = [pixels(f) for f in first] == [pixels(f) for f in last]
    result.caches = report(s, "after soak")["caches"]
    return result


# ---------------------------------------------------------------- interrupts
@dataclass
class Interrupt:
    phase: str
    at_node: str | None
    status: str
    rerun_equal: bool
    shared_clean: bool
    patched_clean: bool


async def queue_and_interrupt(url: str, prompt: dict, phase: str, rng: random.Random) -> tuple[str, str | None]:
    """Queue over the websocket; POST /interrupt at a random point of ``phase``; return (status, node running)."""
    import aiohttp
    client = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http_session:
        async with http_session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client}") as ws:
            async with http_session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                prompt_id = (await r.json())["prompt_id"]
            # captioning: a random moment of either stage's captioner; sampling: of either stage's KSampler,
            # whose steps run the capture pass and then the tile batches
            nodes = ("12", "21") if phase == "captioning" else ("16", "25")
            at, delay = rng.choice(nodes), rng.uniform(0, 0.1 if phase == "captioning" else 0.4)
            running, sent = None, False
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                data = m.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if m["type"] == "executing":
                    running = data.get("node")
                    if running == at and not sent:
                        await asyncio.sleep(delay)
                        sent = await interrupt(http_session, url)
                if m["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                    return m["type"].removeprefix("execution_"), data.get("node_id", running)
    return "closed", running


async def interrupt(session, url: str) -> bool:
    async with session.post(f"{url}/interrupt", json={}) as r:
        return r.status == 200


def interrupts(s, count: int, seed: int = 0, log=print) -> list[Interrupt]:
    base_c = prompts()[0]
    prompt = cupscale(base_c, 7, SIZES[0], "interrupt")
    reference = [pixels(f) for f in output_files(s, run(s, prompt), CUPSCALE_SAVE)]
    rng = random.Random(seed)
    rows = []
    for k in range(count):
        free(s)  # the next prompt executes every node again
        phase = ("captioning", "sampling")[k % 2]
        if phase == "captioning":
            report(s, "clear", clear=True)
        status, node = asyncio.run(queue_and_interrupt(s.url, prompt, phase, rng))
        entry = run(s, prompt)
        equal = entry["status"]["status_str"] == "success" and \
            [pixels(f) for f in output_files(s, entry, CUPSCALE_SAVE)] == reference
        state = report(s, f"interrupt {k}", models_of(prompt))
        rows.append(Interrupt(phase, node, status, equal, clean(state["shared"]), clean(state["patched"], True)))
        log(f"  interrupt {k}: {rows[-1]}")
    return rows


def models_of(prompt: dict) -> dict:
    """The report's graph: the first stage's nodes up to its AttentionComposer (cached from the run just done, so
    its objects are the ones that run used), and links to the shared MODEL and the composer's patched clone."""
    composer = next(k for k, v in prompt.items() if v["class_type"] == "AttentionComposer")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "CupscaleTinyCheckpointLoader")
    graph, todo = {}, [composer]
    while todo:
        node = todo.pop()
        if node not in graph:
            graph[node] = prompt[node]
            todo += [v[0] for v in prompt[node]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {"graph": graph, "shared": [loader, 0], "patched": [composer, 0]}


def clean(state: dict, patched: bool = False) -> bool:
    """No run state in transformer_options; the shared model has no wrappers or patches at all."""
    if any(k.startswith("cupscale") for k in state["keys"]):
        return False
    return patched or (not state["wrappers"] and not state["attn2_replaced"] and not state["post_cfg"])


# ---------------------------------------------------------------- hostile input
class Endpoint(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """An OpenAI-compatible endpoint on 127.0.0.1 that misbehaves: ``garbage`` answers 200 with non-JSON,
    ``hang`` accepts and never answers (until ``close``)."""

    daemon_threads = True

    def __init__(self, mode: str):
        self.mode, self.stop = mode, threading.Event()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if endpoint.mode == "hang":
                    endpoint.stop.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"\x00garbage{{{ not json")

            def log_message(self, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self):
        self.stop.set()
        self.shutdown()
        self.server_close()


def captioner_graph(vlm: dict | None = None, **inputs) -> dict:
    """LoadImage -> MLLMRegionCaptioner (given a Local VLM Loader, or the loader node ``vlm``) -> a capture of its
    JSON."""
    node = {"image": ["img", 0], "vlm": ["vlm", 0], "tile_width": 64, "tile_height": 64, "overlap": 16,
            "region_prompts": "description (C-Upscale)", "xpsr_descriptions": False, "max_tokens": 4,
            "on_region_failure": "stop with an error", **inputs}
    return {"img": {"class_type": "LoadImage", "inputs": {"image": "in_48x32.png"}},
            "vlm": vlm or {"class_type": "LocalVLMLoader", "inputs": {
                "local_model": "Qwen2.5-VL-3B-Instruct", "device": "cpu", "after_use": "unload"}},
            "cap": {"class_type": "MLLMRegionCaptioner", "inputs": node},
            "out": {"class_type": "CupscaleCapture", "inputs": {"value": ["cap", 1], "key": "json"}}}


def endpoint_vlm(url: str = "http://127.0.0.1:9/v1", **inputs) -> dict:
    """An Endpoint VLM Loader: one request at a time, 1 s per reply, no retries."""
    return {"class_type": "EndpointVLMLoader", "inputs": {"endpoint_url": url, "endpoint_model": "m", "in_flight": 1,
                                                          "timeout_s": 1.0, "retries": 0, **inputs}}


def clip_vlm_graph() -> dict:
    """The tiny checkpoint's CLIP -> VLM from CLIP -> the captioner fed its own JSON (the model is not asked)."""
    graph = captioner_graph({"class_type": "CLIPVLMLoader", "inputs": {"clip": ["ld", 1]}},
                            region_prompts_json=region_json(4, 6))
    graph["ld"] = {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}}
    return graph


def sampling_graph(patch: dict | None = None, latent: list | None = None, extra: dict | None = None) -> dict:
    """Tiny loader -> (a patch node) -> KSampler (1 step) -> VAEDecode -> PreviewImage."""
    g = {"ld": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}},
         "txt": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["ld", 1]}},
         "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "ks": {"class_type": "KSampler", "inputs": {
             "model": ["patch", 0] if patch else ["ld", 0], "seed": 0, "steps": 1, "cfg": 2.0,
             "sampler_name": "euler", "scheduler": "normal", "positive": ["txt", 0], "negative": ["txt", 0],
             "latent_image": latent or ["lat", 0], "denoise": 1.0}},
         "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ld", 2]}},
         "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}}
    if patch:
        g["patch"] = patch
    return {**g, **(extra or {})}


def tiled(**inputs) -> dict:
    return {"class_type": "TiledBlendedDiffusion", "inputs": {"model": ["ld", 0], "tile_width": 64, "tile_height": 64,
                                                            "overlap": 16, "tiles_per_batch": 4, **inputs}}


def guide(**inputs) -> dict:
    return {"class_type": "LowFreqStructureGuide", "inputs": {
        "model": ["ld", 0], "reference": ["lat", 0], "strength": 1.0, "lowpass": "gaussian", "sigma": 1.0,
        "cutoff": 0.5, "start_percent": 0.0, "end_percent": 1.0, "decay": "constant", **inputs}}


def prior(**inputs) -> dict:
    return {"class_type": "RegionalAttentionPrior", "inputs": {
        "model": ["ld", 0], "low_res_latent": ["nan", 0], "global_conditioning": ["txt", 0], "blocks": "all",
        "resolutions": "1/2 and coarser", "start_percent": 0.0, "end_percent": 1.0, **inputs}}


NAN = float("nan")


def liif_graph(model_name: str, **upscale) -> dict:
    return {"img": {"class_type": "LoadImage", "inputs": {"image": "in_32x32.png"}},
            "ld": {"class_type": "ImplicitUpscaleModelLoader", "inputs": {"model_name": model_name}},
            "up": {"class_type": "ImplicitUpscale", "inputs": {"implicit_model": ["ld", 0], "image": ["img", 0],
                                                               "scale_by": 2.0, "width": 0, "height": 0,
                                                               "tile_size": 64, **upscale}},
            "out": {"class_type": "PreviewImage", "inputs": {"images": ["up", 0]}}}


def region_json(height: int, width: int) -> str:
    from cupscale.captioning.region_prompts import RegionPrompts, to_json
    from cupscale.tiling.grid import region_grid
    grid = region_grid(height, width, 8, 8, 2)
    return to_json(RegionPrompts(grid, tuple("p" for _ in grid.boxes), "g", "", ""))


def hostile_cases(endpoints: dict[str, Endpoint]) -> list[tuple[str, dict, str, list[str]]]:
    """(input, prompt, node, words the answer must hold: the input's name and what to do)."""
    big = "x" * (10 * 1024 * 1024)
    batch = {"rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img", 0], "amount": 64}}}
    huge = liif_graph("tiny.pth", width=16384, height=16384)
    huge["up"]["inputs"]["image"] = ["rep", 0]
    huge.update(batch)
    solid = {"m": {"class_type": "SolidMask", "inputs": {"value": NAN, "width": 64, "height": 64}}}
    nan_latent = {"nan": {"class_type": "LatentMultiply", "inputs": {"samples": ["lat", 0], "multiplier": NAN}}}
    return [
        ("region_prompts_json, malformed", captioner_graph(region_prompts_json="{not json"), "cap",
         ["region_prompts_json", "not valid JSON"]),
        ("region_prompts_json, 10 MB", captioner_graph(region_prompts_json=big), "cap",
         ["region_prompts_json", "characters"]),
        ("region_prompts_json, grid mismatch", captioner_graph(region_prompts_json=region_json(16, 24)), "cap",
         ["region_prompts_json", "tile settings"]),
        ("region_prompts_json, a grid of 10^12 regions", captioner_graph(region_prompts_json=json.dumps(
            {**json.loads(region_json(4, 6)), "grid_in_latent_cells": {"height": 10 ** 6, "width": 10 ** 6,
                                                                       "tile_height": 2, "tile_width": 2,
                                                                       "overlap": 1}})),
         "cap", ["region_prompts_json", "regions but its grid"]),
        ("mask with NaN (SolidMask value NaN)", sampling_graph(tiled(mask=["m", 0]), extra=solid), "patch",
         ["mask", "NaN"]),
        ("mask with inf (SolidMask value inf)", sampling_graph(tiled(mask=["m", 0]), extra={
            "m": {"class_type": "SolidMask", "inputs": {"value": float("inf"), "width": 64, "height": 64}}}), "m",
         ["value"]),
        ("latent with NaN (structure guide's reference)", sampling_graph(guide(reference=["nan", 0]), extra=nan_latent),
         "patch", ["reference", "NaN"]),
        ("latent with NaN (RegionalAttentionPrior's low_res_latent)", sampling_graph(prior(), extra=nan_latent),
         "patch", ["low_res_latent", "NaN"]),
        ("scale to 64 x 16384² (LIIF, 206 GB)", huge, "up", ["megapixels", "GiB", "CUPSCALE_MAX_OUTPUT_MEGAPIXELS"]),
        ("checkpoint truncated", liif_graph("truncated.pth"), "ld", ["model_name", "truncated.pth", "damaged or incomplete"]),
        ("checkpoint of non-tensors", liif_graph("not_tensors.pth"), "ld", ["model_name", "not_tensors.pth"]),
        ("checkpoint not safetensors", liif_graph("text.safetensors"), "ld", ["model_name", "text.safetensors"]),
        ("pickle that runs code", liif_graph("runs_code.pth"), "ld", ["model_name", "runs_code.pth", "not loaded for safety"]),
        ("endpoint_url file://", captioner_graph(endpoint_vlm("file:///etc/passwd")), "vlm",
         ["endpoint_url", "http://"]),
        ("endpoint answers garbage", captioner_graph(endpoint_vlm(endpoints["garbage"].url)), "cap",
         ["endpoint_url", "not JSON"]),
        ("endpoint hangs (timeout_s 1)", captioner_graph(endpoint_vlm(endpoints["hang"].url)), "cap",
         ["timeout_s"]),
        ("dropdown label not an option", sampling_graph(guide(lowpass="bogus")), "patch", ["lowpass", "bogus"]),
        ("NaN sigma (structure guide)", sampling_graph(guide(sigma=NAN)), "patch", ["sigma", "nan", "finite"]),
        ("checkpoint not in the folder", liif_graph("missing.pth"), "ld", ["model_name", "missing.pth"]),
    ]


# ---------------------------------------------------------------- hostile input from the schemas
PLANTED = {"truncated.pth": "truncated", "not_tensors.pth": "of non-tensors", "text.safetensors": "not safetensors",
           "runs_code.pth": "that runs code"}
"""The hostile files build_models plants beside the tiny ones, by what they are."""
WITHOUT_CASES = {"CLIPVLMLoader"}
"""Nodes whose only input is a link no client can make hostile (a CLIP): a base graph, and no cases."""
CHECKED_BEFORE_RUN = {"LocalVLMLoader": "local_model", "CLIPRerank": "clip_model",
                      "SFAControlNetLoader": "controlnet"}
"""Nodes whose validate_inputs names their downloaded file alone (the host files a failed check under every
input named, so a missing download would mark every widget): their other inputs are checked when the run starts."""


def schema_bases() -> dict[str, tuple[dict, str]]:
    """Node type -> (a small graph that runs, the node's id in it): the base of each schema-driven case."""
    lat, img = ["lat", 0], {"class_type": "LoadImage", "inputs": {"image": "in_32x32.png"}}
    composer = {"class_type": "AttentionComposer", "inputs": {"model": ["pr", 0], "clip": ["ld", 1], "weight": 0.5,
                                                              "text": "a walled garden"}}
    xpsr = "checkpoint-300000/{}/diffusion_pytorch_model.safetensors"
    sfa = {"class_type": "SFAControlNetApply", "inputs": {
        "model": ["ld", 0], "positive": ["txt", 0], "negative": ["txt", 0], "low_level": ["txt", 0],
        "sfa_controlnet": ["sfa", 0], "image": ["img", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    sfa_graph = sampling_graph(sfa, extra={"img": img, "sfa": {"class_type": "SFAControlNetLoader", "inputs": {
        "controlnet": xpsr.format("controlnet"), "unet": xpsr.format("unet")}}})
    sfa_graph["ks"]["inputs"].update(positive=["patch", 1], negative=["patch", 2])  # the control rides on these
    repaint = sampling_graph(extra={
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "noised": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": lat, "mask": ["mask", 0]}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "rp": {"class_type": "RePaintSampler", "inputs": {"sampler": ["select", 0], "jump_length": 1,
                                                          "resample_count": 2}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ld", 0], "scheduler": "normal", "steps": 2,
                                                              "denoise": 1.0}},
        "ks": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ld", 0], "add_noise": True, "noise_seed": 0, "cfg": 2.0, "positive": ["txt", 0],
            "negative": ["txt", 0], "sampler": ["rp", 0], "sigmas": ["sigmas", 0], "latent_image": ["noised", 0]}}})
    rerank = {"img": img, "two": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img", 0], "amount": 2}},
              "cr": {"class_type": "CLIPRerank", "inputs": {"images": ["two", 0], "clip_model": "tiny-clip",
                                                            "text": "a photo", "keep": 1}},
              "out": {"class_type": "PreviewImage", "inputs": {"images": ["cr", 0]}}}
    decode = {"lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "dl": {"class_type": "ImplicitDecoderLoader", "inputs": {"decoder_name": "tiny-first-stage.ckpt"}},
              "dec": {"class_type": "ImplicitLatentDecode", "inputs": {"decoder": ["dl", 0], "samples": lat,
                                                                       "width": 64, "height": 64, "tile_size": 64}},
              "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}}
    liif = liif_graph("tiny.pth")
    rope = sampling_graph({"class_type": "DiTPositionExtrapolation", "inputs": {
        "model": ["ld", 0], "method": "yarn", "dype": True, "base_resolution": 32}})  # 4 patches past 2
    rope["ld"]["inputs"]["kind"] = "flux"
    rope["lat"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    return {"TiledBlendedDiffusion": (sampling_graph(tiled()), "patch"),
            "LowFreqStructureGuide": (sampling_graph(guide()), "patch"),
            "RegionalAttentionPrior": (sampling_graph(prior(low_res_latent=lat)), "patch"),
            "AttentionComposer": (sampling_graph(composer, extra={"pr": prior(low_res_latent=lat)}), "patch"),
            "SFAControlNetApply": (sfa_graph, "patch"), "SFAControlNetLoader": (sfa_graph, "sfa"),
            "RePaintSampler": (repaint, "rp"), "CLIPRerank": (rerank, "cr"),
            "MLLMRegionCaptioner": (captioner_graph(), "cap"), "LocalVLMLoader": (captioner_graph(), "vlm"),
            "EndpointVLMLoader": (captioner_graph(endpoint_vlm(), region_prompts_json=region_json(4, 6)), "vlm"),
            "CLIPVLMLoader": (clip_vlm_graph(), "vlm"),
            "ImplicitUpscaleModelLoader": (liif, "ld"), "ImplicitUpscale": (liif, "up"),
            "ImplicitDecoderLoader": (decode, "dl"), "ImplicitLatentDecode": (decode, "dec"),
            "DiTPositionExtrapolation": (rope, "patch")}


@dataclass
class SchemaSuite:
    verdicts: list = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    seconds: float = 0.0


def schema_suite(s, log=print) -> SchemaSuite:
    """Every schema-driven case (harness/hostile_cases.py) over HTTP. After each case that ran, a canary (one of
    two seeds, so the sampler runs again) must give the pixels it gave the first time; the server's memory is
    read before the first case (after each node's base graph has run once: loading code and models is not what
    a failure leaves) and after the last, with ComfyUI's caches freed."""
    from harness import hostile_cases
    from harness.comfy_host import PACK_DIR
    schemas = hostile_cases.pack_schemas(s.get("/object_info"), f"custom_nodes.{PACK_DIR.name}")
    at_run = {node: {name for name, _, _ in hostile_cases.inputs_of(schemas[node])} - {kept}
              for node, kept in CHECKED_BEFORE_RUN.items() if node in schemas}
    all_cases = hostile_cases.cases(schemas, schema_bases(), PLANTED, at_run)
    canaries, first = [sampling_graph(tiled()) for _ in range(2)], {}
    for seed, canary in enumerate(canaries):
        canary["ks"]["inputs"]["seed"] = 1000 + seed
    for graph, _ in schema_bases().values():  # warm-up: each node's code and tiny models loaded once, as in use
        run(s, graph, 120)
    free(s)
    suite, start = SchemaSuite(rss_before=rss(s)), time.perf_counter()
    for i, case in enumerate(all_cases):
        try:
            where, at, message = answer(s, case.prompt)
        except TimeoutError as e:  # stop it, so the cases after it meet an idle queue
            post_only(s, "/interrupt", {})
            where, at, message = "timeout", "", str(e)
        alive = True
        if where != "validation":
            entry = run(s, canaries[i % 2], 120)
            alive = entry["status"]["status_str"] == "success"
            if alive and "out" in entry["outputs"]:  # absent when the host served it from its cache
                image = pixels(output_files(s, entry, "out")[0])
                alive = first.setdefault(i % 2, image) == image
        verdict = hostile_cases.Verdict(case, where, at, message.strip(), alive)
        suite.verdicts.append(verdict)
        if verdict.fault:
            log(f"  {case.name}: {verdict.fault}: {where} at {at}: {message.strip()[:160]}")
    free(s)
    suite.rss_after, suite.seconds = rss(s), time.perf_counter() - start
    return suite


@dataclass
class Fault:
    case: str
    caught: str  # "validation" or "run"
    node: str
    message: str
    named: bool
    alive: bool


def answer(s, prompt: dict) -> tuple[str, str, str]:
    """(where, node, message) for a prompt that must fail: refused by /prompt, or an execution error."""
    try:
        prompt_id = queue(s, prompt)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        node, errors = next(iter(body.get("node_errors", {}).items()), ("", {"errors": [body.get("error", {})]}))
        return "validation", node, " ".join(f"{x.get('details', '')} {x.get('message', '')}" for x in errors["errors"])
    entry = s.wait_history(prompt_id, 120)
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return "run", data["node_id"], f"{data['exception_type']}: {data['exception_message']}"
    return "none", "", entry["status"]["status_str"]


def hostile(s, root: Path, log=print) -> list[Fault]:
    endpoints = {"garbage": Endpoint("garbage"), "hang": Endpoint("hang")}
    canary = sampling_graph(tiled())
    rows = []
    try:
        for case, prompt, node, words in hostile_cases(endpoints):
            where, at, message = answer(s, prompt)
            canary["ks"]["inputs"]["seed"] += 1  # a new prompt, run for real
            alive = run(s, canary, 120)["status"]["status_str"] == "success"
            rows.append(Fault(case, where, at, message.strip(), at == node and all(w in message for w in words), alive))
            log(f"  {case}: {where} at {at}: {message.strip()[:160]}")
    finally:
        for e in endpoints.values():
            e.close()
    rows.append(Fault("(pickle's code never ran)", "-", "-", "", not (root / "PWNED").exists(), True))
    return rows


# ---------------------------------------------------------------- concurrent clients
async def client(url: str, prompt: dict) -> tuple[str, list[str], set[str]]:
    """One websocket client: queue, collect the executed outputs and the prompt ids of every message seen."""
    import aiohttp
    cid = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={cid}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": cid}) as r:
                prompt_id = (await r.json())["prompt_id"]
            files, ids = [], set()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                data = m.get("data", {})
                if "prompt_id" in data:
                    ids.add(data["prompt_id"])
                if m["type"] == "executed":
                    files += [i["filename"] for i in (data.get("output") or {}).get("images", [])]
                if m["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == prompt_id:
                    return prompt_id, files, ids
    return prompt_id, files, ids


def concurrent(s, clients: int = 4) -> list[tuple[str, bool]]:
    """``clients`` clients at once, each its own seed and filename prefix: each must see its own files only."""
    async def all_clients():
        graphs = []
        for i in range(clients):
            g = sampling_graph(tiled())
            g["ks"]["inputs"]["seed"] = 1000 + i
            g["out"] = {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": f"client{i}"}}
            graphs.append(g)
        return await asyncio.gather(*(client(s.url, g) for g in graphs))
    results = asyncio.run(all_clients())
    return [(prompt_id, bool(files) and all(f.startswith(f"client{i}_") for f in files) and ids == {prompt_id})
            for i, (prompt_id, files, ids) in enumerate(results)]


# ---------------------------------------------------------------- tables
def mib(n: int) -> str:
    return f"{n / 2 ** 20:.0f} MiB"


def tables(result: Soak | None, stops: list[Interrupt], faults: list[Fault], clients: list,
           suite: SchemaSuite | None = None) -> str:
    lines = []
    if result:
        growth = result.rss_end - result.rss_warm
        lines += ["| soak | value |", "|---|---|",
                  f"| C-Upscale runs (+ XPSR and MSBD every 10th) | {result.runs} in {result.seconds:.0f} s |",
                  f"| server RSS after warm-up / at the end | {mib(result.rss_warm)} / {mib(result.rss_end)} |",
                  f"| growth | {growth / 2 ** 20:+.1f} MiB |",
                  f"| run 1 = run {result.runs} (same prompt, seed) bitwise | {result.first_equals_last} |",
                  f"| failed runs | {len(result.failures)} |"]
        for name, sizes in result.sizes.items():
            lines.append(f"| {name} output sizes | " + ", ".join(f"{w}x{h} ×{n}" for (w, h), n in sizes.items()) + " |")
        for name, c in {**{k: v for k, v in result.caches.items() if k != "peaks"},
                        **{f"{k} (peak)": v for k, v in result.caches.get("peaks", {}).items()}}.items():
            limit = c.get("max_entries", -1)
            lines.append(f"| {name} | {c['entries']} entries" + (f" (limit {limit})" if limit >= 0 else "")
                         + (f", {c['bytes']} B (limit {c['max_bytes']})" if c.get("max_bytes", -1) >= 0 else "")
                         + " |")
    if stops:
        lines += ["", "| interrupt | phase | node running | rerun bitwise equal | shared model clean | patched clone clean |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {r.phase} | {r.at_node} | {r.rerun_equal} | {r.shared_clean} | {r.patched_clean} |"
                  for i, r in enumerate(stops)]
    if faults:
        lines += ["", "| input | caught | node | message | names the input | server alive after |", "|---|---|---|---|---|---|"]
        lines += [f"| {f.case} | {f.caught} | {f.node} | {f.message[:180].replace('|', '/')} | {f.named} | {f.alive} |"
                  for f in faults]
    if suite:
        from harness.hostile_cases import counts
        lines += ["", "| node | schema-driven cases | short of the contract |", "|---|---|---|"]
        lines += [f"| {node} | {n} | {bad} |" for node, (n, bad) in sorted(counts(suite.verdicts).items())]
        lines += [f"| all, in {suite.seconds:.0f} s | {len(suite.verdicts)} | "
                  f"{sum(v.fault is not None for v in suite.verdicts)} |",
                  "", f"| server RSS before / after the cases (caches freed) | {mib(suite.rss_before)} / "
                  f"{mib(suite.rss_after)} ({(suite.rss_after - suite.rss_before) / 2 ** 20:+.0f} MiB) |"]
    if clients:
        lines += ["", f"| concurrent clients | {len(clients)} | each got only its own results | "
                  f"{all(ok for _, ok in clients)} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--alternate", type=int, default=10)
    ap.add_argument("--interrupts", type=int, default=20)
    ap.add_argument("--skip-faults", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_models(Path(tmp) / "models")
        with server(root, Path(tmp)) as s:
            faults = [] if args.skip_faults else hostile(s, root)
            suite = None if args.skip_faults else schema_suite(s)
            clients = [] if args.skip_faults else concurrent(s)
            stops = interrupts(s, args.interrupts) if args.interrupts else []
            result = soak(s, args.runs, args.alternate) if args.runs else None
            print(tables(result, stops, faults, clients, suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
