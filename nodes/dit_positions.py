"""Which DiT a MODEL holds, and the object patches that give each of its tiles its place in the whole image
(core: cupscale.tiling.positions).

The models build their positions inside forward, where no hook reaches: Flux (Flux.2 too) and Qwen-Image in
``process_img`` (RoPE ids), SD3 in ``cropped_pos_embed`` (its learned table), Chroma, HiDream and Z-Image inline,
handing the ids to their rotary embedder (``pe_embedder`` / ``rope_embedder``, an EmbedND). TiledBlendedDiffusion
patches those objects on its clone (``add_object_patch``: the host sets them while that clone is loaded and puts
the originals back after) with callables that, inside a tile evaluation, move the ids or table crops to the
tiles' places. The tile evaluation says which tiles run through :data:`ACTIVE`, set around the model call;
any other call (plain sampling, the prior's capture pass, reference latents) gets the model's own positions.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from ..cupscale.tiling.positions import centred_shift, grid_ids, id_offsets, table_crops
from .host import Chroma, Flux, HiDreamImageTransformer2DModel, MMDiT, NextDiT, QwenImageTransformer2DModel, UNetModel

KINDS = {Flux: "flux", MMDiT: "sd3", QwenImageTransformer2DModel: "qwen_image", Chroma: "chroma",
         HiDreamImageTransformer2DModel: "hidream"}
"""The DiT families the pack tiles, by their ComfyUI class (subclasses such as Flux Kontext and Chroma Radiance
included; Flux.2 is the Flux class)."""
if hasattr(NextDiT, "embed_all"):  # Z-Image's layout (late 2025): each image's ids built apart from the text's
    KINDS[NextDiT] = "z_image"

IMAGE_FIRST = {"chroma": False, "hidream": True, "z_image": True}
"""Where the models that build their ids inline put the image's ids in what their EmbedND gets: after the text
(Chroma), before it (HiDream), or alone, padded after (Z-Image embeds the text's and the image's ids apart)."""


def dit_kind(model_patcher) -> str | None:
    """The family (a value of :data:`KINDS`) of a MODEL's DiT; None for UNets and others."""
    net = model_patcher.model.diffusion_model
    return next((kind for cls, kind in KINDS.items() if isinstance(net, cls)), None)


def check_known(model_patcher, node: str) -> None:
    """A model that is neither a UNet nor a DiT of :data:`KINDS` would be tiled with its tiles' positions wrong
    (each tile numbered as an image of its own, cut across patches): refuse it by name."""
    net = model_patcher.model.diffusion_model
    if dit_kind(model_patcher) is None and not isinstance(net, UNetModel):
        name = f"{type(net).__module__}.{type(net).__qualname__}"
        raise ValueError(f"model: {node} does not know this model ({name}); it tiles UNets (SD1.5, SDXL) and the DiTs "
                         f"{', '.join(sorted(set(KINDS.values())))}. Use one of those, or sample it untiled.")


def patch_cells(model_patcher) -> int:
    """Latent cells per patch side: the DiT's (2 for most, 1 for Flux.2), 1 for a UNet (its tiles need no
    alignment)."""
    net, kind = model_patcher.model.diffusion_model, dit_kind(model_patcher)
    if kind == "sd3":
        return net.x_embedder.patch_size[0]
    return net.patch_size if kind else 1


@dataclass
class TilePlace:
    """The tiles of one evaluation: each item's tile origin and the sizes, in patches; ``whole``: the tiles are
    positioned in the whole image (else each as an image of its own). Device copies of the id offsets are made
    once per place (a copy from the host at every call would wait for the device)."""

    origins: tuple[tuple[int, int], ...]
    tile_hw: tuple[int, int]
    whole_hw: tuple[int, int]
    whole: bool = True
    moved: dict = field(default_factory=dict)

    @property
    def image_hw(self) -> tuple[int, int]:
        """The size, in patches, of the image the tiles' positions belong to."""
        return self.whole_hw if self.whole else self.tile_hw

    def own_grid(self, like: torch.Tensor) -> torch.Tensor:
        """(tile patches, 2) on ``like``'s device: the (row, column) ids a tile gets run alone."""
        key = (like.device, like.dtype, "grid")
        if key not in self.moved:
            self.moved[key] = grid_ids(self.tile_hw).to(like)
        return self.moved[key]

    def offsets(self, like: torch.Tensor, centred: bool) -> torch.Tensor:
        key = (like.device, like.dtype, centred, like.shape[-1])
        if key not in self.moved:
            shift = centred_shift(self.tile_hw, self.whole_hw) if centred else (0, 0)
            self.moved[key] = id_offsets(self.origins, shift, like.shape[-1]).to(like)
        return self.moved[key]


ACTIVE: ContextVar[TilePlace | None] = ContextVar("cupscale_tile_place", default=None)


@dataclass(frozen=True)
class ModelCall:
    """What a model call's positions may depend on beyond its ids: sigma (on the model's device) and the latent's
    size in cells. Set around each call by :func:`model_call`; None outside one."""

    sigma: torch.Tensor
    cells: tuple[int, int]


CALL: ContextVar[ModelCall | None] = ContextVar("cupscale_model_call", default=None)


@contextmanager
def model_call(x: torch.Tensor, sigma: torch.Tensor):
    """Publish a call of the model on latent ``x`` at ``sigma`` (the sampler's, or the prior's capture pass)."""
    token = CALL.set(ModelCall(sigma.reshape(-1)[0], tuple(x.shape[-2:])))
    try:
        yield
    finally:
        CALL.reset(token)


class RopeIds:
    """Over ``process_img`` (Flux; Qwen-Image, whose ids are centred): the main image's ids moved to the
    tiles' places. Reference latents (a non-zero index or offset) keep theirs."""

    def __init__(self, original, centred: bool):
        self.original, self.centred = original, centred
        self.signature = inspect.signature(original)

    def __call__(self, x, *args, **kwargs):
        out = self.original(x, *args, **kwargs)
        place = ACTIVE.get()
        if place is None or not place.whole or out[1].shape[0] != len(place.origins):
            return out
        # Whatever else the host passes (transformer_options since late 2025) goes on untouched; the image's
        # index and offsets are read by name from the host's own signature.
        called = self.signature.bind(x, *args, **kwargs).arguments
        if any(called.get(name) for name in ("index", "h_offset", "w_offset")):
            return out
        return (out[0], out[1] + place.offsets(out[1], self.centred), *out[2:])


class GridIds(torch.nn.Module):
    """Over the EmbedND of Chroma, HiDream and Z-Image, which number a tile's patches from (0, 0) inline: the
    run of the tile's own grid ids (:data:`IMAGE_FIRST` says where it lies) moved to the tiles' places.

    The run is moved only where it holds the tile's own grid (a call for the text, a reference or ids the host
    changed goes on as it came), tested on the device so no call waits for it. Z-Image embeds ids for one item
    and broadcasts: inside a tile evaluation every call gets them per item, so text and image tables agree."""

    def __init__(self, original: torch.nn.Module, first: bool):
        super().__init__()
        self.original, self.first = original, first

    def forward(self, ids: torch.Tensor, *args, **kwargs):
        place = ACTIVE.get()
        items = len(place.origins) if place is not None and place.whole else 0
        if items and ids.shape[0] == 1:
            ids = ids.expand(items, *ids.shape[1:])
        n = place.tile_hw[0] * place.tile_hw[1] if items else 0
        if not items or ids.shape[0] != items or ids.shape[1] < n:
            return self.original(ids, *args, **kwargs)
        span = slice(0, n) if self.first else slice(ids.shape[1] - n, None)
        found = (ids[:, span, 1:3] == place.own_grid(ids)).all()
        moved = ids.clone()
        moved[:, span] += place.offsets(ids, False) * found
        return self.original(moved, *args, **kwargs)


class TableCrops:
    """Over SD3's ``cropped_pos_embed``: each tile's crop of the table where the whole image's crop holds it.
    An image larger than the table (over 3072 px for SD3.5) has no such crop: the tiles keep their own."""

    def __init__(self, original, net):
        self.original, self.net = original, net
        self.signature = inspect.signature(original)

    def __call__(self, hw, *args, **kwargs):
        place = ACTIVE.get()
        table = self.net.pos_embed
        if place is not None and place.whole and table is not None:
            crops = table_crops(table, place.tile_hw, place.whole_hw, place.origins)
            if crops is not None:
                device = self.signature.bind(hw, *args, **kwargs).arguments.get("device")
                return crops.to(device) if device is not None else crops
        return self.original(hw, *args, **kwargs)


def embedder_name(kind: str) -> str:
    """The attribute holding a DiT's rotary embedder: ``rope_embedder`` for Z-Image, ``pe_embedder`` elsewhere."""
    return "rope_embedder" if kind == "z_image" else "pe_embedder"


def add_position_patches(model_patcher) -> None:
    """Patch ``model_patcher`` (a clone) so its tiles carry their place; a no-op for models without one."""
    kind = dit_kind(model_patcher)
    if kind in ("flux", "qwen_image"):
        original = model_patcher.get_model_object("diffusion_model.process_img")
        if not isinstance(original, RopeIds):
            model_patcher.add_object_patch("diffusion_model.process_img", RopeIds(original, kind == "qwen_image"))
    elif kind in IMAGE_FIRST:
        name = f"diffusion_model.{embedder_name(kind)}"
        original = model_patcher.get_model_object(name)
        if not isinstance(original, GridIds):
            model_patcher.add_object_patch(name, GridIds(original, IMAGE_FIRST[kind]))
    elif kind == "sd3":
        original = model_patcher.get_model_object("diffusion_model.cropped_pos_embed")
        if not isinstance(original, TableCrops):
            model_patcher.add_object_patch("diffusion_model.cropped_pos_embed",
                                           TableCrops(original, model_patcher.model.diffusion_model))
