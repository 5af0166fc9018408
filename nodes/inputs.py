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


def combos_valid(node: type[io.ComfyNode], **values) -> bool | str:
    """For a node's ``validate_inputs`` (which lists the dropdowns it checks): True, or the message."""
    return combo_problem(node, **values) or True


def check_combos(node: type[io.ComfyNode], **values) -> None:
    """At the run, for dropdowns a node does not check in ``validate_inputs``: a ValueError naming the input."""
    problem = combo_problem(node, **values)
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

