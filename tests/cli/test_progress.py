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


def test_a_slow_window_still_gets_timed_lines_and_none_after_the_run(tiny_llama_dir, tmp_path, monkeypatch):
    """#13, 5: one window that takes long (a huge pair) must not silence progress off a terminal."""
    import time
    from pathlib import Path

    from ches_filter import pipeline
    from ches_filter.pipeline import plan_scoring, run_scoring

    real_score_window = pipeline.score_window

    def slow_score_window(scorer, window):
        time.sleep(1.0)  # five timer intervals in one window
        return real_score_window(scorer, window)

    monkeypatch.setattr(pipeline, "score_window", slow_score_window)
    example = Path(pipeline.__file__).parent / "examples" / "preference_pairs.jsonl"
    plan = plan_scoring(example, output=tmp_path / "out", model=str(tiny_llama_dir), device="cpu",
                        dtype="float32", limit=4, window=2)
    console, buffer = plain_console()
    with ScoreProgress(console, every_s=0.2) as progress:
        run_scoring(plan, progress=progress.update)
    lines = buffer.getvalue().splitlines()
    # during the first window no row is done: only the timer can print, and it does
    during_first = [line for line in lines if line.startswith("scoring: 0 of 4 pairs")]
    assert len(during_first) >= 2, lines
    assert all("elapsed" in line for line in during_first)
    assert lines[-1].startswith("scoring: 4 of 4 pairs")
    assert progress._timer is not None and not progress._timer.is_alive()  # started, then stopped
    time.sleep(0.6)  # three intervals: a timer still running would print
    assert buffer.getvalue().splitlines() == lines


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CHES_PROGRESS_EVERY_S", "2.5")
    assert ScoreProgress(plain_console()[0]).every_s == 2.5
    monkeypatch.delenv("CHES_PROGRESS_EVERY_S")
    assert ScoreProgress(plain_console()[0]).every_s == 30.0
