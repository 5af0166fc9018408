"""The core library stands alone: importing every cupscale module pulls in nothing of ComfyUI."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host

ROOT = Path(__file__).resolve().parent.parent


def test_core_modules_import_without_comfyui():
    modules = sorted(".".join(p.relative_to(ROOT / "cupscale").with_suffix("").parts) for p in (ROOT / "cupscale").rglob("*.py")
                     if p.stem != "__init__")
    code = ("import sys; sys.path[:] = [p for p in sys.path if 'ComfyUI' not in p]\n"
            + "".join(f"import cupscale.{m}\n" for m in modules)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'server', 'execution'))\n"
            + "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(modules) >= 5
