"""Boot a real ComfyUI in this process and load the pack the way ComfyUI loads a custom node."""
from __future__ import annotations

import asyncio
import copy
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
_booted = False


def host_path() -> Path:
    """The host scripts/hosts.sh picks (``find_host``: $COMFYUI_PATH, the ComfyUI holding the pack, a release
    archive, ~/comfy); $COMFYUI_PATH alone when set, as the scripts export it."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"])
    found = subprocess.run(["bash", "-c", 'source scripts/hosts.sh && find_host'], cwd=PACK_DIR,
                           capture_output=True, text=True)
    if found.returncode or not found.stdout.strip():
        raise RuntimeError(f"No ComfyUI host found:\n{found.stderr}")
    return Path(found.stdout.strip().splitlines()[-1])


# The default host (scripts/hosts.sh DEFAULT_HOST), on which the shipped UI workflows are made.
DEFAULT_RELEASE = re.search(r"^DEFAULT_HOST=(\S+)", (PACK_DIR / "scripts" / "hosts.sh").read_text(), re.M).group(1)


def release() -> str:
    """The booted host's release, from its own comfyui_version.py."""
    import comfyui_version
    return comfyui_version.__version__


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
    stand_in_server()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(PACK_DIR))):
        raise RuntimeError(f"ComfyUI could not load the pack at {PACK_DIR}; see the log above.")
    from harness import test_nodes
    nodes.NODE_CLASS_MAPPINGS.update(test_nodes.NODE_CLASS_MAPPINGS)
    _booted = True


def pack_module(dotted: str):
    """The pack's module ``dotted`` (e.g. "nodes.dit_positions") as ComfyUI loaded it, once booted: the pack lives
    under a module name made from its path, so its classes differ from a plain ``import cupscale``'s."""
    import nodes
    root = nodes.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"].__module__.rsplit(".nodes.", 1)[0]
    return sys.modules[f"{root}.{dotted}"]


class CapturingServer:
    """The little a PromptExecutor and the host's nodes need of a server; keeps every message it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []
        try:  # newer hosts register their built-in node replacements on the server as their nodes load
            from app.node_replace_manager import NodeReplaceManager
            self.node_replace_manager = NodeReplaceManager()
        except ImportError:
            pass

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node": node_id, "text": text}))


def stand_in_server() -> None:
    """Where no server runs in this process, nodes that reach ``PromptServer.instance`` (v0.14's node
    replacements, progress text) meet a :class:`CapturingServer` instead of an AttributeError."""
    import server
    if getattr(server.PromptServer, "instance", None) is None:
        server.PromptServer.instance = CapturingServer()


class PromptError(RuntimeError):
    """A prompt failed validation or execution; the message is ComfyUI's own."""


def new_executor():
    """An executor for :func:`run_prompt`; one kept across prompts keeps its cache (models stay loaded).

    Newer hosts take cache arguments and read them after every node (v0.14: ``ram`` as one number; v0.33 also
    ``ram_inactive``); the classic cache, main.py's ``--cache-classic``, is given them as numbers with no RAM
    headroom, which every release reads the same way."""
    import inspect

    import execution
    if "cache_args" not in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(CapturingServer())
    return execution.PromptExecutor(CapturingServer(), cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0})


def run_prompt(prompt: dict, executor=None) -> dict:
    """Validate and execute an API-format prompt in-process; returns ComfyUI's history result. The host writes
    into the prompt it runs (v0.33 keeps each node's ``is_changed`` there), so it gets a copy, as from JSON."""
    import execution
    prompt = copy.deepcopy(prompt)
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
