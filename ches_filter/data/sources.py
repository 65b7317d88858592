"""DATASET → rows: open a local file, folder, glob or hub dataset as a stream of ``(row_id, row)``.

Local files are read with the standard library (JSON) or pyarrow (Parquet, CSV, Arrow), one
record batch or line at a time, so a dataset larger than memory streams. ``datasets`` is imported
only for hub ids. ``row_id`` is the 0-based position of a row in the source (the files of a folder
or glob are read in sorted order) and survives ``limit``/``sample``.

Cheap checks happen in :func:`open_source` (the path exists, the format is known, the first rows
parse), so a typo fails before any model is loaded. :meth:`RowSource.arrow_schema` gives the one
Arrow schema every row is written back with, losslessly (:mod:`.values`): a stored schema is kept;
local JSON and CSV files get a first pass over every row that types each field (and finds a
malformed line 1,500 or a field no type can hold, before the model loads); a stream without a
stored schema is typed from its first rows. Errors are :class:`~ches_filter.errors.DatasetError`
naming the file and line (or row_id) and the field.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from ches_filter.data.folders import DATA_DIR, folder_kind, interrupted_error
from ches_filter.data.values import Location, SchemaInference, TypeConflict, json_text_columns
from ches_filter.errors import DatasetError, OptionError

SUPPORTED_FORMATS = (
    "JSON lines (.jsonl, .jsonl.gz), JSON (.json, .json.gz: an array of objects or JSON lines), "
    "Parquet (.parquet), CSV (.csv, .csv.gz), Arrow (.arrow), a `save_to_disk` folder, "
    "a folder or glob of such files, or a Hugging Face Hub dataset id"
)
_EXTENSIONS: dict[str, str] = {
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".json.gz": "json",
    ".csv.gz": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
#: Rows read (and parsed) by ``open_source`` so that malformed input fails early.
EAGER_ROWS = 100
#: A stream without a stored schema (a hub dataset without features) is typed from its first
#: ``_SCHEMA_ROWS`` rows, then up to ``_NULL_SCAN_ROWS`` more while a field is still only null.
_SCHEMA_ROWS = 1000
_NULL_SCAN_ROWS = 100_000
_BATCH_ROWS = 1024
_READ_CHUNK = 1 << 20
_MAX_JSON_OBJECT = 256 << 20
_KNOWN_SPLITS = ("train", "validation", "valid", "dev", "test", "eval", "evaluation")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class SourceSpec:
    """Where the rows come from: a local file / folder / glob, or a hub dataset id."""

    dataset: str
    split: str | None = None
    config: str | None = None
    revision: str | None = None


Row = dict[str, Any]


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def _unsupported(path: Path) -> DatasetError:
    return DatasetError(
        f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}",
        hint=f"supported: {SUPPORTED_FORMATS}",
    )


# --------------------------------------------------------------------------- file readers


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }.get(type(value), type(value).__name__)


def _io_error(display: str, exc: BaseException, where: str = "") -> DatasetError:
    if isinstance(exc, UnicodeDecodeError):
        return DatasetError(f"{display}{where}: not valid UTF-8 text ({exc.reason})")
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError)):
        return DatasetError(
            f"{display}: not a readable gzip file ({exc or type(exc).__name__})",
            hint="check that the download is complete, or decompress it first",
        )
    return DatasetError(f"{display}: cannot read ({exc})")


_IO_ERRORS = (UnicodeDecodeError, OSError, zlib.error, EOFError)


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _jsonl_rows(path: Path, display: str) -> Iterator[Row]:
    for _, row in _jsonl_lines(path, display):
        yield row


def _jsonl_lines(path: Path, display: str) -> Iterator[tuple[int, Row]]:
    """``(line number, row)`` of a JSON lines file (1-based numbers; blank lines are skipped)."""
    # Lines are split as bytes and decoded one by one, so errors carry the exact line number.
    lineno = 0
    try:
        with _open_binary(path) as handle:
            for lineno, raw in enumerate(handle, 1):
                line = raw.decode("utf-8")
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"{display} line {lineno}: invalid JSON ({exc.msg})",
                        hint="every line of a JSON lines file must be one complete JSON object",
                    ) from None
                if not isinstance(value, dict):
                    raise DatasetError(
                        f"{display} line {lineno}: expected a JSON object, found {_json_type(value)}",
                        hint="every line of a JSON lines file must be one JSON object (a row)",
                    )
                yield lineno, value
    except _IO_ERRORS as exc:
        raise _io_error(display, exc, f" line {lineno}") from None


class _JsonBuffer:
    """A sliding text window over a file for incremental ``raw_decode`` with line numbers."""

    def __init__(self, handle: io.TextIOBase) -> None:
        self.handle = handle
        self.text = ""
        self.pos = 0
        self.line_base = 1  # line number of text[0]
        self.eof = False

    def more(self, size: int = _READ_CHUNK) -> None:
        chunk = self.handle.read(size)
        if not chunk:
            self.eof = True
            return
        self.line_base += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos :] + chunk
        self.pos = 0

    def peek_char(self) -> str:
        """Skip whitespace; the next character, or "" at the end of the file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.more()

    def line_at(self, pos: int) -> int:
        return self.line_base + self.text.count("\n", 0, pos)


def _json_array_rows(handle: io.TextIOBase, display: str) -> Iterator[Row]:
    """Stream the objects of a top-level JSON array, one at a time (memory: one object)."""
    decoder = json.JSONDecoder()
    buf = _JsonBuffer(handle)

    def fail(pos: int, what: str) -> DatasetError:
        return DatasetError(
            f"{display} line {buf.line_at(pos)}: invalid JSON ({what})",
            hint="a .json file must hold an array of objects, or one JSON object per line",
        )

    if buf.peek_char() != "[":
        raise fail(buf.pos, "expected '['")
    buf.pos += 1
    index = 0
    while True:
        char = buf.peek_char()
        if char == "]" and index == 0:
            buf.pos += 1
            break
        if char == "":
            raise fail(buf.pos, "unexpected end of file inside the array")
        size = _READ_CHUNK
        while True:
            try:
                value, end = decoder.raw_decode(buf.text, buf.pos)
                # A number or literal that touches the end of the window may be cut short.
                if end < len(buf.text) or buf.eof or isinstance(value, (dict, list, str)):
                    break
            except json.JSONDecodeError as exc:
                if buf.eof or len(buf.text) - buf.pos > _MAX_JSON_OBJECT:
                    raise fail(exc.pos, exc.msg) from None
            buf.more(size)  # an element cut by the window's end: read more and decode again
            size *= 2
        if not isinstance(value, dict):
            raise DatasetError(
                f"{display} line {buf.line_at(buf.pos)}: array element {index} is "
                f"{_json_type(value)}, expected a JSON object",
                hint="each element of the array must be one row (a JSON object)",
            )
        buf.pos = end
        yield value
        index += 1
        char = buf.peek_char()
        if char == ",":
            buf.pos += 1
        elif char == "]":
            buf.pos += 1
            break
        else:
            raise fail(buf.pos, "expected ',' or ']' after an array element")
    if buf.peek_char() != "":
        raise fail(buf.pos, "extra data after the closing ']'")


def _json_rows(path: Path, display: str) -> Iterator[Row]:
    for _, row in _json_located(path, display):
        yield row


def _json_located(path: Path, display: str) -> Iterator[tuple[int | None, Row]]:
    """A ``.json`` file: a top-level array of objects (line number None), or JSON lines."""
    try:
        with _open_text(path) as handle:
            first = ""
            while not first.strip():
                first = handle.read(1)
                if first == "":
                    return  # an empty file: no rows
            if first == "[":
                for row in _json_array_rows(_Prepend(first, handle), display):
                    yield None, row
                return
    except _IO_ERRORS as exc:
        raise _io_error(display, exc) from None
    # Not an array: JSON lines, unless the first line is only the start of one big object.
    with _open_text(path) as handle:
        line = ""
        try:
            for line in handle:
                if line.strip():
                    break
        except _IO_ERRORS as exc:
            raise _io_error(display, exc) from None
    try:
        json.loads(line)
    except json.JSONDecodeError:
        if line.strip() == "{":
            raise DatasetError(
                f"{display}: the file holds one JSON object, not rows",
                hint="a .json file must hold an array of objects, or one JSON object per line",
            ) from None
    yield from _jsonl_lines(path, display)


class _Prepend(io.TextIOBase):
    """A text handle with a few characters pushed back in front."""

    def __init__(self, head: str, handle: io.TextIOBase) -> None:
        self.head = head
        self.handle = handle

    def read(self, size: int | None = -1) -> str:
        head, self.head = self.head, ""
        if size is None or size < 0:
            return head + self.handle.read()
        return head + self.handle.read(max(size - len(head), 0))


def _parquet_rows(path: Path, display: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as reader:
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS):
                yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{display}: not a readable Parquet file ({exc})") from None


def _parquet_schema(path: Path, display: str) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as reader:
            return reader.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{display}: not a readable Parquet file ({exc})") from None


def _ipc_batches(source: Any) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and batches of Arrow IPC data: the stream format (``datasets``' files) or the file
    format; raises ``pa.ArrowInvalid`` if it is neither."""
    try:
        stream = pa.ipc.open_stream(source)
        return stream.schema, iter(stream)
    except pa.ArrowInvalid:
        source.seek(0)
    reader = pa.ipc.open_file(source)
    return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _arrow_rows(path: Path, display: str) -> Iterator[Row]:
    try:
        with pa.memory_map(str(path)) as source:
            _, batches = _ipc_batches(source)
            for batch in batches:
                for offset in range(0, batch.num_rows, _BATCH_ROWS):
                    yield from batch.slice(offset, _BATCH_ROWS).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{display}: not a readable Arrow file ({exc})") from None


def _arrow_schema(path: Path, display: str) -> pa.Schema:
    try:
        with pa.memory_map(str(path)) as source:
            return _ipc_batches(source)[0]
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{display}: not a readable Arrow file ({exc})") from None


_CSV_INT = r"^(|0|-?[1-9][0-9]*)$"  # canonical integers (or an empty cell): the text round-trips


def _csv_reader(stream: Any, column_types: dict[str, pa.DataType] | None) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=_READ_CHUNK),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=column_types or {}, null_values=[""], strings_can_be_null=False
        ),
    )


def _csv_batches(
    path: Path, display: str, column_types: dict[str, pa.DataType] | None
) -> Iterator[pa.RecordBatch | pa.Schema]:
    """First the file's schema, then its record batches (``column_types`` for every column)."""
    started = False
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = _csv_reader(stream, column_types)
            yield reader.schema
            started = True
            yield from reader
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            f"{display}: not a readable CSV file"
            + (" past its first rows" if started else "")
            + f" ({_first_line(exc)})"
        ) from None


def _csv_names(path: Path, display: str) -> list[str]:
    batches = _csv_batches(path, display, None)
    try:
        schema = next(batches)
    finally:
        batches.close()
    assert isinstance(schema, pa.Schema)
    return list(schema.names)


def _csv_schema(files: list[Path], displays: list[str]) -> tuple[pa.Schema, int]:
    """Column types of CSV files, from every cell (a full pass), and the number of rows.

    A cell's value is its text. A column is ``int64`` when every non-empty cell of every file is
    an integer written the canonical way (no ``+``, no leading zeros, within 64 bits), so the
    number gives the text back; an empty cell there is null. Every other column is ``string``,
    each cell exactly as in the file ("007", "1.0", "0.5", "true" stay text).
    """
    import pyarrow.compute as pc

    names = _csv_names(files[0], displays[0])
    integer = dict.fromkeys(names, True)
    filled = dict.fromkeys(names, False)
    rows = 0
    for path, display in zip(files, displays, strict=True):
        mine = _csv_names(path, display) if path is not files[0] else names
        if sorted(mine) != sorted(names):
            raise DatasetError(
                f"{display} has columns {mine}, but {displays[0]} has {names}",
                hint="all files of a dataset must have the same columns",
            )
        for batch in _csv_batches(path, display, dict.fromkeys(mine, pa.string())):
            if isinstance(batch, pa.Schema):
                continue
            rows += batch.num_rows
            for name in names:
                if not integer[name]:
                    continue
                column = batch.column(name)
                if not pc.all(pc.match_substring_regex(column, _CSV_INT)).as_py():
                    integer[name] = False
                    continue
                cells = pc.filter(column, pc.not_equal(column, ""))
                filled[name] = filled[name] or len(cells) > 0
                try:
                    pc.cast(cells, pa.int64())
                except pa.ArrowInvalid:  # beyond 64 bits
                    integer[name] = False
    types = {n: pa.int64() if integer[n] and filled[n] else pa.string() for n in names}
    return pa.schema([pa.field(n, types[n]) for n in names]), rows


def _csv_rows(path: Path, display: str, schema: pa.Schema) -> Iterator[Row]:
    batches = _csv_batches(path, display, {f.name: f.type for f in schema})
    next(batches)  # the schema: the one given
    for batch in batches:
        assert isinstance(batch, pa.RecordBatch)
        yield from batch.select(schema.names).to_pylist()


# --------------------------------------------------------------------------- schema inference


def _unify(schemas: list[pa.Schema], display: str) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetError(
            f"{display}: a column changes type between rows or files ({exc})",
            hint="ches writes the original columns back with one type per column",
        ) from None


def _describe_location(where: Location) -> str:
    file, unit, number = where
    return f"{file} {unit} {number}" if file else f"{unit} {number}"


def _conflict_error(name: str, conflict: TypeConflict) -> DatasetError:
    return DatasetError(
        f"{name}: {conflict.message(_describe_location)}; no column type holds all of its values "
        "exactly",
        hint=f"`ches score --keep-json-columns` (keep_json_columns=True in Python) stores column "
        f"{conflict.column!r} as the JSON text of each value; or make the field's type the same "
        "in every row",
    )


# --------------------------------------------------------------------------- sources


class RowSource(ABC):
    """A re-iterable stream of ``(row_id, row)`` in source order (see :func:`open_source`)."""

    spec: SourceSpec
    description: str
    split: str

    def __init__(
        self,
        spec: SourceSpec,
        *,
        description: str,
        split: str,
        limit: int | None = None,
        sample: int | None = None,
        seed: int = 0,
        keep_json_columns: bool = False,
    ) -> None:
        self.spec = spec
        self.description = description
        self.split = split
        self.limit = limit
        self.sample = sample
        self.seed = seed
        self.keep_json_columns = keep_json_columns
        self._schema: pa.Schema | None = None
        self._fingerprint: str | None = None

    # Subclasses provide the raw rows (every row, in order) and optionally a stored schema.
    @abstractmethod
    def _rows(self) -> Iterator[Row]:
        """Every raw row of the source, in order."""

    def _stored_schema(self) -> pa.Schema | None:
        return None

    @abstractmethod
    def _compute_fingerprint(self) -> str:
        """A fingerprint of the source's content (see :meth:`fingerprint`)."""

    def _limited(self) -> Iterator[Row]:
        rows = self._rows()
        return rows if self.limit is None else islice(rows, self.limit)

    def columns(self) -> list[str]:
        """The original column names, in order."""
        return list(self.arrow_schema().names)

    def arrow_schema(self) -> pa.Schema:
        """An explicit Arrow schema of the original columns, the same for the whole stream.

        A stored schema (Parquet, Arrow, hub features) is kept as it is; otherwise the schema is
        inferred (:meth:`_infer_schema`) so that every value fits it exactly, or a
        :class:`DatasetError` names the field and rows that no column type can hold together.
        """
        if self._schema is None:
            stored = self._stored_schema()
            self._schema = stored if stored is not None else self._infer_schema()
        return self._schema

    def json_columns(self) -> list[str]:
        """The columns stored as the JSON text of each value (``keep_json_columns``)."""
        return json_text_columns(self.arrow_schema())

    def _schema_name(self) -> str:
        return self.description

    def _infer_schema(self) -> pa.Schema:
        """A stream's schema, from its first rows (see ``_SCHEMA_ROWS``); every later row is
        checked against it when written, and one that does not fit stops the run, by name."""
        inference = SchemaInference(keep_json=self.keep_json_columns)
        try:
            for index, row in enumerate(self._limited()):
                if index >= _SCHEMA_ROWS and (
                    index >= _SCHEMA_ROWS + _NULL_SCAN_ROWS or not inference.has_null_parts()
                ):
                    break
                inference.observe(row, (None, "row_id", index))
            return inference.schema()
        except TypeConflict as conflict:
            raise _conflict_error(self._schema_name(), conflict) from None

    def peek(self, n: int) -> list[Row]:
        """The first ``n`` rows (after ``limit``, before ``sample``), without consuming anything."""
        return list(islice(self._limited(), n))

    def fingerprint(self) -> str:
        """A stable hex digest of the input (file names, sizes and contents; or the hub id)."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _stored_count(self) -> int | None:
        return None

    def count(self) -> int | None:
        """How many rows iteration yields, when it is cheap to know (for progress and ETA)."""
        total = self._stored_count()
        if total is not None and self.limit is not None:
            total = min(total, self.limit)
        elif total is None and self.limit is not None and self.sample is None:
            return None
        if self.sample is not None:
            return self.sample if total is None else min(total, self.sample)
        return total

    def __iter__(self) -> Iterator[tuple[int, Row]]:
        numbered = enumerate(self._limited())
        if self.sample is None:
            return numbered
        return iter(reservoir_sample(numbered, self.sample, self.seed))


def reservoir_sample(items: Iterator[tuple[int, Row]], n: int, seed: int) -> list[tuple[int, Row]]:
    """A uniform sample of ``n`` items in one pass (Algorithm R), returned in source order."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, Row]] = []
    for seen, item in enumerate(items):
        if seen < n:
            reservoir.append(item)
        else:
            slot = rng.randrange(seen + 1)
            if slot < n:
                reservoir[slot] = item
    reservoir.sort(key=lambda item: item[0])
    return reservoir


class _LocalSource(RowSource):
    """One or more local files of one format, read in order."""

    def __init__(
        self, spec: SourceSpec, files: list[Path], fmt: str, root: Path, **kwargs: Any
    ) -> None:
        super().__init__(spec, **kwargs)
        self.files = files
        self.fmt = fmt
        self.root = root
        self._row_count: int | None = None  # rows seen by the schema pass (after ``limit``)

    def _display(self, path: Path) -> str:
        return path.name if len(self.files) == 1 else _relative(path, self.root)

    def _schema_name(self) -> str:
        return self._display(self.files[0]) if len(self.files) == 1 else self.description

    def _located(self) -> Iterator[tuple[Location, Row]]:
        """JSON rows with where each comes from: a line (JSON lines) or a row_id (an array)."""
        index = 0
        for path in self.files:
            display = self._display(path)
            label = display if len(self.files) > 1 else None
            reader = _jsonl_lines if self.fmt == "jsonl" else _json_located
            for line, row in reader(path, display):
                yield ((label, "line", line) if line is not None else (label, "row_id", index)), row
                index += 1

    def _infer_schema(self) -> pa.Schema:
        """JSON: one pass over every row (after ``limit``) that types every field (and checks
        every line parses); CSV: one pass over every cell (see :func:`_csv_schema`)."""
        if self.fmt == "csv":
            schema, self._row_count = _csv_schema(self.files, [self._display(p) for p in self.files])
            if self.limit is not None:
                self._row_count = min(self._row_count, self.limit)
            return schema
        inference = SchemaInference(keep_json=self.keep_json_columns)
        located = self._located()
        if self.limit is not None:
            located = islice(located, self.limit)
        try:
            for where, row in located:
                inference.observe(row, where)
            schema = inference.schema()
        except TypeConflict as conflict:
            raise _conflict_error(self._schema_name(), conflict) from None
        self._row_count = inference.rows
        return schema

    def _stored_schema(self) -> pa.Schema | None:
        if self.fmt in ("json", "jsonl", "csv"):
            return None
        reader = {"parquet": _parquet_schema, "arrow": _arrow_schema}[self.fmt]
        schemas = [reader(path, self._display(path)) for path in self.files[:1]]
        names = schemas[0].names
        for path in self.files[1:]:
            schema = reader(path, self._display(path))
            if sorted(schema.names) != sorted(names):
                raise DatasetError(
                    f"{self._display(path)} has columns {schema.names}, "
                    f"but {self._display(self.files[0])} has {names}",
                    hint="all files of a dataset must have the same columns",
                )
            schemas.append(pa.schema([schema.field(name) for name in names]))
        unified = _unify([s.remove_metadata() for s in schemas], self.description)
        return unified.with_metadata(schemas[0].metadata) if len(schemas) == 1 else unified

    def _stored_count(self) -> int | None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(path).metadata.num_rows for path in self.files)
        if self.fmt in ("json", "jsonl", "csv"):
            self.arrow_schema()  # its pass counts the rows
            return self._row_count
        return None

    def _rows(self) -> Iterator[Row]:
        csv_schema = self.arrow_schema() if self.fmt == "csv" else None
        for path in self.files:
            display = self._display(path)
            if self.fmt == "jsonl":
                yield from _jsonl_rows(path, display)
            elif self.fmt == "json":
                yield from _json_rows(path, display)
            elif self.fmt == "parquet":
                yield from _parquet_rows(path, display)
            elif self.fmt == "arrow":
                yield from _arrow_rows(path, display)
            else:
                assert csv_schema is not None
                yield from _csv_rows(path, display, csv_schema)

    def _compute_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            content = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(_READ_CHUNK):
                    content.update(block)
            name = _relative(path, self.root)
            digest.update(f"{name}\0{path.stat().st_size}\0{content.hexdigest()}\n".encode())
        return digest.hexdigest()


class _HubSource(RowSource):
    def __init__(self, spec: SourceSpec, dataset: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.dataset = dataset

    def _stored_schema(self) -> pa.Schema | None:
        features = getattr(self.dataset, "features", None)
        return None if features is None else features.arrow_schema

    def _stored_count(self) -> int | None:
        splits = getattr(getattr(self.dataset, "info", None), "splits", None) or {}
        info = splits.get(self.split) if hasattr(splits, "get") else None
        return getattr(info, "num_examples", None) or None

    def _rows(self) -> Iterator[Row]:
        position = 0
        try:
            for position, row in enumerate(self.dataset):  # noqa: B007 - read in the except
                yield row
        except Exception as exc:  # a network or decoding failure deep in the stream
            raise DatasetError(
                f"{self.description}: reading failed near row {position} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None

    def _compute_fingerprint(self) -> str:
        key = {
            "hub": self.spec.dataset,
            "config": self.spec.config,
            "split": self.split,
            "revision": self.spec.revision,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- open_source


def _split_of(path: Path, root: Path) -> str | None:
    """The split a data file belongs to by its name, Hub-style (``train-00000-of-00002``)."""
    parts = path.relative_to(root).parts
    for part in parts:
        lowered = part.lower()
        for split in _KNOWN_SPLITS:
            if lowered == split or re.match(rf"{split}([-_.]|$)", lowered):
                return split
    return None


def _pick_split(
    groups: dict[str, list[Path]], wanted: str | None, where: str
) -> tuple[str | None, list[Path]]:
    if len(groups) == 1:
        name, files = next(iter(groups.items()))
        if name == "":  # files not named after a split: they are whichever split was asked for
            return wanted, files
        if wanted is None or wanted == name:
            return name, files
    if wanted is not None:
        if wanted not in groups:  # also: the only split is another one
            raise DatasetError(
                f"{where} has no split {wanted!r}; splits found: {', '.join(sorted(groups))}",
                hint="pass one of those with --split",
            )
        return wanted, groups[wanted]
    if "train" in groups:
        return "train", groups["train"]
    raise DatasetError(
        f"{where} holds several splits ({', '.join(sorted(groups))})",
        hint="choose one with --split",
    )


def _one_format(files: list[Path], where: str) -> str:
    formats = {_format_of(path) for path in files}
    if None in formats:
        bad = next(path for path in files if _format_of(path) is None)
        raise _unsupported(bad)
    if len(formats) > 1:
        raise DatasetError(
            f"{where} mixes file formats ({', '.join(sorted(f for f in formats if f))})",
            hint="point at files of one format, e.g. with a glob such as 'data/*.parquet'",
        )
    return formats.pop()  # type: ignore[return-value]


def _save_to_disk_source(folder: Path, spec: SourceSpec, **kwargs: Any) -> RowSource:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    split = spec.split
    if (folder / "dataset_dict.json").exists():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{folder}/dataset_dict.json: unreadable ({exc})") from None
        split, _ = _pick_split({s: [] for s in splits}, spec.split, str(folder))
        folder = folder / str(split)
    try:
        state = json.loads((folder / "state.json").read_text())
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"{folder}: not a readable save_to_disk folder (state.json: {exc})",
            hint="a `datasets` save_to_disk folder has state.json and data-*.arrow files",
        ) from None
    for path in files:
        if not path.is_file():
            raise DatasetError(f"{folder}: data file {path.name} listed in state.json is missing")
    name = f"{spec.dataset} (save_to_disk" + (f", split {split})" if split else ")")
    return _LocalSource(
        spec, files, "arrow", folder, description=name, split=split or "train", **kwargs
    )


def _data_files_under(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """Data files under ``folder``; sub-folders that ches wrote (an output with our manifest or
    lock, see :func:`~ches_filter.data.folders.folder_kind`) are not data: they are skipped
    and added to ``skipped``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        if Path(dirpath) != folder and folder_kind(dirpath) is not None:
            dirnames[:] = []
            if skipped is not None:
                skipped.append(Path(dirpath))
            continue
        for filename in filenames:
            path = Path(dirpath) / filename
            if not filename.startswith((".", "_")) and _format_of(path) is not None:
                found.append(path)
    return sorted(found)


def _listed_shards(folder: Path) -> list[str]:
    """The shard names a ches output's manifest lists (all under ``data/``)."""
    from ches_filter.data.manifest import read_manifest

    names = []
    for entry in read_manifest(folder).get("shards", []):
        rel = entry if isinstance(entry, str) else entry.get("path", "") if isinstance(entry, dict) else ""
        names.append(Path(rel).name)
    if not names:
        raise DatasetError(f"{folder / 'manifest.json'} lists no shards")
    for name in names:
        if not (folder / DATA_DIR / name).is_file():
            raise DatasetError(f"{folder / DATA_DIR / name} is missing: {folder}/manifest.json lists it")
    return names


def _glob_root(pattern: str) -> Path:
    """The folder a glob's file names are relative to: its parts before the first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    static = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        static.append(part)
    return Path(*static) if static else Path(".")


def _local_source(spec: SourceSpec, **kwargs: Any) -> RowSource:
    text = spec.dataset
    if _GLOB_CHARS.search(text):
        matches = sorted(Path(p) for p in globlib.glob(os.path.expanduser(text), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise DatasetError(
                f"no files match the glob {text!r}",
                hint="check the pattern; quote it so the shell does not expand it",
            )
        root = _glob_root(text)
        fmt = _one_format(files, f"glob {text!r}")
        desc = f"{text} ({len(files)} {fmt} file{'s' if len(files) != 1 else ''})"
        return _LocalSource(
            spec, files, fmt, root, description=desc, split=spec.split or "train", **kwargs
        )
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        kind = folder_kind(path)
        if kind == "interrupted":
            raise interrupted_error(path, what="not a dataset to score")
        if kind == "scores":
            raise DatasetError(
                f"{path} is a `ches score` output (its manifest.json says so), not a dataset",
                hint="score the original dataset; to filter these scores, use `ches filter`",
            )
        if kind is not None:  # a filter output: its shards are the dataset
            files = [path / DATA_DIR / name for name in _listed_shards(path)]
            desc = f"{text} (a `ches filter` output, {len(files)} parquet file(s))"
            return _LocalSource(
                spec, files, "parquet", path, description=desc, split=spec.split or "train", **kwargs
            )
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _save_to_disk_source(path, spec, **kwargs)
        skipped: list[Path] = []
        files = _data_files_under(path, skipped)
        if not files:
            raise DatasetError(
                f"no data files under {path}",
                hint=f"supported: {SUPPORTED_FORMATS}",
            )
        groups: dict[str, list[Path]] = {}
        for file in files:
            groups.setdefault(_split_of(file, path) or "", []).append(file)
        if len(groups) > 1 and "" in groups:  # unnamed files next to split files: keep them all
            groups = {"": files}
        split, files = _pick_split(groups, spec.split, str(path))
        fmt = _one_format(files, str(path))
        desc = f"{text} ({len(files)} {fmt} file{'s' if len(files) != 1 else ''}" + (
            f", split {split})" if split else ")"
        )
        if skipped:
            desc += f"; skipped ches output folder(s): {', '.join(_relative(p, path) for p in skipped)}"
        return _LocalSource(
            spec, files, fmt, path, description=desc, split=split or "train", **kwargs
        )
    fmt = _format_of(path)
    if fmt is None:
        raise _unsupported(path)
    return _LocalSource(
        spec,
        [path],
        fmt,
        path.parent,
        description=f"{path.name} ({fmt})",
        split=spec.split or "train",
        **kwargs,
    )


def _looks_local(text: str) -> bool:
    if text.startswith((".", "/", "~", "\\")) or _GLOB_CHARS.search(text):
        return True
    if text.count("/") > 1 or not _HUB_ID.match(text):
        return True
    return _format_of(Path(text)) is not None


def _hub_source(spec: SourceSpec, **kwargs: Any) -> RowSource:
    """A hub dataset id: offline, its files in the local Hugging Face cache; online, ``datasets``."""
    from ches_filter.hub_cache import NotCached, hub_offline, snapshot_folder

    if hub_offline():
        try:
            snapshot = snapshot_folder(spec.dataset, repo_type="dataset", revision=spec.revision)
        except NotCached as missing:
            if missing.repo_cached:  # the repo is there, not this revision
                raise DatasetError(
                    str(missing),
                    hint="pass one of those with --revision, or download it with network access",
                ) from None
            return _hub_datasets_source(spec, missing.cache, **kwargs)
        return _cached_hub_source(spec, snapshot, **kwargs)
    return _hub_datasets_source(spec, None, **kwargs)


def _hub_config(
    spec: SourceSpec, snapshot: Path, where: str
) -> tuple[str | None, Path, dict[str, list[str]], bool]:
    """The config to read (``configs:`` in the README's YAML front matter, as on the hub): its
    name, the folder its patterns are relative to, its ``{split: patterns}``, and whether the
    patterns are the card's own ``data_files`` (else inferred from file names)."""
    from datasets.data_files import get_data_patterns, sanitize_patterns
    from datasets.exceptions import DataFilesNotFoundError
    from huggingface_hub.repocard import metadata_load

    readme = snapshot / "README.md"
    try:
        meta = metadata_load(readme) if readme.is_file() else None
    except Exception as exc:  # a YAML error in the card
        raise DatasetError(
            f"{where}: README.md front matter is not readable YAML ({_first_line(exc)})"
        ) from None
    configs = (meta or {}).get("configs") or []
    if isinstance(configs, dict):
        configs = [configs]
    by_name = {str(c.get("config_name", "default")): c for c in configs if isinstance(c, dict)}
    name = spec.config
    if not by_name:
        if name not in (None, "default"):
            raise DatasetError(
                f"{where} has no config {name!r}: its README declares no configs",
                hint="leave --config out",
            )
        config: dict[str, Any] = {}
    else:
        if name is None:
            defaults = [n for n, c in by_name.items() if c.get("default")]
            if defaults:
                name = defaults[0]
            elif len(by_name) == 1 or "default" in by_name:
                name = "default" if "default" in by_name else next(iter(by_name))
            else:
                raise DatasetError(
                    f"{where} has several configs ({', '.join(sorted(by_name))}) and no default",
                    hint="choose one with --config",
                )
        elif name not in by_name:
            raise DatasetError(
                f"{where} has no config {name!r}; configs: {', '.join(sorted(by_name))}",
                hint="pass one of those with --config",
            )
        config = by_name[name]
    base = snapshot / str(config.get("data_dir") or "")
    try:
        if "data_files" in config:
            patterns = sanitize_patterns(config["data_files"])
        else:
            patterns = get_data_patterns(str(base))
    except (DataFilesNotFoundError, FileNotFoundError, ValueError) as exc:
        raise DatasetError(
            f"{where}: no data files in the cached snapshot ({_first_line(exc)})",
            hint="download the dataset again with network access",
        ) from None
    explicit = "data_files" in config
    return name, base, {str(split): list(p) for split, p in patterns.items()}, explicit


def _cached_hub_source(spec: SourceSpec, snapshot: Path, **kwargs: Any) -> RowSource:
    """A hub dataset read from its cached snapshot with the local readers: the config's files of
    the chosen split, resolved from the config's patterns the way ``datasets`` resolves them."""
    from datasets.data_files import DataFilesList

    where = f"hub dataset {spec.dataset}"
    config, base, patterns, explicit = _hub_config(spec, snapshot, where)
    split, _ = _pick_split({s: [] for s in patterns}, spec.split, where)
    split = split or "train"
    files: list[Path] = []
    for pattern in patterns.get(split, []):
        try:
            found = DataFilesList.from_patterns([pattern], base_path=str(base))
        except FileNotFoundError:
            raise DatasetError(
                f"{where}: {pattern} (config {config or 'default'}, split {split}) is not in the "
                f"cached snapshot {snapshot.name}",
                hint="the download was incomplete or of another config: download the dataset again "
                "with network access",
            ) from None
        files.extend(Path(f) for f in found)
    files = list(dict.fromkeys(files))  # a file two patterns match is read once
    if explicit:  # the card names these files: each must be readable, none is skipped
        bad = next((f for f in files if _format_of(f) is None), None)
        if bad is not None:
            raise _unsupported(bad)
    # Patterns inferred from file names also match README.md and the like, as in datasets.
    supported = [f for f in files if _format_of(f) is not None]
    if not supported:
        raise DatasetError(
            f"{where}: no data files of a supported type for split {split}",
            hint=f"supported: {SUPPORTED_FORMATS}",
        )
    fmt = _one_format(supported, where)
    details = ", ".join(
        f"{key} {value}"
        for key, value in (("config", config), ("split", split), ("revision", spec.revision))
        if value
    )
    desc = f"{where} (cached {snapshot.name[:12]}, {details})"
    return _LocalSource(spec, supported, fmt, snapshot, description=desc, split=split, **kwargs)


def _hub_datasets_source(spec: SourceSpec, hub_cache: Path | None, **kwargs: Any) -> RowSource:
    """A hub dataset through ``datasets``: streaming online; offline (``hub_cache``: the hub cache
    that lacks it), ``datasets`` looks in its own prepared cache."""
    import datasets

    name = spec.dataset
    try:
        loaded = datasets.load_dataset(
            name,
            name=spec.config,
            split=spec.split,
            revision=spec.revision,
            streaming=True,
        )
    except Exception as exc:  # datasets raises many kinds; all mean "can't open this id"
        if hub_cache is not None:
            raise DatasetError(
                f"{name!r} is not a local path and could not be reached offline: it is not in "
                f"the local Hugging Face cache ({hub_cache})",
                hint="check the path or the id; or download it once with network access "
                f"(hf download --repo-type dataset {name}); or unset HF_HUB_OFFLINE",
            ) from None
        raise DatasetError(
            f"{name!r} is not a local path, and the Hub dataset could not be opened "
            f"({type(exc).__name__}: {_first_line(exc)})",
            hint="check the path or the dataset id, --config, --split and --revision",
        ) from None
    split = spec.split
    if isinstance(loaded, (datasets.IterableDatasetDict, datasets.DatasetDict)):
        groups = {str(s): [] for s in loaded}
        split, _ = _pick_split(groups, spec.split, f"hub dataset {name}")
        loaded = loaded[split]
    details = ", ".join(
        f"{key} {value}"
        for key, value in (("config", spec.config), ("split", split), ("revision", spec.revision))
        if value
    )
    desc = f"hub dataset {name}" + (f" ({details})" if details else "")
    return _HubSource(spec, loaded, description=desc, split=split or "train", **kwargs)


def open_source(
    spec: SourceSpec,
    *,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    keep_json_columns: bool = False,
) -> RowSource:
    """Open ``spec`` and check its first rows; the returned source can be iterated many times.

    ``limit`` keeps the first N rows; ``sample`` keeps a uniform random sample of N rows (of the
    first ``limit`` when both are given; reservoir sampling, memory for N rows), yielded in
    source order with their original ``row_id``. The same ``seed`` gives the same sample.
    ``keep_json_columns``: a column that no Arrow type holds exactly (a field that is a string
    in one row and an object in another) is typed as the JSON text of each value instead of
    failing (see :meth:`RowSource.arrow_schema`); rows still carry the original values.
    """
    if limit is not None and limit < 0:
        raise OptionError(f"--limit must be 0 or more, not {limit}")
    if sample is not None and sample < 0:
        raise OptionError(f"--sample must be 0 or more, not {sample}")
    options = {"limit": limit, "sample": sample, "seed": seed, "keep_json_columns": keep_json_columns}
    text = spec.dataset
    if not text.strip():
        raise DatasetError("no dataset given", hint="pass a file, folder, glob or hub dataset id")
    path = Path(os.path.expanduser(text))
    if path.exists() or _GLOB_CHARS.search(text):
        hub_only = (("--config", spec.config), ("--revision", spec.revision))
        given = [name for name, value in hub_only if value]
        if given:  # they would be silently ignored
            raise OptionError(
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to hub "
                f"datasets only, and {text} is a local path",
                hint="leave them out (--split still picks a split of a local folder)",
            )
        source = _local_source(spec, **options)
    elif _looks_local(text):
        raise DatasetError(
            f"no such file or folder: {text}",
            hint="check the path (relative paths start from the current folder)",
        )
    else:
        source = _hub_source(spec, **options)
    source.peek(EAGER_ROWS)  # parse the first rows now: bad input fails before a model loads
    return source
