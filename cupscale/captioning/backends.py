"""Multimodal LLM backends for :mod:`cupscale.captioning.captioner`: a local transformers model or an endpoint.

Users run captioning models either in-process (a model folder: LLaVA 1.5/NeXT, Qwen2-VL,
Qwen2.5-VL, Idefics3/SmolVLM, ...), behind a local server that speaks the OpenAI chat API
(Ollama, llama.cpp, LM Studio, vLLM), or through an application's own text generation
(:class:`GeneratedText`: ComfyUI's CLIP-loaded Qwen-VL or Gemma). All answer one instruction about each
of a few images.
Errors name the fields ``model_folder`` / ``repo_id`` (the local model's source), ``model_folders``
(where model folders live), ``base_url`` and ``model`` (the endpoint's), and the other settings by
their parameter names. Both take a ``stop`` callable (the host's interrupt check), which raises to end
the work: the local model calls it before each of its layers (so a region's image encoding stops within a
layer, not after it), the endpoint while it waits for replies.
"""
from __future__ import annotations

import base64
import gc
import http.client
import io
import json
import math
import os
import pickle
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

import torch
from PIL import Image

from ..errors import InputError, RunError
from .captioner import CaptionFailure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
API_KEY_ENV = "CUPSCALE_MLLM_API_KEY"
SOURCE_FIELDS = {"folder": "model_folder", "repo_id": "repo_id", "folders": "model_folders"}
STOP_POLL_S = 0.1  # how often the endpoint, waiting on replies, asks ``stop``
Stop = Callable[[], None]
"""Raises to end the work (ComfyUI's interrupt check); returns otherwise."""


class Residency(Protocol):
    """Where a loaded model lives when a host manages memory for all its models (ComfyUI's model management)."""

    def place(self, model: torch.nn.Module, device: torch.device) -> None:
        """``model`` on ``device``, the host's other models unloaded until it fits; the host may move it off again
        when another model needs the room."""

    def drop(self, model: torch.nn.Module) -> None:
        """``model`` no longer the host's to keep: unloaded and forgotten."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: half precision on a GPU (bfloat16 where supported), float32 on the CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise InputError(f"{{dtype}} = {name!r}: choose auto, {', '.join(DTYPES)}.", dtype="dtype")
    return DTYPES[name]


HUB_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
HUB_REPO_ID = re.compile(rf"(?:{HUB_NAME}/)?{HUB_NAME}", re.ASCII)


def hub_repo_id(text: str) -> str:
    """A Hugging Face repository id (``owner/name``), never a path: a model named this way is looked up in the
    hub's cache only, so nothing is read from outside the model folders."""
    repo_id = text.strip()
    if not HUB_REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise InputError(f"{{repo_id}} = {text[:200]!r} is not a Hugging Face repository id (owner/name: letters, "
                         f"digits, '-', '_', '.'). A model on disk goes under {{folders}} and is chosen as "
                         f"{{folder}}.", **SOURCE_FIELDS)
    return repo_id


def vlm_config(source: str, local_files_only: bool, cache_dir: str | None):
    """The model's config, checked to be an image-text-to-text model before any weights are read."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    is_folder = Path(source).is_dir()
    if Path(source).is_absolute() and not is_folder:
        raise InputError(f"{{folder}}: no folder at {source}. Put a transformers model folder (with its "
                         f"config.json) under {{folders}}, or choose another {{folder}}.", **SOURCE_FIELDS)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only, cache_dir=cache_dir)
    except (OSError, ValueError) as e:
        if is_folder:
            raise InputError(f"{{folder}}: {source} is not a transformers model folder ({e}). It needs "
                             f"config.json, the weights, the tokenizer and the processor files.",
                             **SOURCE_FIELDS) from None
        hint = ("enable {allow_download} to fetch it" if local_files_only
                else "check the repository id and your connection")
        raise InputError(f"{{repo_id}}: {source!r} is not in {cache_dir}: {hint}, or put the model folder "
                         f"under {{folders}} and choose it as {{folder}}.", **SOURCE_FIELDS,
                         allow_download="allow_download") from None
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise InputError(f"{{folder}}: {source} holds a {config.model_type!r} model, which cannot look at "
                         f"images. Choose a vision-language model folder (LLaVA, Qwen2-VL, Qwen2.5-VL, SmolVLM, "
                         f"Idefics3, ...).", **SOURCE_FIELDS)
    return config


_parked: dict[tuple, tuple] = {}
"""At most one model offloaded to the CPU (processor, model), reused by the next run that wants it."""


class LocalVLM:
    """A transformers vision-language model: AutoProcessor + AutoModelForImageTextToText.

    The processor's chat template places the image, so every family that ships one works alike;
    regions go through ``generate`` in batches (left-padded), greedy, so answers are repeatable.
    Nothing is downloaded unless ``allow_download``; loading waits until the first uncached call.
    """

    def __init__(self, source: str, device: torch.device, dtype: str = "auto", batch_size: int = 4,
                 allow_download: bool = False, cache_dir: str | None = None, stop: Stop | None = None,
                 residency: Residency | None = None):
        if batch_size < 1:
            raise InputError(f"{{batch_size}} = {batch_size} must be at least 1.", batch_size="batch_size")
        self.source, self.device, self.batch_size = source, torch.device(device), batch_size
        self.dtype = resolve_dtype(dtype, self.device)
        self.allow_download, self.cache_dir, self.stop, self.residency = allow_download, cache_dir, stop, residency
        self.model_id = f"local:{source}:{self.dtype}"
        self.processor = self.model = None

    @property
    def park_key(self) -> tuple:
        return self.source, self.dtype

    def load(self) -> None:
        if self.model is not None:
            return
        if self.park_key in _parked:
            self.processor, self.model = _parked.pop(self.park_key)
            self.model = self.placed(self.model)
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor
        kwargs = {"local_files_only": not self.allow_download, "cache_dir": self.cache_dir}
        vlm_config(self.source, **kwargs)
        processor = AutoProcessor.from_pretrained(self.source, **kwargs)
        if not getattr(processor, "chat_template", None):
            raise InputError(f"{{folder}}: {self.source} has no chat template (chat_template.json or "
                             f"tokenizer_config.json), so the image cannot be placed in the prompt. "
                             f"Use the model's instruct/chat release.", **SOURCE_FIELDS)
        processor.tokenizer.padding_side = "left"
        try:
            model = AutoModelForImageTextToText.from_pretrained(self.source, dtype=self.dtype, **kwargs)
        except pickle.UnpicklingError as e:
            raise InputError(f"{{folder}}: {self.source} holds a weights file that is more than tensors, so it was "
                             f"not loaded ({str(e).split('.')[0][:200]}). Use the model's safetensors release.",
                             **SOURCE_FIELDS) from None
        self.processor, self.model = processor, self.placed(model).eval()

    def placed(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on its device: read to the CPU, it moves once its size is known, through the host where one
        manages memory (room made for it as for the host's own models)."""
        if self.residency is None:
            return model.to(self.device)
        self.residency.place(model, self.device)
        return model

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str]:
        self.load()
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        texts = self.processor.apply_chat_template([chat] * len(images), add_generation_prompt=True)
        inputs = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
        inputs = inputs.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode(), layers_call(self.model, self.stop):
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def release(self, offload: bool) -> None:
        """Free the model's memory, or keep it (``offload``) so the next run skips the disk: on the CPU, or where a
        host manages memory, where the host has it (it moves it to the CPU when another model needs the room)."""
        if self.model is None:
            return
        for _, parked in _parked.values():
            if parked is not self.model:
                self.forget(parked)
        _parked.clear()
        if offload:
            _parked[self.park_key] = (self.processor, self.model if self.residency else self.model.to("cpu"))
        else:
            self.forget(self.model)
        self.processor = self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forget(self, model: torch.nn.Module) -> None:
        if self.residency is not None:
            self.residency.drop(model)


@contextmanager
def layers_call(model: torch.nn.Module, stop: Stop | None):
    """While open, ``stop`` runs before every layer of ``model`` (each module of each ``ModuleList``: the
    vision tower's blocks, the decoder's layers), so its exception ends the work within one layer, in the
    image's encoding and the prompt's prefill as in each token's step. The hooks go when it closes."""
    if stop is None:
        yield
        return
    hooks = [layer.register_forward_pre_hook(lambda module, args: stop())
             for layers in model.modules() if isinstance(layers, torch.nn.ModuleList) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


MAX_URL_CHARS = 2048


def chat_completions_url(base_url: str) -> str:
    """``http://host:port/v1`` (as Ollama, llama.cpp, LM Studio and vLLM print it) -> its chat URL."""
    url = base_url.strip().rstrip("/")
    if len(url) > MAX_URL_CHARS:
        raise InputError(f"{{base_url}} holds {len(url):,} characters; a server's address needs far fewer (at most "
                         f"{MAX_URL_CHARS:,}), e.g. http://127.0.0.1:11434/v1.", base_url="base_url")
    bad = next((i for i, c in enumerate(url) if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        raise InputError(f"{{base_url}} = {url[:100]!r} has {url[bad]!r} at position {bad}: a URL holds no spaces or "
                         f"control characters. Set it to the server's address, e.g. http://127.0.0.1:11434/v1.",
                         base_url="base_url")
    if not url.startswith(("http://", "https://")) or not urllib.parse.urlsplit(url).hostname:
        raise InputError(f"{{base_url}} = {base_url!r} must start with http:// or https:// and name a host "
                         f"(e.g. http://127.0.0.1:11434/v1 for Ollama).", base_url="base_url")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def data_url(image: Image.Image) -> str:
    """PNG, not JPEG: compression artifacts would be judged as the image's own degradations."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_completion(body: bytes, url: str) -> dict:
    """The JSON of a 200 reply. Anything else is no transfer error to retry but a server that does not speak
    the OpenAI API there (a web page, another service, a proxy's error page): say so at once."""
    try:
        return json.loads(body)
    except ValueError as e:
        raise RunError(f"the endpoint {url} answered with something that is not JSON ({type(e).__name__}: {e}; "
                       f"it begins {body[:60]!r}). Set {{base_url}} to an OpenAI-compatible server's /v1 and "
                       f"{{model}} to a model it serves.", base_url="base_url", model="model") from None


def reply_text(reply: dict) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise CaptionFailure(f"the reply has no choices[0].message.content: {str(reply)[:200]}") from None
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def error_detail(error: urllib.error.HTTPError) -> str:
    body = error.read(2000).decode("utf-8", "replace")
    try:
        message = json.loads(body)["error"]
        return message.get("message", str(message)) if isinstance(message, dict) else str(message)
    except (ValueError, KeyError, TypeError):
        return body.strip() or error.reason


RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


MAX_TIMEOUT_S, MAX_RETRIES, MAX_IN_FLIGHT, MAX_MODEL_CHARS = 3600.0, 10, 32, 256


class OpenAIEndpoint:
    """POST /v1/chat/completions with the image as a base64 data URL, one image per request.

    Up to ``in_flight`` requests are open at once: servers such as vLLM, llama.cpp and Ollama batch the
    requests they hold. Answers keep the order of the images. Each request has a timeout; timeouts, dropped
    connections and busy/server errors are retried a bounded number of times with growing pauses, each
    request on its own, and a request that still fails fails its image only. A request the server rejects
    (a wrong model name, a model without vision) is not retried: it raises at once with the server's message.
    """

    def __init__(self, base_url: str, model: str, timeout_s: float = 120.0, retries: int = 2,
                 backoff_s: float = 0.5, in_flight: int = 1, stop: Stop | None = None):
        if not model.strip() or len(model) > MAX_MODEL_CHARS or not model.strip().isprintable():
            raise InputError(f"{{model}} = {model[:100]!r}: set the model name the server serves, one line of at "
                             f"most {MAX_MODEL_CHARS} characters (e.g. from `ollama list` or the server's "
                             f"/v1/models).", model="model")
        if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
            raise InputError(f"{{timeout_s}} = {timeout_s} must be a number of seconds above 0 and at most "
                             f"{MAX_TIMEOUT_S:g}.", timeout_s="timeout_s")
        if not 0 <= retries <= MAX_RETRIES:
            raise InputError(f"{{retries}} = {retries} must be from 0 to {MAX_RETRIES}.", retries="retries")
        if not 1 <= in_flight <= MAX_IN_FLIGHT:
            raise InputError(f"{{in_flight}} = {in_flight} must be from 1 to {MAX_IN_FLIGHT}: the requests open at "
                             f"once (1 asks one region at a time).", in_flight="in_flight")
        self.url, self.model = chat_completions_url(base_url), model.strip()
        self.timeout_s, self.retries, self.backoff_s, self.stop = timeout_s, retries, backoff_s, stop
        self.batch_size = in_flight  # the captioner hands over this many images per call
        self.model_id = f"endpoint:{self.url}#{self.model}"

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str | CaptionFailure]:
        halted = threading.Event()  # set when ``stop`` ends this call: its requests are not tried again
        if len(images) == 1 and self.stop is None:
            return [self.answer(images[0], instruction, max_tokens, halted)]
        pool = ThreadPoolExecutor(max_workers=min(self.batch_size, len(images)), thread_name_prefix="cupscale-mllm")
        futures = [pool.submit(self.answer, image, instruction, max_tokens, halted) for image in images]
        stopped = True
        try:
            pending = futures
            while pending:
                if self.stop is not None:
                    self.stop()
                pending = wait(pending, timeout=STOP_POLL_S if self.stop else None).not_done
            stopped = False
            return [future.result() for future in futures]
        finally:
            # Stopped: return now; requests already sent end with their own timeout, in their threads, and
            # are not tried again.
            if stopped:
                halted.set()
            pool.shutdown(wait=not stopped, cancel_futures=True)

    def answer(self, image: Image.Image, instruction: str, max_tokens: int,
               halted: threading.Event) -> str | CaptionFailure:
        """The image's answer, or the failure of its request alone (the run's errors still raise)."""
        try:
            return self.ask(image, instruction, max_tokens, halted)
        except CaptionFailure as e:
            return e

    def request(self, image: Image.Image, instruction: str, max_tokens: int) -> urllib.request.Request:
        content = [{"type": "text", "text": instruction}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, "stream": False}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(API_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def ask(self, image: Image.Image, instruction: str, max_tokens: int, halted: threading.Event) -> str:
        request = self.request(image, instruction, max_tokens)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 8.0))
            if halted.is_set():
                raise CaptionFailure("stopped")
            unreachable = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    body = reply.read()
                return reply_text(chat_completion(body, self.url))
            except urllib.error.HTTPError as e:
                if e.code not in RETRYABLE_HTTP:
                    raise RunError(f"the endpoint {self.url} rejected the request (HTTP {e.code}: "
                                   f"{error_detail(e)}). Check {{model}} = {self.model!r} and that "
                                   f"this model accepts images.", model="model") from None
                why = f"HTTP {e.code}: {error_detail(e)}"
            except urllib.error.URLError as e:
                timed_out = isinstance(e.reason, (TimeoutError, socket.timeout))
                why = f"no reply within timeout_s = {self.timeout_s:g} s" if timed_out else str(e.reason)
                unreachable = None if timed_out else why
            except (TimeoutError, socket.timeout):
                why = f"no reply within timeout_s = {self.timeout_s:g} s"
            except (ConnectionError, http.client.HTTPException, ValueError) as e:
                why = f"a broken reply ({type(e).__name__}: {e})"
        if unreachable:
            raise RunError(f"could not reach the endpoint at {self.url} ({unreachable}). Start the server "
                           f"(Ollama, llama.cpp, LM Studio, vLLM) or set {{base_url}} to where it listens.",
                           base_url="base_url")
        raise CaptionFailure(f"{why} after {self.retries + 1} attempts")

    def release(self, offload: bool) -> None:
        """Nothing to free here: the server manages its own memory."""


Generate = Callable[[Image.Image, str, int], str]
"""(image, instruction, max_tokens) -> the model's answer: a text generator that looks at one image."""


class GeneratedText:
    """A VLM that another program runs and loads (ComfyUI's own text generation): one image per call, greedy,
    so answers are repeatable; ``stop`` is asked before each image."""

    batch_size = 1

    def __init__(self, generate: Generate, model_id: str, stop: Stop | None = None):
        self.generate, self.model_id, self.stop = generate, model_id, stop

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str]:
        answers = []
        for image in images:
            if self.stop is not None:
                self.stop()
            answers.append(self.generate(image, instruction, max_tokens))
        return answers

    def release(self, offload: bool) -> None:
        """Nothing to free here: the program that runs the model manages its memory."""
