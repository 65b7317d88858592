"""Parquet shards with an explicit Arrow schema, written atomically.

Shards are named like the Hugging Face Hub names them (``data/train-00000-of-00004.parquet``),
so ``datasets.load_dataset("parquet", data_dir=OUT)`` loads them. The total is only known at the
end of a stream, so every shard is first written as ``data/.train-00000.parquet.tmp`` and all are
renamed to their final names by ``close()``: an interrupted run leaves only ``.tmp`` files and
never a shard that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ches_filter.errors import DatasetError, OutputError

#: Score columns appended to every original column, in this order (see docs/scores.md).
SCORE_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("ches", pa.float64()),
        pa.field("ln_ches", pa.float64()),
        pa.field("last_hidden_inner", pa.float64()),
        pa.field("edit_distance", pa.float64()),
        pa.field("dot_chosen_rejected", pa.float64()),
        pa.field("sq_norm_chosen", pa.float64()),
        pa.field("sq_norm_rejected", pa.float64()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("chosen_tokens", pa.int32()),
        pa.field("rejected_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
    ]
)
SCORE_COLUMNS: tuple[str, ...] = tuple(SCORE_SCHEMA.names)
DATA_DIR = "data"
MANIFEST_NAME = "manifest.json"


def output_schema(source_schema: pa.Schema) -> pa.Schema:
    """The original columns, unchanged and in order, then the score columns."""
    clashes = [name for name in source_schema.names if name in SCORE_COLUMNS]
    if clashes:
        raise OutputError(
            f"the dataset already has column(s) {', '.join(clashes)}, which ches writes",
            hint="score the original dataset, not the output of `ches score`; "
            "or rename those columns first",
        )
    return pa.schema(list(source_schema) + list(SCORE_SCHEMA))


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


def prepare_output_dir(path: Path, *, overwrite: bool) -> None:
    """Check (before any model is loaded) that ``path`` can take a fresh set of shards."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is not a folder")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise OutputError(
                f"output folder {path} is not empty",
                hint="choose another --output, or pass --overwrite to replace its shards",
            )
        # Remove what made the old output look complete before anything new is written.
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        for old in (path / DATA_DIR).glob("*.parquet"):
            old.unlink()
    try:
        (path / DATA_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror}") from exc
    if not os.access(path / DATA_DIR, os.W_OK):
        raise OutputError(f"output folder {path} is not writable")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Buffers rows and writes them as Parquet shards of ``rows_per_shard`` rows each."""

    def __init__(
        self, output_dir: Path, *, split: str, schema: pa.Schema, rows_per_shard: int = 10_000
    ) -> None:
        if rows_per_shard < 1:
            raise OutputError("rows per shard must be at least 1")
        self.output_dir = Path(output_dir)
        self.data_dir = self.output_dir / DATA_DIR
        self.split = split
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self._buffer: list[Mapping[str, Any]] = []
        self._temp_paths: list[Path] = []
        self.final_paths: list[Path] = []
        self.rows_written = 0
        self._text_fields = [
            field.name
            for field in schema
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
        ]

    def _as_text(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """A non-string value in a string column (JSON input that mixes types) as JSON text."""
        odd = [
            name
            for name in self._text_fields
            if (value := row.get(name)) is not None and not isinstance(value, str)
        ]
        if not odd:
            return row
        fixed = dict(row)
        for name in odd:
            fixed[name] = json.dumps(row[name], ensure_ascii=False, default=str)
        return fixed

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._buffer.append(row)
            if len(self._buffer) >= self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._text_fields:
            self._buffer = [self._as_text(row) for row in self._buffer]
        try:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._schema_error(exc) from None
        tmp = self.data_dir / f".{self.split}-{len(self._temp_paths):05d}.parquet.tmp"
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        self._temp_paths.append(tmp)
        self.rows_written += table.num_rows
        self._buffer = []

    def _schema_error(self, exc: Exception) -> DatasetError:
        """Name the first buffered row and field that don't fit the schema of the first rows."""
        for position, row in enumerate(self._buffer):
            for name in self.schema.names:
                try:
                    pa.array([row.get(name)], type=self.schema.field(name).type)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    where = row.get("row_id", position)
                    return DatasetError(
                        f"row {where}: field {name!r} holds {type(row.get(name)).__name__} "
                        f"{str(row.get(name))[:60]!r}, but earlier rows made it "
                        f"{self.schema.field(name).type}",
                        hint="make the column's type consistent across rows",
                    )
        return DatasetError(f"rows do not fit the dataset's schema: {exc}")

    def close(self) -> list[Path]:
        """Flush the last shard and give every shard its final ``-of-N`` name."""
        self._flush()
        if not self._temp_paths:  # an empty dataset still gets one (empty) shard with the schema
            self._buffer = []
            table = self.schema.empty_table()
            tmp = self.data_dir / f".{self.split}-00000.parquet.tmp"
            pq.write_table(table, tmp)
            self._temp_paths.append(tmp)
        for stale in self.data_dir.glob(f"{self.split}-*-of-*.parquet"):
            stale.unlink()
        total = len(self._temp_paths)
        for index, tmp in enumerate(self._temp_paths):
            final = self.data_dir / shard_name(self.split, index, total)
            os.replace(tmp, final)
            self.final_paths.append(final)
        return self.final_paths


def read_scores(output_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """Read the shards of a ``ches score`` output (optionally only some columns)."""
    data_dir = Path(output_dir) / DATA_DIR
    paths = sorted(data_dir.glob("*-of-*.parquet"))
    if not paths:
        raise OutputError(f"no score shards under {data_dir}", hint="run `ches score` first")
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)
