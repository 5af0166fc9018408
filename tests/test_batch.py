"""Batch upscaling on Ray (harness/batch.py): 8 images on 2 local workers, one worker killed mid-run, every output
written exactly once and equal to a single-process run, a rerun skipping them all; an image that always fails
tried on both workers and reported. With a job that needs no host (tests/batch_jobs.py), and with the shipped
workflow on an embedded ComfyUI in each worker (the main job's own path, harness/workflow_job.py)."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch_jobs
from test_workflows import FAST
from harness.batch import Item, Worker, complete, plan, run_batch, sources_in, start_ray

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    start_ray(num_cpus=2, paths=(TESTS,))
    yield ray
    ray.shutdown()


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(g.integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def notes(path: Path) -> list[tuple[str, str, int]]:
    return [(w, stem, int(pid)) for w, stem, pid in (line.split() for line in path.read_text().splitlines())]


def kill_a_worker_mid_image(path: Path, after: int) -> threading.Thread:
    """SIGKILL the worker that starts the ``after``-th image, while it is working on it."""
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [n for n in notes(path) if n[0] == "start"] if path.exists() else []
            if len(started) >= after:
                os.kill(started[after - 1][2], signal.SIGKILL)
                return
            time.sleep(0.01)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def killed_worker_run(make_job, images: Path, tmp_path: Path) -> None:
    """8 images through ``make_job`` in this process, then on 2 Ray workers with one killed mid-image: the same
    outputs, each written once; a rerun has nothing to do."""
    sources = sources_in([images])
    assert [s.name for s in sources] == [f"img{i}.png" for i in range(8)]
    single = tmp_path / "single"
    job = batch_jobs.Noted(make_job, tmp_path / "single-notes.txt")
    for s in sources:
        Worker(lambda: job).run(Item(s, single / f"{s.stem}.png"))

    out, log = tmp_path / "out", tmp_path / "notes.txt"
    todo, skipped = plan(sources, out)
    assert len(todo) == 8 and not skipped
    killer = kill_a_worker_mid_image(log, after=3)
    summary = run_batch(todo, [lambda: batch_jobs.Noted(make_job, log, pause_s=0.3)] * 2)
    killer.join()
    assert sorted(summary.done) == sources and not summary.failed and summary.retried == 1
    written = Counter(stem for what, stem, _ in notes(log) if what == "wrote")
    assert written == {s.stem: 1 for s in sources}  # exactly once, the killed one's image included
    assert len({pid for *_, pid in notes(log)}) == 2  # the killed worker was not replaced
    for s in sources:
        name = f"{s.stem}.png"
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(single / name)))
    assert not list(out.glob(".*part*"))  # the killed worker's unfinished file is not left under any name

    todo, skipped = plan(sources, out)
    assert not todo and [i.source for i in skipped] == sources


@pytest.mark.hostfree
def test_a_killed_worker_loses_no_image_and_writes_none_twice(ray_local, images, tmp_path):
    killed_worker_run(batch_jobs.Liif, images, tmp_path)


def test_the_shipped_workflow_on_killed_workers_equals_the_main_jobs_output(host, ray_local, images, tmp_path):
    from harness.workflow_job import EmbeddedWorkflow
    killed_worker_run(lambda: EmbeddedWorkflow("upscale_x4_two_stage.api.json", tiny_models=True,
                                               overrides=tuple(FAST), cpu=True), images, tmp_path)


@pytest.mark.hostfree
def test_an_image_that_keeps_failing_is_tried_on_every_worker_and_reported(ray_local, images, tmp_path):
    log = tmp_path / "notes.txt"
    todo, _ = plan(sources_in([images]), tmp_path / "out")
    seen = []
    summary = run_batch(todo, [lambda: batch_jobs.Noted(batch_jobs.Liif, log, fail=("img5",))] * 2, attempts=3,
                        on_result=lambda item, what: seen.append((item.source.stem, what)))
    assert len(summary.done) == 7 and list(summary.failed) == [images / "img5.png"]
    assert "img5.png cannot be upscaled" in summary.failed[images / "img5.png"]
    assert "(after 3 attempts)" in summary.failed[images / "img5.png"] and summary.retried == 2
    tries = [pid for what, stem, pid in notes(log) if what == "start" and stem == "img5"]
    assert len(tries) == 3 and tries[0] != tries[1]  # the second try went to the other worker
    assert seen.count(("img5", "retry")) == 2 and ("img5", "failed") in seen
    assert not (tmp_path / "out" / "img5.png").exists() and not complete(tmp_path / "out" / "img5.png")


@pytest.mark.hostfree
def test_outputs_that_would_collide_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in "ab":
        Image.new("RGB", (4, 4)).save(tmp_path / d / "same.png")
    with pytest.raises(ValueError, match="would both be written to"):
        plan([tmp_path / "a" / "same.png", tmp_path / "b" / "same.png"], tmp_path / "out")


@pytest.mark.hostfree
def test_a_truncated_output_is_not_complete(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    assert complete(path)
    path.write_bytes(path.read_bytes()[:40])
    assert not complete(path)
