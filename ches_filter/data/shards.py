"""Parquet shards with an explicit Arrow schema, written atomically.

Shards are named like the Hugging Face Hub names them (``data/train-00000-of-00004.parquet``),
so ``datasets.load_dataset("parquet", data_dir=OUT)`` loads them. The total is only known at the
end of a stream, so every shard is first written as ``data/.train-00000.<token>.parquet.tmp``
(the token is unique to the writer: two runs never share a temp name) and all are renamed to
their final names by ``close()``: a run that fails removes its ``.tmp`` files, one that is killed
leaves only ``.tmp`` files, and never a shard that looks complete. Writing happens on a
background thread (``ShardWriter``). The folder rules (lock, input apart, what a reader checks)
are in :mod:`ches_filter.data.folders` and :mod:`ches_filter.data.lock`.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ches_filter import score_registry
from ches_filter.data.folders import DATA_DIR, MANIFEST_NAME, remove_temp_files, sha256_of
from ches_filter.data.lock import LOCK_NAME, busy_error, live_holder
from ches_filter.data.values import checker, encode_json_text, json_text_columns, shorten
from ches_filter.errors import DatasetError, OutputError

#: Score columns appended to every original column, in this order: the score registry's
#: declarations (:mod:`ches_filter.score_registry`; docs/scores.md lists them).
SCORE_SCHEMA = pa.schema(
    [pa.field(c.name, pa.type_for_alias(c.dtype), nullable=c.nullable) for c in score_registry.COLUMNS]
)
SCORE_COLUMNS: tuple[str, ...] = tuple(SCORE_SCHEMA.names)


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


def run_token() -> str:
    """A token unique to one writer of one run (pid + random), for temp file names."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def check_output_dir(path: Path, *, overwrite: bool) -> None:
    """Raise an OutputError if ``path`` could not take a fresh set of shards; change nothing.

    A folder whose lock another live run holds is refused (naming the holder) even with
    ``overwrite``; a lock file alone (a run that died) does not make a folder non-empty.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is not a folder")
    if path.is_dir():
        holder = live_holder(path)
        if holder is not None:
            raise busy_error(path, holder)
    if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder {path} is not empty",
            hint="choose another --output, or pass --overwrite to replace its shards",
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output folder {path}: {existing} is not writable")


def prepare_output_dir(path: Path, *, overwrite: bool) -> None:
    """Make ``path`` ready for a fresh set of shards (see :func:`check_output_dir`): with
    ``overwrite``, the old manifest, shards and the ``.tmp`` files of runs that died are
    removed first. Call it holding the folder's lock (:class:`~ches_filter.data.lock.FolderLock`),
    so that no live run's files are among them."""
    check_output_dir(path, overwrite=overwrite)
    if path.exists() and any(path.iterdir()):
        # Remove what made the old output look complete before anything new is written.
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        for old in (path / DATA_DIR).glob("*.parquet"):
            old.unlink()
        remove_temp_files(path)
    try:
        (path / DATA_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror}") from exc
    if not os.access(path / DATA_DIR, os.W_OK):
        raise OutputError(f"output folder {path} is not writable")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temp file beside ``path`` (a name unique to this run), fsync, then
    rename over ``path``; on failure the temp file is removed."""
    tmp = path.with_name(f".{path.name}.{run_token()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ShardWriter:
    """Writes rows as Parquet shards of ``rows_per_shard`` rows each, on a background thread.

    ``write_rows`` hands the rows to one writer thread and returns: converting them to Arrow,
    encoding and compressing Parquet pages and fsyncing a finished shard happen off the caller's
    path (Arrow releases the GIL for most of it, and a GPU run waits on the device meanwhile).
    At most ``MAX_PENDING`` batches of rows wait for the thread; a caller that produces rows
    faster than they can be written waits there, so memory stays bounded. Rows reach the file
    in row groups of up to ``ROW_GROUP_ROWS`` rows as they come, not a whole shard at a time.
    An error in the thread (a row that does not fit the schema, a full disk) is raised by the
    next ``write_rows`` or by ``close``. Use as a context manager (closes on success, aborts on
    an exception), or call ``abort()`` on failure: the thread then stops and this writer's
    ``.tmp`` files are removed. After ``close()``, ``entries`` holds what a manifest records of
    each shard (:func:`ches_filter.data.folders.shard_entry`: path, rows, bytes, SHA-256, the
    checksum computed on the writer thread as each shard is finished).
    """

    ROW_GROUP_ROWS = 4096
    MAX_PENDING = 4

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
        self.final_paths: list[Path] = []
        self.entries: list[dict[str, Any]] = []  # the manifest's record of each final shard
        self.token = run_token()
        self.rows_written = 0  # rows in shards on disk or in the open shard (writer thread)
        self._json_fields = json_text_columns(schema)  # values written as their JSON text
        self._checks = [(field.name, checker(field.type)) for field in schema]
        self._names = frozenset(schema.names)
        # Owned by the writer thread once started:
        self._group: list[pa.Table] = []  # converted rows not yet written as a row group
        self._group_rows = 0
        self._shard_rows = 0  # rows in the open shard, written or in _group
        self._shard: tuple[pq.ParquetWriter, Any, Path] | None = None  # writer, handle, tmp path
        self._temp_paths: list[Path] = []
        self._temp_info: list[tuple[int, int, str]] = []  # rows, bytes, sha256 of each closed shard
        # Owned by the caller:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ches-shards")
        self._pending: deque[Future[None]] = deque()
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """On success the shards are closed and renamed (if ``close()`` was not called yet)."""
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        if self._closed:
            raise OutputError("the shard writer is closed")
        batch = list(rows)
        if not batch:
            return
        self._raise_failures(wait_for=self.MAX_PENDING - 1)
        self._pending.append(self._executor.submit(self._append, batch))

    def write_table(self, table: pa.Table) -> None:
        """Rows already in Arrow (``ches filter``): no round trip through Python objects.

        The table needs this writer's columns, with types that cast to its schema's.
        """
        if self._closed:
            raise OutputError("the shard writer is closed")
        if table.num_rows == 0:
            return
        try:  # a missing column: KeyError; a type that won't cast: ArrowInvalid / NotImplemented
            table = table.select(self.schema.names)
            # Only columns of another type are cast (safely): pyarrow 26 corrupts a list<null>
            # column cast to its own type (its offsets outrun its values).
            columns = [
                column if column.type == field.type else column.cast(field.type, safe=True)
                for column, field in zip(table.columns, self.schema, strict=True)
            ]
            table = pa.Table.from_arrays(columns, schema=self.schema)
        except (KeyError, ValueError, TypeError, NotImplementedError) as exc:
            raise OutputError(f"rows do not fit the output's schema: {exc}") from None
        self._raise_failures(wait_for=self.MAX_PENDING - 1)
        self._pending.append(self._executor.submit(self._append_table, table))

    def close(self) -> list[Path]:
        """Write what is left and give every shard its final ``-of-N`` name."""
        if self._closed:
            return self.final_paths
        self._pending.append(self._executor.submit(self._finish))
        try:
            self._raise_failures(wait_for=0)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)
        for stale in self.data_dir.glob(f"{self.split}-*-of-*.parquet"):
            stale.unlink()
        total = len(self._temp_paths)
        for index, (tmp, (rows, size, digest)) in enumerate(
            zip(self._temp_paths, self._temp_info, strict=True)
        ):
            final = self.data_dir / shard_name(self.split, index, total)
            os.replace(tmp, final)
            self.final_paths.append(final)
            self.entries.append({"path": f"{DATA_DIR}/{final.name}", "rows": rows, "bytes": size,
                                 "sha256": digest})
        return self.final_paths

    def keep_partial(self) -> list[Path]:
        """Write every row handed over and close the open shard, but rename nothing: a run that
        stopped early (its source failed mid-stream) keeps the rows it scored in complete
        Parquet files that still carry ``.tmp`` names, so the folder does not look finished.
        Returns those files."""
        if self._closed:
            return list(self._temp_paths)
        self._pending.append(self._executor.submit(self._finish_partial))
        try:
            self._raise_failures(wait_for=0)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)
        return list(self._temp_paths)

    def abort(self) -> None:
        """Stop after the batch being written; nothing is renamed, and this writer's ``.tmp``
        files are removed (a full disk is not left full)."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        temps = list(self._temp_paths)
        if self._shard is not None:
            writer, handle, tmp = self._shard
            temps.append(tmp)
            with suppress(Exception):
                writer.close()
            with suppress(Exception):
                handle.close()
            self._shard = None
        for tmp in temps:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _raise_failures(self, *, wait_for: int) -> None:
        """Wait until at most ``wait_for`` batches are pending; raise the first error seen."""
        while self._pending and (len(self._pending) > wait_for or self._pending[0].done()):
            future = self._pending.popleft()
            try:
                future.result()
            except BaseException:
                self.abort()
                raise

    # -- the writer thread ---------------------------------------------------------------

    def _append(self, rows: list[Mapping[str, Any]]) -> None:
        """Rows of Python values → Arrow, checked: a value is written only if it fits exactly.

        ``from_pylist`` alone truncates a float in an int64 column and drops a key a struct
        type lacks; every row is checked against the schema first (:mod:`.values`), and one
        that doesn't fit stops the run with an error naming its row and field.
        """
        if self._json_fields:
            rows = [self._as_json_text(row) for row in rows]
        for position, row in enumerate(rows):
            extra = row.keys() - self._names
            if extra:
                raise self._schema_error(row, position, sorted(extra)[0], "is not in the schema")
            for name, check in self._checks:
                problem = check(row.get(name))
                if problem is not None:
                    raise self._schema_error(row, position, name + problem[0], problem[1])
        try:
            table = pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # a type the checks leave to Arrow
            raise DatasetError(f"rows do not fit the dataset's schema: {exc}") from None
        self._append_table(table)

    def _append_table(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            room = self.rows_per_shard - self._shard_rows
            piece = table.slice(offset, room)
            offset += piece.num_rows
            self._group.append(piece)
            self._group_rows += piece.num_rows
            self._shard_rows += piece.num_rows
            if self._group_rows >= self.ROW_GROUP_ROWS or self._shard_rows >= self.rows_per_shard:
                self._write_group()
            if self._shard_rows >= self.rows_per_shard:
                self._close_shard()

    def _finish(self) -> None:
        self._write_group()
        if self._shard is not None:
            self._close_shard()
        if not self._temp_paths:  # an empty dataset still gets one (empty) shard with the schema
            self._open_shard()
            self._close_shard()

    def _finish_partial(self) -> None:
        self._write_group()
        if self._shard is not None:
            self._close_shard()

    def _open_shard(self) -> None:
        tmp = self.data_dir / f".{self.split}-{len(self._temp_paths):05d}.{self.token}.parquet.tmp"
        handle = open(tmp, "wb")  # noqa: SIM115 - closed by _close_shard / abort
        try:
            self._shard = (pq.ParquetWriter(handle, self.schema), handle, tmp)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise

    def _write_group(self) -> None:
        if not self._group:
            return
        if self._shard is None:
            self._open_shard()
        assert self._shard is not None
        table = pa.concat_tables(self._group)
        self._shard[0].write_table(table, row_group_size=table.num_rows)
        self.rows_written += table.num_rows
        self._group, self._group_rows = [], 0

    def _close_shard(self) -> None:
        assert self._shard is not None
        writer, handle, tmp = self._shard
        writer.close()
        handle.flush()
        os.fsync(handle.fileno())
        size = os.fstat(handle.fileno()).st_size
        handle.close()
        self._temp_paths.append(tmp)
        self._temp_info.append((self._shard_rows, size, sha256_of(tmp)))
        self._shard, self._shard_rows = None, 0

    def _as_json_text(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """The JSON-text columns (``--keep-json-columns``) of a row encoded: ``json.loads`` of
        each gives its value back; a null stays null."""
        fixed = dict(row)
        for name in self._json_fields:
            fixed[name] = encode_json_text(row.get(name))
        return fixed

    def _schema_error(
        self, row: Mapping[str, Any], position: int, field: str, problem: str
    ) -> DatasetError:
        where = f"row_id {row['row_id']}" if "row_id" in row else f"row {position}"
        return DatasetError(
            f"{where}: field {shorten(field)!r} {problem} (the output's schema was fixed before "
            "this row)",
            hint="a streamed dataset is typed from its first rows: download its files and "
            "score them locally, where every row is read before writing; or make the field's "
            "type the same in every row",
        )

