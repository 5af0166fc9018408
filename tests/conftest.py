"""Test setup: the core tests need only torch; the host tests boot a real ComfyUI in-process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import comfy_host  # noqa: E402

# The host tests' modules import comfy.* once the host is on sys.path; the core's run (scripts/test.sh --core)
# has no host.
if os.environ.get("CUPSCALE_CORE") != "1":
    comfy_host.prepare()

# The tiny test models gain nothing from intra-op threads, and where the cores are shared their
# spin-waits cost up to 10x: one thread for the whole suite.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests marked ``hostfree`` (the core's, run without a host by scripts/test.sh --core) must not reach the host."""
    wrong = [item.nodeid for item in items if item.get_closest_marker("hostfree") and "host" in item.fixturenames]
    if wrong:
        raise pytest.UsageError(f"marked hostfree but using the host fixture: {wrong}; drop the mark from these.")


@pytest.fixture(scope="session")
def host():
    """The real ComfyUI, booted on the CPU with this pack loaded as a custom node."""
    comfy_host.boot()
    import nodes
    return nodes


@pytest.fixture(scope="session")
def tiny(host):
    """Builders of tiny seeded models (harness.tiny_models), once the host is up."""
    from harness import tiny_models
    return tiny_models


@pytest.fixture(scope="module")
def nodes_(host):
    """TiledBlendedDiffusion, RegionalAttentionPrior and AttentionComposer, for the DiT tests."""
    names = ("TiledBlendedDiffusion", "RegionalAttentionPrior", "AttentionComposer")
    return [host.NODE_CLASS_MAPPINGS[n]() for n in names]


@pytest.fixture
def pack_node(host):
    """Instantiate a node of this pack (or of the host) by its registered name."""
    return lambda name: host.NODE_CLASS_MAPPINGS[name]()


@pytest.fixture
def folders(host, tmp_path):
    """The host's input, output and temp folders moved under tmp_path (in/, out/, temp/) for one test."""
    import folder_paths
    old = folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory()
    for name in ("in", "out", "temp"):
        (tmp_path / name).mkdir()
    folder_paths.set_input_directory(str(tmp_path / "in"))
    folder_paths.set_output_directory(str(tmp_path / "out"))
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    yield tmp_path
    folder_paths.set_input_directory(old[0])
    folder_paths.set_output_directory(old[1])
    folder_paths.set_temp_directory(old[2])


@pytest.fixture
def qwen3vl_text_encoder(host, tmp_path, monkeypatch):
    """models/text_encoders holding a tiny Qwen3-VL file (tests/tiny_vlms.host_qwen3vl), the host sized to read
    it for this test; its name, as Load CLIP lists it."""
    import folder_paths

    import tiny_vlms
    tiny_vlms.shrink_host_qwen3vl(monkeypatch)
    tiny_vlms.host_qwen3vl(tmp_path / "text_encoders" / "tiny-qwen3vl.safetensors")
    folder_paths.add_model_folder_path("text_encoders", str(tmp_path / "text_encoders"))
    yield "tiny-qwen3vl.safetensors"
    folder_paths.folder_names_and_paths["text_encoders"][0].remove(str(tmp_path / "text_encoders"))
    folder_paths.filename_list_cache.pop("text_encoders", None)

