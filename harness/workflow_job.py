"""A shipped API workflow run image after image on the ComfyUI embedded in this process: the main job
(scripts/run_workflow.py) and each worker of a batch (scripts/batch_upscale.py) run it the same way.

The host boots once, and one executor serves every image, so the workflow's loaders run once and their
models stay loaded (ComfyUI's own cache keeps unchanged node outputs).
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path

from harness import comfy_host, workflows


class MissingCheckpoint(FileNotFoundError):
    """A checkpoint the workflow loads is not in the host's checkpoints folder."""


class NoImageSaved(RuntimeError):
    """The workflow ran but saved no image."""


@contextmanager
def host_folders(inputs: Path, outputs: Path):
    """The host's input and output folders for one image, put back afterwards."""
    import folder_paths
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    try:
        folder_paths.set_input_directory(str(inputs))
        folder_paths.set_output_directory(str(outputs))
        yield
    finally:
        folder_paths.set_input_directory(saved[0])
        folder_paths.set_output_directory(saved[1])


class EmbeddedWorkflow:
    """``workflow`` (a file of example_workflows/api/ or a path) on tiny models, a named checkpoint, or as
    shipped; ``overrides`` are ``NODE_ID.input=value`` settings applied to every image."""

    def __init__(self, workflow: str, tiny_models: bool = False, checkpoint: str | None = None,
                 overrides: tuple[str, ...] = (), cpu: bool = False):
        import torch
        comfy_host.boot(cpu=cpu or not torch.cuda.is_available())
        import folder_paths
        prompt = workflows.load(workflow)
        if tiny_models:
            prompt = workflows.with_tiny_models(prompt)
        elif checkpoint:
            prompt = workflows.with_checkpoint(prompt, checkpoint)
        for k in workflows.nodes_of(prompt, "CheckpointLoaderSimple"):
            name = prompt[k]["inputs"]["ckpt_name"]
            if folder_paths.get_full_path("checkpoints", name) is None:
                raise MissingCheckpoint(
                    f"checkpoint {name!r} is not in {folder_paths.get_folder_paths('checkpoints')}: put it there, "
                    f"pass --checkpoint NAME, or --tiny-models to check the pipeline without weights")
        # Set once, before any image: the progress bar counts the tiles and steps of the prompt as it runs.
        self.prompt = workflows.with_overrides(prompt, list(overrides))
        self.executor = comfy_host.new_executor()
        # One output folder for the job: the executor keeps node objects between prompts, and SaveImage reads
        # its folder once, when it is made (v0.33).
        self.outputs = Path(tempfile.mkdtemp(prefix="cupscale-job-"))
        weakref.finalize(self, shutil.rmtree, self.outputs, True)

    def upscale(self, source: Path, output: Path) -> None:
        """Run the workflow on ``source`` and copy the last image it saved to ``output``."""
        name = "input" + source.suffix.lower()
        with tempfile.TemporaryDirectory() as inputs, host_folders(Path(inputs), self.outputs):
            shutil.copy(source, Path(inputs) / name)
            history = comfy_host.run_prompt(workflows.with_image(self.prompt, name), self.executor)
            saved = [img for out in history["outputs"].values() for img in out.get("images", [])
                     if img.get("type") == "output"]
            if not saved:
                raise NoImageSaved("the workflow saved no image (does it end in SaveImage?)")
            for img in saved:
                written = self.outputs / img["subfolder"] / img["filename"]
                if img is saved[-1]:
                    shutil.copy(written, output)
                written.unlink()
