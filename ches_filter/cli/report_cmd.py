"""``ches report``: what the scores say, and the pairs most likely to cause displacement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .filter_cmd import DEFAULT_BY, ScoreBy


def report_command(
    scores: Annotated[
        Path,
        typer.Argument(metavar="SCORES", show_default=False,
                       help="A `ches score` output folder (or a `ches filter` output)."),
    ],
    top: Annotated[int, typer.Option("--top", min=0, help="How many of the riskiest pairs to show.")] = 20,
    by: Annotated[ScoreBy, typer.Option("--by", help="The score to rank by.")] = DEFAULT_BY,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report.", show_default=False)
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write Markdown (for PR comments).", show_default=False)
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report data as JSON.", show_default=False)
    ] = None,
    highlight: Annotated[
        bool | None,
        typer.Option("--highlight/--no-highlight", show_default=False,
                     help="Shade rejected tokens by their share of the score (loads the scoring model; "
                          "default: on when --top <= 50, skipped with a note if the model can't load)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Device for --highlight \\[default: auto].", show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Don't print the terminal report.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Summarise a `ches score` output and show the riskiest pairs (terminal, HTML, Markdown, JSON)."""
    from ches_filter.report import check_report_targets, render_terminal, report_for, write_report

    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    check_report_targets([html, markdown, json_out], scores=scores)
    data = report_for(
        scores, top=top, by=by.value, device=device, log=lambda msg: stderr.print(msg, markup=False),
        highlight="auto" if highlight is None else ("on" if highlight else "off"),
    )
    for target, fmt in ((html, "html"), (markdown, "markdown"), (json_out, "json")):
        if target is not None:
            write_report(data, target, fmt)
            stderr.print(f"wrote {target}", markup=False)
    if not quiet:
        render_terminal(data, Console(highlight=False))
