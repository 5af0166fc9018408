"""scripts/queue_workflow.py against a real ComfyUI server: upload, queue, progress over the websocket,
download; and the messages for an unreachable server, a refused workflow and a failed run."""
from __future__ import annotations

import asyncio
import json
import sys

import pytest
import torch
from PIL import Image

import tiny_liif
from harness import workflows
from harness.comfy_host import PACK_DIR
from harness.server import ComfyServer, free_port

sys.path.append(str(PACK_DIR / "scripts"))
import queue_workflow  # noqa: E402

pytestmark = pytest.mark.server

FAST = ["4.tile_width=64", "4.tile_height=64", "4.overlap=16", "9.steps=2", "13.steps=2",
        *(f"{n}.{v}" for n in (8, 10, 12, 14) for v in ("tile_size=128", "overlap=32"))]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI with the pack and the tiny loader; the LIIF file under the name the workflow uses."""
    base = tmp_path_factory.mktemp("comfy")
    (base / "models" / "liif").mkdir(parents=True)
    torch.save(tiny_liif.edsr_liif(seed=5), base / "models" / "liif" / "edsr-baseline-liif.pth")
    with ComfyServer(base) as server:  # its process runs with one thread, like the tests
        yield server


@pytest.fixture
def workflow(tmp_path):
    """The ×2.5 workflow with tiny models, written where the script reads workflows from."""
    def write(*overrides):
        prompt = workflows.with_overrides(workflows.with_tiny_models(workflows.load("upscale_x2_5_implicit.api.json")),
                                          [*FAST, *overrides])
        path = tmp_path / "x2_5_tiny.api.json"
        path.write_text(json.dumps(prompt))
        return str(path)
    return write


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (48, 32), (200, 120, 40)).save(path)
    return path


def test_queues_uploads_follows_progress_and_downloads(server, workflow, image, tmp_path):
    prompt = json.loads(open(workflow()).read())
    events = []
    run = asyncio.run(queue_workflow.queue(server.url, prompt, image, tmp_path / "out.png",
                                          lambda kind, data: events.append(kind)))
    assert events[0] == "execution_start" and events[-1] == "execution_success"
    progress = [d for k, d in run.events if k == "progress"]
    assert {d["node"] for d in progress} >= {"9", "13"}  # both samplers reported their steps
    assert all(d["prompt_id"] == run.prompt_id for _, d in run.events)
    assert run.images == [tmp_path / "out.png"]
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (120, 80)
    assert (server.base / "input" / "photo.png").is_file()


def test_command_line_prints_progress_and_writes_the_image(server, workflow, image, tmp_path, capsys):
    code = queue_workflow.main([workflow(), "--server", server.url, "--image", str(image),
                                "--output", str(tmp_path / "cli.png"), "--set", "9.seed=3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "node 9 (KSampler, 'Stage 1: refine')" in out and "  2/2" in out and f"wrote {tmp_path / 'cli.png'}" in out
    with Image.open(tmp_path / "cli.png") as im:
        assert im.size == (120, 80)


def test_validation_errors_are_printed_per_node(server, workflow, image, capsys):
    code = queue_workflow.main([workflow("4.tile_width=12", "9.steps=0"), "--server", server.url,
                                "--image", str(image)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ComfyUI refused the workflow: Prompt outputs failed validation")
    lines = err.splitlines()
    assert any(line.startswith("  node 4 (TiledBlendedDiffusion, 'Tiled Blended Diffusion'):") and "tile_width" in line
               for line in lines), err
    assert any(line.startswith("  node 9 (KSampler, 'Stage 1: refine'):") and "steps" in line for line in lines), err


def test_a_failing_node_is_named_with_its_error(server, workflow, image, capsys):
    code = queue_workflow.main([workflow("4.overlap=64"), "--server", server.url, "--image", str(image)])
    err = capsys.readouterr().err
    assert code == 1
    assert "node 4 (TiledBlendedDiffusion, 'Tiled Blended Diffusion') failed: ValueError: overlap = 64 must be " \
           "smaller than the tile" in err


def test_unreachable_server_says_how_to_fix_it(workflow, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert queue_workflow.main([workflow(), "--server", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ComfyUI is not answering at {url}") and "pass --server URL" in err
