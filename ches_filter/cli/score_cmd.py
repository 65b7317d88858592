"""``ches score``: parse options, call :func:`ches_filter.pipeline.score_dataset`, print."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

INPUT = "Input"
LAYOUT = "Layout"
MODEL = "Model"
TOKENS = "Tokenisation"
OUTPUT = "Output"


def score_command(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A jsonl/json/jsonl.gz/parquet/csv/arrow file, a folder (save_to_disk or data "
            "files), a glob, or a hub dataset id.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", rich_help_panel=OUTPUT,
                     help="Folder for the shards and manifest.json \\[default: DATASET name + .ches].",
                     show_default=False),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", rich_help_panel=INPUT, help="Split to read.")] = None,
    config: Annotated[
        str | None, typer.Option("--config", rich_help_panel=INPUT, help="Hub dataset configuration.")
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", rich_help_panel=INPUT,
                     help="Hub dataset revision (branch, tag or commit); the model's is --model-revision."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", rich_help_panel=INPUT, help="Score only the first N rows.")
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option("--sample", rich_help_panel=INPUT, help="Score a uniform random sample of N rows."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=INPUT, help="Seed for --sample.")] = 0,
    layout: Annotated[
        str | None,
        typer.Option("--layout", rich_help_panel=LAYOUT,
                     help="Force a layout: standard, conversational, prompt_in_messages, "
                     "implicit_messages, hh_rlhf, sharegpt, chosen_messages, ranking, alpacafarm, "
                     "pku_saferlhf, shp."),
    ] = None,
    prompt_field: Annotated[
        str | None,
        typer.Option("--prompt-field", rich_help_panel=LAYOUT, help="Field holding the prompt (a dotted path: data.question, messages.0)."),
    ] = None,
    chosen_field: Annotated[
        str | None,
        typer.Option("--chosen-field", rich_help_panel=LAYOUT, help="Field holding the chosen response (a dotted path: response.0, output.0)."),
    ] = None,
    rejected_field: Annotated[
        str | None,
        typer.Option("--rejected-field", rich_help_panel=LAYOUT, help="Field holding the rejected response (a dotted path: response.1, output.-1)."),
    ] = None,
    label_policy: Annotated[
        str,
        typer.Option("--label-policy", rich_help_panel=LAYOUT,
                     help="PKU-SafeRLHF: follow better_response_id (better) or safer_response_id (safer)."),
    ] = "better",
    ranking_pair: Annotated[
        str | None,
        typer.Option("--ranking-pair", rich_help_panel=LAYOUT, show_default=False,
                     help="Ranked lists (best first): score the first response against the second "
                     "(first-second) or the last (first-last) \\[default: first-second]."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", rich_help_panel=MODEL, show_default=False,
                     help="Bundled alias (smollm2-135m-instruct, gemma-3-270m), local folder, .gguf "
                     "file or hub id \\[default: smollm2-135m-instruct]."),
    ] = None,
    model_revision: Annotated[
        str | None,
        typer.Option("--model-revision", rich_help_panel=MODEL,
                     help="Hub model revision (branch, tag or commit); the dataset's is --revision."),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option("--dtype", rich_help_panel=MODEL,
                     help="auto (bfloat16 on a capable GPU, float32 otherwise), float32, bfloat16, float16."),
    ] = "auto",
    device: Annotated[
        str, typer.Option("--device", rich_help_panel=MODEL, help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    trust_remote_code: Annotated[
        bool,
        typer.Option("--trust-remote-code", rich_help_panel=MODEL,
                     help="Allow the model's own Python code from the hub (off by default)."),
    ] = False,
    no_chat_template: Annotated[
        bool,
        typer.Option("--no-chat-template", rich_help_panel=TOKENS,
                     help="Plain text + EOS even when the tokenizer has a chat template."),
    ] = False,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", rich_help_panel=TOKENS,
                     help="Cap prompt + response tokens (default: the model's context, its "
                          "max_position_embeddings; at most that). The prompt is kept whole."),
    ] = None,
    too_long: Annotated[
        str,
        typer.Option("--too-long", rich_help_panel=TOKENS,
                     help="A pair past --max-length: truncate (cut the responses, flag the row "
                          "truncated) or skip (status too_long, no score)."),
    ] = "truncate",
    compat: Annotated[
        str,
        typer.Option("--compat", rich_help_panel=TOKENS,
                     help="default, or official: the authors' per-example script (docs/scores.md: where it differs)."),
    ] = "default",
    max_batch_tokens: Annotated[
        int,
        typer.Option("--max-batch-tokens", rich_help_panel=MODEL,
                     help="Token budget of one forward batch, padding included."),
    ] = 8192,
    engine: Annotated[
        str,
        typer.Option("--engine", rich_help_panel=MODEL,
                     help="Layout of the forward passes: auto (the fastest one checked equal on "
                     "this model), packed, prefix_shared or two_sequences (see docs/performance.md)."),
    ] = "auto",
    tokenizer_workers: Annotated[
        str,
        typer.Option("--tokenizer-workers", rich_help_panel=MODEL,
                     help="Processes tokenising ahead of the model: auto (none on a CPU, one per "
                     "spare core up to 8 on a GPU) or a number; 0 tokenises in the main process."),
    ] = "auto",
    rows_per_shard: Annotated[
        int, typer.Option("--rows-per-shard", rich_help_panel=OUTPUT, help="Rows in each Parquet shard.")
    ] = 10_000,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", rich_help_panel=OUTPUT, help="Replace an existing output.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT, help="No progress or summary on stderr.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", rich_help_panel=OUTPUT, help="Print the summary as JSON on stdout.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Score every pair of DATASET and write Parquet shards with CHES scores per pair."""
    from ches_filter.errors import OptionError
    from ches_filter.pipeline import ScoreOptions, score_dataset

    from .progress import ScoreProgress

    stderr = Console(stderr=True, highlight=False, soft_wrap=True, quiet=quiet)
    stdout = Console(highlight=False, soft_wrap=True)
    target = output or default_output(dataset)
    options = ScoreOptions(
        layout=layout,
        prompt_field=prompt_field,
        chosen_field=chosen_field,
        rejected_field=rejected_field,
        label_policy=label_policy,
        ranking_pair=ranking_pair,
        use_chat_template=not no_chat_template,
        max_length=max_length,
        too_long=too_long,
        convention=compat,
        max_batch_tokens=max_batch_tokens,
        engine=engine.replace("-", "_"),
    )

    if tokenizer_workers == "auto":
        workers = None
    elif tokenizer_workers.isdigit():
        workers = int(tokenizer_workers)
    else:
        raise OptionError(f"--tokenizer-workers must be 'auto' or a number, not {tokenizer_workers!r}")

    def detected(source: Any, found: Any) -> None:
        stderr.print(f"reading {escape(source.description)}")
        stderr.print(f"detected: {escape(found.description)}")

    with ScoreProgress(stderr, enabled=not quiet) as progress:
        result = score_dataset(
            dataset,
            output=target,
            split=split,
            config=config,
            revision=revision,
            limit=limit,
            sample=sample,
            seed=seed,
            model=model,
            model_revision=model_revision,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            options=options,
            rows_per_shard=rows_per_shard,
            tokenizer_workers=workers,
            overwrite=overwrite,
            log=progress.log,
            on_detected=detected,
            progress=progress.update,
            command=[shlex.join(["ches", *sys.argv[1:]])],
        )
    if as_json:
        stdout.print_json(json.dumps(json_safe(result.summary), allow_nan=False), highlight=False)
    else:
        print_summary(stderr, result.summary)


def json_safe(value: Any) -> Any:
    """NaN and infinities (a diverged fp16 run) become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def default_output(dataset: str) -> Path:
    """``pairs.jsonl.gz`` -> ``pairs.ches``; ``org/name`` -> ``name.ches`` (in the current folder)."""
    name = Path(dataset.rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".arrow"):
        name = name.removesuffix(suffix)
    name = name.replace("*", "").strip(".-_") or "scores"
    return Path(f"{name}.ches")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """Counts by status, score quantiles and the five highest-ln_ches pairs, as rich tables."""
    timing = summary.get("timing") or {}
    console.print(
        f"scored {summary['scored']:,} of {summary['rows']:,} rows in {timing.get('total_s', 0):.1f} s "
        f"({timing.get('pairs_per_s') or 0:.1f} pairs/s, {timing.get('tokens_per_s') or 0:,.0f} tokens/s) "
        f"→ {escape(summary['output'])}"
    )
    status = Table(title="rows by status", title_justify="left")
    status.add_column("status")
    status.add_column("rows", justify="right")
    for name, count in summary["by_status"].items():
        status.add_row(name, f"{count:,}")
    console.print(status)

    quantiles = Table(title="scores of ok pairs", title_justify="left")
    quantiles.add_column("score", no_wrap=True)
    columns = ["min", "p25", "median", "p75", "max"]  # all quantiles and the mean: --json
    for column in columns:
        quantiles.add_column(column, justify="right", no_wrap=True)
    for name, values in summary["quantiles"].items():
        row = [_fmt(values.get(c)) if values else "—" for c in columns]
        quantiles.add_row(name, *row)
    console.print(quantiles)

    if summary["top"]:
        top = Table(title="highest ln_ches (most likely to displace the chosen response)",
                    title_justify="left")
        for column, justify in (("row_id", "right"), ("ln_ches", "right"), ("prompt", "left"),
                                ("chosen", "left"), ("rejected", "left")):
            top.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for entry in summary["top"]:
            top.add_row(str(entry["row_id"]), _fmt(entry["ln_ches"]), escape(entry["prompt"]),
                        escape(entry["chosen"]), escape(entry["rejected"]))
        console.print(top)
