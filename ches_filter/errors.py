"""Typed errors. Each says what went wrong, where (file, row, field) and how to fix it.

The CLI maps every ``ChesError`` to exit code 2 (bad input or configuration) with a one-line
message and no traceback; anything else is an internal error (exit 3).
"""

from __future__ import annotations


class ChesError(Exception):
    """A problem the user can fix: bad input, bad options, a model that can't be found."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class DatasetError(ChesError):
    """The dataset can't be found, opened or parsed."""


class LayoutError(ChesError):
    """The dataset's fields match no supported layout, or the mapping options are wrong."""


class OptionError(ChesError):
    """An invalid option or combination of options."""


class ModelError(ChesError):
    """The model or tokenizer can't be found or loaded."""


class OutputError(ChesError):
    """The output location can't be written, or holds something we won't overwrite."""
