"""Regions per second through the captioner's endpoint backend at 1, 2, 4, 8 requests in flight, against a real
OpenAI-compatible server: ``transformers serve`` holding a tiny random LLaVA (tests/tiny_vlms.py) on this machine.

    .venv/bin/python bench/endpoint_concurrency.py [--regions 32] [--in-flight 1 2 4 8] [--repeats 3]
    .venv/bin/python bench/endpoint_concurrency.py --continuous-batching   # the server batches what it holds
    .venv/bin/python bench/endpoint_concurrency.py --url http://127.0.0.1:11434/v1 --model NAME   # your server

The tiny model answers in milliseconds, so the figure shows what the pack's side and the server's request
handling allow; with a real VLM the model's own batching (vLLM, llama.cpp slots, Ollama's parallel requests)
decides the gain.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.tables import table  # noqa: E402
from cupscale.captioning.backends import OpenAIEndpoint  # noqa: E402
from harness.vlm_server import served  # noqa: E402


def crops(n: int) -> list[Image.Image]:
    """Regions of a tile grid's size in the caption's preview (the endpoint gets PNG crops)."""
    return [Image.new("RGB", (256, 256), (7 * i % 256, 120, 255 - 5 * i % 256)) for i in range(n)]


def regions_per_second(url: str, model: str, images: list[Image.Image], in_flight: int, repeats: int) -> float:
    """The best of ``repeats`` passes over every region (answers are not cached here: the backend alone)."""
    endpoint = OpenAIEndpoint(url, model, timeout_s=300, in_flight=in_flight)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), in_flight):
            out = endpoint.caption(images[i:i + in_flight], "Describe this region of the photo.", 16)
            assert all(isinstance(t, str) for t in out), out
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=32)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", help="an OpenAI-compatible server's /v1 (default: start transformers serve here)")
    parser.add_argument("--model", help="the model the server at --url serves")
    parser.add_argument("--continuous-batching", action="store_true", help="start transformers serve with it")
    args = parser.parse_args()
    images = crops(args.regions)
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            server, model, where = nullcontext(args.url), args.model, args.url
        else:
            import tiny_vlms
            folder = tiny_vlms.llava(Path(tmp) / "llava")
            server = served(folder, 18765, Path(tmp) / "serve.log", args.continuous_batching)
            model = str(folder)
            where = f"transformers serve{', continuous batching' if args.continuous_batching else ''}, tiny LLaVA, CPU"
        with server as url:
            regions_per_second(url, model, images[:4], 1, 1)  # warm-up: the server's first request loads the model
            rates = {n: regions_per_second(url, model, images, n, args.repeats) for n in args.in_flight}
    base = rates[args.in_flight[0]]
    table(f"Endpoint captioning, {args.regions} regions of 256x256 px, 16 tokens, best of {args.repeats} "
          f"({where}; {os.cpu_count()} cores)", ["in flight", "regions/s", f"vs {args.in_flight[0]}"],
          [(n, f"{r:.1f}", f"{r / base:.2f}x") for n, r in rates.items()])


if __name__ == "__main__":
    main()
