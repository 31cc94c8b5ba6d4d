"""Errors of the data layer (a module of their own: every reader raises them)."""

from __future__ import annotations

from typing import Sequence


class DataValidationError(ValueError):
    """Data that cannot be used as it is; the message names the file and the line,
    row or column (``FILE:LINE: ...``). ``problems`` lists every problem found
    when there are several."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]


class ReadError(DataValidationError):
    """A table cannot be read; the message names the file (and line, row or column)."""
