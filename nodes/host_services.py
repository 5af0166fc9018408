"""The host's services as the node families use them: model folders and cancellable progress."""
from __future__ import annotations

import os

import comfy.model_management
import comfy.utils
import folder_paths


def register_model_folder(name: str) -> None:
    """``models/<name>`` for model files, unless extra_model_paths.yaml already configured it."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)],
                                                     folder_paths.supported_pt_extensions)


def progress_reporter():
    """A ``report(done, total)`` callback for the core: moves the node's progress bar and stops
    the work at once when the user cancels."""
    bar = comfy.utils.ProgressBar(1)

    def report(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, max(total, 1))
    return report
