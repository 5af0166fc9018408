"""SFAControlNetLoader and SFAControlNetApply: XPSR's SFA ControlNet and the UNet's Conditional Attention.

Two hops to the maths: the control (nodes/sfa_control.py) runs cupscale.xpsr.sfa's Semantic-Fusion Attention;
the MODEL's output blocks run its Conditional Attention (nodes/conditional_attention.py). The weights are read
by cupscale.xpsr.checkpoint.
- SFAControlNetLoader reads the released weights into ComfyUI's ControlNet with SFA in place of each
  cross-attention; the UNet's added Conditional Attention layers travel with it.
- SFAControlNetApply attaches the control to the high-level CONDITIONING pair, with the low-level
  CONDITIONING and the LR image, and returns a MODEL clone whose output blocks run the Conditional
  Attention on the residuals of that control.
"""
from __future__ import annotations

import logging

import torch

from ..cupscale.guards import check_least_side, check_not_empty
from ..cupscale.schedule import check_percent_range
from ..cupscale.xpsr.checkpoint import XPSRArchitecture, load_xpsr
from .conditional_attention import with_conditional_attention
from .host import folder_paths, io
from .host_services import register_model_folder
from .inputs import check_numbers, percent_range_inputs, widget_names, widgets_valid
from .sfa_control import LowLevelPrompts, SFAControlNet, build_control

XPSR_FOLDER = "xpsr"
CATEGORY = "cupscale/xpsr"
SFA_CONTROLNET = io.Custom("SFA_CONTROLNET")

register_model_folder(XPSR_FOLDER)


class SFAControlNetLoader(io.ComfyNode):
    """XPSR's released ControlNet + the UNet's Conditional Attention -> SFA_CONTROLNET."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list(XPSR_FOLDER)
        return io.Schema(
            node_id="SFAControlNetLoader",
            display_name="Load XPSR SFA ControlNet (cupscale)",
            category=CATEGORY,
            description=("Loads XPSR's ControlNet with Semantic-Fusion Attention and the Conditional Attention XPSR "
                         "added to the SD1.5 UNet, from the release's diffusers folders (controlnet/ and unet/, each a "
                         "diffusion_pytorch_model .safetensors or .bin beside its config.json) placed in models/xpsr. "
                         "Only the unet file's Conditional Attention is read; your SD1.5 checkpoint supplies the rest. "
                         "Names and shapes are checked; heads used only by XPSR's training loss are skipped."),
            inputs=[
                io.Combo.Input("controlnet", options=files,
                               tooltip="XPSR's ControlNet: <checkpoint>/controlnet/diffusion_pytorch_model."
                                       "safetensors (or .bin) under models/xpsr."),
                io.Combo.Input("unet", options=files,
                               tooltip="XPSR's UNet, for its Conditional Attention: <checkpoint>/unet/"
                                       "diffusion_pytorch_model.safetensors (or .bin) under models/xpsr."),
            ],
            outputs=[SFA_CONTROLNET.Output()],
        )

    COMBOS_AT_RUN = ("unet",)
    """Checked when the run starts: the host lays a failed validate_inputs on every input it names, so that
    check names controlnet alone and a missing unet file is named here, by itself."""

    @classmethod
    def validate_inputs(cls, controlnet=None) -> bool | str:
        """Older hosts (v0.3.64, v0.14) check V3 dropdowns against their options only in the frontend: a saved
        workflow naming files that are not there fails here, before the run, as a V1 dropdown would."""
        return missing_file("controlnet", controlnet) or True

    @classmethod
    def execute(cls, controlnet, unet) -> io.NodeOutput:
        problem = missing_file("unet", unet)
        if problem:
            raise ValueError(problem)
        with widget_names(controlnet="controlnet", unet="unet"):
            weights = load_xpsr(folder_paths.get_full_path_or_raise(XPSR_FOLDER, controlnet),
                                folder_paths.get_full_path_or_raise(XPSR_FOLDER, unet))
        logging.info("XPSR: %d weights from %s and %s; %d used only by the training loss (Eq. 3) skipped.",
                     len(weights.state_dict), controlnet, unet, len(weights.training_only))
        return io.NodeOutput(SFAControlNet(build_control(weights), weights.architecture))


def missing_file(name: str, value: str | None) -> str | None:
    """Why the file chosen for ``name`` cannot be loaded (not in models/xpsr), or None."""
    if value is None or value in folder_paths.get_filename_list(XPSR_FOLDER):
        return None
    return (f"{name} = {value!r} not found in models/xpsr: place XPSR's release there, or choose a file from the "
            f"list.")


def unet_fields(arch: XPSRArchitecture) -> dict:
    """The ComfyUI unet_config entries an XPSR control fixes for the MODEL it runs with."""
    return {"model_channels": arch.model_channels, "channel_mult": list(arch.channel_mult),
            "num_res_blocks": list(arch.num_res_blocks), "context_dim": arch.context_dim,
            "transformer_depth": [arch.transformer_depth[lv] for kind, lv, _ in arch.input_blocks() if kind == "res"],
            "adm_in_channels": None}


def check_model(model, arch: XPSRArchitecture) -> None:
    """Refuse a MODEL of another shape (SDXL, SD2) before sampling fails deep inside the UNet."""
    config = model.model.model_config.unet_config
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    ours = unet_fields(arch)
    theirs = {k: as_list(config.get(k)) for k in ours}
    if isinstance(theirs["num_res_blocks"], int):
        theirs["num_res_blocks"] = [theirs["num_res_blocks"]] * len(arch.channel_mult)
    differ = [f"{k} = {v} (the MODEL has {theirs[k]})" for k, v in ours.items() if theirs[k] != v]
    if differ:
        raise ValueError(f"model: the MODEL is not the UNet this XPSR ControlNet was trained with; the ControlNet "
                         f"needs {'; '.join(differ)}. XPSR builds on SD1.5: use an SD1.5 checkpoint for this model.")


def low_level_tensor(conditioning, name: str, width: int) -> torch.Tensor:
    if not conditioning or len(conditioning) != 1:
        raise ValueError(f"{name}: give one text encoding (CLIP Text Encode of the low-level description), not "
                         f"{len(conditioning or [])} combined conditionings.")
    tensor = conditioning[0][0]
    if tensor.shape[-1] != width:
        raise ValueError(f"{name}: its embedding is {tensor.shape[-1]} wide but the ControlNet attends to "
                         f"{width}-wide text embeddings (SD1.5's CLIP: 768): encode it with the SD1.5 CLIP.")
    return tensor


def attach(conditioning: list, controls: dict, make) -> list:
    """``conditioning`` with the XPSR control chained after each entry's existing control."""
    out = []
    for tensor, options in conditioning:
        previous = options.get("control")
        if previous not in controls:
            controls[previous] = make(previous)
        out.append([tensor, dict(options, control=controls[previous], control_apply_to_uncond=False)])
    return out


class SFAControlNetApply(io.ComfyNode):
    """MODEL, high-level CONDITIONING pair, low-level CONDITIONING, LR IMAGE -> what the KSampler needs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SFAControlNetApply",
            display_name="Apply XPSR SFA ControlNet (cupscale)",
            category=CATEGORY,
            description=("Runs XPSR through the stock KSampler: the SFA ControlNet reads the LR image, the high-level "
                         "description (positive) and the low-level one (MLLMRegionCaptioner writes both with XPSR's "
                         "instructions); the returned MODEL adds XPSR's Conditional Attention. XPSR was trained at "
                         "512x512: for larger images put TiledBlendedDiffusion (512 px tiles) on the MODEL output; "
                         "each tile then sees its crop of the LR image. Strength scales the ControlNet residuals, "
                         "which are also what the Conditional Attention reads; strength 0, or steps outside "
                         "start/end, leave the model plain SD1.5. The official settings are in the README."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 model: XPSR's ControlNet was trained on SD1.5."),
                io.Conditioning.Input("positive", tooltip="The high-level description (content, layout, scene)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Conditioning.Input("low_level", tooltip="The low-level description (quality: clarity, noise, "
                                                           "colour, lighting), encoded with the same CLIP."),
                SFA_CONTROLNET.Input("sfa_controlnet"),
                io.Image.Input("image", tooltip="The low-resolution image; resized (bicubic) to the sampled size."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01),
                *percent_range_inputs("First step with the control, as a fraction of the sampler's steps.",
                                      "Steps from here on run without the control.", step=0.001),
                io.Conditioning.Input("low_level_negative", optional=True,
                                      tooltip="Low-level prompt of the negative pass; the official pipeline's is "
                                              "'high resolution, best quality, clear'. Default: low_level."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def validate_inputs(cls, strength=None, start_percent=None, end_percent=None) -> bool | str:
        return widgets_valid(cls, strength=strength, start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, model, positive, negative, low_level, sfa_controlnet, image, strength, start_percent,
                end_percent, low_level_negative=None) -> io.NodeOutput:
        arch = sfa_controlnet.architecture
        if image.ndim != 4 or image.shape[-1] != arch.hint_channels:
            raise ValueError(f"image has shape {tuple(image.shape)}; XPSR's ControlNet reads RGB images "
                             f"(B, H, W, {arch.hint_channels}): drop the alpha channel or convert to RGB first.")
        with widget_names(f="image"):
            check_not_empty(image, "f")
            check_least_side(image.movedim(-1, 1), "f", 8, "pixels", "XPSR's ControlNet hint")
        check_numbers(cls, strength=strength)
        with widget_names(start="start_percent", end="end_percent"):
            check_percent_range(start_percent, end_percent, "set strength 0 to turn the control off")
        check_model(model, arch)
        low = low_level_tensor(low_level, "low_level", arch.context_dim)
        prompts = LowLevelPrompts(low, low if low_level_negative is None else
                                  low_level_tensor(low_level_negative, "low_level_negative", arch.context_dim))
        hint = image.movedim(-1, 1)

        def make(previous):
            control = sfa_controlnet.control.copy().set_cond_hint(hint, strength, (start_percent, end_percent))
            control.low_level = prompts
            control.set_previous_controlnet(previous)
            return control
        controls = {}
        return io.NodeOutput(with_conditional_attention(model), attach(positive, controls, make),
                             attach(negative, controls, make))


NODES = [SFAControlNetLoader, SFAControlNetApply]
