"""A rich progress bar on stderr for ``ches score``: pairs/s, tokens/s and ETA."""

from __future__ import annotations

import os
import threading
import time
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
    line every ``every_s`` seconds (``PLAIN_EVERY_S``, or ``$CHES_PROGRESS_EVERY_S``) of wall
    time, and one when the last row is done.

    The pipeline reports after each window, and one window can take minutes (a very long pair, a
    slow device): a timer thread prints the line when ``every_s`` seconds passed without one,
    with the counts of the last report and the elapsed time of now. A timer rather than reports
    per forward batch: a single forward pass of one long pair is itself the silent stretch, and
    only a clock that does not wait for the model can speak during it. The thread starts with the
    first report and is stopped (and joined) when the ``with`` block ends, so nothing prints after.
    """

    PLAIN_EVERY_S = 30.0

    def __init__(self, console: Console, *, enabled: bool = True, every_s: float | None = None) -> None:
        self.console = console
        self.enabled = enabled
        if every_s is None:
            every_s = float(os.environ.get("CHES_PROGRESS_EVERY_S") or self.PLAIN_EVERY_S)
        self.every_s = every_s
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._plain_at: float | None = None  # elapsed_s of the last plain line
        self._lock = threading.Lock()  # the timer thread and the caller print the same lines
        self._state: Any = None  # the last report, and when it came (perf_counter)
        self._state_at = 0.0
        self._line_at = 0.0  # perf_counter of the last plain line (or of the first report)
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def __enter__(self) -> ScoreProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._bar is not None:
            self._bar.stop()

    def stop(self) -> None:
        """Stop the timer thread (no line prints after this returns)."""
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()

    def log(self, message: str) -> None:
        self.console.print(escape(message))

    def update(self, state: Any) -> None:
        if not self.enabled:
            return
        if not self.console.is_terminal:
            with self._lock:
                self._state, self._state_at = state, time.perf_counter()
                if self._timer is None:
                    self._line_at = self._state_at
                    self._start_timer()
                self._plain_line(state)
                if state.rows_total is not None and state.rows_done >= state.rows_total:
                    self._stop.set()  # the last line is out: nothing more while the summary is read
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

    def _start_timer(self) -> None:
        if self._stop.is_set():
            return
        self._timer = threading.Thread(target=self._tick, name="ches-progress", daemon=True)
        self._timer.start()

    def _tick(self) -> None:
        """The timer thread: a line whenever ``every_s`` of wall time passed without one."""
        while not self._stop.wait(min(self.every_s, 1.0) / 2):
            with self._lock:
                now = time.perf_counter()
                if self._stop.is_set() or now - self._line_at < self.every_s:
                    continue
                state = self._state
                elapsed = state.elapsed_s + (now - self._state_at)
                self._print_line(state, elapsed)

    def _plain_line(self, state: Any) -> None:
        done = state.rows_total is not None and state.rows_done >= state.rows_total
        due = self._plain_at is None or state.elapsed_s - self._plain_at >= self.every_s
        if state.rows_done == 0 or not (due or done):
            return
        self._print_line(state, state.elapsed_s)

    def _print_line(self, state: Any, elapsed_s: float) -> None:
        """The counts of ``state`` (a report) at ``elapsed_s`` seconds of scoring."""
        done = state.rows_total is not None and state.rows_done >= state.rows_total
        self._plain_at = elapsed_s
        self._line_at = time.perf_counter()
        of = f" of {state.rows_total:,}" if state.rows_total is not None else ""
        line = f"scoring: {state.rows_done:,}{of} pairs"
        if elapsed_s > 0:
            pairs_s = state.rows_done / elapsed_s
            line += f", {pairs_s:,.1f} pairs/s, {state.tokens_done / elapsed_s:,.0f} tokens/s"
            line += f", {_duration(elapsed_s)} elapsed"
            if state.rows_total is not None and not done and pairs_s > 0:
                line += f", ETA {_duration((state.rows_total - state.rows_done) / pairs_s)}"
        self.console.print(line)

