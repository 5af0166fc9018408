"""What several node families declare alike: the tile inputs, a step range, and core errors in widget names."""
from __future__ import annotations

from contextlib import contextmanager

from comfy_api.latest import io

from ..cupscale.errors import InputError, RunError


def tile_inputs(what: str, note: str, default: int = 1024) -> list[io.Input]:
    """tile_width / tile_height / overlap of every node that lays out the region grid."""
    size = dict(default=default, min=64, max=16384, step=8)
    return [
        io.Int.Input("tile_width", **size, tooltip=f"{what} width in pixels, a multiple of 8: {note}."),
        io.Int.Input("tile_height", **size, tooltip=f"{what} height in pixels, a multiple of 8."),
        io.Int.Input("overlap", default=128, min=0, max=8192, step=8,
                     tooltip=f"Pixels shared by neighbouring {what.lower()}s."),
    ]


def advanced(widget: io.Input) -> io.Input:
    """A widget most users never change: hidden until "Show Advanced" in the node's menu (js/cupscale.js
    marks it for the frontend), still saved and sent like any other."""
    widget.extra_dict["advanced"] = True
    return widget


def percent_range_inputs(first: str, after: str, step: float = 0.01) -> list[io.Input]:
    """start_percent / end_percent: a range of the sampler's steps, as fractions."""
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=step, tooltip=first),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=step, tooltip=after),
    ]


@contextmanager
def widget_names(**names: str):
    """The core's InputError (RunError) as the ValueError (RuntimeError) a user reads, in this node's
    widget names (field=widget)."""
    try:
        yield
    except InputError as error:
        raise ValueError(error.named(names)) from None
    except RunError as error:
        raise RuntimeError(error.named(names)) from None

