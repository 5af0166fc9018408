"""What several node families declare alike: the tile inputs, a step range, and core errors in widget names."""
from __future__ import annotations

import math
from contextlib import contextmanager

from ..cupscale.errors import InputError, RunError
from .host import io


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


def combo_options(node: type[io.ComfyNode]) -> dict[str, list]:
    """Every dropdown of ``node`` with its options, as its schema declares them now (folder lists rescanned)."""
    return {i.id: list(i.options) for i in node.define_schema().inputs if isinstance(i, io.Combo.Input)}


def combo_problem(node: type[io.ComfyNode], **values) -> str | None:
    """What is wrong with the dropdown values given (None: linked, unknown until the run), or None.

    ComfyUI 0.3.64 checks old-style list dropdowns before a run but not V3 ``Combo`` inputs: a prompt queued
    over the API with a label that is not an option would run, and a node would meet a value it never offered.
    """
    options = combo_options(node)
    wrong = [f"{name} = {value!r} is not one of {', '.join(map(repr, options[name][:20]))}"
             + (f" ({len(options[name])} in all)" if len(options[name]) > 20 else "")
             for name, value in values.items() if value is not None and value not in options.get(name, [value])]
    return "; ".join(wrong) + ": choose one of the listed values." if wrong else None


def number_problem(node: type[io.ComfyNode], **values) -> str | None:
    """What is wrong with the numbers given (None: linked, unknown until the run): not finite, or outside the
    bounds ``node``'s schema declares. The host's own bounds check lets NaN through (every comparison with it
    is false), and a NaN met later fails far from its input (a sampler's "cannot convert float NaN to
    integer"); the host skips its bounds check for an input the node's ``validate_inputs`` names."""
    bounds = {i.id: (getattr(i, "min", None), getattr(i, "max", None)) for i in node.define_schema().inputs
              if isinstance(i, (io.Float.Input, io.Int.Input))}
    wrong = []
    for name, value in values.items():
        low, high = bounds[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if value is not None and (not number or (low is not None and value < low)
                                  or (high is not None and value > high)):
            wrong.append(f"{name} = {value!r} must be a finite number from {low} to {high}")
    return "; ".join(wrong) + "." if wrong else None


def widgets_valid(node: type[io.ComfyNode], **values) -> bool | str:
    """For a node's ``validate_inputs``, which names its widgets: True, or what is wrong with the dropdowns and
    numbers given, so a value that alone decides is refused before anything runs."""
    combos = set(combo_options(node))
    problems = [combo_problem(node, **{k: v for k, v in values.items() if k in combos}),
                number_problem(node, **{k: v for k, v in values.items() if k not in combos})]
    return " ".join(p for p in problems if p) or True


def check_combos(node: type[io.ComfyNode], **values) -> None:
    """At the run, for dropdowns given by a link: a ValueError naming the input."""
    problem = combo_problem(node, **values)
    if problem:
        raise ValueError(problem)


def check_numbers(node: type[io.ComfyNode], **values) -> None:
    """At the run, for numbers given by a link: a ValueError naming each one not finite or out of bounds."""
    problem = number_problem(node, **values)
    if problem:
        raise ValueError(problem)


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

