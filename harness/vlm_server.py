"""A real OpenAI-compatible server on this machine: ``transformers serve`` holding a model folder, for the
captioner's endpoint tests and bench (no hub access; the model is a folder the caller made)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served(folder: Path, port: int, log: Path, batching: bool = False):
    """``http://127.0.0.1:<port>/v1`` serving ``folder`` on the CPU while the block runs; its output in ``log``."""
    cli = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen([str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                                   "--device", "cpu", "--continuous-batching" if batching else "--no-continuous-batching"],
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/models", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"transformers serve did not start; see {log}") from None
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
