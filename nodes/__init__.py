"""ComfyUI nodes (V3 schema): thin shells over the core library in ``cupscale/``.

Each module here is one node family and lists its node classes in ``NODES``; the pack registers them
all through one ComfyExtension (``comfy_entrypoint``, exported by the pack's ``__init__.py``).
"""
from typing_extensions import override

from . import (captioner, clip_rerank, implicit_decoding, position_extrapolation, regional_attention, repaint,
               sfa_controlnet, structure_guide, tiled_diffusion, vlm)
from .host import ComfyExtension, io

FAMILIES = [tiled_diffusion, structure_guide, repaint, vlm, captioner, implicit_decoding, clip_rerank,
            regional_attention, sfa_controlnet, position_extrapolation]
NODES: list[type[io.ComfyNode]] = [node for family in FAMILIES for node in family.NODES]


class CupscaleExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> CupscaleExtension:
    return CupscaleExtension()
