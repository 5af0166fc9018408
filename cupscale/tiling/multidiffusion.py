"""MultiDiffusion over overlapping tiles: gather tiles into batches, merge predictions.

MultiDiffusion (Bar-Tal et al. 2023) takes, at every step, the prediction for the whole latent as
the weighted average of the per-tile predictions. We weight with feathered ramps across each
overlap so that neighbouring tiles cross-fade (the ramps of two neighbours sum to one), which hides
the seams that uniform weights leave.

Batch layout. The host evaluates a batch made of ``chunks`` (cond, uncond, ...) of ``n`` images
each. A batch of ``k`` tiles is laid out chunk-major, ``(chunk, tile, image)``, so that every chunk
stays contiguous: the host's per-chunk bookkeeping (``cond_or_uncond``) and its ControlNet hint
broadcasting keep working unchanged.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .grid import Box, RegionGrid


def feather_ramp(starts: list[int], tile: int) -> torch.Tensor:
    """Per-tile 1D weights: a linear ramp over each overlap with a neighbour, 1 elsewhere.

    Ramps only face neighbours, never the latent's border, so border pixels keep full weight.
    """
    ramps = torch.ones(len(starts), tile)
    for i, start in enumerate(starts):
        if i > 0:
            shared = starts[i - 1] + tile - start
            ramps[i, :shared] = (torch.arange(shared) + 0.5) / shared
        if i + 1 < len(starts):
            shared = start + tile - starts[i + 1]
            ramps[i, tile - shared:] = torch.minimum(ramps[i, tile - shared:],
                                                      (torch.arange(shared, 0, -1) - 0.5) / shared)
    return ramps


def tile_weights(grid: RegionGrid) -> torch.Tensor:
    """Feathered weights of every tile, shape ``(tiles, tile_height, tile_width)``."""
    ys = sorted({b.top for b in grid.boxes})
    xs = sorted({b.left for b in grid.boxes})
    wy = feather_ramp(ys, grid.tile_height)
    wx = feather_ramp(xs, grid.tile_width)
    return torch.stack([wy[ys.index(b.top)][:, None] * wx[xs.index(b.left)][None, :] for b in grid.boxes])


@dataclass(frozen=True)
class TileBatch:
    """The tiles in one model evaluation, published to attention patches.

    ``boxes[t]`` is the latent box of tile ``t``; batch item ``i`` belongs to tile
    ``(i % (tiles * images)) // images``.
    """

    grid: RegionGrid
    indices: tuple[int, ...]
    chunks: int
    images: int

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(self.grid.boxes[i] for i in self.indices)

    def tile_of_item(self, item: int) -> int:
        """Grid index of the tile that batch item ``item`` belongs to."""
        k = len(self.indices)
        return self.indices[(item % (k * self.images)) // self.images]


def gather_tiles(x: torch.Tensor, boxes: tuple[Box, ...], chunks: int) -> torch.Tensor:
    """Crop ``boxes`` out of ``x`` (batch = chunks x images) into one ``(chunk, tile, image)`` batch."""
    per_chunk = x.shape[0] // chunks
    parts = []
    for c in range(chunks):
        xc = x[c * per_chunk:(c + 1) * per_chunk]
        parts.extend(xc[(..., *b.slices())] for b in boxes)
    return torch.cat(parts)


def repeat_per_tile(t: torch.Tensor, chunks: int, tiles: int) -> torch.Tensor:
    """Repeat a per-item tensor (batch = chunks x images) for ``tiles`` tiles, chunk-major."""
    per_chunk = t.shape[0] // chunks
    t = t.reshape(chunks, 1, per_chunk, *t.shape[1:])
    return t.expand(chunks, tiles, per_chunk, *t.shape[3:]).reshape(chunks * tiles * per_chunk, *t.shape[3:])


class TileMerger:
    """Accumulates weighted tile predictions and returns their MultiDiffusion average."""

    def __init__(self, like: torch.Tensor, grid: RegionGrid, weights: torch.Tensor):
        self.grid = grid
        self.weights = weights.to(like.device, like.dtype)
        self.total = torch.zeros_like(like)
        # (1, ..., h, w): latents may carry a frame axis before the image's (Qwen-Image: b, c, 1, h, w)
        self.norm = torch.zeros((1,) * (like.ndim - 2) + like.shape[-2:], device=like.device, dtype=like.dtype)

    def add(self, out: torch.Tensor, indices: tuple[int, ...], chunks: int) -> None:
        k = len(indices)
        per_chunk = self.total.shape[0] // chunks
        out = out.to(self.total.device).reshape(chunks, k, per_chunk, *out.shape[1:])
        for j, i in enumerate(indices):
            rows, cols = self.grid.boxes[i].slices()
            w = self.weights[i]
            self.total[..., rows, cols] += (out[:, j] * w).reshape(-1, *out.shape[3:])
            self.norm[..., rows, cols] += w

    def result(self, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted average; cells no tile covered (skipped tiles) take ``fallback``."""
        covered = self.norm > 0
        merged = self.total / torch.where(covered, self.norm, torch.ones_like(self.norm))
        if fallback is not None:
            merged = torch.where(covered, merged, fallback)
        return merged


def tile_value(value, x: torch.Tensor, boxes: tuple[Box, ...], chunks: int):
    """A model-call entry for a tile batch (conditioning, a hint's cond): maps the size of ``x``
    cropped to ``boxes``, other per-item tensors repeated per tile, anything else as it is."""
    if not torch.is_tensor(value) or value.shape[0] != x.shape[0]:
        return value
    if value.ndim == x.ndim and value.shape[-2:] == x.shape[-2:]:
        return gather_tiles(value, boxes, chunks)
    return repeat_per_tile(value, chunks, len(boxes))


def balanced_sizes(tiles: int, most: int) -> list[int]:
    """``tiles`` split into as few calls as batches of ``most`` need, as evenly as they go (9 by 4: 3, 3, 3, not
    4, 4, 1): the same calls and memory bound, without a last call too small to use the device (or, on a CPU,
    to spread its fixed cost), and one batch shape where tiles divide evenly."""
    calls = -(-tiles // max(most, 1))
    return [tiles // calls + (i < tiles % calls) for i in range(calls)] if tiles else [1]


Evaluate = Callable[[TileBatch, torch.Tensor], torch.Tensor]


def run_tiles(x: torch.Tensor, grid: RegionGrid, weights: torch.Tensor, batch_size: int | Sequence[int],
              evaluate: Evaluate | Sequence[Evaluate], *, chunks: int = 1, tiles: list[int] | None = None,
              report: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One MultiDiffusion evaluation: ``evaluate(batch, tile_x)`` on ``tiles`` (default: all) in batches of at most
    ``batch_size``, evenly split (:func:`balanced_sizes`), or of the sizes given (in order, the last repeated),
    the predictions merged with the feathered ``weights``; cells no tile covers keep ``x``.

    ``x`` holds ``chunks`` chunks of images; ``evaluate`` gets and returns them laid out chunk-major. It
    is the caller's model call with whatever rides along (conditioning crops, hints, interruption);
    ``report(done, total)`` hears of each finished batch.

    Several ``evaluate`` (one per device, each moving its tiles there) share the batches, batch ``i`` going to
    ``evaluate[i % n]``, each device working through its own in order while the others run; the predictions
    come back to ``x``'s device and are merged there in batch order, so the result equals one device's.
    """
    tiles = list(range(len(grid))) if tiles is None else tiles
    images = x.shape[0] // chunks
    sizes = balanced_sizes(len(tiles), batch_size) if isinstance(batch_size, int) else list(batch_size)
    batches, start = [], 0
    while start < len(tiles):
        size = sizes[min(len(batches), len(sizes) - 1)]
        batches.append(TileBatch(grid, tuple(tiles[start:start + size]), chunks, images))
        start += size
    evaluators = list(evaluate) if isinstance(evaluate, Sequence) else [evaluate]
    merger = TileMerger(x, grid, weights)
    if len(evaluators) == 1:
        outputs = (evaluate_batch(evaluators[0], b, x) for b in batches)
        return merge_in_order(merger, batches, outputs, report, fallback=x)
    devices = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cupscale-tiles-{d}")
               for d in range(len(evaluators))]
    try:
        futures = [devices[i % len(devices)].submit(evaluate_batch, evaluators[i % len(devices)], b, x)
                   for i, b in enumerate(batches)]
        return merge_in_order(merger, batches, (f.result() for f in futures), report, fallback=x)
    finally:
        for device in devices:
            device.shutdown(wait=True, cancel_futures=True)


def evaluate_batch(evaluate: Evaluate, batch: TileBatch, x: torch.Tensor) -> torch.Tensor:
    return evaluate(batch, gather_tiles(x, batch.boxes, batch.chunks))


def merge_in_order(merger: TileMerger, batches: list[TileBatch], outputs, report, fallback: torch.Tensor):
    """Merged in batch order whichever device finished first: the sums are then one device's, bit for bit."""
    done, total = 0, sum(len(b.indices) for b in batches)
    for batch, out in zip(batches, outputs):
        merger.add(out, batch.indices, batch.chunks)
        done += len(batch.indices)
        if report is not None:
            report(done, total)
    return merger.result(fallback=fallback)


def auto_batch_size(tiles: int, free_bytes: float, required_bytes: Callable[[int], float]) -> int:
    """The largest number of tiles per model call whose memory, ``required_bytes(k)`` (the model's own estimate
    for a batch of ``k`` tiles), fits in ``free_bytes``; 1 when even one tile does not fit (then the host's own
    offloading has to make room, as it would untiled), never more than ``tiles``.

    Tiles cost the same, so a larger batch only saves per-call overhead; the estimate grows with ``k``, so
    the search stops at the first batch that does not fit.
    """
    best = 1
    for k in range(2, tiles + 1):
        if required_bytes(k) > free_bytes:
            break
        best = k
    return best


def doubling(most: int) -> list[int]:
    """1, 2, 4, ... below ``most``, then ``most``: the batch sizes a BatchTuner tries."""
    sizes = [1]
    while sizes[-1] * 2 < most:
        sizes.append(sizes[-1] * 2)
    return sizes + [most] if most > 1 else sizes


LATENCY_MARGIN = 1.1
"""A larger CPU batch is picked only if it saves more than a tenth of the time per tile: its longer single ops (one
self-attention over all its tiles' tokens) are where a cancel waits, 2.1-2.6 s at four SD1.5 tiles of 512 px on
a 2-core CPU against 0.4-0.7 s at one, for 5% less time (bench/interrupt_latency.py, host rows)."""


@dataclass
class BatchTuner:
    """Tiles per call picked by measured time, where memory does not bound the batch (the CPU).

    On a GPU a larger batch fills the device, so the batch is the most tiles the memory holds. On a CPU the
    cores are busy from the first tile on and a larger batch only spreads each call's fixed cost (dispatching
    every layer's ops; streaming weights larger than the caches) over more tiles, while its activations grow
    past the caches and fresh pages are faulted in on every call. Which wins depends on the model and the CPU,
    and both were measured here (bench/tiled_diffusion.py, bench/real_scale.py): on the tiny SD1.5 UNet the
    time per tile falls up to 8 tiles and rises again at 16 (1.33x), while on the real SD1.5 UNet it still falls
    at 4 tiles (2.76 s per item at 1 tile, 2.25 at 4, one thread). So the tuner measures instead of guessing:
    the first evaluations of a run try ``doubling(most)`` in that order (each evaluation packs the trials in
    order while they fit in its tiles; tiles left over run at its last trial), and from then on every call
    takes the smallest size within :data:`LATENCY_MARGIN` of the least measured time per tile.

    The plan of evaluation ``n`` depends only on ``n`` and the pick, and the pick is made once per tuner
    (kept per patched model and latent shape), so every later run of the same prompt makes the same calls and
    gives the same result bit for bit; batch composition moves the result by ~1e-6.
    """

    most: int
    tiles: int
    seconds_per_tile: dict[int, float] = field(default_factory=dict)
    choice: int | None = None

    def __post_init__(self):
        self.trials = self.pack(doubling(min(self.most, self.tiles)), self.tiles)
        if len(self.trials) == 1 and len(self.trials[0]) == 1:
            self.choice = self.trials[0][0]

    @staticmethod
    def pack(sizes: list[int], tiles: int) -> list[list[int]]:
        """The trial sizes, in order, into evaluations of ``tiles`` tiles each."""
        plans, room = [[]], tiles
        for size in sizes:
            if size > room:
                plans.append([])
                room = tiles
            plans[-1].append(size)
            room -= size
        return plans

    def sizes(self, evaluation: int) -> list[int]:
        """The batch sizes of the run's ``evaluation``-th model evaluation (run_tiles' ``batch_size``)."""
        if evaluation < len(self.trials):
            return self.trials[evaluation]
        if self.choice is None:
            timed = {s: self.seconds_per_tile.get(s, float("inf")) for plan in self.trials for s in plan}
            best = min(timed.values())
            self.choice = min(s for s, seconds in timed.items() if seconds <= best * LATENCY_MARGIN)
        return balanced_sizes(self.tiles, self.choice)

    def timed(self, evaluate: Callable[[TileBatch, torch.Tensor], torch.Tensor]):
        """``evaluate``, recording each batch's seconds per tile until the pick is made (the best of what each
        size measured). On the CPU the call has finished when it returns: timing it waits for nothing."""
        if self.choice is not None:
            return evaluate

        def run(batch: TileBatch, tile_x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = evaluate(batch, tile_x)
            k = len(batch.indices)
            per_tile = (time.perf_counter() - start) / k
            self.seconds_per_tile[k] = min(self.seconds_per_tile.get(k, float("inf")), per_tile)
            return out
        return run
