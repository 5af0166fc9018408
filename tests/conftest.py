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

# pytest imports the pack's own __init__.py (the repo root is a package), which needs the host.
comfy_host.prepare()

# The tiny test models gain nothing from intra-op threads, and where the cores are shared their
# spin-waits cost up to 10x: one thread for the whole suite.
torch.set_num_threads(1)


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


@pytest.fixture
def pack_node(host):
    """Instantiate a node of this pack (or of the host) by its registered name."""
    return lambda name: host.NODE_CLASS_MAPPINGS[name]()
