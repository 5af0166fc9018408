"""Multimodal LLM backends for :mod:`cupscale.captioning.captioner`: a local transformers model or an endpoint.

Users run captioning models either in-process (a model folder: LLaVA 1.5/NeXT, Qwen2-VL,
Qwen2.5-VL, Idefics3/SmolVLM, ...) or behind a local server that speaks the OpenAI chat API
(Ollama, llama.cpp, LM Studio, vLLM). Both answer one instruction about each of a few images.
Errors name the fields ``model_folder`` / ``repo_id`` (the local model's source), ``model_folders``
(where model folders live), ``base_url`` and ``model`` (the endpoint's), and the other settings by
their parameter names.
"""
from __future__ import annotations

import base64
import gc
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError, RunError
from .captioner import CaptionFailure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
API_KEY_ENV = "CUPSCALE_MLLM_API_KEY"
SOURCE_FIELDS = {"folder": "model_folder", "repo_id": "repo_id", "folders": "model_folders"}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: half precision on a GPU (bfloat16 where supported), float32 on the CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise InputError(f"{{dtype}} = {name!r}: choose auto, {', '.join(DTYPES)}.", dtype="dtype")
    return DTYPES[name]


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
                 allow_download: bool = False, cache_dir: str | None = None):
        if batch_size < 1:
            raise InputError(f"{{batch_size}} = {batch_size} must be at least 1.", batch_size="batch_size")
        self.source, self.device, self.batch_size = source, torch.device(device), batch_size
        self.dtype = resolve_dtype(dtype, self.device)
        self.allow_download, self.cache_dir = allow_download, cache_dir
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
            self.model.to(self.device)
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
        model = AutoModelForImageTextToText.from_pretrained(self.source, dtype=self.dtype, **kwargs)
        self.processor, self.model = processor, model.to(self.device).eval()

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str]:
        self.load()
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        texts = self.processor.apply_chat_template([chat] * len(images), add_generation_prompt=True)
        inputs = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
        inputs = inputs.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def release(self, offload: bool) -> None:
        """Free the model's memory, or move it to the CPU (``offload``) so the next run skips the disk."""
        if self.model is None:
            return
        if offload:
            _parked.clear()
            _parked[self.park_key] = (self.processor, self.model.to("cpu"))
        self.processor = self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def chat_completions_url(base_url: str) -> str:
    """``http://host:port/v1`` (as Ollama, llama.cpp, LM Studio and vLLM print it) → its chat URL."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{{base_url}} = {base_url!r} must start with http:// or https:// "
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


class OpenAIEndpoint:
    """POST /v1/chat/completions with the image as a base64 data URL, one image per request.

    Each request has a timeout; timeouts, dropped connections and busy/server errors are retried a
    bounded number of times with growing pauses. A request the server rejects (a wrong model name,
    a model without vision) is not retried: it raises at once with the server's message.
    """

    batch_size = 1

    def __init__(self, base_url: str, model: str, timeout_s: float = 120.0, retries: int = 2,
                 backoff_s: float = 0.5):
        if not model.strip():
            raise InputError("{model} is empty: set the model name the server serves "
                             "(e.g. from `ollama list` or the server's /v1/models).", model="model")
        if timeout_s <= 0 or retries < 0:
            raise InputError(f"{{timeout_s}} = {timeout_s} must be positive and {{retries}} = {retries} at least 0.",
                             timeout_s="timeout_s", retries="retries")
        self.url, self.model = chat_completions_url(base_url), model.strip()
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.model_id = f"endpoint:{self.url}#{self.model}"

    def caption(self, images: list[Image.Image], instruction: str, max_tokens: int) -> list[str]:
        return [self.ask(image, instruction, max_tokens) for image in images]

    def request(self, image: Image.Image, instruction: str, max_tokens: int) -> urllib.request.Request:
        content = [{"type": "text", "text": instruction}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, "stream": False}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(API_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def ask(self, image: Image.Image, instruction: str, max_tokens: int) -> str:
        request = self.request(image, instruction, max_tokens)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 8.0))
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
