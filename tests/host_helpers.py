"""What several host tests share: a smooth test latent, one sampling call, the pack's own modules."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def smooth_latent(h: int, w: int, batch: int = 1) -> torch.Tensor:
    """A smooth 4-channel latent (products of sines), the same picture for every batch item."""
    yy, xx = torch.meshgrid(torch.linspace(0, 3.1, h), torch.linspace(0, 2.3, w), indexing="ij")
    base = torch.stack([torch.sin(yy + c) * torch.cos(xx - c) for c in range(4)])
    return base.expand(batch, 4, h, w).clone()


def sample(model, latent, pos, neg, steps: int = 4, denoise: float = 0.6, sampler: str = "euler", seed: int = 0,
           disable_pbar: bool = True) -> torch.Tensor:
    """comfy.sample.sample with the tests' settings: CFG 5, the normal scheduler, noise from ``seed``."""
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 5.0, sampler, "normal", pos, neg, latent,
                               denoise=denoise, seed=seed, disable_pbar=disable_pbar)


def pack_module(host, dotted: str):
    """The pack's module ``dotted`` as ComfyUI loaded it (harness.comfy_host.pack_module), once ``host`` is up."""
    from harness.comfy_host import pack_module
    return pack_module(dotted)


@contextmanager
def progress_reports():
    """Every (value, total) reported to a ComfyUI ProgressBar while inside, in order. Recorded where the nodes
    report, not at the global hook: newer hosts (v0.33) throttle what reaches the hook to a few per second."""
    import comfy.utils
    reports, report = [], comfy.utils.ProgressBar.update_absolute

    def recording(bar, value, total=None, preview=None):
        report(bar, value, total, preview)
        reports.append((bar.current, bar.total))

    comfy.utils.ProgressBar.update_absolute = recording
    try:
        yield reports
    finally:
        comfy.utils.ProgressBar.update_absolute = report


def host_generates_text() -> bool:
    """Whether this ComfyUI generates text with a CLIP-loaded model (CLIP.generate: v0.33.0 has it)."""
    import comfy.sd
    return callable(getattr(comfy.sd.CLIP, "generate", None))
