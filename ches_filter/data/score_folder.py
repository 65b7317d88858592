"""The ``ches score`` output folder as a format: finding, opening and reading it.

A score folder is ``OUT/manifest.json`` plus ``OUT/data/<split>-NNNNN-of-NNNNN.parquet`` shards
holding the input's original columns followed by the score columns (``SCORE_COLUMNS``). Filter
and report both read it through this module; nothing here writes, loads a model or knows about
selection rules beyond applying one to a score table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ches_filter.data.folders import folder_kind, interrupted_error, verify_shards
from ches_filter.data.lock import live_holder
from ches_filter.data.manifest import read_manifest
from ches_filter.data.shards import DATA_DIR, MANIFEST_NAME, SCORE_COLUMNS
from ches_filter.errors import DatasetError, OutputError
from ches_filter.selection import Rule, Selection, select

_SHARD_RE = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")


def shard_paths(path: Path) -> list[Path]:
    """The finished shards (``-of-N`` names) under ``path/data``, in order."""
    return sorted((Path(path) / DATA_DIR).glob("*-of-*.parquet"))


def has_score_shards(path: Path | str) -> bool:
    """True when ``path/data`` holds Parquet shards carrying every score column."""
    shards = shard_paths(Path(path))
    if not shards:
        return False
    try:
        names = set(pq.read_schema(shards[0]).names)
    except (OSError, ValueError):  # a damaged shard: ScoreFolder.open names it
        return (Path(path) / MANIFEST_NAME).is_file()
    return all(column in names for column in SCORE_COLUMNS)


def is_score_output(path: Path | str) -> bool:
    """A ``ches score`` output: ``manifest.json`` plus shards with the score columns."""
    return (Path(path) / MANIFEST_NAME).is_file() and has_score_shards(path)


def read_scores(output_dir: Path | str, columns: list[str] | None = None) -> pa.Table:
    """Read the shards of a ``ches score`` output (optionally only some columns)."""
    paths = shard_paths(Path(output_dir))
    if not paths:
        raise OutputError(
            f"no score shards under {Path(output_dir) / DATA_DIR}", hint="run `ches score` first"
        )
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)


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
    def open(
        cls, path: Path | str, *, checksum: bool = True, log: Callable[[str], None] | None = None
    ) -> ScoreFolder:
        """Open and check a score folder: its manifest, and every shard the manifest lists
        (present, its size and row count, and its SHA-256 unless ``checksum`` is False; see
        :func:`~ches_filter.data.folders.verify_shards`). A DatasetError names what is wrong:
        an interrupted run, a folder still being written, a missing or damaged shard."""
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f"no such scores folder: {path}")
        holder = live_holder(path)
        if holder is not None:
            raise DatasetError(
                f"{path} is still being written by {holder.describe()}",
                hint="wait for that run to finish",
            )
        if not (path / MANIFEST_NAME).is_file():
            if folder_kind(path) == "interrupted" or shard_paths(path) or (path / DATA_DIR).is_dir():
                raise interrupted_error(path, what="its scores are incomplete")
            raise DatasetError(
                f"no score shards under {path / DATA_DIR}", hint="run `ches score` first"
            )
        manifest = read_manifest(path).to_dict()
        listed = manifest.get("shards") or []
        if listed:
            shards = verify_shards(path, listed, checksum=checksum, log=log)
        else:
            shards = shard_paths(path)
            if log is not None:
                log(f"note: {path / MANIFEST_NAME} lists no shards; reading those under "
                    f"{path / DATA_DIR} unchecked")
        if not shards:
            raise DatasetError(
                f"no score shards under {path / DATA_DIR}", hint="run `ches score` first"
            )
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
        """``columns`` of every row, from the checked shards."""
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in self.shards)

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
    """Apply ``rule`` to a score table (``row_id``, ``status`` and the rule's ``by`` column)."""
    return select(
        rule,
        row_id=table.column("row_id").to_numpy(),
        status=np.asarray(table.column("status").to_pylist(), dtype=object),
        score=score_array(table, rule.by),
        keep_unscored=keep_unscored,
    )
