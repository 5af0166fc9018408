"""ComfyUI node classes: thin shells over the core library in ``cupscale/``.

Each module here is one node family and exports NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.
"""
from . import tiled_diffusion
from . import structure_guide
from . import repaint
from . import captioner
from . import implicit_decoding
from . import clip_rerank
from . import regional_attention
from . import sfa_controlnet

FAMILIES = [tiled_diffusion, structure_guide, repaint, captioner, implicit_decoding, clip_rerank, regional_attention, sfa_controlnet]

NODE_CLASS_MAPPINGS = {k: v for m in FAMILIES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in FAMILIES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
