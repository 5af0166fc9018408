"""CLIP reranking of candidate edits (Multi-Stage Blended Diffusion, first stage).

The first stage edits the masked region several times with different noise; the candidates differ
in how well they follow the prompt, so the one whose CLIP image embedding is closest to the text
embedding goes on to the upscaling stages (the paper ranks a batch of 5 by CLIP similarity). The
edit occupies only the masked part of the picture, so with a mask the candidates are scored on a
square crop around it: CLIP sees the edit with some context instead of a thumbnail of the whole
image, and its square centre crop cuts nothing off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..guards import check_text
from ..images import to_uint8


@dataclass(frozen=True)
class Ranking:
    """Candidates ordered best first: their indices in the batch and their CLIP scores."""

    indices: tuple[int, ...]
    scores: tuple[float, ...]

    def describe(self) -> str:
        return ", ".join(f"#{i}: {s:.3f}" for i, s in zip(self.indices, self.scores))


def mask_square(mask: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, size_y, size_x) of the smallest square around the mask's non-zero area, moved to lie
    inside the image (and cut to it where the image is narrower than the square)."""
    m = mask.reshape(-1, *mask.shape[-2:]).amax(0)
    if m.shape != (height, width):
        raise InputError(f"{{mask}} is {m.shape[1]}x{m.shape[0]} pixels but the candidates are {width}x{height}: "
                         f"give the mask of the stage the candidates were made at.", mask="mask")
    ys, xs = torch.nonzero(m > 0, as_tuple=True)
    if len(ys) == 0:
        raise InputError("{mask} is empty: give the mask of the edited area, or none to score whole images.",
                         mask="mask")
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(bottom - top, right - left)
    size_y, size_x = min(side, height), min(side, width)

    def place(start: int, end: int, size: int, limit: int) -> int:
        centred = (start + end - size) // 2
        return min(max(centred, 0), limit - size)

    return place(top, bottom, size_y, height), place(left, right, size_x, width), size_y, size_x


def rgb_bytes(images: torch.Tensor) -> list[np.ndarray]:
    """A host IMAGE batch (B, H, W, C floats in [0, 1]) as RGB byte arrays, as CLIP's processor takes."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise InputError(f"{{images}} has shape {tuple(images.shape)}: give a batch of RGB images (B, H, W, 3).",
                         images="images")
    return list(to_uint8(images))


@torch.inference_mode()
def clip_scores(model, processor, images: torch.Tensor, text: str, device: torch.device | str = "cpu",
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's image-text logits (cosine similarity x logit scale, as ``logits_per_image``), one per image."""
    check_text(text, "text")
    if not text.strip():
        raise InputError("{text} is empty: give the prompt the candidates were made with.", text="text")
    if mask is not None:
        top, left, sy, sx = mask_square(mask, images.shape[1], images.shape[2])
        images = images[:, top:top + sy, left:left + sx]
    inputs = processor(text=[text], images=rgb_bytes(images), return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return model(**inputs).logits_per_image[:, 0].float().cpu()


def best_k(scores: torch.Tensor, k: int) -> Ranking:
    """The ``k`` best candidates, highest score first; ties keep batch order."""
    if not 1 <= k <= len(scores):
        raise InputError(f"{{keep}} = {k}: choose between 1 and the number of candidates ({len(scores)}).",
                         keep="keep")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:k]
    return Ranking(tuple(order), tuple(float(scores[i]) for i in order))
