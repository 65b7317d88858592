"""Typed errors. Each says what went wrong, where (file, row, field) and how to fix it.

The CLI maps every ``ChesError`` to exit code 2 (bad input or configuration) with a one-line
message and no traceback; anything else is an internal error (exit 3).
"""

from __future__ import annotations

from collections.abc import Iterable


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


#: The most characters of dataset content that any error, reason or log line shows.
CLIP_LIMIT = 200


def clip(text: object, limit: int = CLIP_LIMIT) -> str:
    """``text`` (``str()`` of anything else) cut to at most ``limit`` characters, ending in "…".

    Every message that quotes dataset content (a value, a key, a list of field names) passes it
    through here, so a 50 KB response or a row with 5,000 fields never floods the terminal.
    """
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def clip_names(names: Iterable[object], limit: int = CLIP_LIMIT) -> str:
    """Names joined with ", ", at most ``limit`` characters: "a, b, c, … (4,996 more)".

    Whole names are kept while they fit; the count says how many were left out. A single name
    longer than the limit is itself clipped. No names: "(none)".
    """
    items = [n if isinstance(n, str) else str(n) for n in names]
    if not items:
        return "(none)"
    shown: list[str] = []
    used = 0
    for i, name in enumerate(items):
        rest = len(items) - i
        tail = f", … ({rest - 1:,} more)" if rest > 1 else ""
        piece = (", " if shown else "") + name
        if used + len(piece) + len(tail) <= limit:
            shown.append(name)
            used += len(piece)
            continue
        if not shown:  # the first name alone is too long: clip it
            return clip(name, max(limit - len(tail), 20)) + tail
        return ", ".join(shown) + f", … ({rest:,} more)"
    return ", ".join(shown)
