"""The run's StepClock (cupscale.schedule), shared by every node's OUTER_SAMPLE wrapper of one sampling run.

The first wrapper to run installs it in the run's transformer_options and hooks the sampler's step callback;
the others find it there. The priors and the tiled sampler's progress bar then read the step on the host.
"""
from __future__ import annotations

import torch

from ..cupscale.schedule import StepClock

CLOCK_KEY = "cupscale_step_clock"


def run_clock(model_options: dict, sigmas: torch.Tensor, callback):
    """(the run's clock, the callback to hand on): installs the clock on first call in this run."""
    options = model_options.setdefault("transformer_options", {})
    if CLOCK_KEY in options:
        return options[CLOCK_KEY], callback
    clock = options[CLOCK_KEY] = StepClock(sigmas.shape[-1] - 1)

    def on_step(i, x0, x, total):
        clock.tick(i, total)
        if callback is not None:
            return callback(i, x0, x, total)
    return clock, on_step


def clock_of(model_options: dict) -> StepClock | None:
    """The run's clock; None outside a sampler run (a direct model call counts as the first step)."""
    return model_options.get("transformer_options", {}).get(CLOCK_KEY)
