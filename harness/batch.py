"""Batch upscaling on Ray: a folder of images through one job across workers, resumable, no image dropped.

Each Ray actor holds one job object for its whole life (an embedded ComfyUI with the workflow's models
loaded once, or a client of a ComfyUI server) and upscales the images it is handed. An output is written
to a temporary name and renamed into place, so a file under its final name is complete: a rerun skips it,
and a worker that dies after writing is not made to write it again. An image whose worker fails or dies is
handed to another worker, up to ``attempts`` times; what still fails is reported, never dropped.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from harness.comfy_host import PACK_DIR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class Job(Protocol):
    """Upscales one image into a PNG at ``output``; built once per worker by a picklable factory."""

    def upscale(self, source: Path, output: Path) -> None: ...


@dataclass(frozen=True)
class Item:
    source: Path
    output: Path


@dataclass
class Summary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    retried: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = len(self.done) / self.seconds * 60 if self.seconds else 0.0
        return (f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed, {self.retried} "
                f"retried, in {self.seconds:.1f} s ({rate:.1f} images per minute)")


def sources_in(paths: list[Path]) -> list[Path]:
    """The images named, and those directly inside the folders named, in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
    return found


def complete(output: Path) -> bool:
    """True when ``output`` is a whole image file: its chunks check out to the end (PIL's ``verify``, which reads
    the file without decoding it, so a rerun over thousands of 8K outputs stays quick)."""
    try:
        with Image.open(output) as im:
            im.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def plan(sources: list[Path], out_dir: Path) -> tuple[list[Item], list[Item]]:
    """(to do, already complete): each source's output is ``out_dir/<stem>.png``. Two sources of one stem
    would write one output: refused."""
    items = [Item(s, out_dir / f"{s.stem}.png") for s in sources]
    seen: dict[Path, Path] = {}
    for item in items:
        if item.output in seen:
            raise ValueError(f"{seen[item.output]} and {item.source} would both be written to {item.output}: "
                             f"rename one, or run them in separate batches.")
        seen[item.output] = item.source
    whole = [complete(i.output) for i in items]
    return [i for i, w in zip(items, whole) if not w], [i for i, w in zip(items, whole) if w]


def write_atomically(output: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary name beside ``output``, then rename: readers see no file or a whole one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(f".{output.stem}.{uuid.uuid4().hex[:8]}.part.png")
    try:
        write(part)
        os.replace(part, output)
    finally:
        part.unlink(missing_ok=True)


class Worker:
    """One Ray actor's state: the job, built once (models load once per worker)."""

    def __init__(self, make_job: Callable[[], Job]):
        self.job = make_job()

    def run(self, item: Item) -> bool:
        """Upscale ``item``; False when its output was already complete (a worker that died after writing it)."""
        if complete(item.output):
            return False
        write_atomically(item.output, lambda part: self.job.upscale(item.source, part))
        return True


def start_ray(address: str | None = None, paths: tuple[Path, ...] = (), **kwargs) -> None:
    """``ray.init`` on this machine (or the cluster at ``address``) with workers that import the pack (and
    ``paths``) as this process does."""
    import ray
    env = {k: os.environ[k] for k in ("COMFYUI_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (PACK_DIR, *paths))
    ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}, **kwargs)


def default_workers() -> int:
    """One worker per GPU the cluster has, or one on a machine without."""
    import ray
    return max(1, int(ray.cluster_resources().get("GPU", 0)))


def run_batch(items: list[Item], make_jobs: list[Callable[[], Job]], attempts: int = 3,
              on_result: Callable[[Item, str], None] | None = None) -> Summary:
    """Upscale ``items`` on one Ray actor per job factory of ``make_jobs``, in an initialised Ray.
    ``on_result(item, "done" | "skipped" | "failed" | "retry")`` follows the run, e.g. for a progress bar."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= len(make_jobs) else 0
    actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(Worker)
    actors = {n: actor_class.remote(make_job) for n, make_job in enumerate(make_jobs)}
    alive, idle = set(actors), deque(actors)
    queue = deque((item, 0, frozenset()) for item in items)  # (item, attempts made, workers that tried it)
    running: dict = {}
    summary, start = Summary(), time.perf_counter()
    report = on_result or (lambda item, what: None)
    while queue or running:
        for n in list(idle):
            # A worker takes the first image it has not tried, else one that every live worker has tried: an
            # image that failed waits for another worker while one is busy.
            pick = next((q for q in queue if n not in q[2]), None) or next((q for q in queue if alive <= q[2]), None)
            if pick is not None:
                idle.remove(n)
                queue.remove(pick)
                running[actors[n].run.remote(pick[0])] = (pick[0], pick[1], pick[2] | {n}, n)
        if not running:  # every worker died
            for item, _, _ in queue:
                summary.failed[item.source] = "every worker died"
                report(item, "failed")
            break
        [ref], _ = ray.wait(list(running), num_returns=1)
        item, tries, tried, n = running.pop(ref)
        try:
            wrote = ray.get(ref)
        except RayActorError:
            alive.discard(n)
            why = "its worker died"
        except RayTaskError as error:
            idle.append(n)
            why = repr(getattr(error, "cause", None) or error)[:500]
        else:
            idle.append(n)
            (summary.done if wrote else summary.skipped).append(item.source)
            report(item, "done" if wrote else "skipped")
            continue
        if tries + 1 < attempts:
            summary.retried += 1
            queue.append((item, tries + 1, tried))
            report(item, "retry")
        else:
            summary.failed[item.source] = f"{why} (after {attempts} attempts)"
            report(item, "failed")
    summary.seconds = time.perf_counter() - start
    for n in actors:
        ray.kill(actors[n])
    return summary
