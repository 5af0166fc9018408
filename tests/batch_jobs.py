"""Jobs for harness/batch.py's tests: LIIF x2 with tiny seeded weights (the core alone, no host), and a wrapper
that notes where and when each image starts and is written, and fails chosen images, around any job."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import tiny_liif
from cupscale.images import from_uint8, to_uint8
from cupscale.liif import model as liif
from cupscale.liif.checkpoints import liif_from_checkpoint


class Liif:
    def __init__(self):
        self.model = liif_from_checkpoint(tiny_liif.edsr_liif(seed=3), "tiny EDSR-LIIF")

    def upscale(self, source: Path, output: Path) -> None:
        x = from_uint8(np.asarray(Image.open(source).convert("RGB")))
        with torch.inference_mode():
            y = liif.to_image_(liif.render(self.model, liif.to_signed(x), (2 * x.shape[1], 2 * x.shape[2])))
        Image.fromarray(to_uint8(y)[0]).save(output, format="PNG")


class Noted:
    """``make_job()``'s job on one CPU thread (as a test process), with a line in ``notes`` as each image starts
    and is written ("start img3 <pid>"), a pause before the work, and a failure on the images named in ``fail``."""

    def __init__(self, make_job: Callable, notes: Path, pause_s: float = 0.0, fail: tuple[str, ...] = ()):
        torch.set_num_threads(1)
        self.job, self.notes, self.pause_s, self.fail = make_job(), notes, pause_s, fail

    def note(self, what: str, source: Path) -> None:
        with open(self.notes, "a") as f:
            f.write(f"{what} {source.stem} {os.getpid()}\n")

    def upscale(self, source: Path, output: Path) -> None:
        self.note("start", source)
        time.sleep(self.pause_s)
        if source.stem in self.fail:
            raise RuntimeError(f"{source.name} cannot be upscaled")
        self.job.upscale(source, output)
        self.note("wrote", source)
