"""``ShardWriter``: shards of ``rows_per_shard`` rows, written on a thread, renamed only by close()."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ches_filter.data.shards import ShardWriter, prepare_output_dir
from ches_filter.errors import DatasetError, OutputError

SCHEMA = pa.schema([pa.field("row_id", pa.int64()), pa.field("text", pa.string()),
                    pa.field("score", pa.float64())])  # fmt: skip


def rows(start: int, stop: int) -> list[dict]:
    return [{"row_id": i, "text": f"row {i}", "score": i / 3} for i in range(start, stop)]


def writer_at(tmp_path: Path, **kwargs) -> ShardWriter:
    prepare_output_dir(tmp_path / "out", overwrite=False)
    return ShardWriter(tmp_path / "out", split="train", schema=SCHEMA, **kwargs)


def shard_names(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out" / "data").iterdir())


def test_rows_cross_batch_and_shard_boundaries_in_order(tmp_path):
    writer = writer_at(tmp_path, rows_per_shard=3)
    for start in range(0, 10, 4):  # batches of 4, shards of 3
        writer.write_rows(rows(start, min(start + 4, 10)))
    paths = writer.close()
    assert [p.name for p in paths] == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    assert shard_names(tmp_path) == [p.name for p in paths]  # no .tmp left
    assert [pq.read_metadata(p).num_rows for p in paths] == [3, 3, 3, 1]
    read = [row for p in paths for row in pq.read_table(p).to_pylist()]
    assert read == rows(0, 10)
    assert writer.rows_written == 10


def test_arrow_tables_go_in_as_they_are_mixed_with_rows(tmp_path):
    writer = writer_at(tmp_path, rows_per_shard=4)
    table = pa.Table.from_pylist(rows(0, 6))
    writer.write_table(table.select(["score", "text", "row_id"]))  # columns in another order
    writer.write_table(table.slice(0, 0))  # nothing
    writer.write_rows(rows(6, 9))
    writer.write_table(pa.Table.from_pylist(rows(9, 10)).cast(
        pa.schema([("row_id", pa.int32()), ("text", pa.large_string()), ("score", pa.float32())])))  # fmt: skip
    paths = writer.close()
    assert [pq.read_metadata(p).num_rows for p in paths] == [4, 4, 2]
    read = [row for p in paths for row in pq.read_table(p).to_pylist()]
    assert [r["row_id"] for r in read] == list(range(10))
    assert read[:9] == rows(0, 9) and read[9]["score"] == pytest.approx(3.0)
    assert pq.read_table(paths[0]).schema == SCHEMA


def test_a_table_without_the_schemas_columns_is_refused_at_once(tmp_path):
    writer = writer_at(tmp_path)
    with pytest.raises(OutputError, match="schema"):
        writer.write_table(pa.table({"row_id": [1], "text": ["a"]}))
    writer.abort()


def test_row_groups_are_bounded_not_whole_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(ShardWriter, "ROW_GROUP_ROWS", 5)
    writer = writer_at(tmp_path, rows_per_shard=100)
    for start in range(0, 23, 2):
        writer.write_rows(rows(start, min(start + 2, 23)))
    (path,) = writer.close()
    meta = pq.read_metadata(path)
    assert meta.num_rows == 23
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [6, 6, 6, 5]
    assert pq.read_table(path).to_pylist() == rows(0, 23)


def test_an_empty_stream_still_gets_one_shard_with_the_schema(tmp_path):
    (path,) = writer_at(tmp_path).close()
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names == SCHEMA.names


def written_or_error(tmp_path: Path, schema: pa.Schema, row: dict) -> list[dict] | str:
    out = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
    prepare_output_dir(out, overwrite=False)
    writer = ShardWriter(out, split="train", schema=schema)
    try:
        writer.write_rows([row])
        (path,) = writer.close()
    except DatasetError as exc:
        return exc.message
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize(
    ("dtype", "value", "problem"),
    [
        (pa.string(), {"a": [1, 2]}, "field 'x' holds an object, not a string"),  # no JSON text
        (pa.int64(), 7.5, "field 'x' holds a float 7.5, which a column of type int64 can't hold exactly"),
        (pa.int64(), True, "field 'x' holds a boolean, not a number"),
        (pa.int32(), 2**31, "holds an integer 2147483648, which a column of type int32"),
        (pa.float64(), 2**53 + 1, "holds an integer 9007199254740993, which a column of type double"),
        (pa.float32(), 0.1, "holds a float 0.1, which a column of type float"),
        (pa.bool_(), 1, "field 'x' holds an integer 1, not a boolean"),
        (pa.struct([("a", pa.int64())]), {"a": 1, "name": "n"},
         "field 'x.name' is a key that the column's type lacks"),
        (pa.list_(pa.struct([("a", pa.int64())])), [{"a": 1}, {"a": 2.5}],
         "field 'x[].a' holds a float 2.5"),
    ],
)  # fmt: skip
def test_a_value_that_would_change_is_refused_by_name(tmp_path, dtype, value, problem):
    """``from_pylist`` alone writes 7.5 as 7, drops the key ``name``, and so on, silently."""
    schema = pa.schema([pa.field("row_id", pa.int64()), pa.field("x", dtype)])
    message = written_or_error(tmp_path, schema, {"row_id": 5, "x": value})
    assert isinstance(message, str) and message.startswith("row_id 5: field 'x")
    assert problem in message


def test_values_that_fit_exactly_are_written(tmp_path):
    schema = pa.schema([("i", pa.int32()), ("f", pa.float64()), ("g", pa.float32()),
                        ("s", pa.struct([("a", pa.int64()), ("b", pa.string())]))])  # fmt: skip
    row = {"i": -(2**31), "f": 2**53, "g": 0.5, "s": {"a": 1}}  # the missing key "b" is null
    assert written_or_error(tmp_path, schema, row) == [{**row, "s": {"a": 1, "b": None}}]


def test_a_field_the_schema_lacks_is_refused(tmp_path):
    message = written_or_error(tmp_path, SCHEMA, {"row_id": 9, "text": "t", "score": 1.0, "late": 1})
    assert isinstance(message, str) and message.startswith("row_id 9: field 'late' is not in the")


def test_json_text_columns_hold_the_json_of_every_value(tmp_path):
    from ches_filter.data.values import json_text_field

    schema = pa.schema([pa.field("row_id", pa.int64()), json_text_field("x")])
    values = ["text", 4, {"a": [1, 2.5, None]}, None, "\u00e9\U0001f600"]
    out = tmp_path / "out"
    prepare_output_dir(out, overwrite=False)
    with ShardWriter(out, split="train", schema=schema) as writer:
        writer.write_rows([{"row_id": i, "x": v} for i, v in enumerate(values)])
    stored = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    texts = stored.column("x").to_pylist()
    assert texts[0] == '"text"' and texts[3] is None
    assert [None if t is None else json.loads(t) for t in texts] == values
    assert stored.schema.field("x").metadata == {b"ches_filter.encoding": b"json"}


def test_a_row_that_does_not_fit_is_named_and_nothing_looks_complete(tmp_path):
    writer = writer_at(tmp_path, rows_per_shard=2)
    writer.write_rows(rows(0, 3))
    bad = {"row_id": 3, "text": "x", "score": "not a number"}
    with pytest.raises(DatasetError, match=r"row_id 3: field 'score' holds a string, not a number"):
        writer.write_rows([bad])
        writer.close()  # the thread's error surfaces at the next call at the latest
    assert not any(name.endswith(".parquet") for name in shard_names(tmp_path))
    with pytest.raises(OutputError, match="closed"):
        writer.write_rows(rows(4, 5))


def test_abort_removes_its_temporary_files_and_renames_nothing(tmp_path):
    writer = writer_at(tmp_path, rows_per_shard=2)
    writer.write_rows(rows(0, 5))
    writer._raise_failures(wait_for=0)  # the shards were written (as .tmp files) before abort
    writer.abort()
    assert shard_names(tmp_path) == []


def test_an_exception_inside_the_with_block_aborts(tmp_path):
    with pytest.raises(KeyboardInterrupt), writer_at(tmp_path, rows_per_shard=2) as writer:
        writer.write_rows(rows(0, 5))
        raise KeyboardInterrupt
    assert not any(name.endswith(".parquet") for name in shard_names(tmp_path))


def test_rows_per_shard_must_be_positive(tmp_path):
    with pytest.raises(OutputError):
        writer_at(tmp_path, rows_per_shard=0)


def test_a_with_block_that_ends_normally_closes(tmp_path):
    with writer_at(tmp_path, rows_per_shard=2) as writer:
        writer.write_rows(rows(0, 3))
    assert [p.name for p in writer.final_paths] == [f"train-0000{i}-of-00002.parquet" for i in range(2)]
    assert writer.close() == writer.final_paths  # closing again changes nothing


def test_a_table_with_a_list_of_nulls_goes_in_unchanged(tmp_path):
    """pyarrow 26's cast of a list<null> column read from Parquet to its own type corrupts it:
    columns of the writer's own type are not cast."""
    schema = pa.schema([("row_id", pa.int64()), ("x", pa.list_(pa.null()))])
    pq.write_table(pa.table({"row_id": [0, 1], "x": [[None, None], [None]]}, schema=schema),
                   tmp_path / "in.parquet")  # fmt: skip
    table = pq.read_table(tmp_path / "in.parquet")
    out = tmp_path / "out"
    prepare_output_dir(out, overwrite=False)
    with ShardWriter(out, split="train", schema=schema) as writer:
        writer.write_table(table.filter(pa.array([True, True])))
    written = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    assert written.to_pylist() == [{"row_id": 0, "x": [None, None]}, {"row_id": 1, "x": [None]}]
