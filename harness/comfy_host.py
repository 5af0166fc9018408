"""Boot a real ComfyUI in this process and load the pack the way ComfyUI loads a custom node."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
_booted = False


def host_path() -> Path:
    """The host from $COMFYUI_PATH, the ComfyUI holding the pack, or the first under ~/comfy in the order of
    scripts/hosts.sh (v0.33.0, v0.14.1, v0.3.64 side by side, then ~/comfy/ComfyUI)."""
    candidates = [os.environ.get("COMFYUI_PATH")]
    if PACK_DIR.parent.name == "custom_nodes":
        candidates.append(str(PACK_DIR.parent.parent))
    hosts = Path(os.environ.get("CUPSCALE_HOSTS_DIR", Path.home() / "comfy"))
    candidates += [str(hosts / f"ComfyUI-{v}") for v in ("0.33.0", "0.14.1", "0.3.64")] + [str(hosts / "ComfyUI")]
    for c in candidates:
        if c and (Path(c) / "comfy").is_dir() and (Path(c) / "nodes.py").is_file():
            return Path(c)
    raise RuntimeError(f"No ComfyUI host found: set COMFYUI_PATH to a ComfyUI folder (v0.33.0, v0.14.1 or v0.3.64), "
                       f"put this pack in ComfyUI/custom_nodes/, or place ComfyUI v0.33.0 at {hosts}/ComfyUI-0.33.0 "
                       f"(scripts/env.sh says how).")


def prepare(cpu: bool = True) -> None:
    """Put the host on sys.path and parse its arguments (``--cpu`` unless told), so that
    ``comfy.*`` imports work; cheap, and idempotent."""
    root = str(host_path())
    if root in sys.path:
        return
    sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0]] + (["--cpu"] if cpu else [])
    try:
        # As main.py does first: ComfyUI's utils/ package must be imported before comfy/ puts its
        # own folder on sys.path, where comfy/utils.py would shadow it. It also parses the args.
        import utils.extra_config  # noqa: F401
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = argv


def boot(cpu: bool = True) -> None:
    """Import ComfyUI, its built-in nodes, and this pack as a custom node; once per process."""
    global _booted
    if _booted:
        return
    prepare(cpu)
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(PACK_DIR))):
        raise RuntimeError(f"ComfyUI could not load the pack at {PACK_DIR}; see the log above.")
    from harness import test_nodes
    nodes.NODE_CLASS_MAPPINGS.update(test_nodes.NODE_CLASS_MAPPINGS)
    _booted = True


class CapturingServer:
    """The little a PromptExecutor needs of a server; keeps every message it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class PromptError(RuntimeError):
    """A prompt failed validation or execution; the message is ComfyUI's own."""


def new_executor():
    """An executor for :func:`run_prompt`; one kept across prompts keeps its cache (models stay loaded).

    Where the executor takes cache arguments (newer hosts read ``cache_args["ram"]`` after every node), they
    are given as the host's main.py gives them, from its parsed command line."""
    import inspect

    import execution
    from comfy.cli_args import args
    if "cache_args" not in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(CapturingServer())
    cache_args = {"lru": getattr(args, "cache_lru", 0), "ram": getattr(args, "cache_ram", 0)}
    return execution.PromptExecutor(CapturingServer(), cache_args=cache_args)


def run_prompt(prompt: dict, executor=None) -> dict:
    """Validate and execute an API-format prompt in-process; returns ComfyUI's history result."""
    import execution
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise PromptError(f"prompt failed validation: {valid[1]}; node errors: {valid[3]}")
    executor = executor or new_executor()
    executor.execute(prompt, prompt_id, {"client_id": None}, valid[2])
    if not executor.success:
        errors = [d for e, d in executor.status_messages if e == "execution_error"]
        detail = errors[0] if errors else executor.status_messages
        if errors:
            detail = f"{detail['node_type']} (node {detail['node_id']}): {detail['exception_message']}"
        raise PromptError(f"prompt failed: {detail}")
    return executor.history_result
