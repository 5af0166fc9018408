"""The main job: upscale an image with a shipped workflow on an embedded, in-process ComfyUI.

    python scripts/run_workflow.py --image in.png --output out.png [--workflow NAME]
           [--checkpoint NAME | --tiny-models] [--set NODE_ID.input=value ...]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.job_console import HostLog, JobProgress  # noqa: E402
from harness.workflow_job import EmbeddedWorkflow, MissingCheckpoint, NoImageSaved  # noqa: E402

DEFAULT_WORKFLOW = "upscale_x4_two_stage.api.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, type=Path, help="the low-resolution input image")
    p.add_argument("--output", required=True, type=Path, help="where to write the upscaled PNG")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                   help="a file in example_workflows/api/ or a path (API format)")
    p.add_argument("--checkpoint", help="checkpoint file name in ComfyUI/models/checkpoints")
    p.add_argument("--tiny-models", action="store_true",
                   help="run on tiny random models instead of a checkpoint: checks the pipeline, not the picture")
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.input=value",
                   help="override a node input, e.g. --set 4.tile_width=768")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    args = p.parse_args(argv)
    if not args.image.is_file():
        p.error(f"--image {args.image}: no such file")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    with HostLog(args.output.with_suffix(".comfyui.log")) as log:
        return upscale(args, p.error, log)


def upscale(args, error, log: HostLog) -> int:
    """The job itself, with the host's log going to ``log``."""
    import torch
    try:
        job = EmbeddedWorkflow(args.workflow, args.tiny_models, args.checkpoint, tuple(args.set), args.cpu)
    except MissingCheckpoint as e:
        error(str(e))
    if log.summary():
        print(log.summary(), file=sys.stderr)
    start = time.perf_counter()
    with JobProgress(job.prompt):
        try:
            job.upscale(args.image, args.output)
        except NoImageSaved as e:
            print(e, file=sys.stderr)
            return 1

    from PIL import Image
    with Image.open(args.output) as im:
        size = f"{im.width}x{im.height}"
    peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB"
    if torch.cuda.is_available():
        peak += f", peak VRAM {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB"
    print(f"wrote {args.output} ({size}) in {time.perf_counter() - start:.1f} s, {peak}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
