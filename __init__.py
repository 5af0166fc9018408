"""comfyui-cupscale: creative, tuning-free ultra-high-resolution upscaling for ComfyUI."""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
