"""The host's internals the pack touches, in one list: only nodes/host.py imports ComfyUI, and every
name the nodes reach through it is listed here; on a running host each must resolve, so a release that
moves or drops one fails here by name, not deep in a sampling run."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parent.parent / "nodes"
HOST_PACKAGES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "execution", "server", "node_helpers",
                 "latent_preview")
PUBLIC = "comfy_api.latest"  # the versioned V3 node API: public, not an internal

INTERNALS = [
    "comfy.cldm.cldm.ControlNet",
    "comfy.controlnet.ControlNet",
    "comfy.controlnet.broadcast_image_to",
    "comfy.ldm.chroma.model.Chroma",
    "comfy.ldm.flux.math.rope",
    "comfy.ldm.flux.model.Flux",
    "comfy.ldm.hidream.model.HiDreamImageTransformer2DModel",
    "comfy.ldm.lumina.model.NextDiT",
    "comfy.ldm.modules.attention.SpatialTransformer",
    "comfy.ldm.modules.attention.attention_basic",
    "comfy.ldm.modules.attention.optimized_attention",
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",
    "comfy.ldm.modules.diffusionmodules.openaimodel.Downsample",
    "comfy.ldm.modules.diffusionmodules.openaimodel.TimestepBlock",
    "comfy.ldm.modules.diffusionmodules.openaimodel.TimestepEmbedSequential",
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "comfy.ldm.modules.diffusionmodules.openaimodel.Upsample",
    "comfy.ldm.modules.diffusionmodules.util.timestep_embedding",
    "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",
    "comfy.model_base.SDXL",
    "comfy.model_management",  # read for what newer releases add (get_all_torch_devices)
    "comfy.model_management.current_loaded_models",
    "comfy.model_management.free_memory",
    "comfy.model_management.get_free_memory",
    "comfy.model_management.get_torch_device",
    "comfy.model_management.intermediate_device",
    "comfy.model_management.load_models_gpu",
    "comfy.model_management.module_size",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.model_management.unet_dtype",
    "comfy.model_management.unet_manual_cast",
    "comfy.model_management.unet_offload_device",
    "comfy.model_patcher.ModelPatcher",
    "comfy.model_sampling.CONST.noise_scaling",
    "comfy.model_sampling.EPS.noise_scaling",
    "comfy.ops.disable_weight_init",
    "comfy.ops.manual_cast",
    "comfy.patcher_extension.WrappersMP.APPLY_MODEL",
    "comfy.patcher_extension.WrappersMP.CALC_COND_BATCH",
    "comfy.patcher_extension.WrappersMP.OUTER_SAMPLE",
    "comfy.sampler_helpers.convert_cond",
    "comfy.samplers.KSAMPLER",
    "comfy.samplers.Sampler",
    "comfy.samplers.cond_cat",
    "comfy.samplers.encode_model_conds",
    "comfy.utils.ProgressBar",
    "comfy.utils.common_upscale",
    "comfy.utils.repeat_to_batch_size",
    "folder_paths.folder_names_and_paths",
    "folder_paths.get_filename_list",
    "folder_paths.get_folder_paths",
    "folder_paths.get_full_path_or_raise",
    "folder_paths.get_save_image_path",
    "folder_paths.get_temp_directory",
    "folder_paths.models_dir",
    "folder_paths.supported_pt_extensions",
]


def door() -> dict[str, str]:
    """Each name nodes/host.py imports -> the host's dotted name for it."""
    names = {}
    for node in ast.parse((NODES / "host.py").read_text()).body:
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom):
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


def chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything that is not a plain chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def used_internals() -> set[str]:
    """The host names the node modules reach through the door: names imported from it, and the attributes
    read off its modules (the longest chain)."""
    dotted, used = door(), set()
    for path in NODES.glob("*.py"):
        if path.name == "host.py":
            continue
        tree = ast.parse(path.read_text())
        local = {a.asname or a.name: dotted[a.name] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == "host" for a in node.names}
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if id(node) in inner or not isinstance(node, (ast.Attribute, ast.Name)):
                continue
            parts = chain(node)
            if parts and parts[0] in local:
                used.add(".".join([local[parts[0]], *parts[1:]]))
    return {name for name in used if not name.startswith(PUBLIC)}


@pytest.mark.hostfree
def test_only_the_door_imports_the_host():
    outside = []
    for path in sorted(NODES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            outside += [f"{path.name}: {m}" for m in modules
                        if m.split(".")[0] in HOST_PACKAGES and path.name != "host.py"]
    assert outside == [], "import these through nodes/host.py"


@pytest.mark.hostfree
def test_the_list_is_what_the_nodes_use():
    used = used_internals()
    assert sorted(used - set(INTERNALS)) == [], "used through nodes/host.py but not listed in INTERNALS"
    assert sorted(set(INTERNALS) - used) == [], "listed in INTERNALS but no node uses it any more"


def resolve(name: str):
    """The object a dotted host name stands for: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


@pytest.mark.parametrize("name", INTERNALS)
def test_each_internal_is_on_this_host(host, name):
    resolve(name)
