"""ComfyUI node classes: thin shells over the core library in ``cupscale/``."""
from .tiled_diffusion import TiledBlendedDiffusion

NODE_CLASS_MAPPINGS = {
    "TiledBlendedDiffusion": TiledBlendedDiffusion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "TiledBlendedDiffusion": "Tiled Blended Diffusion (cupscale)",
}
