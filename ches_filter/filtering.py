"""``ches filter`` as a library: join a selection back onto the rows, in the input's own layout.

Two passes over a ``ches score`` output, so a dataset larger than memory works:

1. the cutoff pass reads the score columns only (Parquet column projection: no text);
2. the write pass streams every shard batch by batch and writes kept (and optionally removed)
   rows with exactly the input's original columns, values unchanged, in their original order
   (``keep_scores`` appends the score columns).

No model is loaded on scores: changing K costs a read of a few numeric columns, not a rerun.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .data.shards import (
    DATA_DIR,
    MANIFEST_NAME,
    SCORE_COLUMNS,
    ShardWriter,
    atomic_write_bytes,
    prepare_output_dir,
    read_scores,
)
from .errors import DatasetError, OptionError, OutputError
from .selection import Rule, Selection, select

Log = Callable[[str], None]

_SHARD_RE = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")
REPORT_FILES = {"html": "report.html", "markdown": "report.md", "json": "report.json"}


def _tool() -> dict[str, str]:
    try:
        from importlib.metadata import version

        ver = version("ches-filter")
    except Exception:  # running from a source tree that isn't installed
        ver = "0+unknown"
    return {"name": "ches-filter", "version": ver}


def _shards(path: Path) -> list[Path]:
    return sorted((path / DATA_DIR).glob("*-of-*.parquet"))


def has_score_shards(path: Path) -> bool:
    """True when ``path/data`` holds Parquet shards carrying every score column."""
    shards = _shards(Path(path))
    if not shards:
        return False
    names = set(pq.read_schema(shards[0]).names)
    return all(column in names for column in SCORE_COLUMNS)


def is_score_output(path: Path) -> bool:
    """A ``ches score`` output: ``manifest.json`` plus shards with the score columns."""
    return (Path(path) / MANIFEST_NAME).is_file() and has_score_shards(path)


@dataclass(frozen=True)
class ScoreFolder:
    """An opened ``ches score`` output folder (only footers and the manifest are read)."""

    path: Path
    manifest: dict[str, Any]
    shards: tuple[Path, ...]
    schema: pa.Schema
    original_columns: tuple[str, ...]
    split: str

    @classmethod
    def open(cls, path: Path | str) -> ScoreFolder:
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f"no such scores folder: {path}")
        shards = _shards(path)
        if not shards:
            raise DatasetError(
                f"no score shards under {path / DATA_DIR}", hint="run `ches score` first"
            )
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DatasetError(
                f"{path} has shards but no {MANIFEST_NAME}: an interrupted or foreign output",
                hint="rerun `ches score` into a fresh --output",
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {manifest_path}: {exc}") from exc
        schema = pq.read_schema(shards[0])
        missing = [c for c in SCORE_COLUMNS if c not in schema.names]
        if missing:
            raise DatasetError(
                f"{shards[0]} lacks the score column(s) {', '.join(missing)}",
                hint="pass the --output folder of `ches score`",
            )
        for shard in shards[1:]:
            if pq.read_schema(shard).names != schema.names:
                raise DatasetError(f"{shard} has other columns than {shards[0].name}")
        splits = {m.group("split") for s in shards if (m := _SHARD_RE.match(s.name))}
        if len(splits) != 1:
            raise DatasetError(
                f"{path / DATA_DIR} should hold the shards of one split, found "
                f"{', '.join(sorted(splits)) or 'unrecognised shard names'}"
            )
        declared = (manifest.get("input") or {}).get("columns")
        if declared is None:
            originals = tuple(n for n in schema.names if n not in SCORE_COLUMNS)
        else:
            originals = tuple(declared)
            absent = [c for c in originals if c not in schema.names]
            if absent:
                raise DatasetError(
                    f"the manifest lists column(s) {', '.join(absent)} that the shards lack"
                )
        return cls(
            path=path,
            manifest=manifest,
            shards=tuple(shards),
            schema=schema,
            original_columns=originals,
            split=splits.pop(),
        )

    def read_columns(self, columns: list[str]) -> pa.Table:
        return read_scores(self.path, columns=columns)

    def read_score_table(self) -> pa.Table:
        """Every score column of every row (numbers and short strings: no dataset text)."""
        return self.read_columns(list(SCORE_COLUMNS))

    def iter_batches(self, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        for shard in self.shards:
            parquet = pq.ParquetFile(shard)
            try:
                yield from parquet.iter_batches(batch_size=batch_size, columns=columns)
            finally:
                parquet.close()


def table_fingerprint(table: pa.Table) -> str:
    """sha256 of the table's content (Arrow IPC of one combined chunk), first 16 hex digits."""
    sink = pa.BufferOutputStream()
    combined = table.combine_chunks()
    with pa.ipc.new_stream(sink, combined.schema.remove_metadata()) as writer:
        writer.write_table(combined)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def score_array(table: pa.Table, column: str) -> np.ndarray:
    """A float score column as float64 with NaN for nulls."""
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def select_from_table(table: pa.Table, rule: Rule, *, keep_unscored: bool) -> Selection:
    return select(
        rule,
        row_id=table.column("row_id").to_numpy(),
        status=np.asarray(table.column("status").to_pylist(), dtype=object),
        score=score_array(table, rule.by),
        keep_unscored=keep_unscored,
    )


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


def _check_paths(scores: Path, output: Path, removed: Path | None) -> None:
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve()

    if same(scores, output):
        raise OutputError(
            "--output is the scores folder itself", hint="write the filtered dataset elsewhere"
        )
    if removed is not None:
        if same(scores, removed):
            raise OutputError("--removed is the scores folder itself")
        if same(output, removed):
            raise OutputError("--removed and --output must be different folders")


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
    folder = ScoreFolder.open(scores)
    _check_paths(scores, output, removed_path)
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
        kept_paths = kept_writer.close()
        removed_paths = removed_writer.close() if removed_writer is not None else []
    except BaseException:  # interrupted or failed: no shard is renamed to look complete
        kept_writer.abort()
        if removed_writer is not None:
            removed_writer.abort()
        raise

    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    removed_status = status[~selection.keep]
    removed_by_status = {str(s): int((removed_status == s).sum()) for s in sorted(set(removed_status))}
    manifest: dict[str, Any] = {
        "tool": _tool(),
        "kind": "filter",
        "command": command,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rule": rule.to_dict(),
        "by": rule.by,
        "cutoff": selection.cutoff,
        "kept_score_range": list(selection.kept_range) if selection.kept_range else None,
        "keep_unscored": keep_unscored,
        "keep_scores": keep_scores,
        "counts": {**counts, "removed_by_status": removed_by_status},
        "input": folder.manifest.get("input", {}) | {"columns": list(folder.original_columns)},
        "scores": {
            "path": str(folder.path.resolve()),
            "fingerprint": table_fingerprint(table),
            "spec_version": folder.manifest.get("spec_version"),
            "convention": folder.manifest.get("convention"),
            "model": folder.manifest.get("model"),
            "created_at": folder.manifest.get("created_at"),
        },
        "shards": [str(p.relative_to(output)) for p in kept_paths],
        "removed": (
            {
                "path": str(removed_path.resolve()),
                "shards": [str(p.relative_to(removed_path)) for p in removed_paths],
            }
            if removed_path is not None
            else None
        ),
    }
    result = FilterResult(
        output=output, removed_output=removed_path, selection=selection, manifest=manifest
    )
    if report:
        from . import report as report_mod

        data = report_mod.build_report(
            folder, top=report_top, by=rule.by, table=table, filter_info=manifest,
            selection=selection,
        )
        for fmt, name in REPORT_FILES.items():
            target = output / name
            atomic_write_bytes(target, report_mod.render(data, fmt).encode("utf-8"))
            result.report_paths[fmt] = target
        manifest["report"] = {fmt: p.name for fmt, p in result.report_paths.items()}
    if removed_path is not None:
        removed_manifest = dict(manifest, kind="filter-removed", shards=manifest["removed"]["shards"])
        atomic_write_bytes(
            removed_path / MANIFEST_NAME, (json.dumps(removed_manifest, indent=2) + "\n").encode()
        )
    # The manifest goes last: its presence marks the output complete.
    atomic_write_bytes(output / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    emit(f"wrote {counts['kept']:,} rows to {output}")
    return result


def filter_dataset(
    dataset: str | Path,
    *,
    output: Path | str,
    rule: Rule,
    scores_output: Path | str,
    scoring: dict[str, Any] | None = None,
    overwrite_scores: bool = False,
    log: Log | None = None,
    **filter_options: Any,
) -> FilterResult:
    """Score ``dataset`` into ``scores_output`` (``ches score``), then filter those scores.

    ``scoring`` holds the ``ches score`` model options (model, dtype, device, max_length,
    batch_size; None = the default). Every output folder is checked before the model loads.
    """
    from .pipeline import score_dataset

    output, scores_output = Path(output), Path(scores_output)
    _check_paths(scores_output, output, filter_options.get("removed"))
    overwrite = bool(filter_options.get("overwrite", False))
    prepare_output_dir(output, overwrite=overwrite)
    removed = filter_options.get("removed")
    if removed is not None:
        prepare_output_dir(Path(removed), overwrite=overwrite)
    score_dataset(dataset, output=scores_output, log=log, overwrite=overwrite_scores,
                  **{k: v for k, v in (scoring or {}).items() if v is not None})
    return filter_scores(scores_output, output=output, rule=rule, log=log, **filter_options)
