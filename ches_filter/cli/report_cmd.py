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
        str | None, typer.Option("--device", help="Device for --highlight [default: auto].", show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Don't print the terminal report.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Summarise a `ches score` output and show the riskiest pairs (terminal, HTML, Markdown, JSON)."""
    import json

    from ches_filter.data.score_folder import ScoreFolder, is_score_output, select_from_table
    from ches_filter.data.shards import MANIFEST_NAME, atomic_write_bytes
    from ches_filter.errors import OutputError
    from ches_filter.report import build_report, render, render_terminal
    from ches_filter.selection import Rule

    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    for target in (html, markdown, json_out):
        if target is not None and not target.parent.is_dir():
            raise OutputError(f"cannot write {target}: no folder {target.parent}")

    filter_info = None
    selection = None
    source = scores
    manifest_path = scores / MANIFEST_NAME
    if manifest_path.is_file() and not is_score_output(scores):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("kind") == "filter":  # a filter output: report on its scores + the decision
            filter_info = manifest
            source = Path(manifest["scores"]["path"])
    folder = ScoreFolder.open(source)
    table = folder.read_score_table()
    if filter_info is not None:
        rule = filter_info["rule"]
        selection = select_from_table(
            table, Rule(kind=rule["kind"], value=rule["value"], n=rule["n"], by=rule["by"]),
            keep_unscored=bool(filter_info.get("keep_unscored", True)),
        )
    mode = "auto" if highlight is None else ("on" if highlight else "off")
    data = build_report(
        folder, top=top, by=by.value, table=table, filter_info=filter_info, selection=selection,
        highlight=mode, device=device, log=lambda msg: stderr.print(msg, markup=False),
    )
    for target, fmt in ((html, "html"), (markdown, "markdown"), (json_out, "json")):
        if target is not None:
            atomic_write_bytes(target, render(data, fmt).encode("utf-8"))
            stderr.print(f"wrote {target}", markup=False)
    if not quiet:
        render_terminal(data, Console(highlight=False))
