"""``ches filter`` as a library: join a selection back onto the rows, in the input's own layout.

Two passes over a ``ches score`` output, so a dataset larger than memory works:

1. the cutoff pass reads the score columns only (Parquet column projection: no text);
2. the write pass streams every shard batch by batch and writes kept (and optionally removed)
   rows with exactly the input's original columns, values unchanged, in their original order
   (``keep_scores`` appends the score columns).

No model is loaded on scores: changing K costs a read of a few numeric columns, not a rerun.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .data.folders import check_apart, check_not_input, folder_kind, interrupted_error
from .data.lock import FolderLock
from .data.manifest import FilterManifest, environment, write_manifest

# Re-exported (``X as X``): these lived here before data/score_folder.py.
from .data.score_folder import ScoreFolder as ScoreFolder
from .data.score_folder import has_score_shards as has_score_shards
from .data.score_folder import is_score_output as is_score_output
from .data.score_folder import score_array as score_array
from .data.score_folder import select_from_table as select_from_table
from .data.score_folder import table_fingerprint as table_fingerprint
from .data.shards import (
    SCORE_COLUMNS,
    ShardWriter,
    check_output_dir,
    prepare_output_dir,
)
from .errors import DatasetError, OptionError, OutputError
from .report import build_report, write_report
from .selection import Rule, Selection

Log = Callable[[str], None]

REPORT_FILES = {"html": "report.html", "markdown": "report.md", "json": "report.json"}


def _output_schema(folder: ScoreFolder, *, keep_scores: bool) -> pa.Schema:
    names = list(folder.original_columns) + (list(SCORE_COLUMNS) if keep_scores else [])
    fields = [folder.schema.field(name) for name in names]
    metadata = dict(folder.schema.metadata or {})
    hf = metadata.get(b"huggingface")
    if hf is not None:  # keep the datasets Features of the columns we write, drop the others
        try:
            info = json.loads(hf)
            features = info.get("info", {}).get("features")
            if isinstance(features, dict):
                info["info"]["features"] = {k: v for k, v in features.items() if k in names}
                metadata[b"huggingface"] = json.dumps(info).encode()
            else:
                metadata.pop(b"huggingface")
        except ValueError:
            metadata.pop(b"huggingface")
    return pa.schema(fields, metadata=metadata or None)


@dataclass
class FilterResult:
    output: Path
    removed_output: Path | None
    selection: Selection
    manifest: dict[str, Any]
    report_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return self.selection.counts()


def _check_paths(scores: Path, output: Path, removed: Path | None, *, scoring: bool = False) -> None:
    """No output is, holds or lies inside the scores folder (the input, or with ``scoring`` the
    scores to be written), and the outputs don't overlap (symlinks resolved)."""
    outputs: dict[str, Path | None] = {"--output": output, "--removed": removed}
    if scoring:
        check_apart({**outputs, "--scores-output": scores}, {})
    else:
        check_apart(outputs, {"the scores folder": scores})


def filter_scores(
    scores: Path | str,
    *,
    output: Path | str,
    rule: Rule,
    keep_unscored: bool = True,
    keep_scores: bool = False,
    removed: Path | str | None = None,
    overwrite: bool = False,
    report: bool = True,
    report_top: int = 20,
    rows_per_shard: int = 10_000,
    batch_size: int = 2_048,
    command: str | None = None,
    log: Log | None = None,
) -> FilterResult:
    """Filter a ``ches score`` output folder with ``rule``; never loads a model.

    Writes ``output/data/<split>-NNNNN-of-NNNNN.parquet`` (the input's columns, plus the score
    columns with ``keep_scores``), ``output/manifest.json`` and, with ``report``, the report as
    ``report.html``/``report.md``/``report.json`` beside them. ``removed`` gets the other rows
    (kept ∪ removed = input). Unscored rows (not ``ok``, or no finite score) are kept when
    ``keep_unscored`` (the default) and removed otherwise; either way they are counted.
    """
    scores, output = Path(scores), Path(output)
    removed_path = Path(removed) if removed is not None else None
    emit = log or (lambda _msg: None)
    if batch_size < 1:
        raise OptionError("batch size must be at least 1")
    folder = ScoreFolder.open(scores, log=emit)
    _check_paths(scores, output, removed_path)
    check_output_dir(output, overwrite=overwrite)
    if removed_path is not None:
        check_output_dir(removed_path, overwrite=overwrite)
    with FolderLock.acquire(output, command=command, log=emit), (
        FolderLock.acquire(removed_path, command=command, log=emit)
        if removed_path is not None
        else nullcontext()
    ):
        return _filter_locked(
            folder, output=output, rule=rule, keep_unscored=keep_unscored,
            keep_scores=keep_scores, removed_path=removed_path, overwrite=overwrite,
            report=report, report_top=report_top, rows_per_shard=rows_per_shard,
            batch_size=batch_size, command=command, emit=emit,
        )


def _filter_locked(
    folder: ScoreFolder,
    *,
    output: Path,
    rule: Rule,
    keep_unscored: bool,
    keep_scores: bool,
    removed_path: Path | None,
    overwrite: bool,
    report: bool,
    report_top: int,
    rows_per_shard: int,
    batch_size: int,
    command: str | None,
    emit: Log,
) -> FilterResult:
    prepare_output_dir(output, overwrite=overwrite)
    if removed_path is not None:
        prepare_output_dir(removed_path, overwrite=overwrite)

    # Pass 1: the cutoff, from the score columns alone.
    table = folder.read_score_table()
    selection = select_from_table(table, rule, keep_unscored=keep_unscored)
    counts = selection.counts()
    emit(
        f"selected by {rule.by}: keep {counts['kept']:,} of {counts['rows']:,} rows "
        f"({counts['removed_by_rule']:,} removed by the rule, {counts['unscored']:,} unscored "
        f"{'kept' if keep_unscored else 'dropped'})"
    )

    # Pass 2: stream the rows through.
    out_schema = _output_schema(folder, keep_scores=keep_scores)
    columns = list(out_schema.names)
    read_columns = columns if "row_id" in columns else [*columns, "row_id"]
    kept_writer = ShardWriter(
        output, split=folder.split, schema=out_schema, rows_per_shard=rows_per_shard
    )
    removed_writer = (
        ShardWriter(removed_path, split=folder.split, schema=out_schema, rows_per_shard=rows_per_shard)
        if removed_path is not None
        else None
    )
    try:
        expected_ids = table.column("row_id").to_numpy()
        offset = 0
        for batch in folder.iter_batches(read_columns, batch_size):
            size = batch.num_rows
            ids = batch.column("row_id").to_numpy(zero_copy_only=False)
            if offset + size > expected_ids.size or not np.array_equal(
                ids, expected_ids[offset : offset + size]
            ):
                raise DatasetError(f"the shards under {folder.path} changed while filtering")
            keep = pa.array(selection.keep[offset : offset + size])
            offset += size
            rows = pa.Table.from_batches([batch.select(columns)])
            kept_writer.write_table(rows.filter(keep))
            if removed_writer is not None:
                removed_writer.write_table(rows.filter(pc.invert(keep)))
        if offset != expected_ids.size:
            raise DatasetError(f"the shards under {folder.path} changed while filtering")
        kept_writer.close()
        if removed_writer is not None:
            removed_writer.close()
    except BaseException:  # interrupted or failed: no shard is renamed to look complete
        kept_writer.abort()
        if removed_writer is not None:
            removed_writer.abort()
        raise

    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    removed_status = status[~selection.keep]
    removed_by_status = {str(s): int((removed_status == s).sum()) for s in sorted(set(removed_status))}
    manifest = FilterManifest(
        command=command,
        environment=environment(),
        rule=rule.to_dict(),
        by=rule.by,
        cutoff=selection.cutoff,
        kept_score_range=list(selection.kept_range) if selection.kept_range else None,
        keep_unscored=keep_unscored,
        keep_scores=keep_scores,
        counts={**counts, "removed_by_status": removed_by_status},
        input=(folder.manifest.get("input") or {}) | {"columns": list(folder.original_columns)},
        scores={
            "path": str(folder.path.resolve()),
            "fingerprint": table_fingerprint(table),
            "spec_version": folder.manifest.get("spec_version"),
            "convention": folder.manifest.get("convention"),
            "model": folder.manifest.get("model"),
            "created_at": folder.manifest.get("created_at"),
            "schema_version": folder.manifest.get("schema_version", 0),
        },
        shards=kept_writer.entries,
        removed=(
            {
                "path": str(removed_path.resolve()),
                "shards": removed_writer.entries if removed_writer is not None else [],
            }
            if removed_path is not None
            else None
        ),
    )
    result = FilterResult(
        output=output, removed_output=removed_path, selection=selection, manifest={}
    )
    if report:
        data = build_report(
            folder, top=report_top, by=rule.by, table=table, filter_info=manifest.to_dict(),
            selection=selection,
        )
        for fmt, name in REPORT_FILES.items():
            result.report_paths[fmt] = write_report(data, output / name, fmt)
        manifest.report = {fmt: p.name for fmt, p in result.report_paths.items()}
    if removed_path is not None and manifest.removed is not None:
        write_manifest(
            removed_path,
            replace(manifest, kind="filter-removed", shards=list(manifest.removed["shards"])),
        )
    # The manifest goes last: its presence marks the output complete.
    write_manifest(output, manifest)
    result.manifest = manifest.to_dict()
    emit(f"wrote {counts['kept']:,} rows to {output}")
    return result


def default_scores_output(output: Path | str) -> Path:
    """Where ``ches filter DATASET -o OUT`` keeps the scores it makes: ``OUT.scores`` beside OUT."""
    output = Path(output)
    return output.with_name(output.name + ".scores")


def filter_dataset(
    dataset: str | Path,
    *,
    output: Path | str,
    rule: Rule,
    scores_output: Path | str | None = None,
    scoring: dict[str, Any] | None = None,
    overwrite_scores: bool = False,
    log: Log | None = None,
    **filter_options: Any,
) -> FilterResult:
    """Score ``dataset`` into ``scores_output`` (``ches score``), then filter those scores.

    ``scoring`` holds the ``ches score`` options (model, dtype, device, max_length,
    max_batch_tokens, …; None = the default); ``scores_output`` defaults to
    :func:`default_scores_output`. Every output folder is checked, and nothing is written,
    before the model loads. When ``scores_output`` already holds a finished scoring of the same
    input with the same model and options, it is reused, not rescored; when it holds other
    scores, ``overwrite_scores`` replaces them (otherwise an OutputError says so).
    """
    from .data.folders import input_paths
    from .pipeline import existing_result, plan_scoring, run_scoring

    emit = log or (lambda _msg: None)
    output = Path(output)
    scores_output = Path(scores_output) if scores_output is not None else default_scores_output(output)
    removed = filter_options.pop("removed", None)
    removed_path = Path(removed) if removed is not None else None
    overwrite = bool(filter_options.get("overwrite", False))
    _check_paths(scores_output, output, removed_path, scoring=True)
    given = Path(os.path.expanduser(str(dataset)))
    check_not_input({"--output": output, "--removed": removed_path, "--scores-output": scores_output},
                    [given] if given.exists() else [])
    check_output_dir(output, overwrite=overwrite)
    if removed_path is not None:
        check_output_dir(removed_path, overwrite=overwrite)
    existing = is_score_output(scores_output)
    plan = plan_scoring(
        dataset, output=scores_output, overwrite=overwrite_scores or existing,
        **{k: v for k, v in (scoring or {}).items() if v is not None},
    )
    check_not_input({"--output": output, "--removed": removed_path},
                    input_paths(str(dataset), plan.source))
    if existing and plan.output_holds_these_scores():
        emit(f"reusing the scores in {scores_output} (same input, model and options)")
        existing_result(plan)
    elif existing and not overwrite_scores:
        raise OutputError(
            f"{scores_output} holds scores of another input, model or options",
            hint="pass --overwrite to rescore into it, or choose another --scores-output",
        )
    else:
        run_scoring(plan, log=log)
    return filter_scores(
        scores_output, output=output, rule=rule, removed=removed_path, log=log, **filter_options
    )


def filter_input(
    source: Path | str,
    *,
    output: Path | str,
    rule: Rule,
    scores_output: Path | str | None = None,
    scoring: dict[str, Any] | None = None,
    log: Log | None = None,
    **filter_options: Any,
) -> FilterResult:
    """``ches filter``: filter a ``ches score`` output (no model is loaded), or score a dataset
    first (:func:`filter_dataset`) when ``source`` holds no scores.

    Scoring options (``scoring`` values, ``scores_output``) with a scores folder are an
    OptionError: filtering never rescores.
    """
    emit = log or (lambda _msg: None)
    scoring = {k: v for k, v in (scoring or {}).items() if v is not None}
    kind = folder_kind(source)
    if kind == "interrupted":
        raise interrupted_error(Path(source), what="nothing to filter")
    if kind == "scores" or has_score_shards(source):
        given = [f"--{k.replace('_', '-')}" for k in scoring]
        if scores_output is not None:
            given.append("--scores-output")
        if given:
            raise OptionError(
                f"{', '.join(given)} only apply when scoring a dataset; {source} already holds "
                "scores, and filtering never rescores",
                hint="drop those options (changing the rule costs seconds), or run `ches score`",
            )
        return filter_scores(source, output=output, rule=rule, log=log, **filter_options)
    target = Path(scores_output) if scores_output is not None else default_scores_output(output)
    emit(f"{source} has no scores: scoring it first into {target}")
    return filter_dataset(
        source, output=output, rule=rule, scores_output=target, scoring=scoring,
        overwrite_scores=bool(filter_options.get("overwrite", False)), log=log, **filter_options,
    )
