"""Images per minute of batch upscaling (harness/batch.py) on Ray workers of this machine, by worker count.

    .venv/bin/python bench/batch_throughput.py [--images 16] [--workers 1 2] [--job workflow|liif]

``--job workflow`` (default) runs the shipped x4 workflow on tiny models in an embedded ComfyUI per worker, as
scripts/batch_upscale.py --tiny-models does (needs the host); ``--job liif`` runs LIIF x2 with tiny weights
(the core alone, tests/batch_jobs.py), which shows the driver and Ray apart from ComfyUI. Each worker uses one
CPU thread; a worker's start (Ray, the host's boot, the models) counts in the time, as it does for a user.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.tables import table  # noqa: E402
from harness.batch import plan, run_batch, sources_in, start_ray  # noqa: E402


def job_factory(kind: str):
    import batch_jobs
    if kind == "liif":
        return lambda: batch_jobs.Noted(batch_jobs.Liif, Path(os.devnull))
    from harness.workflow_job import EmbeddedWorkflow
    from test_workflows import FAST
    workflow = "upscale_x4_two_stage.api.json"
    return lambda: batch_jobs.Noted(lambda: EmbeddedWorkflow(workflow, tiny_models=True, overrides=tuple(FAST),
                                                             cpu=True), Path(os.devnull))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=32, help="input side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--job", choices=["workflow", "liif"], default="workflow")
    args = parser.parse_args()
    import ray
    start_ray(num_cpus=os.cpu_count(), paths=(ROOT / "tests",))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        g = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(g.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        for workers in args.workers:
            todo, _ = plan(sources_in([folder]), Path(tmp) / f"out{workers}")
            start = time.perf_counter()
            summary = run_batch(todo, [job_factory(args.job)] * workers)
            seconds = time.perf_counter() - start
            assert len(summary.done) == args.images and not summary.failed, summary.line()
            rows.append((workers, f"{seconds:.1f}", f"{args.images / seconds * 60:.1f}"))
    ray.shutdown()
    base = float(rows[0][2])
    table(f"Batch upscaling, {args.images} images of {args.side}² px, job {args.job}, {os.cpu_count()} cores",
          ["workers", "seconds", "images per minute", f"vs {rows[0][0]}"],
          [(*r, f"{float(r[2]) / base:.2f}x") for r in rows])


if __name__ == "__main__":
    main()
