"""Arbitrary-scale decoding: LIIF upscaling of images and implicit decoding of latents.

Loaders read the official layouts from two model folders registered with ComfyUI, building the layers from
ComfyUI's own ops (no random initialisation before the weights are read):
``models/liif`` (LIIF's released EDSR-baseline-LIIF / RDN-LIIF) and ``models/implicit_decoders``
(first-stage decoders of arbitrary-scale latent diffusion, e.g. from ``train/train_implicit_decoder.py``).
The maths is in ``cupscale.liif.model``; checkpoint layouts and their checks in ``cupscale.liif.checkpoints``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..cupscale.liif import model as liif
from ..cupscale.liif.checkpoints import ImplicitDecoder, load_implicit_decoder, load_liif
from ..cupscale.checkpoints import CheckpointError
from ..cupscale.guards import check_finite, check_fits, check_least_side, check_not_empty
from .host import folder_paths, io, model_management, ops
from .host_services import free_memory, progress_reporter, register_model_folder
from .inputs import widget_names, widgets_valid

LIIF_FOLDER = "liif"
DECODER_FOLDER = "implicit_decoders"
CATEGORY = "cupscale/upscaling"
MAX_SIDE = liif.MAX_OUTPUT_SIDE
ImplicitUpscaleModel = io.Custom("IMPLICIT_UPSCALE_MODEL")
ImplicitDecoderType = io.Custom("IMPLICIT_DECODER")

register_model_folder(LIIF_FOLDER)
register_model_folder(DECODER_FOLDER)


def run_on_device(model: liif.ImplicitImageFunction, x: torch.Tensor, out_hw: tuple[int, int],
                  tile: int, size: str) -> torch.Tensor:
    """Render on ComfyUI's device into a buffer on its intermediate device, with a progress bar
    over the query chunks of every tile and a check for the user's cancel between them. Refused first
    when the output is past the server's pixel budget or the free memory (``size``: the inputs setting it)."""
    device = model_management.get_torch_device()
    buffer_device = model_management.intermediate_device()
    with widget_names(batch="batch", size=size):
        liif.check_output_budget(x.shape[0], out_hw, model.head.out_dim)
        check_fits(x.shape[0] * out_hw[0] * out_hw[1] * model.head.out_dim * 4, free_memory(buffer_device),
                   f"The {out_hw[1]}x{out_hw[0]} output of {x.shape[0]} image(s) (float32)",
                   "lower {size} or split the {batch} into smaller ones.", batch="batch", size="size")
    out = torch.empty((x.shape[0], *out_hw, model.head.out_dim), dtype=torch.float32, device=buffer_device)
    needed = model_management.module_size(model) + liif.working_bytes(model, x, tile)
    model_management.free_memory(needed, device)
    progress = progress_reporter()
    model.to(device)
    try:
        with torch.inference_mode():
            liif.render(model, x.to(device, torch.float32), out_hw, tile=tile, on_progress=progress, out=out)
    finally:
        model.to(model_management.unet_offload_device())
    return liif.to_image_(out)


@contextmanager
def named_file(widget: str, name: str):
    """A file that cannot be used, as the ValueError of the input that chose it."""
    try:
        yield
    except CheckpointError as e:
        raise ValueError(f"{widget} = {name!r}: {e}") from None


class ImplicitUpscaleModelLoader(io.ComfyNode):
    """A LIIF checkpoint (official layout) from models/liif."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImplicitUpscaleModelLoader", display_name="Load Implicit Upscale Model (LIIF)", category=CATEGORY,
            description=("Loads a LIIF model (EDSR-baseline-LIIF or RDN-LIIF, as released by yinboc/liif) from "
                         "models/liif, for upscaling by any factor, including non-integer ones."),
            inputs=[io.Combo.Input("model_name", options=folder_paths.get_filename_list(LIIF_FOLDER),
                                   tooltip="A .pth from LIIF's README, placed in models/liif.")],
            outputs=[ImplicitUpscaleModel.Output()],
        )

    @classmethod
    def validate_inputs(cls, model_name=None) -> bool | str:
        return widgets_valid(cls, model_name=model_name)

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        with named_file("model_name", model_name):
            return io.NodeOutput(load_liif(folder_paths.get_full_path_or_raise(LIIF_FOLDER, model_name),
                                           ops.disable_weight_init))


class ImplicitUpscale(io.ComfyNode):
    """IMAGE -> IMAGE at any scale or exact size through LIIF."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImplicitUpscale", display_name="Implicit Upscale to Any Size (LIIF)", category=CATEGORY,
            description=("Upscales by any factor (x1.5, x2.5, x3.3) or to an exact size with a LIIF model: every "
                         "output pixel is queried from the image's features at its continuous position. Memory is "
                         "bounded by tiles and chunks of queries, beside the output image itself."),
            inputs=[
                ImplicitUpscaleModel.Input("implicit_model"),
                io.Image.Input("image"),
                io.Float.Input("scale_by", default=2.0, min=0.01, max=64.0, step=0.01,
                               tooltip="Output size as a multiple of the input; used when width and height are 0."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIDE, step=1,
                             tooltip="Exact output width; 0 = from height's aspect ratio or scale_by."),
                io.Int.Input("height", default=0, min=0, max=MAX_SIDE, step=1,
                             tooltip="Exact output height; 0 = from width's aspect ratio or scale_by."),
                io.Int.Input("tile_size", default=192, min=16, max=4096, step=16,
                             tooltip="Input pixels per tile side; lower it if memory runs out."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, scale_by=None, width=None, height=None, tile_size=None) -> bool | str:
        return widgets_valid(cls, scale_by=scale_by, width=width, height=height, tile_size=tile_size)

    @classmethod
    def execute(cls, implicit_model, image, scale_by, width, height, tile_size) -> io.NodeOutput:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"image has shape {tuple(image.shape)}; LIIF models take RGB images (B, H, W, 3): "
                             f"drop the alpha channel or convert to RGB first.")
        with widget_names(f="image", source="image"):
            check_not_empty(image, "f")
            check_finite(image, "f")
            out_hw = liif.output_size(tuple(image.shape[1:3]), scale_by, width, height)
        return io.NodeOutput(run_on_device(implicit_model, liif.to_signed(image), out_hw, tile_size,
                                           "scale_by (or width, height)"))


class ImplicitDecoderLoader(io.ComfyNode):
    """An implicit latent decoder from models/implicit_decoders."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImplicitDecoderLoader", display_name="Load Implicit Latent Decoder", category=CATEGORY,
            description=("Loads an implicit neural decoder (a VAE decoder trunk without up-sampling + LIIF, from "
                         "arbitrary-scale latent diffusion) from models/implicit_decoders: a Lightning first-stage "
                         "checkpoint of the paper's code, or a safetensors file from train/train_implicit_decoder.py. "
                         "Shapes are checked key by key."),
            inputs=[io.Combo.Input("decoder_name", options=folder_paths.get_filename_list(DECODER_FOLDER),
                                   tooltip="A decoder for the latent space you sample in.")],
            outputs=[ImplicitDecoderType.Output()],
        )

    @classmethod
    def validate_inputs(cls, decoder_name=None) -> bool | str:
        return widgets_valid(cls, decoder_name=decoder_name)

    @classmethod
    def execute(cls, decoder_name) -> io.NodeOutput:
        with named_file("decoder_name", decoder_name):
            return io.NodeOutput(load_implicit_decoder(folder_paths.get_full_path_or_raise(DECODER_FOLDER, decoder_name),
                                                       ops.disable_weight_init))


class ImplicitLatentDecode(io.ComfyNode):
    """LATENT -> IMAGE of any width and height through an implicit decoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImplicitLatentDecode", display_name="Implicit Latent Decode to Any Size", category=CATEGORY,
            description=("Decodes a latent to an image of any size: the decoder trunk runs at the latent's "
                         "resolution and a LIIF head renders each output pixel. Takes the LATENT as VAE Encode and "
                         "the samplers give it (raw VAE latents)."),
            inputs=[
                ImplicitDecoderType.Input("decoder"),
                io.Latent.Input("samples"),
                io.Int.Input("width", default=1024, min=1, max=MAX_SIDE, step=1),
                io.Int.Input("height", default=1024, min=1, max=MAX_SIDE, step=1),
                io.Int.Input("tile_size", default=128, min=8, max=2048, step=8,
                             tooltip="Latent cells per tile side for the rendering queries."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, tile_size=None) -> bool | str:
        return widgets_valid(cls, width=width, height=height, tile_size=tile_size)

    @classmethod
    def execute(cls, decoder: ImplicitDecoder, samples, width, height, tile_size) -> io.NodeOutput:
        latent = samples["samples"]
        channels = decoder.info.trunk.z_channels
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise ValueError(f"samples has shape {tuple(latent.shape)}, but the decoder takes {channels}-channel "
                             f"image latents (B, {channels}, h, w): it is an {decoder.info.describe()}. Use the "
                             f"decoder trained for this model's VAE.")
        with widget_names(f="samples", source="samples"):
            check_not_empty(latent, "f")
            check_finite(latent, "f")
            check_least_side(latent, "f", 2, "cells", "the decoder's trunk")
            out_hw = liif.output_size(tuple(latent.shape[-2:]), 1.0, width, height)
        return io.NodeOutput(run_on_device(decoder.model, latent, out_hw, tile_size, "width, height"))


NODES = [ImplicitUpscaleModelLoader, ImplicitUpscale, ImplicitDecoderLoader, ImplicitLatentDecode]
