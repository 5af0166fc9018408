"""API mode: run a shipped workflow on a ComfyUI server that is already running.

    python scripts/queue_workflow.py WORKFLOW [--server http://127.0.0.1:8188] [--image in.png]
           [--output out.png] [--set NODE_ID.input=value ...] [--timeout SECONDS]

WORKFLOW is a file in example_workflows/api/ (``upscale_x2_5_implicit.api.json``) or a path to any API-format
workflow. The script uploads --image to the server's input folder (POST /upload/image) and points
every LoadImage of the workflow at it, queues the workflow (POST /prompt with this client's id),
prints the progress the server reports over its websocket (/ws?clientId=...), and downloads the
images the workflow saved (/view). Unlike scripts/run_workflow.py it needs no GPU or models here:
the server has them. Run it with ComfyUI's Python (it uses aiohttp, which ComfyUI installs).

Exit status: 0 done, 1 the workflow failed while running, 2 the server is unreachable or refused
the workflow (its validation errors are printed node by node).
"""
from __future__ import annotations

import argparse
import asyncio
import mimetypes
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK_DIR = str(Path(__file__).resolve().parent.parent)
if PACK_DIR not in sys.path:  # appended: first on the path, the pack's nodes/ would shadow ComfyUI's nodes.py
    sys.path.append(PACK_DIR)

from harness import workflows  # noqa: E402

DEFAULT_SERVER = "http://127.0.0.1:8188"


class QueueError(RuntimeError):
    """The server is unreachable or refused the workflow (exit status 2)."""


class RunError(RuntimeError):
    """The workflow failed or was interrupted on the server (exit status 1)."""


@dataclass
class Run:
    """What came back for one queued workflow."""

    prompt_id: str
    events: list[tuple[str, dict]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def node_name(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id), {})
    title = node.get("_meta", {}).get("title")
    kind = node.get("class_type", "?")
    return f"node {node_id} ({kind}{f', {title!r}' if title and title != kind else ''})"


def validation_report(prompt: dict, reply: dict) -> str:
    """ComfyUI's refusal of a prompt (server.py post_prompt), one line per error of each node."""
    error = reply.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    lines = [f"ComfyUI refused the workflow: {error.get('message', 'no reason given')}"
             + (f" ({error['details']})" if error.get("details") else "")]
    for node_id, entry in sorted((reply.get("node_errors") or {}).items(), key=lambda kv: (len(kv[0]), kv[0])):
        for e in entry.get("errors", []):
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"  {node_name(prompt, node_id)}: {e.get('message', e.get('type'))}{detail}")
    return "\n".join(lines)


class Progress:
    """Prints what the server reports: a line per node, and its step progress (in place on a terminal,
    else at most once a second)."""

    def __init__(self, prompt: dict, stream=None):
        self.prompt, self.stream = prompt, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "execution_start":
            self.line(f"running prompt {data['prompt_id']}")
        elif kind == "execution_cached" and data.get("nodes"):
            self.line(f"cached: {', '.join(map(str, data['nodes']))}")
        elif kind == "executing" and data.get("node") is not None:
            self.line(node_name(self.prompt, data["node"]))
        elif kind == "progress":
            now = time.monotonic()
            done = data["value"] >= data["max"]
            if self.tty:
                print(f"\r  {data['value']}/{data['max']}", end="\n" if done else "", file=self.stream, flush=True)
            elif done or now - self.last >= 1.0:
                self.line(f"  {data['value']}/{data['max']}")
                self.last = now

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


async def upload(session, server: str, image: Path) -> str:
    """The name LoadImage takes for ``image`` once it is in the server's input folder."""
    import aiohttp
    form = aiohttp.FormData()
    with image.open("rb") as f:
        form.add_field("image", f.read(), filename=image.name,
                       content_type=mimetypes.guess_type(image.name)[0] or "application/octet-stream")
    async with session.post(f"{server}/upload/image", data=form) as r:
        if r.status != 200:
            raise QueueError(f"--image {image}: the server refused the upload (HTTP {r.status}: {await r.text()})")
        saved = await r.json()
    return f"{saved['subfolder']}/{saved['name']}" if saved.get("subfolder") else saved["name"]


async def queue(server: str, prompt: dict, image: Path | None = None, output: Path | None = None,
                on_event=None, timeout: float = 3600) -> Run:
    """Queue ``prompt`` on the server, follow it to the end, download its saved images; see the module doc."""
    try:
        import aiohttp
    except ImportError:
        raise QueueError("aiohttp is missing: run this script with ComfyUI's Python, or pip install aiohttp") from None
    server = server.rstrip("/")
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
        try:
            async with session.get(f"{server}/system_stats") as r:
                r.raise_for_status()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise QueueError(f"ComfyUI is not answering at {server} ({e}). Start it (python main.py, add --listen "
                             f"to reach it from another machine) or pass --server URL.") from None
        if image is not None:
            if not workflows.nodes_of(prompt, "LoadImage"):
                raise QueueError(f"--image {image}: this workflow has no LoadImage node to give it to.")
            prompt = workflows.with_image(prompt, await upload(session, server, image))

        # Connected before queueing, so no message of this prompt can be missed.
        async with session.ws_connect(f"{server.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            async with session.post(f"{server}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                reply = await r.json(content_type=None)
                if r.status != 200:
                    raise QueueError(validation_report(prompt, reply))
            run = Run(reply["prompt_id"])
            await follow(ws, run, prompt, on_event, timeout)

        outputs = await history_outputs(session, server, run.prompt_id)
        saved = [img for node in outputs.values() for img in node.get("images", []) if img.get("type") == "output"]
        for i, img in enumerate(saved):
            async with session.get(f"{server}/view", params={k: img[k] for k in ("filename", "subfolder", "type")}) as r:
                r.raise_for_status()
                target = destination(output, img["filename"], i, len(saved))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(await r.read())
                run.images.append(target)
    return run


async def follow(ws, run: Run, prompt: dict, on_event, timeout: float) -> None:
    """Read the websocket until the prompt succeeded; raise RunError when it failed or stopped."""
    import aiohttp
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RunError(f"prompt {run.prompt_id} did not finish in {timeout:.0f} s; it is still queued on the "
                           f"server (cancel it there, or raise --timeout).") from None
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue  # live previews
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RunError(f"the server closed the websocket while prompt {run.prompt_id} ran ({msg.type.name}).")
        message = msg.json()
        kind, data = message.get("type"), message.get("data") or {}
        if data.get("prompt_id") != run.prompt_id:
            continue
        run.events.append((kind, data))
        if on_event:
            on_event(kind, data)
        if kind == "execution_error":
            raise RunError(f"{node_name(prompt, data['node_id'])} failed: {data.get('exception_type', 'error')}: "
                           f"{data.get('exception_message', '').strip()} (the server's log has the traceback)")
        if kind == "execution_interrupted":
            raise RunError(f"prompt {run.prompt_id} was interrupted at {node_name(prompt, data['node_id'])}.")
        if kind == "execution_success" or (kind == "executing" and data.get("node") is None):
            return


async def history_outputs(session, server: str, prompt_id: str, wait: float = 30) -> dict:
    """The prompt's outputs from /history. The server reports success just before it files the history
    entry, so the entry may take a moment to appear."""
    deadline = time.monotonic() + wait
    while True:
        async with session.get(f"{server}/history/{prompt_id}") as r:
            entry = (await r.json()).get(prompt_id)
        if entry is not None:
            return entry["outputs"]
        if time.monotonic() > deadline:
            raise RunError(f"prompt {prompt_id} finished but the server has no history of it after {wait:.0f} s.")
        await asyncio.sleep(0.2)


def destination(output: Path | None, filename: str, index: int, count: int) -> Path:
    """--output for a single image; with several, --output's name plus _1, _2...; without, the server's names."""
    if output is None:
        return Path(filename)
    if count == 1:
        return output
    return output.with_name(f"{output.stem}_{index + 1}{output.suffix or Path(filename).suffix}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="a file in example_workflows/api/ or a path (API format, *.api.json)")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI's address (default {DEFAULT_SERVER})")
    p.add_argument("--image", type=Path, help="uploaded, and given to every LoadImage of the workflow")
    p.add_argument("--output", type=Path, help="where to write the saved image (default: the server's file name)")
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.input=value",
                   help="override a node input, e.g. --set 4.tile_width=768")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the workflow (default 3600)")
    args = p.parse_args(argv)
    if args.image is not None and not args.image.is_file():
        p.error(f"--image {args.image}: no such file")
    try:
        prompt = workflows.with_overrides(workflows.load(args.workflow), args.set)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))

    try:
        run = asyncio.run(queue(args.server, prompt, args.image, args.output, Progress(prompt), args.timeout))
    except QueueError as e:
        print(e, file=sys.stderr)
        return 2
    except RunError as e:
        print(e, file=sys.stderr)
        return 1
    if not run.images:
        print(f"prompt {run.prompt_id} finished but saved no image (does the workflow end in SaveImage?)",
              file=sys.stderr)
        return 1
    for path in run.images:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
