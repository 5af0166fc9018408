"""Start a real ComfyUI server (main.py) on 127.0.0.1 with this pack and the tiny loader installed."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.comfy_host import PACK_DIR, host_path

LOADER_SHIM = '''"""Registers the tiny seeded checkpoint loader of comfyui-cupscale's harness (tests only)."""
import sys
sys.path.insert(0, {root!r})
from harness.test_nodes import NODE_CLASS_MAPPINGS  # noqa: E402,F401
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` in a base directory whose custom_nodes/ holds the pack (a link)."""

    def __init__(self, base: Path, python: str = sys.executable):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        custom = base / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        (custom / PACK_DIR.name).symlink_to(PACK_DIR, target_is_directory=True)
        (custom / "cupscale_test_loader.py").write_text(LOADER_SHIM.format(root=str(PACK_DIR)))
        (base / "input").mkdir(exist_ok=True)
        self.log = open(base / "server.log", "w")
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--disable-auto-launch", "--disable-metadata"],
            cwd=host_path(), stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{(self.base / 'server.log').read_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer on {self.url} in {timeout} s")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def wait_history(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self) -> None:
        """Stop the server and unlink the pack, so deleting the base directory never follows the link."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.base / "custom_nodes", ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
