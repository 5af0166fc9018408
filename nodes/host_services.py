"""The host's services as the node families use them: model folders and cancellable progress."""
from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths


def register_model_folder(name: str) -> None:
    """``models/<name>`` for model files, unless extra_model_paths.yaml already configured it."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)],
                                                     folder_paths.supported_pt_extensions)


def no_model_folder(kind: str) -> str:
    """The choice shown when ``models/<kind>`` holds no model folder yet."""
    return f"(no model folder in models/{kind})"


def model_folders(kind: str, depth: int = 1) -> list[str]:
    """Model folders (holding a config.json, as transformers saves them) in every root of ``kind``, down
    to ``depth`` levels (2: also ``owner/name``), hidden ones left out; the placeholder when there are none."""
    names = set()
    for root in map(Path, folder_paths.get_folder_paths(kind)):
        for level in range(1, depth + 1):
            for config in root.glob("*/" * level + "config.json"):
                name = config.parent.relative_to(root)
                if not any(part.startswith(".") for part in name.parts):
                    names.add(name.as_posix())
    return sorted(names) or [no_model_folder(kind)]


def model_folder_path(kind: str, name: str) -> Path | None:
    """The first folder ``<root>/<name>`` among the roots of ``kind``; None for none or the placeholder."""
    if name == no_model_folder(kind):
        return None
    return next((Path(root) / name for root in folder_paths.get_folder_paths(kind) if (Path(root) / name).is_dir()),
                None)


def free_memory(device) -> int:
    """Bytes free for new tensors on ``device``, as the host counts them (the system's available RAM for the
    CPU; the card's free memory plus what torch holds unused for a GPU)."""
    return comfy.model_management.get_free_memory(device)


def progress_reporter():
    """A ``report(done, total)`` callback for the core: moves the node's progress bar and stops
    the work at once when the user cancels."""
    bar = comfy.utils.ProgressBar(1)

    def report(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, max(total, 1))
    return report
