"""Region grids: the one source of truth for where tiles (and captioned regions) lie.

A grid is a pure function of (latent size, tile size, overlap), all in latent cells
(C-Upscale Fig. 2: "region size" and "overlap size"). Every node that splits an image into
regions calls :func:`region_grid`, so two nodes given the same sizes agree exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Box:
    """A tile's place in the latent: top, left, height, width, in latent cells."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def scaled(self, sy: float, sx: float) -> tuple[float, float, float, float]:
        """The box in another resolution's coordinates (e.g. low-res = box / scale)."""
        return self.top * sy, self.left * sx, self.height * sy, self.width * sx


@dataclass(frozen=True)
class RegionGrid:
    """Overlapping tiles covering a latent of ``height`` x ``width`` cells, row-major."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: int
    rows: int
    cols: int
    boxes: tuple[Box, ...]

    def __len__(self) -> int:
        return len(self.boxes)

    def describe(self) -> str:
        return (f"{self.rows}x{self.cols} tiles of {self.tile_height}x{self.tile_width} latent cells "
                f"(overlap {self.overlap}) over a {self.height}x{self.width} latent")


def tile_count(length: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`tile_starts` lays over ``length``, without laying them."""
    return 1 if tile >= length else math.ceil((length - overlap) / (tile - overlap))


def region_count(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> int:
    """len(region_grid(...)) for valid settings, computed without building the boxes: a grid read from
    text (region prompts JSON) is checked against its regions before it is built."""
    th, tw = min(tile_height, height), min(tile_width, width)
    return tile_count(height, th, min(overlap, th - 1)) * tile_count(width, tw, min(overlap, tw - 1))


PATCH_CELLS = 2
"""Latent cells per patch of the DiT models (2x2 patches: Flux, SD3, Qwen-Image)."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equal tiles spread evenly over ``length`` with at least ``overlap`` shared.

    The last tile ends exactly at ``length``; spreading the slack evenly keeps every overlap at
    least the requested one, so the feathered seams all have room. When tile and overlap are whole
    patches (:data:`PATCH_CELLS`), the other starts are too: a DiT then cuts each tile into the same
    patches as the whole image, so positions and merged predictions line up (a UNet tile moves by at
    most one cell). Starts stay unaligned where aligning would shrink an overlap.
    """
    count = tile_count(length, tile, overlap)
    if count == 1:
        return [0]
    stride = (length - tile) / (count - 1)
    plain = [round(i * stride) for i in range(count)]
    if tile % PATCH_CELLS or overlap % PATCH_CELLS:
        return plain
    aligned = [round(i * stride / PATCH_CELLS) * PATCH_CELLS for i in range(count - 1)] + [length - tile]
    if any(b - a > tile - overlap or b <= a for a, b in zip(aligned, aligned[1:])):
        return plain
    return aligned


def region_grid(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> RegionGrid:
    """The grid for a latent of ``height`` x ``width``; tiles larger than the latent are clamped."""
    if min(height, width, tile_height, tile_width) < 1:
        raise ValueError(f"latent {height}x{width} and tile {tile_height}x{tile_width} must be positive")
    if overlap < 0 or overlap >= min(tile_height, tile_width):
        raise ValueError(f"overlap {overlap} must be at least 0 and smaller than the tile "
                         f"{tile_height}x{tile_width}")
    th, tw = min(tile_height, height), min(tile_width, width)
    ys = tile_starts(height, th, min(overlap, th - 1))
    xs = tile_starts(width, tw, min(overlap, tw - 1))
    boxes = tuple(Box(y, x, th, tw) for y in ys for x in xs)
    return RegionGrid(height, width, th, tw, overlap, len(ys), len(xs), boxes)


def check_same_grid(expected: RegionGrid, actual: RegionGrid, actual_name: str, expected_name: str) -> None:
    """Raise a clear error when regions made for one grid meet tiles of another."""
    if expected.boxes == actual.boxes:
        return
    raise ValueError(
        f"{actual_name} was made for {actual.describe()}, but {expected_name} uses {expected.describe()}. "
        f"Give both the same image size, tile size and overlap (region sizes are in latent cells = pixels / 8).")


def check_tile_settings(tile_width: int, tile_height: int, overlap: int) -> None:
    """Tile sizes and overlap in pixels, as users give them: whole latent cells, overlap inside the tile."""
    for field, value in (("tile_width", tile_width), ("tile_height", tile_height)):
        if value < 64 or value % 8:
            raise InputError(f"{{name}} = {value}: tiles must be at least 64 pixels and a multiple of 8 "
                             f"(e.g. {max(64, value // 8 * 8)}).", name=field)
    if overlap < 0 or overlap % 8:
        raise InputError(f"{{overlap}} = {overlap}: the overlap must be a non-negative multiple of 8 pixels.",
                         overlap="overlap")
    if overlap >= min(tile_width, tile_height):
        raise InputError(f"{{overlap}} = {overlap} must be smaller than the tile ({tile_width}x{tile_height}); "
                         f"a quarter of the tile is a good start.", overlap="overlap")
