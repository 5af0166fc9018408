"""The pack's templates as ComfyUI's Templates browser lists and serves them, from a real server."""
from __future__ import annotations

import json
import urllib.request

import pytest

from harness.comfy_host import PACK_DIR
from harness.server import ComfyServer
from harness.workflows import TEMPLATES

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(tmp_path_factory.mktemp("comfy")) as server:
        yield server


def fetch(server, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_every_listed_template_is_served_as_a_ui_graph_with_a_thumbnail(server):
    listed = server.get("/workflow_templates")[PACK_DIR.name]
    assert sorted(listed) == sorted(p.stem for p in TEMPLATES.glob("*.json"))
    assert len(listed) >= 8 and not [name for name in listed if name.endswith(".api")]
    for name in listed:
        status, _, body = fetch(server, f"/api/workflow_templates/{PACK_DIR.name}/{name}.json")
        graph = json.loads(body)
        assert status == 200 and graph["version"] == 0.4 and graph["nodes"] and graph["links"], name
        status, kind, image = fetch(server, f"/api/workflow_templates/{PACK_DIR.name}/{name}.jpg")
        assert status == 200 and kind == "image/jpeg" and image[:3] == b"\xff\xd8\xff", name
