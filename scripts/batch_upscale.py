"""Batch upscaling: a folder (or a list) of images through a shipped API workflow, across Ray workers.

    python scripts/batch_upscale.py IMAGES_OR_FOLDERS... --output-dir DIR [--workflow NAME]
           [--tiny-models | --checkpoint NAME] [--set NODE_ID.input=value ...]
           [--workers N] [--address RAY_ADDRESS] [--server URL ...] [--attempts 3] [--cpu]

Each worker holds an embedded ComfyUI with this pack (the main job's in-process host, models loaded once per
worker), or, with --server, is the client of one ComfyUI server (one worker per URL). Ray starts on this
machine (one worker per GPU, one without a GPU) unless --address names a cluster. Outputs are
``DIR/<image name>.png``; those already complete are skipped, so a rerun resumes. An image that fails is
retried on another worker (--attempts in all) and listed at the end; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))

from harness.batch import default_workers, plan, run_batch, sources_in, start_ray  # noqa: E402
from harness.workflow_job import EmbeddedWorkflow  # noqa: E402


class ServerJob:
    """The workflow queued on the ComfyUI server at ``server`` (scripts/queue_workflow.py's client)."""

    def __init__(self, server: str, workflow: str, overrides: tuple[str, ...]):
        from harness import workflows
        self.server, self.prompt = server, workflows.with_overrides(workflows.load(workflow), list(overrides))

    def upscale(self, source: Path, output: Path) -> None:
        import queue_workflow
        with tempfile.TemporaryDirectory() as tmp:
            run = asyncio.run(queue_workflow.queue(self.server, self.prompt, source, Path(tmp) / "saved.png"))
            if not run.images:
                raise RuntimeError(f"prompt {run.prompt_id} on {self.server} saved no image")
            shutil.copy(run.images[-1], output)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="images, or folders of images")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--workflow", default="upscale_x4_two_stage.api.json",
                   help="a file in example_workflows/api/ or a path (API format)")
    p.add_argument("--checkpoint", help="checkpoint file name in ComfyUI/models/checkpoints (embedded workers)")
    p.add_argument("--tiny-models", action="store_true",
                   help="tiny random models: checks the pipeline, not the picture")
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.input=value")
    p.add_argument("--workers", type=int, default=0, help="embedded workers (default: one per GPU, or one)")
    p.add_argument("--address", help="a Ray cluster's address (default: start Ray on this machine)")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="a running ComfyUI to send images to instead of embedded workers; repeat for several")
    p.add_argument("--attempts", type=int, default=3, help="tries per image, each on another worker where one is free")
    p.add_argument("--cpu", action="store_true", help="embedded workers run on the CPU even with a GPU")
    args = p.parse_args(argv)
    if args.attempts < 1 or args.workers < 0:
        p.error("--attempts must be at least 1 and --workers at least 0")
    try:
        todo, skipped = plan(sources_in(args.inputs), args.output_dir)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if not todo:
        print(f"nothing to do: all {len(skipped)} outputs in {args.output_dir} are complete")
        return 0

    from tqdm import tqdm
    start_ray(args.address, paths=(SCRIPTS,))
    overrides = tuple(args.set)
    if args.server:
        jobs = [lambda url=url: ServerJob(url, args.workflow, overrides) for url in args.server]
    else:
        jobs = [lambda: EmbeddedWorkflow(args.workflow, args.tiny_models, args.checkpoint, overrides, args.cpu)]
        jobs *= args.workers or default_workers()
    bar = tqdm(total=len(todo), desc="images", unit="image", file=sys.stderr, dynamic_ncols=True)

    def follow(item, what: str) -> None:
        if what == "retry":
            bar.write(f"{item.source.name}: failed on a worker, trying again")
        else:
            bar.update()

    summary = run_batch(todo, jobs, args.attempts, follow)
    bar.close()
    summary.skipped += [i.source for i in skipped]
    for source, why in summary.failed.items():
        print(f"FAILED {source}: {why}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
