"""TiledBlendedDiffusion: MultiDiffusion over overlapping tiles, optionally blended with a mask (the wrappers:
nodes/tiled_sampling.py; the core: cupscale.tiling)."""
from __future__ import annotations

from ..cupscale.guards import check_finite, check_not_empty
from ..cupscale.tiling.grid import check_tile_settings
from .dit_positions import add_position_patches, check_known, dit_kind, patch_cells
from .host import WrappersMP, io
from .host_services import add_block_checks
from .inputs import advanced, check_numbers, tile_inputs, widget_names, widgets_valid
from .tile_devices import add_replicas, extra_devices, named_devices
from .tiled_sampling import WRAPPER_KEY, TiledDiffusion, has_sdxl_crops, latent_ratio


def check_patch_multiples(model, ratio: int, **sizes: int) -> None:
    """A DiT's tiles and overlap must be whole patches (16 px for 2x2 patches on an x8 VAE), so that every tile
    is cut into the same patches as the whole image."""
    step = patch_cells(model) * ratio
    for name, value in sizes.items():
        if value % step:
            raise ValueError(f"{name} = {value}: this model ({dit_kind(model)}) works on patches of {step} pixels; "
                             f"use a multiple of {step} (e.g. {max(step, round(value / step) * step)}).")


class TiledBlendedDiffusion(io.ComfyNode):
    """MODEL -> MODEL whose every evaluation runs as feathered, batched tiles (MultiDiffusion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TiledBlendedDiffusion",
            display_name="Tiled Blended Diffusion (cupscale)",
            category="cupscale",
            description=("Splits every model evaluation into overlapping tiles, runs them in batches and merges "
                         "them with feathered weights (MultiDiffusion). Tiles larger than the latent are clamped "
                         "to it. With a mask, the area outside it stays the sampled latent (blended diffusion); "
                         "background_lowpass > 0 keeps only its low frequencies there (Multi-Stage Blended "
                         "Diffusion). On SDXL each tile is conditioned as a crop of the whole image; on Flux, Flux.2, "
                         "SD3, Qwen-Image, Chroma, HiDream and Z-Image each tile is positioned where it lies in the "
                         "whole image."),
            inputs=[
                io.Model.Input("model"),
                *tile_inputs("Tile", "the model's native size; neighbouring tiles cross-fade over the overlap"),
                io.Int.Input("tiles_per_batch", default=0, min=0, max=256,
                             tooltip="Tiles evaluated together in one model call; 0 = automatic: as many as the "
                                     "free memory holds by the model's own estimate."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to generate; outside it the sampled latent is kept. Same size as the image."),
                io.Float.Input("background_lowpass", default=0.0, min=0.0, max=64.0, step=0.5, optional=True,
                               tooltip="Gaussian sigma in latent cells: outside the mask keep only the latent's low "
                                       "frequencies (0 = keep all)."),
                advanced(io.Boolean.Input("sdxl_crop_conditioning", default=True, optional=True,
                                          tooltip="SDXL only: condition each tile as a crop of the whole image "
                                                  "(crop top/left = the tile's offset in pixels; original and "
                                                  "target size stay the image's). Off: every tile gets the "
                                                  "conditioning's own crop. Other models ignore it.")),
                advanced(io.Boolean.Input("dit_tile_positions", default=True, optional=True,
                                          tooltip="DiTs (Flux, SD3, Qwen-Image, Chroma, HiDream, Z-Image): each "
                                                  "tile's positional embedding is that of its place in the whole "
                                                  "image, so neighbouring tiles agree where things are. Off: every "
                                                  "tile is positioned as an "
                                                  "image of its own, within the trained range at any output size "
                                                  "(DiTPositionExtrapolation then reads the tile's size). UNets "
                                                  "ignore it.")),
                advanced(io.String.Input("devices", default="", optional=True,
                                         tooltip="Devices to share each step's tiles over, the model's own "
                                                 "among them: 'cuda:0, cuda:1', or 'all'. Empty: the model's "
                                                 "device only. Each extra device holds a copy of the model "
                                                 "(ComfyUI's multi-GPU copies; needs a ComfyUI that has them). "
                                                 "Tiles with a ControlNet stay on the model's device.")),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, tile_width=None, tile_height=None, overlap=None, tiles_per_batch=None,
                        background_lowpass=None, devices=None) -> bool | str:
        if isinstance(devices, str):
            try:
                named_devices(devices)
            except ValueError as error:
                return str(error)
        return widgets_valid(cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap,
                             tiles_per_batch=tiles_per_batch, background_lowpass=background_lowpass)

    @classmethod
    def execute(cls, model, tile_width, tile_height, overlap, tiles_per_batch, mask=None,
                background_lowpass=0.0, sdxl_crop_conditioning=True, dit_tile_positions=True,
                devices="") -> io.NodeOutput:
        with widget_names():
            check_tile_settings(tile_width, tile_height, overlap)
        if mask is not None:
            with widget_names(f="mask"):
                check_not_empty(mask, "f")
                check_finite(mask, "f", "TiledBlendedDiffusion's mask")
        if tiles_per_batch < 0:
            raise ValueError(f"tiles_per_batch = {tiles_per_batch} must be 0 (automatic) or a number of tiles.")
        check_numbers(cls, background_lowpass=background_lowpass)
        check_known(model, "TiledBlendedDiffusion")
        ratio = latent_ratio(model)
        check_patch_multiples(model, ratio, tile_width=tile_width, tile_height=tile_height, overlap=overlap)
        devices = extra_devices(model, named_devices(devices))
        crops = ratio if sdxl_crop_conditioning and has_sdxl_crops(model.model) else None
        places = patch_cells(model) if dit_kind(model) else None
        patch = TiledDiffusion(tile_height // ratio, tile_width // ratio, overlap // ratio, tiles_per_batch,
                               mask, background_lowpass, crops, places, dit_tile_positions)
        patched = model.clone()
        add_block_checks(patched)
        add_replicas(patched, devices)
        if places and dit_tile_positions:
            add_position_patches(patched)
        for kind, fn in ((WrappersMP.OUTER_SAMPLE, patch.outer_sample),
                         (WrappersMP.CALC_COND_BATCH, patch.calc_cond_batch),
                         (WrappersMP.APPLY_MODEL, patch.apply_model)):
            patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
            patched.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return io.NodeOutput(patched)


NODES = [TiledBlendedDiffusion]
