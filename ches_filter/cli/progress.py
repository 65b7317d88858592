"""A rich progress bar on stderr for ``ches score``: pairs/s, tokens/s and ETA."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ScoreProgress:
    """Receives :class:`ches_filter.pipeline.Progress` updates and log lines.

    The bar appears with the first update (after the model has loaded), so messages printed
    while resolving and loading the model are not interleaved with an empty bar.
    """

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ScoreProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def log(self, message: str) -> None:
        self.console.print(escape(message))

    def update(self, state: Any) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pairs"),
                TextColumn("{task.fields[pairs_s]} pairs/s"),
                TextColumn("{task.fields[tokens_s]} tokens/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("score", total=state.rows_total, pairs_s="–", tokens_s="–")
        assert self._task is not None
        elapsed = state.elapsed_s
        rates = {}
        if elapsed > 0:
            rates = {
                "pairs_s": f"{state.rows_done / elapsed:,.1f}",
                "tokens_s": f"{state.tokens_done / elapsed:,.0f}",
            }
        self._bar.update(self._task, completed=state.rows_done, total=state.rows_total, **rates)
