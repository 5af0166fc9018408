"""What the main job shows in a terminal: one progress bar over the whole job, the host's log in a file.

ComfyUI logs to the console as it boots (optional built-in nodes whose dependencies are missing print
tracebacks) and every sampler draws a bar of its own. A person running one upscale wants one line that
moves and one line at the end; the host's full log goes to a file beside the output instead.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from tqdm import tqdm

SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}


class HostLog(logging.Handler):
    """Sends the host's log records to ``path`` and keeps the names of modules that failed to import."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.file = logging.FileHandler(path, mode="w")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.path = path
        self.failed_imports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.file.emit(record)
        found = re.match(r"IMPORT FAILED: (\S+)", record.getMessage())
        if found:
            self.failed_imports.append(found.group(1))

    def __enter__(self) -> "HostLog":
        root = logging.getLogger()
        self.saved = root.handlers[:], root.level
        root.handlers[:] = [self]
        root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.handlers[:], level = self.saved
        root.setLevel(level)
        self.file.close()

    def summary(self) -> str | None:
        if not self.failed_imports:
            return None
        return (f"ComfyUI: optional built-in nodes {', '.join(self.failed_imports)} did not import (not used here; "
                f"details in {self.path})")


class JobProgress:
    """One bar over the job's sampling stages. Each sampler node is a stage; within it the bar follows that
    node's progress (steps, or steps x tiles under TiledBlendedDiffusion) as its ProgressBar reports it."""

    def __init__(self, prompt: dict):
        self.stages = [k for k, v in prompt.items() if v["class_type"] in SAMPLERS]
        self.done: list[str] = []
        self.bar = tqdm(total=max(len(self.stages), 1), file=sys.stderr, dynamic_ncols=True, desc="upscaling: ",
                        bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def __enter__(self) -> "JobProgress":
        import comfy.utils
        self.saved = comfy.utils.PROGRESS_BAR_ENABLED, comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_enabled(False)  # the samplers' own console bars
        comfy.utils.set_progress_bar_global_hook(self.hook)
        return self

    def __exit__(self, *exc) -> None:
        import comfy.utils
        comfy.utils.set_progress_bar_enabled(self.saved[0])
        comfy.utils.set_progress_bar_global_hook(self.saved[1])
        self.bar.close()

    def hook(self, value, total, preview=None, node_id=None) -> None:
        from comfy_execution.utils import get_executing_context
        context = get_executing_context()
        node = node_id or (context.node_id if context else None)
        if node not in self.stages or not total:
            return
        if node not in self.done:
            self.done.append(node)
        stage = self.done.index(node)
        self.bar.n = stage + min(value / total, 1.0)
        self.bar.set_description(f"stage {stage + 1}/{len(self.stages)}, {value}/{total} steps x tiles", refresh=False)
        self.bar.refresh()
