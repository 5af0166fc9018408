"""Shipped API-format workflows: load, point at an input image, swap models, override inputs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from harness.comfy_host import PACK_DIR

TEMPLATES = PACK_DIR / "example_workflows"  # UI format: what ComfyUI lists and serves as templates
WORKFLOWS = TEMPLATES / "api"  # API format: what scripts queue and tests run
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple"}
SPLIT_LOADERS = {"UNETLoader": 0, "CLIPLoader": 1, "VAELoader": 2}
"""The loaders of split model files, each by the checkpoint loader's output (MODEL, CLIP, VAE) that stands for its
one output."""


def load(name: str) -> dict:
    """An API-format workflow by file name (``example_workflows/api/<name>``) or path."""
    path = Path(name) if Path(name).exists() else WORKFLOWS / name
    if not path.exists():
        raise FileNotFoundError(f"workflow {name!r} not found; shipped ones: "
                                f"{', '.join(p.name for p in sorted(WORKFLOWS.glob('*.api.json')))}")
    return json.loads(path.read_text())


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def with_image(prompt: dict, image_name: str) -> dict:
    prompt = copy.deepcopy(prompt)
    for k in nodes_of(prompt, "LoadImage"):
        prompt[k]["inputs"]["image"] = image_name
    return prompt


def with_checkpoint(prompt: dict, ckpt_name: str) -> dict:
    prompt = copy.deepcopy(prompt)
    for k in nodes_of(prompt, "CheckpointLoaderSimple"):
        prompt[k]["inputs"]["ckpt_name"] = ckpt_name
    return prompt


def with_tiny_models(prompt: dict, kind: str = "sdxl", seed: int = 0) -> dict:
    """Swap every checkpoint loader for the tiny seeded loader (same outputs: MODEL, CLIP, VAE); split loaders
    (UNETLoader, CLIPLoader, VAELoader) go too, their links taken by one tiny loader in the UNETLoader's place."""
    prompt = copy.deepcopy(prompt)
    tiny = {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": kind, "seed": seed}}
    for k, v in prompt.items():
        if v["class_type"] in CHECKPOINT_LOADERS:
            prompt[k] = copy.deepcopy(tiny)
    split = {k: SPLIT_LOADERS[v["class_type"]] for k, v in prompt.items() if v["class_type"] in SPLIT_LOADERS}
    if not split:
        return prompt
    (unet,) = nodes_of(prompt, "UNETLoader")
    for k in split:
        del prompt[k]
    prompt[unet] = tiny
    for v in prompt.values():
        for name, value in v["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in split:
                v["inputs"][name] = [unet, split[str(value[0])]]
    return prompt


def with_overrides(prompt: dict, overrides: list[str]) -> dict:
    """Apply ``NODE_ID.input=value`` overrides (value parsed as JSON, else kept as text)."""
    prompt = copy.deepcopy(prompt)
    for item in overrides:
        target, _, raw = item.partition("=")
        node, _, name = target.partition(".")
        if node not in prompt or not name or not _:
            raise ValueError(f"--set {item!r}: expected NODE_ID.input=value with a node id of this workflow "
                             f"({', '.join(prompt)})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[node]["inputs"][name] = value
    return prompt
