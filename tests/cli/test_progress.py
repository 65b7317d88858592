"""``ScoreProgress`` off a terminal: plain lines a CI log can show, not a bar's final state."""

from __future__ import annotations

import io

from rich.console import Console

from ches_filter.cli.progress import ScoreProgress
from ches_filter.pipeline import Progress


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_off_a_terminal_a_line_every_30_seconds_and_at_the_end():
    console, buffer = plain_console()
    with ScoreProgress(console) as progress:
        progress.update(Progress(rows_done=0, rows_total=1000, tokens_done=0, elapsed_s=0.0))
        for done, elapsed in ((256, 10.0), (512, 20.0), (768, 41.0), (900, 50.0), (1000, 55.0)):
            progress.update(Progress(rows_done=done, rows_total=1000, tokens_done=done * 100, elapsed_s=elapsed))
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "scoring: 256 of 1,000 pairs, 25.6 pairs/s, 2,560 tokens/s, 0m10s elapsed, ETA 0m29s",
        "scoring: 768 of 1,000 pairs, 18.7 pairs/s, 1,873 tokens/s, 0m41s elapsed, ETA 0m12s",
        "scoring: 1,000 of 1,000 pairs, 18.2 pairs/s, 1,818 tokens/s, 0m55s elapsed",
    ]
    assert "\x1b" not in buffer.getvalue()  # no terminal control codes in a log


def test_an_unknown_total_and_quiet():
    console, buffer = plain_console()
    progress = ScoreProgress(console)
    progress.update(Progress(rows_done=5, rows_total=None, tokens_done=50, elapsed_s=4000.0))
    assert buffer.getvalue() == "scoring: 5 pairs, 0.0 pairs/s, 0 tokens/s, 1h06m40s elapsed\n"
    console, buffer = plain_console()
    ScoreProgress(console, enabled=False).update(Progress(5, 10, 50, 1.0))
    assert buffer.getvalue() == ""
