"""ComfyUI nodes (V3 schema): thin shells over the core library in ``cupscale/``.

Each module here is one node family and lists its node classes in ``NODES``; the pack registers them
all through one ComfyExtension (``comfy_entrypoint`` in the pack's ``__init__.py``).
"""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import (captioner, clip_rerank, implicit_decoding, regional_attention, repaint, sfa_controlnet, structure_guide,
               tiled_diffusion)

FAMILIES = [tiled_diffusion, structure_guide, repaint, captioner, implicit_decoding, clip_rerank, regional_attention,
            sfa_controlnet]
NODES: list[type[io.ComfyNode]] = [node for family in FAMILIES for node in getattr(family, "NODES", [])]

# TRANSITION (removed once every family is V3): V1 families still register through the old mappings.
NODE_CLASS_MAPPINGS = {k: v for m in FAMILIES for k, v in getattr(m, "NODE_CLASS_MAPPINGS", {}).items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in FAMILIES for k, v in getattr(m, "NODE_DISPLAY_NAME_MAPPINGS", {}).items()}
for _node in NODES:
    _schema = _node.GET_SCHEMA()
    NODE_CLASS_MAPPINGS[_schema.node_id] = _node
    NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name


class CupscaleExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> CupscaleExtension:
    return CupscaleExtension()
