"""The host's services as the node families use them: model folders, cancellable progress, and cancels heard
between a UNet's blocks."""
from __future__ import annotations

import os
from pathlib import Path

from .host import comfy_utils, folder_paths, model_management


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
    return model_management.get_free_memory(device)


def stop_if_interrupted() -> None:
    """Raises the host's interrupt when the user has cancelled: the ``stop`` the core's long calls take."""
    model_management.throw_exception_if_processing_interrupted()


def input_block_check(h, *args, **kwargs):
    """A UNet input block patch that only listens for the user's cancel: heard between blocks, a
    fraction of a second on a CPU, rather than after a whole batch of tiles (seconds to minutes)."""
    stop_if_interrupted()
    return h


def output_block_check(h, hsp, *args, **kwargs):
    """The same between output blocks (whose patches also carry the skip connection)."""
    stop_if_interrupted()
    return h, hsp


def add_block_checks(model_patcher) -> None:
    """Listen for cancels between a UNet's blocks (DiTs take no such patch and ignore it); once per clone."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    if input_block_check not in patches.get("input_block_patch", []):
        model_patcher.set_model_input_block_patch(input_block_check)
        model_patcher.set_model_output_block_patch(output_block_check)


def progress_reporter():
    """A ``report(done, total)`` callback for the core: moves the node's progress bar and stops
    the work at once when the user cancels."""
    bar = comfy_utils.ProgressBar(1)

    def report(done: int, total: int) -> None:
        stop_if_interrupted()
        bar.update_absolute(done, max(total, 1))
    return report
