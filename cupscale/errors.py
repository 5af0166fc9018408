"""Errors about inputs, said in the core's own words.

The core names the fields it was given (``reference``, ``start``); the node that took them from a
user knows what its widgets are called. ``InputError.named`` rewrites the message in those names,
so the core never needs to know the UI and the user always reads the input to fix.
"""
from __future__ import annotations


class InputError(ValueError):
    """A bad value of one or more fields. ``template`` holds ``{field}`` slots for the fields' names,
    everything else (values, the fix) already filled in."""

    def __init__(self, template: str, **fields: str):
        self.template, self.fields = template, fields
        super().__init__(template.format(**fields))

    def named(self, names: dict[str, str]) -> str:
        """The message with each field called by ``names`` (core field -> the user's input name)."""
        return self.template.format(**{slot: names.get(field, field) for slot, field in self.fields.items()})
