"""pytest plugin (pyproject's addopts): the repo root is the custom node's package, whose __init__ imports
ComfyUI. pytest would import it to set the package up; collected as a plain folder instead, the core's tests
run without a host, and the host tests load the pack only as ComfyUI does (harness.comfy_host.boot)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collect_directory(path, parent):
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
