"""The endpoint backend (cupscale.captioning.backends.OpenAIEndpoint) in the core alone: against a real
OpenAI-compatible server (``transformers serve`` with a tiny LLaVA), requests in flight together, answers in
image order, each request retried on its own; inputs refused with errors naming them."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_vlms
from cupscale.captioning import backends
from cupscale.captioning.backends import MAX_IN_FLIGHT, LocalVLM, OpenAIEndpoint, hub_repo_id
from cupscale.captioning.cache import CaptionCache
from cupscale.captioning.captioner import CaptionFailure, Captioner
from cupscale.captioning.region_prompts import from_json
from cupscale.captioning.regions import Crop
from cupscale.errors import InputError
from harness.vlm_server import served

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (28 + 4 * i, 28), (37 * i % 256, 90, 200 - 11 * i)) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_vlm(tmp_path_factory):
    """``transformers serve`` on 127.0.0.1 holding a tiny random LLaVA saved as a model folder."""
    folder = tiny_vlms.llava(tmp_path_factory.mktemp("vlm") / "llava")
    with served(folder, free_port(), tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url, str(folder)


def test_a_real_server_answers_every_image_in_order_whatever_is_in_flight(served_vlm):
    url, model = served_vlm
    crops = images(6)
    one = OpenAIEndpoint(url, model, timeout_s=60).caption(crops, "describe the image", 8)
    together = OpenAIEndpoint(url, model, timeout_s=60, in_flight=4).caption(crops, "describe the image", 8)
    assert all(isinstance(t, str) and t.strip() for t in one)
    assert together == one  # greedy answers: the same text for each image, in the images' order
    assert len(set(one)) > 1  # the images differ, and so do their answers: the order is checked


class CountingServer(BaseHTTPRequestHandler):
    """/v1/chat/completions that answers with the image's width after a pause that shrinks with it (so later
    images finish first), counts requests open at once, and fails the first try of 32 px wide images."""

    open_now = peak = 0
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = body["messages"][0]["content"][1]["image_url"]["url"]
        width = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size[0]
        cls = CountingServer
        with cls.lock:
            cls.open_now += 1
            cls.peak = max(cls.peak, cls.open_now)
            cls.tries[width] = cls.tries.get(width, 0) + 1
            first_try = cls.tries[width] == 1
        time.sleep(0.05 * (60 - width) / 4)
        with cls.lock:
            cls.open_now -= 1
        if width == 32 and first_try:
            return self.reply(503, {"error": {"message": "busy"}})
        if width == 36:
            return self.reply(500, {"error": {"message": "out of memory"}})
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": f"w{width}"}}]})

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
def counting():
    CountingServer.open_now = CountingServer.peak = 0
    CountingServer.tries = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), CountingServer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("in_flight", [1, 3, 8])
def test_requests_in_flight_are_bounded_answered_in_order_and_retried_each_on_its_own(counting, in_flight):
    crops = images(8)  # widths 28, 32, ..., 56
    out = OpenAIEndpoint(counting, "vlm", retries=1, backoff_s=0.01, in_flight=in_flight).caption(crops, "x", 4)
    assert [o for o in out if isinstance(o, str)] == [f"w{w}" for w in range(28, 60, 4) if w != 36]
    failed = out[2]  # 36 px: a server error on both tries fails this image alone
    assert isinstance(failed, CaptionFailure) and "HTTP 500: out of memory after 2 attempts" in str(failed)
    assert CountingServer.tries[32] == 2 and CountingServer.tries[28] == 1  # a busy reply is retried by itself
    assert CountingServer.peak == min(in_flight, 8)


def test_the_captioner_gives_each_region_its_own_answer_or_failure(counting):
    endpoint = OpenAIEndpoint(counting, "vlm", retries=1, backoff_s=0.01, in_flight=4)
    captioner = Captioner(endpoint, CaptionCache(64), max_tokens=4)
    crops = [Crop((0, 0, image.size[1], image.size[0]), np.asarray(image)) for image in images(8)]
    answers = captioner.answer([(crop, "x") for crop in crops])
    assert [a.text for a in answers] == [f"w{w}" if w != 36 else "" for w in range(28, 60, 4)]
    assert "HTTP 500" in answers[2].error and captioner.model_calls == 2  # 8 regions, 4 in flight per call
    assert CountingServer.peak == 4


@pytest.mark.parametrize("kw, field, match", [
    ({"base_url": "http://127.0.0.1:11434/v1\x00"}, "base_url", r"has '\\x00' at position 25"),
    ({"base_url": "http://127.0.0.1:11434/v1\nHost: x"}, "base_url", r"has '\\n' at position 25"),
    ({"base_url": "http://" + "a" * 5_000_000}, "base_url", r"holds 5,000,007 characters"),
    ({"base_url": "http:///v1"}, "base_url", r"must start with http:// or https:// and name a host"),
    ({"base_url": "file:///etc/passwd"}, "base_url", r"must start with http://"),
    ({"model": ""}, "model", r"set the model name"),
    ({"model": "a\nb"}, "model", r"one line"),
    ({"model": "m" * 5_000_000}, "model", r"at most 256 characters"),
    ({"timeout_s": math.nan}, "timeout_s", r"= nan must be a number of seconds above 0"),
    ({"timeout_s": math.inf}, "timeout_s", r"= inf must be"),
    ({"timeout_s": 0.0}, "timeout_s", r"= 0.0 must be"),
    ({"timeout_s": 1e9}, "timeout_s", r"at most 3600"),
    ({"retries": -1}, "retries", r"from 0 to 10"),
    ({"retries": 11}, "retries", r"from 0 to 10"),
    ({"in_flight": 0}, "in_flight", r"from 1 to 32"),
    ({"in_flight": MAX_IN_FLIGHT + 1}, "in_flight", r"from 1 to 32"),
])
def test_endpoint_settings_are_refused_naming_the_field(kw, field, match):
    args = {"base_url": "http://127.0.0.1:11434/v1", "model": "vlm", **kw}
    with pytest.raises(InputError, match=match) as e:
        OpenAIEndpoint(**args)
    assert "THE_WIDGET" in e.value.named({field: "THE_WIDGET"})


@pytest.mark.parametrize("text", ["/etc/passwd", "../models/x", "..", "C:\\models\\x", "a/b/c", "~/x",
                                  "owner/na me", "owner/name\x00", "-owner/name", "owner--x/name", "ówner/name", ""])
def test_a_repo_id_is_never_a_path(text):
    with pytest.raises(InputError, match="is not a Hugging Face repository id") as e:
        hub_repo_id(text)
    assert "hf_repo_id" in e.value.named({"repo_id": "hf_repo_id"})


@pytest.mark.parametrize("text", ["llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2.5-VL-3B-Instruct", "gpt2", " a.b/c_d "])
def test_repo_ids_pass(text):
    assert hub_repo_id(text) == text.strip()


def test_region_prompts_json_nested_10000_deep_names_the_input():
    with pytest.raises(ValueError, match=r"region_prompts_json nests lists or objects thousands deep"):
        from_json("[" * 10_000 + "]" * 10_000)


def test_a_harmful_pickle_in_a_model_folder_is_refused_naming_the_folder(tmp_path):
    folder = tiny_vlms.llava(tmp_path / "evil")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Harmful:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Harmful()}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"holds a weights file that is more than tensors, so it was not loaded") as e:
        LocalVLM(str(folder), "cpu").load()
    assert "local_model" in e.value.named({"model_folder": "local_model"}) and not marker.exists()


class Interrupted(Exception):
    """What the host's interrupt check raises."""


def stop_after(calls: int):
    """A ``stop`` that raises at its ``calls``-th call; ``stop.count`` counts them."""
    def stop():
        stop.count += 1
        if stop.count >= calls:
            raise Interrupted
    stop.count = 0
    return stop


class SilentServer(BaseHTTPRequestHandler):
    """Takes the request and answers nothing until the test is over."""

    released = threading.Event()

    def do_POST(self):
        SilentServer.released.wait()

    def log_message(self, *args):
        pass


@pytest.fixture
def silent():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SilentServer)
    httpd.daemon_threads = True
    SilentServer.released.clear()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    SilentServer.released.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("n", [1, 3])
def test_an_interrupt_ends_the_wait_on_an_endpoint_that_does_not_answer(silent, n):
    """The queue's interrupt used to wait for every request's timeout (up to an hour, times the retries)."""
    stop = stop_after(5)  # asked every 0.1 s while waiting: raises after about half a second
    endpoint = OpenAIEndpoint(silent, "vlm", timeout_s=10, retries=0, stop=stop, in_flight=3)
    with pytest.raises(Interrupted):  # the server never answers: only the interrupt ends the wait
        endpoint.caption(images(n), "x", 4)
    assert stop.count == 5


def test_an_interrupt_ends_a_local_models_work_within_a_layer_and_leaves_no_hook(tmp_path):
    folder = str(tiny_vlms.llava(tmp_path / "llava"))
    vlm = LocalVLM(folder, "cpu", stop=stop_after(1))
    with pytest.raises(Interrupted):  # before the vision tower's first block: no token was made
        vlm.caption(images(2), "describe the image", 40)
    layers = [m for m in vlm.model.modules() if isinstance(m, torch.nn.ModuleList)]
    assert layers and not any(layer._forward_pre_hooks for m in layers for layer in m)
    for calls in (5, 40):  # in the vision tower, in the decoder's steps
        with pytest.raises(Interrupted):
            LocalVLM(folder, "cpu", stop=stop_after(calls)).caption(images(2), "describe the image", 40)
    never = stop_after(10 ** 6)
    assert LocalVLM(folder, "cpu", stop=never).caption(images(2), "describe the image", 6) == \
        LocalVLM(folder, "cpu").caption(images(2), "describe the image", 6)
    assert never.count > len([layer for m in layers for layer in m])  # every layer, every step
    assert not any(layer._forward_pre_hooks for m in layers for layer in m)


class Busy(BaseHTTPRequestHandler):
    """Answers "busy" (503, which the endpoint retries) after 0.5 s, counting the requests."""

    requests = 0

    def do_POST(self):
        Busy.requests += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.5)
        CountingServer.reply(self, 503, {"error": {"message": "busy"}})

    def log_message(self, *args):
        pass


def test_requests_a_stop_left_behind_are_not_tried_again():
    Busy.requests = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        endpoint = OpenAIEndpoint(url, "vlm", timeout_s=30, retries=5, backoff_s=0.01, in_flight=2, stop=stop_after(2))
        with pytest.raises(Interrupted):
            endpoint.caption(images(2), "x", 4)
        time.sleep(1.5)  # the two requests sent get their "busy" at 0.5 s; without the stop each would go again
        assert Busy.requests == 2
        assert OpenAIEndpoint(url, "vlm", retries=1, backoff_s=0.01).caption(images(1), "x", 4)[0].args[0] == \
            "HTTP 503: busy after 2 attempts"  # the same server, a call that was not stopped: retried
        assert Busy.requests == 4
    finally:
        httpd.shutdown()
        httpd.server_close()


class Recorded:
    """A Residency that records what the host is asked: where each model is placed (and where its weights were
    then), and which are dropped."""

    def __init__(self):
        self.asked = []

    def place(self, model, device):
        self.asked.append(("place", next(model.parameters()).device.type, device.type))

    def drop(self, model):
        self.asked.append(("drop", model))


def test_a_managed_local_model_is_placed_kept_and_dropped_through_its_host(tmp_path):
    """With a host managing memory, the model read to the CPU (its size known) is handed to the host to place on
    its device; kept after use (``offload``) it stays where the host has it; freed, or replaced in the one place
    kept, it is dropped through the host."""
    folder = str(tiny_vlms.llava(tmp_path / "llava"))
    host = Recorded()
    vlm = LocalVLM(folder, torch.device("meta"), dtype="float32", residency=host)
    vlm.load()
    model = vlm.model
    assert host.asked == [("place", "cpu", "meta")]
    vlm.release(offload=True)
    (_, kept), = backends._parked.values()
    assert kept is model and next(kept.parameters()).device.type == "cpu"  # not moved behind the host's back
    vlm.load()
    assert vlm.model is model and host.asked[-1] == ("place", "cpu", "meta")
    vlm.release(offload=False)
    assert host.asked[-1] == ("drop", model) and not backends._parked
    vlm.load()
    first = vlm.model
    vlm.release(offload=True)
    other = LocalVLM(folder, torch.device("meta"), dtype="float16", residency=host)
    other.load()
    other.release(offload=True)  # the one place kept goes to the other model: the first is dropped
    assert host.asked[-1] == ("drop", first) and len(backends._parked) == 1
    backends._parked.clear()
