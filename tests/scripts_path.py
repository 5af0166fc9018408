"""Makes scripts/ importable for the tests (it is not a package of the pack)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import run_workflow  # noqa: E402,F401
