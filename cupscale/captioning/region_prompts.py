"""Region prompts: one text prompt per tile of a region grid, plus the global prompt.

C-Upscale's Regional Semantic Prior (Fig. 3) gives every region its own prompt from a
multimodal LLM; the Attention Composer (Fig. 4) pairs it with the global prompt. The prompts are
only meaningful for the grid they were made for, so the object carries that grid and every
consumer checks it against its own tiles (:meth:`RegionPrompts.check_grid`).

The JSON form is the editable text of the node: users fix a caption by hand and feed it back in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..tiling.grid import RegionGrid, check_same_grid, region_count, region_grid

TYPE_NAME = "REGION_PROMPTS"
"""The ComfyUI type name under which a :class:`RegionPrompts` flows between nodes."""

PIXELS_PER_CELL = 8
"""Pixels per latent cell of the VAEs this pack serves (SD1.5, SDXL, SD3, Flux)."""

JSON_FORMAT = "cupscale.region_prompts/1"


@dataclass(frozen=True)
class RegionPrompts:
    """Prompts for the regions of ``grid`` (row-major, as ``grid.boxes``) and for the whole image.

    ``high_level`` and ``low_level`` are XPSR's two descriptions of the whole image
    (Sec. 3.3); empty when they were not asked for.
    """

    grid: RegionGrid
    prompts: tuple[str, ...]
    global_prompt: str
    high_level: str = ""
    low_level: str = ""

    def __post_init__(self):
        if len(self.prompts) != len(self.grid):
            raise ValueError(f"{len(self.prompts)} region prompts for a grid of {len(self.grid)} regions "
                             f"({self.grid.describe()}); give exactly one prompt per region.")

    def check_grid(self, tiles: RegionGrid, tiles_name: str,
                   name: str = "the region prompts (MLLMRegionCaptioner)") -> None:
        """Raise a clear error unless these prompts were made for exactly the grid of ``tiles``.

        Downstream nodes call this with the grid they tile the latent with, e.g.
        ``region_prompts.check_grid(grid, "TiledBlendedDiffusion's tiles")``.
        """
        check_same_grid(tiles, self.grid, name, tiles_name)


def pixel_box(box) -> dict[str, int]:
    """A grid box in image pixels, as written in the JSON for people to read."""
    c = PIXELS_PER_CELL
    return {"x": box.left * c, "y": box.top * c, "width": box.width * c, "height": box.height * c}


MAX_JSON_CHARS = 4_000_000
"""Longer region prompts JSON is refused before parsing: an API client's paste, not an edit."""

MAX_REGIONS = 4096
"""More region prompts are refused before any is read or encoded: a 16384 px square in 256 px tiles without
overlap has 4096 regions, and each prompt costs a text-encoder pass."""


def to_json(prompts: RegionPrompts) -> str:
    """The editable text form; :func:`from_json` reads it back to an equal object."""
    g = prompts.grid
    regions = [{"row": i // g.cols, "col": i % g.cols, "box_px": pixel_box(box), "prompt": text}
               for i, (box, text) in enumerate(zip(g.boxes, prompts.prompts))]
    doc = {
        "format": JSON_FORMAT,
        "grid_in_latent_cells": {"height": g.height, "width": g.width, "tile_height": g.tile_height,
                                 "tile_width": g.tile_width, "overlap": g.overlap},
        "global_prompt": prompts.global_prompt,
        "xpsr_high_level": prompts.high_level,
        "xpsr_low_level": prompts.low_level,
        "regions": regions,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


def from_json(text: str, input_name: str = "region_prompts_json") -> RegionPrompts:
    """Parse the text written by :func:`to_json` (possibly edited), with errors that say what to fix."""
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{input_name} holds {len(text):,} characters, more than region prompts need (at most "
                         f"{MAX_JSON_CHARS:,}: a thousand regions of 4,000 characters each). Paste the JSON this "
                         f"node wrote, or clear {input_name} to caption again.")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{input_name} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
                         f"Paste the JSON this node wrote, or clear {input_name} to caption again.") from None
    except RecursionError:
        raise ValueError(f"{input_name} nests lists or objects thousands deep; region prompts JSON nests 4 deep. "
                         f"Paste the JSON this node wrote, or clear {input_name} to caption again.") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ValueError(f"{input_name} is not region prompts JSON: it needs \"format\": \"{JSON_FORMAT}\". "
                         f"Paste the JSON this node wrote, or clear {input_name} to caption again.")
    g = field(doc, "grid_in_latent_cells", dict, input_name)
    try:
        h, w, th, tw, o = settings = [int(g[k]) for k in ("height", "width", "tile_height", "tile_width", "overlap")]
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{input_name}: \"grid_in_latent_cells\" is broken ({e}); it needs integer height, "
                         f"width, tile_height, tile_width and overlap, as the node wrote them.") from None
    regions = field(doc, "regions", list, input_name)
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"{input_name} lists {len(regions):,} regions, more than the {MAX_REGIONS:,} region prompts "
                         f"are made for: use larger tiles, or clear {input_name} to caption again.")
    if min(h, w, th, tw) >= 1 and 0 <= o < min(th, tw) and region_count(*settings) != len(regions):
        raise ValueError(f"{input_name} lists {len(regions)} regions but its grid ({h}x{w} latent cells, tiles "
                         f"{th}x{tw}, overlap {o}) has {region_count(*settings)}; keep one entry per region, or "
                         f"clear {input_name} to caption again.")
    try:
        grid = region_grid(*settings)
    except ValueError as e:
        raise ValueError(f"{input_name}: \"grid_in_latent_cells\" is broken ({e}); it needs integer height, "
                         f"width, tile_height, tile_width and overlap, as the node wrote them.") from None
    if len(regions) != len(grid):
        raise ValueError(f"{input_name} lists {len(regions)} regions but its grid ({grid.describe()}) has "
                         f"{len(grid)}; keep one entry per region, or clear {input_name} to caption again.")
    prompts = tuple(region_prompt(r, i, box, input_name) for i, (r, box) in enumerate(zip(regions, grid.boxes)))
    return RegionPrompts(grid, prompts, field(doc, "global_prompt", str, input_name),
                         field(doc, "xpsr_high_level", str, input_name), field(doc, "xpsr_low_level", str, input_name))


def field(doc: dict, key: str, kind: type, input_name: str):
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{input_name}: \"{key}\" must be a {kind.__name__} (found {type(value).__name__}).")
    return value


def region_prompt(entry, index: int, box, input_name: str) -> str:
    """One region's prompt; its box must be the grid's, since boxes follow from the grid, not the text."""
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise ValueError(f"{input_name}: region {index} needs a \"prompt\" string.")
    if "box_px" in entry and entry["box_px"] != pixel_box(box):
        raise ValueError(f"{input_name}: region {index} has box_px {entry['box_px']} but its grid puts it at "
                         f"{pixel_box(box)}. Boxes follow from the grid: edit only the prompts, and change the "
                         f"tile size or overlap on the node instead.")
    return entry["prompt"]
