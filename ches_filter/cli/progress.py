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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class ScoreProgress:
    """Receives :class:`ches_filter.pipeline.Progress` updates and log lines.

    On a terminal, a bar that appears with the first update (after the model has loaded), so
    messages printed while resolving and loading the model are not interleaved with an empty
    bar. Elsewhere (a CI log, a file), where a live bar would show only its final state, a plain
    line at most every ``PLAIN_EVERY_S`` seconds of scoring, and one when the last row is done.
    """

    PLAIN_EVERY_S = 30.0

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._plain_at: float | None = None  # elapsed_s of the last plain line

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
        if not self.console.is_terminal:
            self._plain_line(state)
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

    def _plain_line(self, state: Any) -> None:
        done = state.rows_total is not None and state.rows_done >= state.rows_total
        due = self._plain_at is None or state.elapsed_s - self._plain_at >= self.PLAIN_EVERY_S
        if state.rows_done == 0 or not (due or done):
            return
        self._plain_at = state.elapsed_s
        of = f" of {state.rows_total:,}" if state.rows_total is not None else ""
        line = f"scoring: {state.rows_done:,}{of} pairs"
        if state.elapsed_s > 0:
            pairs_s = state.rows_done / state.elapsed_s
            line += f", {pairs_s:,.1f} pairs/s, {state.tokens_done / state.elapsed_s:,.0f} tokens/s"
            line += f", {_duration(state.elapsed_s)} elapsed"
            if state.rows_total is not None and not done and pairs_s > 0:
                line += f", ETA {_duration((state.rows_total - state.rows_done) / pairs_s)}"
        self.console.print(line)
