"""The peer: shiimizu/ComfyUI-TiledDiffusion's MultiDiffusion, for rows at equal tiles (issue 14).

The peer is never part of this repository: fetch a checkout of it yourself (for example
``git clone https://github.com/shiimizu/ComfyUI-TiledDiffusion /tmp/peer-tiled-diffusion``) and pass its
folder to a bench script's ``--peer``. It is loaded as ComfyUI loads any custom node (``nodes.load_custom_node``,
into the host our harness booted), so its own hooks on the sampler are installed too; load it before the rows
it is compared with, so that both sides run with those hooks in place.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

PEER_NODE = "TiledDiffusion"


def load(path: str | Path) -> None:
    """Import the peer's folder as a custom node into the booted host; its nodes join NODE_CLASS_MAPPINGS."""
    import nodes
    folder = Path(path).expanduser().resolve()
    if not (folder / "__init__.py").is_file():
        raise SystemExit(f"--peer {path}: no __init__.py there; give the folder of a ComfyUI-TiledDiffusion checkout")
    if not asyncio.run(nodes.load_custom_node(str(folder))) or PEER_NODE not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit(f"--peer {path}: ComfyUI could not load it as a custom node (see the log above)")


def multidiffusion(model, tile_px: int, overlap_px: int, per_batch: int):
    """The peer's TiledDiffusion node, method MultiDiffusion, on a clone of ``model``: square tiles of
    ``tile_px``, ``overlap_px`` shared, ``per_batch`` tiles per model call (as our TiledBlendedDiffusion's inputs)."""
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[PEER_NODE]().apply(model, "MultiDiffusion", tile_px, tile_px, overlap_px,
                                                        per_batch)[0]
