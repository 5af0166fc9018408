"""Where a sampling run is: the step an evaluation belongs to, and step ranges given as fractions.

Every prior and the tiled sampler's progress bar ask the same question of the sampler's sigmas; one
answer keeps them agreeing on what "step i" means for second-order samplers and for RePaint's jumps.
"""
from __future__ import annotations

import torch

from .errors import InputError


def step_index(sample_sigmas: torch.Tensor, sigma: float) -> int:
    """The step ``i`` whose run from sigma_i down contains an evaluation at ``sigma``.

    Evaluations between two sigmas of the schedule (second-order samplers) belong to the step that
    started above them; a churned sigma above the schedule belongs to step 0.
    """
    return max(int((sample_sigmas[:-1] >= sigma * (1 - 1e-4)).sum()) - 1, 0)


def schedule_progress(sample_sigmas: torch.Tensor, sigma: float) -> float:
    """Fraction of the sampling run done at an evaluation at ``sigma``: i / steps during step i."""
    return step_index(sample_sigmas, sigma) / (len(sample_sigmas) - 1)


def check_percent_range(start: float, end: float, fix: str = "") -> None:
    """Refuse a step range that selects no step: ``0 <= start < end <= 1``."""
    if not 0 <= start < end <= 1:
        raise InputError(f"{{start}} = {start}, {{end}} = {end}: the range must satisfy 0 <= {{start}} < {{end}} <= 1"
                         + (f" ({fix})" if fix else "") + ".", start="start", end="end")


class StepClock:
    """Where a sampling run is, known on the host: the sampler's step callback moves it.

    Reading the step off an evaluation's sigma (``step_index``) needs sigma's value, and on a GPU that value lives on
    the device: one host–device sync per evaluation, per prior. The sampler already tells the host once per step
    ``i``, right after the step's first evaluation (at sigma_i). Evaluations before that report see ``step == i``;
    one after it (Heun's at sigma_{i+1}) sees ``i + 1``, the step that sigma_{i+1} begins, as ``step_index`` says too.
    """

    def __init__(self, steps: int):
        self.steps = max(1, steps)
        self.step = 0

    def tick(self, i: int, total: int) -> None:
        """The sampler finished step ``i`` of ``total`` (RePaint counts its revisits in both)."""
        self.step, self.steps = i + 1, max(1, total)

    @property
    def progress(self) -> float:
        """Fraction of the run done during the current step: i / steps, as ``schedule_progress`` gives."""
        return min(self.step, self.steps) / self.steps
