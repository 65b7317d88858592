"""``ches filter``: drop the pairs most likely to cause likelihood displacement."""

from __future__ import annotations

import enum
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ches_filter import score_registry

#: The ``--by`` choices of filter and report: the registry's rankable scores, the default first.
ScoreBy = enum.Enum("ScoreBy", {name: name for name in score_registry.RANKABLE}, type=str)  # type: ignore[misc]
DEFAULT_BY = ScoreBy(score_registry.DEFAULT_BY)


SCORING = "Scoring a dataset first (only when the input is not a `ches score` output)"
RULES = "Selection rule (exactly one)"


def filter_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SCORES_OR_DATASET",
            help="A `ches score` output folder (no model is loaded), or a dataset to score first.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder for the kept pairs (Parquet shards).",
                     show_default=False),
    ],
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", min=0, help="Drop the K riskiest pairs.", rich_help_panel=RULES),
    ] = None,
    top_fraction: Annotated[
        float | None,
        typer.Option("--top-fraction", min=0.0, max=1.0, rich_help_panel=RULES,
                     help="Drop the riskiest fraction F of ranked pairs (ceil(F·n) pairs)."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", rich_help_panel=RULES,
                     help="Drop pairs scoring above T (for edit_distance: below T)."),
    ] = None,
    keep_lowest: Annotated[
        float | None,
        typer.Option("--keep-lowest", min=0.0, max=1.0, rich_help_panel=RULES,
                     help="Keep only the least risky fraction F (the paper kept 5%)."),
    ] = None,
    quantile_window: Annotated[
        float | None,
        typer.Option("--quantile-window", min=0.0, max=1.0, rich_help_panel=RULES,
                     help="Keep the --n pairs centred on quantile Q (0 = least risky)."),
    ] = None,
    n: Annotated[
        int | None,
        typer.Option("--n", min=0, rich_help_panel=RULES, help="Window size for --quantile-window."),
    ] = None,
    by: Annotated[
        ScoreBy,
        typer.Option("--by", help="The score to rank by; riskiest = highest (edit_distance: lowest)."),
    ] = DEFAULT_BY,
    keep_unscored: Annotated[
        bool,
        typer.Option("--keep-unscored/--drop-unscored",
                     help="Keep rows that have no score (identical, invalid, ...); counted either way."),
    ] = True,
    keep_scores: Annotated[
        bool, typer.Option("--keep-scores", help="Append the score columns to the output.")
    ] = False,
    removed: Annotated[
        Path | None,
        typer.Option("--removed", help="Also write the removed pairs to this folder.",
                     show_default=False),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace shards in non-empty output folders (scoring "
                          "first: also scores made with other options; the same scores are reused).")
    ] = False,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write report.html/.md/.json beside the output.")
    ] = True,
    report_top: Annotated[
        int, typer.Option("--report-top", min=0, help="Pairs listed in the report.")
    ] = 20,
    rows_per_shard: Annotated[
        int, typer.Option("--rows-per-shard", min=1, help="Rows per output Parquet shard.")
    ] = 10_000,
    scores_output: Annotated[
        Path | None,
        typer.Option("--scores-output", rich_help_panel=SCORING, show_default=False,
                     help="Where the scores go \\[default: OUTPUT.scores]; filter it again for free."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", rich_help_panel=SCORING, show_default=False,
                     help="Model to score with \\[default: the bundled SmolLM2-135M-Instruct]."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", rich_help_panel=SCORING, help="auto, float32, bfloat16, float16.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", rich_help_panel=SCORING, help="auto, cpu, cuda, mps ...")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", rich_help_panel=SCORING,
                     help="Cap prompt + response tokens (default and maximum: the model's context)."),
    ] = None,
    too_long: Annotated[
        str | None,
        typer.Option("--too-long", rich_help_panel=SCORING,
                     help="A pair past --max-length: truncate (default, flagged) or skip (status too_long)."),
    ] = None,
    max_batch_tokens: Annotated[
        int | None,
        typer.Option("--max-batch-tokens", rich_help_panel=SCORING,
                     help="Token budget of one forward batch (padding included)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Drop the pairs most likely to cause likelihood displacement; write the rest in the
    input's own layout and columns (with a manifest and a report)."""
    from ches_filter.filtering import filter_input
    from ches_filter.selection import rule_from_flags

    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    stdout = Console(highlight=False, soft_wrap=True)
    rule = rule_from_flags(top_k=top_k, top_fraction=top_fraction, threshold=threshold,
                           keep_lowest=keep_lowest, quantile_window=quantile_window, n=n, by=by.value)
    result = filter_input(
        source, output=output, rule=rule, scores_output=scores_output,
        scoring={"model": model, "dtype": dtype, "device": device, "max_length": max_length,
                 "too_long": too_long, "max_batch_tokens": max_batch_tokens},
        keep_unscored=keep_unscored, keep_scores=keep_scores, removed=removed, overwrite=overwrite,
        report=report, report_top=report_top, rows_per_shard=rows_per_shard,
        command=shlex.join(["ches", *sys.argv[1:]]), log=lambda msg: stderr.print(msg, markup=False),
    )
    c = result.counts
    lines = [
        f"{rule.describe()}: kept {c['kept']:,} of {c['rows']:,} rows in {result.output}",
        f"removed {c['removed']:,} ({c['removed_by_rule']:,} by the rule, "
        f"{c['unscored_dropped']:,} unscored dropped); unscored kept: {c['unscored_kept']:,}",
    ]
    cutoff = result.selection.cutoff
    if cutoff is not None:
        lines.append(f"cutoff {rule.by} = {cutoff:.6g}")
    if result.removed_output is not None:
        lines.append(f"removed pairs in {result.removed_output}")
    if "html" in result.report_paths:
        lines.append(f"report: {result.report_paths['html']}")
    for line in lines:
        stdout.print(line, markup=False)
