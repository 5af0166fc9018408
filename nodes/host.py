"""The one door to ComfyUI: every host module, class and function the nodes use is imported here and
nowhere else in the pack (``tests/test_host_internals.py`` holds the list and checks both), so a host
release that moves or drops one breaks in this file, and a test names it.

The V3 node API (``comfy_api.latest``) is the host's public, versioned interface; the rest are its
internals, which change between releases. What the host calls back (wrappers, object patches, attention
overrides) takes and passes on whatever the host adds, and is read by name, never by position or version.
"""
import comfy.cldm.cldm as cldm
import comfy.controlnet as controlnet
import comfy.ldm.modules.attention as attention
import comfy.model_base as model_base
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.model_sampling as model_sampling
import comfy.ops as ops
import comfy.sampler_helpers as sampler_helpers
import comfy.samplers as samplers
import comfy.utils as comfy_utils
import folder_paths
from comfy.ldm.flux.math import rope as flux_rope
from comfy.ldm.chroma.model import Chroma
from comfy.ldm.flux.model import Flux
from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel
from comfy.ldm.lumina.model import NextDiT
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.modules.diffusionmodules.openaimodel import (Downsample, TimestepBlock, TimestepEmbedSequential,
                                                            UNetModel, Upsample)
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import ComfyExtension, io

__all__ = ["cldm", "controlnet", "attention", "model_base", "model_management", "model_patcher", "model_sampling",
           "ops", "sampler_helpers", "samplers", "comfy_utils", "folder_paths", "flux_rope", "Flux", "MMDiT",
           "Chroma", "HiDreamImageTransformer2DModel", "NextDiT", "UNetModel",
           "Downsample", "TimestepBlock", "TimestepEmbedSequential", "Upsample", "timestep_embedding",
           "QwenImageTransformer2DModel", "WrappersMP", "ComfyExtension", "io"]
