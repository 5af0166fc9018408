"""Regional Attention Prior (C-Upscale, Figs. 3-4): the global prompt's attention, region by region.

Notation. At one cross-attention layer, the low-resolution latent z_L, noised to the sampler's current sigma,
gives queries Q_L on a grid of h_L x w_L tokens; the global prompt c_g gives keys K_g and values V_g. Per head:

    A_L = softmax(Q_L K_g^T / sqrt(d))                                                         (RAP)

one row per low-res token, a distribution over the prompt's tokens: where the global prompt's words fall on
the low-res image. A region R of the high-resolution latent (a tile) runs the same layer on its own token
grid; its prior A_R is A_L read at R's tokens, and the attended features are A_R V_g (Fig. 4, right). Each
region thus sees only the part of the prompt that belongs to it, which keeps a "cat" prompt from painting a
cat into every tile (object repetition).

Reading A_L at R's tokens. R's box, in working-latent cells, is taken to low-res cells (x low/working per
axis, any factor) and on to the layer's tokens (x tokens/cells of that layer); each of R's tokens, at its
centre, samples A_L bilinearly. Two choices, and why:
- Bilinear weights are non-negative and sum to one, so every sampled row is a convex combination of
  distributions: still a distribution over the prompt's tokens, as softmax would give.
- Samples come from the whole map, not from a crop resized on its own: a point of the image receives the
  same prior in every tile that covers it, so overlapping tiles agree where MultiDiffusion blends them.
Both scale factors cancel in grid_sample's normalised coordinates, so the sampling grid depends only on the
box and the working latent's size (tokens are taken to cover the latent evenly, as they do for sizes that
divide by the layer's downscale factor).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..latents import resize_hw
from ..lru import env_limit
from ..tiling.grid import Box
from .items import ItemRegions


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads·d) -> (batch, heads, tokens, d)."""
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, d) -> (batch, tokens, heads·d)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head, in float32: (batch, heads, query tokens, key tokens)."""
    q, k = split_heads(q.float(), heads), split_heads(k.float(), heads)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)


def attend_with(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Given attention probabilities (batch, heads, n, l) and values (batch, heads, l, d): (batch, n, heads·d)."""
    return merge_heads(probs @ values.to(probs.dtype))


@dataclass(frozen=True)
class CapturedAttention:
    """One layer's (RAP) on the low-res latent: the maps A_L and the values V_g they apply to.

    ``maps`` is (batch, heads, prompt tokens, h_L, w_L): a distribution over the prompt's tokens at every
    low-res token, laid out as images so that they can be resampled. It is kept in the dtype the layer runs
    in (float16 for a half-precision model, the memory figure of bench/regional_attention.py; float32 for a
    float32 model, so that nothing is lost to storage). ``values`` is (batch, heads, prompt tokens, d).
    """

    maps: torch.Tensor
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.maps, self.values))


def capture_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                      grid_hw: tuple[int, int]) -> tuple[CapturedAttention, torch.Tensor]:
    """(RAP) at one layer of the low-res pass: the captured maps, and the layer's output A_L V_g."""
    probs = attention_probabilities(q, k, heads)
    values = split_heads(v, heads)
    out = attend_with(probs, values).to(q.dtype)
    b, h, n, l = probs.shape
    maps = probs.transpose(-1, -2).reshape(b, h, l, *grid_hw).to(q.dtype).contiguous()
    return CapturedAttention(maps, values.contiguous()), out


GRID_CACHE_VAR = "CUPSCALE_GRID_CACHE_ENTRIES"


# A few grids per run (tiles x layer resolutions), read at every step; bounded, as sizes change between runs.
@functools.lru_cache(maxsize=env_limit(GRID_CACHE_VAR, 1024))
def sampling_grid(box: Box, working_hw: tuple[int, int], target_hw: tuple[int, int],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Where the ``target_hw`` tokens of a tile at ``box`` lie on any map of the whole latent.

    Token (i, j) of the tile, at its centre, lies at working cell (top + (i + ½)·height/th, left + (j + ½)·
    width/tw). In grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the map's outer
    edges) that point is 2·cell/size - 1 on a map of any resolution covering the latent. Returns (th, tw, 2)
    as (x, y) pairs, the order grid_sample reads; shared between calls, so never written to. Kept on
    ``device``: a copy from the host at every read would wait for the device each time.
    """
    (H, W), (th, tw) = working_hw, target_hw
    ys = box.top + (torch.arange(th, dtype=torch.float64) + 0.5) * box.height / th
    xs = box.left + (torch.arange(tw, dtype=torch.float64) + 0.5) * box.width / tw
    gy, gx = torch.meshgrid(2 * ys / H - 1, 2 * xs / W - 1, indexing="ij")
    return torch.stack([gx, gy], dim=-1).float().to(device)


def region_prior(maps: torch.Tensor, box: Box, working_hw: tuple[int, int],
                 target_hw: tuple[int, int]) -> torch.Tensor:
    """A_R: one image's captured maps (heads, l, h_L, w_L) read at the tokens of the tile at ``box``.

    Returns (heads, th·tw, l) float32 probabilities, tokens row-major as the layer flattens them. Bilinear,
    with the border's values beyond the edge ("border" padding), so every row stays a distribution.
    """
    heads, l, h, w = maps.shape
    if (h, w) == tuple(target_hw) and (box.height, box.width) == tuple(working_hw):
        sampled = maps.float()  # the tile is the whole latent at the capture's own token grid
    else:
        grid = sampling_grid(box, working_hw, target_hw, maps.device)
        sampled = F.grid_sample(maps.float().reshape(1, heads * l, h, w), grid[None], mode="bilinear",
                                padding_mode="border", align_corners=False)
    return sampled.reshape(heads, l, -1).transpose(1, 2)


def read_regions(maps: torch.Tensor, where: ItemRegions, tokens_hw: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
    """Captured maps (images, heads, l, h_L, w_L) read at each item's region on ``tokens_hw`` tokens:
    (items, heads, tokens, l) float32, and the image each item read (its own, or the one low-res image's).
    The maps of each (region, image) pair are read once."""
    grid = where.grid
    sources = [image if maps.shape[0] > 1 else 0 for image in where.images]
    read = {}
    for region, source in zip(where.regions, sources):
        if (region, source) not in read:
            read[(region, source)] = region_prior(maps[source], grid.boxes[region], (grid.height, grid.width),
                                                  tokens_hw)
    return torch.stack([read[pair] for pair in zip(where.regions, sources)]), sources


def prior_attention(captured: CapturedAttention, where: ItemRegions, tokens_hw: tuple[int, int]) -> torch.Tensor:
    """A_R V_g for items at ``where`` on a layer of ``tokens_hw`` tokens: each item reads the maps of its own
    image (or the one low-res image) at its region (:func:`read_regions`)."""
    stacked, sources = read_regions(captured.maps, where, tokens_hw)
    values = torch.stack([captured.values[s] for s in sources])  # views: a list index would copy it to the device
    return attend_with(stacked, values)


def capture_bytes(layers: list[tuple[int, int, int]], prompt_tokens: int, element_size: int = 2,
                  batch: int = 1) -> int:
    """Memory of the captured maps and values of ``layers``, each given as (heads, dim_head, low-res tokens)."""
    return sum(batch * heads * prompt_tokens * (tokens + d) * element_size for heads, d, tokens in layers)


def capture_size(hw: tuple[int, int], max_cells: int, multiple: int = 8) -> tuple[int, int]:
    """The latent size the capture pass runs at: the low-res latent's own, or, when its area passes
    ``max_cells`` (the model's native size), the largest size of its aspect within that area, in whole
    ``multiple``s of cells (the UNet's down-sampling). The maps are read in normalised coordinates
    (:func:`sampling_grid`), so a coarser capture covers the same image, while its memory and the pass's cost
    stay those of one native evaluation however large the low-res image is."""
    h, w = hw
    if h * w <= max_cells:
        return h, w
    scale = (max_cells / (h * w)) ** 0.5
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (h, w))


def capture_latent(low: torch.Tensor, noise: torch.Tensor, max_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The low-res latent and its noise at :func:`capture_size`. Both are area-averaged when they must shrink,
    the noise scaled back to unit variance (averaging k cells divides it by sqrt k), so the capture sees the same
    picture under the same noise at the same sigma, only coarser."""
    size = capture_size(tuple(low.shape[-2:]), max_cells)
    if size == tuple(low.shape[-2:]):
        return low, noise
    ratio = (low.shape[-2] * low.shape[-1] / (size[0] * size[1])) ** 0.5
    return resize_hw(low, size, mode="area"), resize_hw(noise, size, mode="area") * ratio
