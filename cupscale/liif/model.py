"""Local Implicit Image Function (LIIF): an image as a function of continuous coordinates.

LIIF (Chen, Liu & Wang, "Learning Continuous Image Representation with Local Implicit Image
Function", CVPR 2021) keeps a 2D grid of latent codes z (a feature map) and predicts the colour at
any continuous query point x_q with one MLP f_theta shared by all codes (Sec. 3.1):

- Eq. 2, relative coordinates: s = f_theta(z*, x_q - v*), with z* a nearby code and v* its centre.
- Eq. 3, feature unfolding: each code is the concatenation of its 3x3 neighbourhood.
- Eq. 4, local ensemble: the predictions of the four nearest codes (one per quadrant around x_q)
  are blended, each weighted by the area of the rectangle between x_q and the *diagonally
  opposite* code, S_t / S, so the image is continuous where the nearest code changes.
- Eq. 5 (Sec. 3.3), cell decoding: the query also carries the size of the output pixel c, so one
  model renders any scale.

Kim & Kim's arbitrary-scale LDM (Fig. 3) puts the same function after a decoder trunk
without up-sampling, so that a latent decodes to any output size.

Units. Following the official code, positions are measured on the code grid: a code has index
i = 0..n-1 and centre i; an output pixel j of an axis of N pixels sits at u = (j + 1/2) n / N - 1/2.
The MLP sees x_q - v* as 2 (u - i) (the official [-1, 1] coordinates times n) and the cell as
2 n / N.

Memory. The first linear layer of f_theta is linear in the (unfolded) code, so it is applied once
per code, as a 3x3 (or 1x1) convolution, instead of once per query and neighbour. Queries run in
bounded chunks of output rows, tile by tile, and go straight into the output buffer; when the
feature extractor is local (no normalisation or attention over the whole map) it too runs per
tile, on a crop with a margin that covers its receptive field, so that nothing but the output buffer
grows with the output size.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..guards import gib
from ..lru import env_limit

AREA_EPS = 1e-9  # the official code adds this to every area so that the weights never divide 0 by 0
MAX_OUTPUT_SIDE = 16384  # same bound as ComfyUI's MAX_RESOLUTION
OUTPUT_MEGAPIXELS_VAR = "CUPSCALE_MAX_OUTPUT_MEGAPIXELS"
DEFAULT_OUTPUT_MEGAPIXELS = 160  # admits one 12288 x 12288 image (151); 16384 x 16384 is 268


class MLP(nn.Module):
    """f_theta: Linear-ReLU layers, laid out as LIIF's ``imnet.layers.N`` keys. The ReLUs work in
    place (a Linear's backward needs its input, not its output), one activation less per chunk."""

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int], operations=nn):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [operations.Linear(last, width), nn.ReLU(inplace=True)]
            last = width
        layers.append(operations.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)


@dataclass(frozen=True)
class Neighbour:
    """One latent code blended into a query: its index on one axis and the offset 2 (u - i)."""

    index: torch.Tensor
    offset: torch.Tensor


def pixel_positions(n_out: int, n_codes: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Centres of output pixels ``start..stop-1`` of an axis of ``n_out``, in code-index units.

    float64 so that positions on grids of thousands of codes keep their fractional part exactly
    enough; the offsets are cast to the model's dtype afterwards.
    """
    j = torch.arange(start, n_out if stop is None else stop, dtype=torch.float64)
    return (j + 0.5) * (n_codes / n_out) - 0.5


def nearest_codes(u: torch.Tensor, n: int, ensemble: bool) -> list[Neighbour]:
    """The codes on one axis that Eq. 4 blends at positions ``u``: the one at or below and the one
    above (the nearest one alone without the ensemble), clamped to the grid as the official code
    clamps its shifted coordinates, so that at the border both sides use the border code."""
    if not ensemble:
        index = torch.floor(u + 0.5).clamp_(0, n - 1)
        return [Neighbour(index.long(), 2 * (u - index))]
    below = torch.floor(u)
    result = []
    for index in (below.clamp(0, n - 1), (below + 1).clamp_(0, n - 1)):
        result.append(Neighbour(index.long(), 2 * (u - index)))
    return result


def code_span(u: torch.Tensor, n: int, ensemble: bool) -> tuple[int, int]:
    """First and one-past-last code index that queries at sorted positions ``u`` read."""
    lo = nearest_codes(u[:1], n, ensemble)[0].index
    hi = nearest_codes(u[-1:], n, ensemble)[-1].index
    return int(lo), int(hi) + 1


def ensemble_weights(offsets_y: list[torch.Tensor], offsets_x: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. 4's S_t / S for the codes in (y, x) order: each code takes the area spanned by the query
    and the diagonally opposite code, so the nearest code weighs most."""
    areas = [(oy * ox).abs() + AREA_EPS for oy in offsets_y for ox in offsets_x]
    total = sum(areas)
    return [area / total for area in reversed(areas)]


class LIIFHead(nn.Module):
    """The decoding function f_theta with LIIF's three options (Eq. 3, 4, 5).

    ``feat_dim`` is the channel count of the feature map before unfolding; ``operations`` gives the layers
    (cupscale.liif.encoders says why).
    """

    def __init__(self, feat_dim: int, hidden: list[int], out_dim: int = 3, feat_unfold: bool = True,
                 local_ensemble: bool = True, cell_decode: bool = True, operations=nn):
        super().__init__()
        self.feat_dim = feat_dim
        self.feat_unfold = feat_unfold
        self.local_ensemble = local_ensemble
        self.cell_decode = cell_decode
        self.code_dim = feat_dim * (9 if feat_unfold else 1)
        self.imnet = MLP(self.code_dim + 2 + (2 if cell_decode else 0), out_dim, hidden, operations)

    @property
    def out_dim(self) -> int:
        return self.imnet.layers[-1].out_features

    @property
    def halo(self) -> int:
        """Codes beyond a queried code that its unfolded code (Eq. 3) reads."""
        return 1 if self.feat_unfold else 0

    def project(self, feat: torch.Tensor) -> torch.Tensor:
        """The first layer's code term W z for every code, channels last: ``(B, h, w, hidden)``.

        With unfolding, W applied to the 3x3 neighbourhood of a code is a 3x3 convolution whose
        zero padding is the unfolding's own zero padding at the border of the map.
        """
        first = self.imnet.layers[0]
        k = 3 if self.feat_unfold else 1
        weight = first.weight[:, :self.code_dim].reshape(first.out_features, self.feat_dim, k, k)
        return F.conv2d(feat, weight, padding=k // 2).permute(0, 2, 3, 1)

    def decode(self, proj: torch.Tensor, origin: tuple[int, int], grid: tuple[int, int], uy: torch.Tensor,
               ux: torch.Tensor, cell: tuple[float, float]) -> torch.Tensor:
        """Colours at positions ``(uy, ux)`` (broadcastable; code-index units of the full grid).

        ``proj`` holds :meth:`project` for the codes from ``origin`` on, a window of the full
        ``grid``; ``cell`` is the output pixel's size in code units. The positions may stay on the
        CPU in float64: only the codes' indices, offsets and weights move to ``proj``'s device.
        Returns ``(B, *broadcast(uy, ux).shape, out_dim)``: a grid of rows x columns for rendering,
        a list of sampled points for training.
        """
        first = self.imnet.layers[0]
        w_offset = first.weight[:, self.code_dim:self.code_dim + 2]
        ys = nearest_codes(uy, grid[0], self.local_ensemble)
        xs = nearest_codes(ux, grid[1], self.local_ensemble)
        weights = ensemble_weights([y.offset for y in ys], [x.offset for x in xs])
        bias = first.bias
        if self.cell_decode:
            bias = bias + first.weight[:, self.code_dim + 2:] @ proj.new_tensor([2 * cell[0], 2 * cell[1]])
        def like_proj(t: torch.Tensor) -> torch.Tensor:  # cast first: float64 may not exist on the device
            return t.to(proj.dtype).to(proj.device).unsqueeze(-1)

        rgb = None
        for (y, x), weight in zip([(y, x) for y in ys for x in xs], weights):
            code = proj[:, (y.index - origin[0]).to(proj.device), (x.index - origin[1]).to(proj.device)]
            offset = like_proj(y.offset) * w_offset[:, 0]
            offset = (offset + like_proj(x.offset) * w_offset[:, 1]).add_(bias)
            pred = self.imnet.layers[1:](code.add_(offset)) * like_proj(weight)
            rgb = pred if rgb is None else rgb.add_(pred)
        return rgb


class ImplicitImageFunction(nn.Module):
    """A feature extractor followed by a LIIF head: LIIF's encoder E_phi (Sec. 3.2) or the arbitrary-scale LDM's
    decoder trunk without up-sampling (Fig. 3, D_phi).

    ``receptive_radius`` is how many codes away the extractor still sees; ``None`` when it mixes
    the whole map (GroupNorm, self-attention), which then is computed once and never tiled.
    """

    def __init__(self, features: nn.Module, head: LIIFHead, receptive_radius: int | None):
        super().__init__()
        self.features = features
        self.head = head
        self.receptive_radius = receptive_radius


def even_bands(n_out: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges of nearly equal length covering ``0..n_out``."""
    bounds = [round(k * n_out / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@dataclass(frozen=True)
class OutputTile:
    """A rectangle of output pixels and the code ranges (with halo) its queries read."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    codes_y: tuple[int, int]
    codes_x: tuple[int, int]


def output_tiles(in_hw: tuple[int, int], out_hw: tuple[int, int], tile: int, head: LIIFHead) -> list[OutputTile]:
    """Split the output into rectangles that each read about ``tile`` x ``tile`` codes."""
    tiles = []
    axes = []
    for n_in, n_out in zip(in_hw, out_hw):
        bands = even_bands(n_out, math.ceil(n_in / tile))
        spans = []
        for a, b in bands:
            lo, hi = code_span(pixel_positions(n_out, n_in, a, b), n_in, head.local_ensemble)
            spans.append((max(lo - head.halo, 0), min(hi + head.halo, n_in)))
        axes.append(list(zip(bands, spans)))
    for rows, codes_y in axes[0]:
        for cols, codes_x in axes[1]:
            tiles.append(OutputTile(rows, cols, codes_y, codes_x))
    return tiles


ProgressFn = Callable[[int, int], None]


def render(model: ImplicitImageFunction, x: torch.Tensor, out_hw: tuple[int, int], tile: int = 192,
           max_points: int = 32768, max_margin: int = 64, on_progress: ProgressFn | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Query ``model`` on ``x`` (``B, C, h, w``) at every pixel of an ``out_hw`` image.

    Returns ``(B, H, W, out_dim)`` (channels last, as ComfyUI's IMAGE), written into ``out`` when
    given (e.g. a CPU buffer while the model runs on a GPU). Tiles read ``tile`` x ``tile`` codes;
    a chunk of queries holds at most ``max_points`` points (over the batch; at least one output
    row per chunk). A local extractor runs per
    tile on a crop with a margin of its receptive radius (at most ``max_margin``), so the result
    equals an untiled run whenever the radius is within ``max_margin``. ``on_progress(done, total)``
    is called after every chunk; it may raise to interrupt.
    """
    head = model.head
    batch, _, h, w = x.shape
    height, width = out_hw
    if out is None:
        out = torch.empty((batch, height, width, head.out_dim), dtype=x.dtype, device=x.device)
    cell = (h / height, w / width)
    whole = model.features(x) if model.receptive_radius is None else None
    tiles = output_tiles((h, w), out_hw, tile, head)
    plans = [(t, even_bands(t.rows[1] - t.rows[0], math.ceil(
        batch * (t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) / max_points))) for t in tiles]
    total, done = sum(len(chunks) for _, chunks in plans), 0
    for t, chunks in plans:
        (y0, y1), (x0, x1) = t.codes_y, t.codes_x
        if whole is None:
            feat = features_of_window(model, x, t, max_margin)
        else:
            feat = whole[..., y0:y1, x0:x1]
        proj = head.project(feat)
        ux = pixel_positions(width, w, *t.cols).unsqueeze(0)
        for a, b in chunks:
            r0 = t.rows[0] + a
            uy = pixel_positions(height, h, r0, t.rows[0] + b).unsqueeze(1)
            rgb = head.decode(proj, (y0, x0), (h, w), uy, ux, cell)
            out[:, r0:t.rows[0] + b, t.cols[0]:t.cols[1]] = rgb.to(out.device, out.dtype)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    return out


def check_output_budget(batch: int, out_hw: tuple[int, int], channels: int = 3) -> None:
    """Refuse, before any work, an output past the pixel budget (``$CUPSCALE_MAX_OUTPUT_MEGAPIXELS``, 0 for
    none): a server that takes prompts from anyone would otherwise spend minutes to hours on one, holding
    gigabytes. The message gives the size and memory it would take, the limit, and the setting that raises
    it; ``{size}`` names the inputs that set the size."""
    limit = env_limit(OUTPUT_MEGAPIXELS_VAR, DEFAULT_OUTPUT_MEGAPIXELS)
    pixels = batch * out_hw[0] * out_hw[1]
    if limit and pixels > limit * 10 ** 6:
        raise InputError(f"The {out_hw[1]}x{out_hw[0]} output of {batch} image(s) is {pixels / 1e6:.0f} megapixels "
                         f"({gib(4 * channels * pixels)} as float32), past this server's limit of {limit}: lower "
                         f"{{size}}, or raise ${OUTPUT_MEGAPIXELS_VAR} where ComfyUI starts (0 = no limit).",
                         size="size")


def working_bytes(model: ImplicitImageFunction, x: torch.Tensor, tile: int, max_points: int = 32768) -> int:
    """A rough peak of :func:`render` beside its output, for the host's memory manager: the
    features (whole map for a global extractor, else a crop), one tile's projected codes, and
    about six hidden-width activations per point of a chunk."""
    batch, _, h, w = x.shape
    hidden = model.head.imnet.layers[0].out_features
    side = tile + 2 * (model.receptive_radius or 0)
    feature_cells = h * w if model.receptive_radius is None else min(side, h) * min(side, w)
    per_image = 8 * model.head.feat_dim * feature_cells + hidden * ((tile + 2) ** 2 + 6 * max_points)
    return x.element_size() * batch * per_image


def features_of_window(model: ImplicitImageFunction, x: torch.Tensor, t: OutputTile, max_margin: int) -> torch.Tensor:
    """Features of the codes ``t.codes_y`` x ``t.codes_x``, computed on a crop of ``x`` that
    reaches ``margin`` codes further on every side where the image goes on."""
    margin = min(model.receptive_radius, max_margin)
    h, w = x.shape[-2:]
    (y0, y1), (x0, x1) = t.codes_y, t.codes_x
    cy0, cy1 = max(y0 - margin, 0), min(y1 + margin, h)
    cx0, cx1 = max(x0 - margin, 0), min(x1 + margin, w)
    feat = model.features(x[..., cy0:cy1, cx0:cx1])
    return feat[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]


def output_size(in_hw: tuple[int, int], scale_by: float, width: int = 0, height: int = 0,
                max_side: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """The output (height, width): ``width`` x ``height`` when both are set, one of them with the
    input's aspect ratio, else the input times ``scale_by``."""
    h, w = in_hw
    if width < 0 or height < 0:
        raise ValueError(f"width = {width}, height = {height}: give a positive size in pixels, or 0 to "
                         f"take it from scale_by or the aspect ratio.")
    if width and height:
        size = (height, width)
    elif width:
        size = (max(1, round(h * width / w)), width)
    elif height:
        size = (height, max(1, round(w * height / h)))
    else:
        if not (math.isfinite(scale_by) and scale_by > 0):
            raise ValueError(f"scale_by = {scale_by}: the scale factor must be positive (e.g. 1.5, 2.5, "
                             f"3.3), or set width/height for an exact size.")
        size = (max(1, round(h * scale_by)), max(1, round(w * scale_by)))
    if max(size) > max_side:
        raise InputError(f"{{source}} is {w}x{h}, so the output would be {size[1]}x{size[0]} pixels, beyond the "
                         f"maximum of {max_side} per side: lower scale_by (or width/height), or upscale in two "
                         f"stages with tiled diffusion in between.", source="source")
    return size


def to_signed(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's IMAGE (``B, H, W, C`` in 0..1) as the ``B, C, H, W`` in -1..1 that LIIF's
    released models and the LDM autoencoders take (their ``data_norm``: sub 0.5, div 0.5)."""
    return image.movedim(-1, 1) * 2 - 1


def to_image_(signed: torch.Tensor) -> torch.Tensor:
    """In place: channels-last -1..1 model output to a 0..1 IMAGE."""
    return signed.mul_(0.5).add_(0.5).clamp_(0, 1)
