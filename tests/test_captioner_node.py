"""MLLMRegionCaptioner in a real ComfyUI: tiny local VLMs, an OpenAI-compatible test server, the JSON loop."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

import tiny_vlms
from host_helpers import pack_module
from cupscale.captioning.instructions import XPSR_HIGH_LEVEL, XPSR_LOW_LEVEL
from harness.comfy_host import PromptError, run_prompt

H, W, TILE, OVERLAP = 112, 144, 64, 16  # a 2x3 grid of regions


@pytest.fixture(scope="module")
def llm_dir(host, tmp_path_factory):
    """A models/LLM folder holding tiny LLaVA-, Qwen2-VL- and Idefics3-like VLMs and a text-only model."""
    import folder_paths
    root = tmp_path_factory.mktemp("LLM")
    tiny_vlms.llava(root / "tiny-llava")
    tiny_vlms.qwen2_vl(root / "org" / "tiny-qwen2-vl")
    tiny_vlms.idefics3(root / "tiny-idefics3")
    tiny_vlms.text_only(root / "tiny-llama")
    (root / "weights-only").mkdir()
    folder_paths.add_model_folder_path("LLM", str(root))
    return root




@pytest.fixture
def backends(host):
    return pack_module(host, "cupscale.captioning.backends")


@pytest.fixture
def from_json(host):
    return pack_module(host, "cupscale.captioning.region_prompts").from_json


@pytest.fixture(autouse=True)
def fresh_cache(host, backends):
    """No captions cached, no model kept (and none left in ComfyUI's list of loaded models) between tests."""
    def forget_kept():
        for _, model in backends._parked.values():
            pack_module(host, "nodes.vlm").MODEL_MANAGEMENT.drop(model)
        backends._parked.clear()
    pack_module(host, "cupscale.captioning.cache").CACHE.clear()
    forget_kept()
    yield
    forget_kept()


@pytest.fixture
def model_calls(backends, monkeypatch):
    """The number of images in each call of a local model."""
    calls = []
    original = backends.LocalVLM.caption
    monkeypatch.setattr(backends.LocalVLM, "caption",
                        lambda self, images, *a: calls.append(len(images)) or original(self, images, *a))
    return calls


@pytest.fixture
def load_vlm(pack_node):
    """The VLM value a loader node gives: a Local VLM Loader (tiny LLaVA on the CPU, unloaded after use) or,
    with ``endpoint_url``, an Endpoint VLM Loader (one request at a time)."""
    def load(**kw):
        if "endpoint_url" in kw:
            return pack_node("EndpointVLMLoader").execute(**{"in_flight": 1, **kw}).args[0]
        return pack_node("LocalVLMLoader").execute(**{"local_model": "tiny-llava", "device": "cpu",
                                                      "after_use": "unload", **kw}).args[0]
    return load


@pytest.fixture
def captioner(pack_node, load_vlm):
    node = pack_node("MLLMRegionCaptioner")

    def caption(image=None, vlm="tiny-llava", **kw):
        """``vlm``: a loader's value, or a model folder's name for the Local VLM Loader."""
        args = dict(tile_width=TILE, tile_height=TILE, overlap=OVERLAP, region_prompts="description (C-Upscale)",
                    xpsr_descriptions=False, max_tokens=8, on_region_failure="use global prompt",
                    global_prompt="a walled garden")
        args.update(kw)
        return node.caption(noise_image() if image is None else image, **args,
                            vlm=load_vlm(local_model=vlm) if isinstance(vlm, str) else vlm)
    return caption


def noise_image(seed=0, h=H, w=W):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def assert_structure(prompts, grid_len=6):
    assert len(prompts.prompts) == len(prompts.grid) == grid_len
    assert prompts.global_prompt == "a walled garden"
    assert all(isinstance(p, str) and p.strip() for p in prompts.prompts)


def captioner_prompt(color: int, vlm: dict | None = None, **inputs) -> dict:
    """An API prompt: a plain W x H image -> MLLMRegionCaptioner (given a Local VLM Loader on the CPU, or the
    loader node ``vlm``) -> its JSON shown."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": 1, "color": color}},
        "4": vlm or {"class_type": "LocalVLMLoader", "inputs": {"local_model": "tiny-llava", "device": "cpu",
                                                               "after_use": "unload"}},
        "2": {"class_type": "MLLMRegionCaptioner", "inputs": {
            "image": ["1", 0], "vlm": ["4", 0], "tile_width": TILE, "tile_height": TILE, "overlap": OVERLAP,
            **inputs}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


def test_local_llava_runs_in_a_graph_and_gives_one_prompt_per_region(llm_dir, host, from_json):
    prompt = captioner_prompt(0x336699, region_prompts="description + tags", xpsr_descriptions=True, max_tokens=6,
                              on_region_failure="use global prompt", global_prompt="a walled garden")
    out = run_prompt(prompt)
    prompts = from_json(out["outputs"]["3"]["text"][0])
    assert_structure(prompts)
    assert prompts.grid == host_tile_grid(host, H, W, TILE, OVERLAP)
    assert prompts.high_level and prompts.low_level  # the tiny LLaVA with this seed does answer


def test_model_folders_in_models_llm_are_the_choices(llm_dir, host):
    choices = host.NODE_CLASS_MAPPINGS["LocalVLMLoader"].INPUT_TYPES()["required"]["local_model"][1]["options"]
    assert {"tiny-llava", "org/tiny-qwen2-vl", "tiny-idefics3", "tiny-llama"} <= set(choices)
    assert "weights-only" not in choices and "org" not in choices


def host_tile_grid(host, h, w, tile, overlap):
    """The grid TiledBlendedDiffusion itself builds for a latent of this image (read off its patch)."""
    from harness import tiny_models
    import comfy.patcher_extension
    patched = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]().execute(tiny_models.tiny_model("sd15"), tile, tile,
                                                                       overlap, 4)[0]
    wrappers = patched.wrappers[comfy.patcher_extension.WrappersMP.APPLY_MODEL]
    patch = next(iter(wrappers.values()))[0].__self__
    return patch.grid((h // 8, w // 8))[0]


@pytest.mark.parametrize("model", ["tiny-llava", "org/tiny-qwen2-vl", "tiny-idefics3"])
def test_local_models_batch_regions_and_free_the_model(llm_dir, captioner, load_vlm, model_calls, backends, from_json,
                                                      model):
    prompts, text, high, low = captioner(vlm=load_vlm(local_model=model, batch_size=4))
    assert_structure(prompts)
    assert model_calls == [4, 2] and high == low == ""
    assert from_json(text) == prompts
    assert not backends._parked


def test_second_identical_run_asks_nothing_and_a_new_instruction_asks_again(llm_dir, captioner, load_vlm,
                                                                            model_calls):
    calls, vlm = model_calls, load_vlm(batch_size=6)
    first = captioner(vlm=vlm)[0]
    assert calls == [6]
    again = captioner(vlm=vlm, prefix="photo")[0]
    assert calls == [6] and again.prompts == tuple(f"photo, {p}" if p != first.global_prompt else p
                                                   for p in first.prompts)
    captioner(vlm=vlm, description_instruction="Name the main object.")
    assert calls == [6, 6]


def test_offload_keeps_the_model_on_the_cpu_for_the_next_run(llm_dir, captioner, load_vlm, backends, monkeypatch):
    captioner(vlm=load_vlm(after_use="offload to CPU"))
    (key, (processor, model)), = backends._parked.items()
    assert key[0].endswith("tiny-llava") and next(model.parameters()).device.type == "cpu"
    monkeypatch.setattr(backends, "vlm_config", lambda *a, **k: pytest.fail("read the model from disk again"))
    captioner(image=noise_image(1))
    assert not backends._parked


def test_grid_matches_tiled_diffusion_and_json_feeds_back_in(llm_dir, host, captioner, from_json):
    prompts, text, *_ = captioner()
    doc = json.loads(text)
    doc["regions"][4]["prompt"] = "a red door in an ivy wall"
    doc["xpsr_high_level"] = "edited summary"
    fed, text2, high, _ = captioner(region_prompts_json=json.dumps(doc), vlm=None)
    assert fed.prompts[4] == "a red door in an ivy wall" and fed.prompts[:4] == prompts.prompts[:4]
    assert high == "edited summary" and from_json(text2) == fed
    fed.check_grid(host_tile_grid(host, H, W, TILE, OVERLAP), "TiledBlendedDiffusion's tiles")
    with pytest.raises(ValueError, match=r"was made for 2x3 tiles .* but TiledBlendedDiffusion's tiles uses 2x2"):
        fed.check_grid(host_tile_grid(host, H, W, 96, OVERLAP), "TiledBlendedDiffusion's tiles")
    with pytest.raises(ValueError, match=r"region prompts .* was made for 2x3 tiles .* this node's image \(144x112\) "
                                         r"and tile settings uses 2x2 tiles"):
        captioner(region_prompts_json=text, tile_width=96, tile_height=96)


@pytest.mark.parametrize("loader,kw,match", [
    ("local", dict(local_model="missing"), r"local_model = 'missing': no such model folder"),
    ("local", dict(local_model="weights-only"), r"weights-only is not a transformers model folder"),
    ("local", dict(local_model="tiny-llama"), r"holds a 'llama' model, which cannot look at images"),
    ("local", dict(hf_repo_id="someone/some-vlm"), r"hf_repo_id: 'someone/some-vlm' is not in .*enable allow_download"),
    ("local", dict(hf_repo_id="/etc/passwd"), r"hf_repo_id = '/etc/passwd' is not a Hugging Face repository id"),
    ("captioner", dict(tile_width=100), r"tile_width = 100: tiles must be at least 64 pixels and a multiple of 8"),
    ("endpoint", dict(endpoint_model=""), r"endpoint_model = '': set the model name the server serves"),
    ("endpoint", dict(endpoint_model="m", endpoint_url="localhost:1234"), r"endpoint_url = .* must start with http://"),
    ("endpoint", dict(endpoint_model="m", endpoint_url="http://a\x00b/v1"), r"endpoint_url = .* has '\\x00'"),
    ("endpoint", dict(endpoint_model="m", in_flight=33), r"in_flight = 33 must be a finite number from 1 to 32"),
])
def test_bad_settings_are_named(llm_dir, captioner, load_vlm, loader, kw, match):
    """A loader's own settings fail at the loader (or, for the folder's contents, at the first caption)."""
    with pytest.raises(ValueError, match=match):
        if loader == "captioner":
            captioner(**kw)
        else:
            captioner(vlm=load_vlm(**kw, **({"endpoint_url": "http://127.0.0.1:9/v1"} if loader == "endpoint"
                                             and "endpoint_url" not in kw else {})))


def test_bad_model_choice_fails_the_graph_with_the_message(llm_dir):
    prompt = captioner_prompt(0, region_prompts="description (C-Upscale)", xpsr_descriptions=False, max_tokens=4,
                              on_region_failure="stop with an error")
    prompt["4"]["inputs"]["local_model"] = "tiny-llama"
    with pytest.raises(PromptError, match="MLLMRegionCaptioner.*cannot look at images"):
        run_prompt(prompt)


def test_a_prompt_saved_before_the_loaders_fails_saying_what_to_change(llm_dir):
    """The captioner's old inputs (backend, local_model, ...) and no vlm: the run stops at the captioner with
    what to add and where each old setting goes; the host ignores the inputs it no longer declares."""
    prompt = captioner_prompt(0, region_prompts="description (C-Upscale)", xpsr_descriptions=False, max_tokens=4,
                              on_region_failure="stop with an error", backend="local model",
                              local_model="tiny-llava", endpoint_url="", endpoint_model="", device="cpu")
    del prompt["4"], prompt["2"]["inputs"]["vlm"]
    with pytest.raises(PromptError, match=r"MLLMRegionCaptioner.*vlm: not connected.*Local VLM Loader.*"
                                          r"local_model, hf_repo_id, device.*Endpoint VLM Loader"):
        run_prompt(prompt)


def test_one_loader_serves_both_stages_and_reads_the_model_once(llm_dir, backends, from_json, monkeypatch):
    """A two-stage graph: one Local VLM Loader (offload to CPU) feeds two captioners of different images; the
    model folder is read once and both stages are captioned."""
    reads = []
    monkeypatch.setattr(backends, "vlm_config", lambda *a, original=backends.vlm_config, **k:
                        reads.append(a[0]) or original(*a, **k))
    prompt = captioner_prompt(0x336699, vlm={"class_type": "LocalVLMLoader", "inputs": {
        "local_model": "tiny-llava", "device": "cpu", "after_use": "offload to CPU"}},
        region_prompts="description (C-Upscale)", xpsr_descriptions=False, max_tokens=4,
        on_region_failure="use global prompt", global_prompt="a walled garden")
    prompt["5"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                          "width": W * 2, "height": H * 2, "crop": "disabled"}}
    prompt["6"] = {**prompt["2"], "inputs": {**prompt["2"]["inputs"], "image": ["5", 0]}}
    prompt["7"] = {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}}
    out = run_prompt(prompt)
    first, second = (from_json(out["outputs"][n]["text"][0]) for n in ("3", "7"))
    assert len(first.prompts) == 6 and len(second.prompts) > 6
    assert len(reads) == 1 and len(backends._parked) == 1


class FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions whose behaviour is chosen by the model name."""

    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, **body})
        model = body["model"]
        if model == "slow":
            time.sleep(1.5)
        if model == "broken":
            return self.reply(500, {"error": {"message": "CUDA out of memory"}})
        if model == "missing":
            return self.reply(404, {"error": {"message": "model 'missing' not found, try pulling it first"}})
        content = body["messages"][0]["content"]
        image = Image.open(io.BytesIO(base64.b64decode(content[1]["image_url"]["url"].split(",", 1)[1])))
        answer = f" {content[0]['text'][:6]}\n{image.size[0]}x{image.size[1]} "  # cleaned to one line
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def reply(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeOpenAI.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def endpoint(load_vlm):
    """An Endpoint VLM Loader's value for the test server (model name, then the loader's other widgets)."""
    return lambda url, model="vlm", **kw: load_vlm(endpoint_url=url, endpoint_model=model, **kw)


def test_endpoint_sends_png_crops_and_caches(server, captioner, endpoint):
    prompts, _, high, low = captioner(vlm=endpoint(server), xpsr_descriptions=True, max_tokens=33)
    assert_structure(prompts)
    assert prompts.prompts[0] == "Descri 64x64" and high == "Please 144x112" and low == "Please 144x112"
    sent = FakeOpenAI.requests
    assert len(sent) == 6 + 2 and {r["path"] for r in sent} == {"/v1/chat/completions"}
    assert {r["max_tokens"] for r in sent} == {33} and {r["model"] for r in sent} == {"vlm"}
    assert {r["messages"][0]["content"][0]["text"] for r in sent[6:]} == {XPSR_HIGH_LEVEL, XPSR_LOW_LEVEL}
    assert all(r["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,") for r in sent)
    captioner(vlm=endpoint(server), xpsr_descriptions=True, max_tokens=33, prefix="x")
    assert len(FakeOpenAI.requests) == 8


def test_endpoint_timeout_is_retried_a_bounded_number_of_times(server, captioner, endpoint):
    with pytest.raises(RuntimeError, match=r"no reply within timeout_s = 1 s after 2 attempts"):
        captioner(vlm=endpoint(server, "slow", timeout_s=1.0, retries=1), on_region_failure="stop with an error",
                  tile_width=256, tile_height=256)
    assert len(FakeOpenAI.requests) == 2


def test_endpoint_server_error_falls_back_to_global_prompt_with_warning(server, captioner, caplog, endpoint):
    prompts, *_ = captioner(vlm=endpoint(server, "broken", retries=1))
    assert prompts.prompts == ("a walled garden",) * 6
    assert len(FakeOpenAI.requests) == 12  # 6 regions x (1 try + 1 retry)
    assert "6 of 6 regions got no caption" in caplog.text and "HTTP 500: CUDA out of memory" in caplog.text


def test_endpoint_rejection_is_not_retried_and_names_the_model(server, captioner, endpoint):
    with pytest.raises(RuntimeError, match=r"rejected the request \(HTTP 404: model 'missing' not found.*"
                                           r"endpoint_model = 'missing'"):
        captioner(vlm=endpoint(server, "missing", retries=3))
    assert len(FakeOpenAI.requests) == 1


def test_unreachable_endpoint_says_what_to_set(captioner, endpoint):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but never listening: connections are refused
        with pytest.raises(RuntimeError, match=rf"could not reach the endpoint at http://127.0.0.1:{port}/v1/chat/"
                                               r"completions .*set endpoint_url"):
            captioner(vlm=endpoint(f"http://127.0.0.1:{port}", retries=0))


def held_models() -> list:
    """The transformers models ComfyUI's model management holds as loaded (nodes.vlm.HeldModel)."""
    import comfy.model_management
    return [m.model.held for m in comfy.model_management.loaded_models() if hasattr(m.model, "held")]


def test_a_local_vlm_is_one_of_comfyuis_loaded_models_both_ways(llm_dir, host, captioner, load_vlm, backends):
    """Loaded by the Local VLM Loader, the model is in ComfyUI's list of loaded models (so loading it unloads
    others until it fits); a model loaded after it that needs the room unloads it as ComfyUI unloads its own
    (free_memory, what load_models_gpu calls); the next captioner places it again and answers alike; freed after
    use ("unload"), the host holds it no more."""
    import comfy.model_management
    first = captioner(vlm=load_vlm(after_use="offload to CPU"))[0]
    (_, model), = backends._parked.values()
    assert held_models() == [model]
    comfy.model_management.free_memory(1e30, torch.device("cpu"))  # a diffusion model wanting every byte
    assert held_models() == []
    pack_module(host, "cupscale.captioning.cache").CACHE.clear()
    again = captioner(vlm=load_vlm(after_use="unload"))[0]
    assert again == first and held_models() == [] and not backends._parked
