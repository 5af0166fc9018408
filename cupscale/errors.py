"""Errors about inputs, said in the core's own words.

The core names the fields it was given (``reference``, ``start``); the node that took them from a
user knows what its widgets are called. ``named`` rewrites the message in those names, so the core
never needs to know the UI and the user always reads the input to fix.
"""
from __future__ import annotations

import re


class FieldMessage:
    """A message whose ``template`` holds ``{slot}`` places for the names of fields (``fields``: slot ->
    the core's field name), everything else (values, the fix) already filled in. Only the slots are
    replaced, so values may hold braces (a URL, a dict)."""

    def __init__(self, template: str, **fields: str):
        self.template, self.fields = template, fields
        super().__init__(self.named({}))

    def named(self, names: dict[str, str]) -> str:
        """The message with each field called by ``names`` (core field -> the user's input name)."""
        called = {slot: names.get(field, field) for slot, field in self.fields.items()}
        return re.sub(r"\{(\w+)\}", lambda m: called.get(m.group(1), m.group(0)), self.template)


class InputError(FieldMessage, ValueError):
    """A bad value of one or more fields."""


class RunError(FieldMessage, RuntimeError):
    """A run that failed on valid inputs (a model without an answer, a server away); the fields named
    are the ones to change."""
