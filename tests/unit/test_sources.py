"""Sources: every local format, folders and globs, limit/sample, schema, fingerprint, errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ches_filter.data.sources import EAGER_ROWS, RowSource, SourceSpec, open_source
from ches_filter.errors import DatasetError, OptionError

ROOT = Path(__file__).resolve().parents[2]
HH_FILE = ROOT / ".." / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

ROWS: list[dict[str, Any]] = [
    {"prompt": f"Question {i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}.", "n": i}
    for i in range(10)
]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def opened(path: Path | str, **kwargs: Any) -> RowSource:
    return open_source(SourceSpec(str(path)), **kwargs)


def read_all(source: RowSource) -> list[tuple[int, dict[str, Any]]]:
    return list(source)


def expect_rows(source: RowSource, rows: list[dict[str, Any]] = ROWS) -> None:
    assert read_all(source) == list(enumerate(rows))
    assert source.columns() == ["prompt", "chosen", "rejected", "n"]


# --------------------------------------------------------------------------- formats


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(ROWS) + "\n")  # a trailing blank line is fine
    source = opened(path)
    expect_rows(source)
    assert source.description == "data.jsonl (jsonl)"
    assert source.split == "train"
    assert source.arrow_schema() == pa.schema(
        [
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("n", pa.int64()),
        ]
    )


def test_jsonl_gz(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(ROWS).encode()))
    source = opened(path)
    expect_rows(source)
    assert source.description == "data.jsonl.gz (jsonl)"


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array(tmp_path: Path, indent: int | None) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS, indent=indent))
    expect_rows(opened(path))


def test_json_array_gz_and_json_lines_in_dot_json(tmp_path: Path) -> None:
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    expect_rows(opened(tmp_path / "a.json.gz"))
    (tmp_path / "b.json").write_text(jsonl(ROWS))
    expect_rows(opened(tmp_path / "b.json"))
    (tmp_path / "c.json").write_text("[]")
    assert read_all(opened(tmp_path / "c.json")) == []


def test_json_array_streams_across_read_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ches_filter.data.sources as sources

    monkeypatch.setattr(sources, "_READ_CHUNK", 7)  # every element spans several reads
    rows = [*ROWS, {"prompt": "x" * 50, "chosen": "1", "rejected": "2", "n": 12345}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows, indent=1))
    assert [row for _, row in opened(path)] == rows


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("n", pa.int32()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(ROWS, schema=schema), path, row_group_size=3)
    source = opened(path)
    expect_rows(source)
    assert source.arrow_schema().field("n").type == pa.int32()  # the file's own schema


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pacsv.write_csv(pa.Table.from_pylist(ROWS), path)
    source = opened(path)
    expect_rows(source)
    assert source.arrow_schema().field("n").type == pa.int64()


def test_csv_empty_first_column_is_read_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected,note\np,c,r,\np,c,r,later\n")
    source = opened(path)
    assert source.arrow_schema().field("note").type == pa.string()
    assert [row["note"] for _, row in source] == ["", "later"]


def test_arrow_file_and_stream(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(ROWS)
    with pa.ipc.new_stream(tmp_path / "stream.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    with pa.ipc.new_file(tmp_path / "file.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    expect_rows(opened(tmp_path / "stream.arrow"))
    expect_rows(opened(tmp_path / "file.arrow"))


def test_save_to_disk_folders(tmp_path: Path) -> None:
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.save_to_disk(str(tmp_path / "single"))
    source = opened(tmp_path / "single")
    expect_rows(source)
    assert "save_to_disk" in source.description
    datasets.DatasetDict(
        {"train": dataset, "test": datasets.Dataset.from_list(ROWS[:2])}
    ).save_to_disk(str(tmp_path / "dict"))
    expect_rows(opened(tmp_path / "dict"))  # train by default
    test = open_source(SourceSpec(str(tmp_path / "dict"), split="test"))
    assert test.split == "test"
    assert read_all(test) == list(enumerate(ROWS[:2]))
    with pytest.raises(DatasetError, match="no split 'dev'; splits found: test, train"):
        open_source(SourceSpec(str(tmp_path / "dict"), split="dev"))


def test_folder_and_glob_keep_order_and_row_ids(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "part-b.jsonl").write_text(jsonl(ROWS[4:]))
    (folder / "part-a.jsonl").write_text(jsonl(ROWS[:4]))
    (folder / "README.md").write_text("not data")
    expect_rows(opened(folder))
    source = opened(f"{folder}/*.jsonl")
    expect_rows(source)
    assert source.description.endswith("(2 jsonl files)")
    assert read_all(opened(f"{folder}/*.jsonl", limit=6))[-1] == (5, ROWS[5])


def test_folder_with_split_files(tmp_path: Path) -> None:
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:5]), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[5:]), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), data / "test-00000-of-00001.parquet")
    expect_rows(opened(tmp_path / "repo"))
    test = open_source(SourceSpec(str(tmp_path / "repo"), split="test"))
    assert (test.split, read_all(test)) == ("test", [(0, ROWS[0])])


def test_glob_of_parquet_files_with_different_column_order(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(ROWS[:5]), tmp_path / "a.parquet")
    reordered = [{k: row[k] for k in ("n", "rejected", "chosen", "prompt")} for row in ROWS[5:]]
    pq.write_table(pa.Table.from_pylist(reordered), tmp_path / "b.parquet")
    source = opened(tmp_path / "*.parquet")
    assert source.columns() == ["prompt", "chosen", "rejected", "n"]
    assert [row["n"] for _, row in source] == list(range(10))


# --------------------------------------------------------------------------- schema


def test_schema_widens_where_any_row_needs_it(tmp_path: Path) -> None:
    """Every row is read: nothing is typed from the first rows alone (they used to be 1,000)."""
    rows: list[dict[str, Any]] = [
        {"a": None, "b": 1, "c": [], "m": [{"role": "user", "content": "hi"}]} for _ in range(1500)
    ]
    rows += [{"a": "late", "b": 2.5, "c": ["x"], "m": [{"role": "user", "name": "n"}], "d": True}]
    rows += [{"e": {"x": {"y": 1}}}, {"e": {"x": {"z": 1.5}, "w": [[1], [2.5]]}}]
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(rows))
    source = opened(path)
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])
    inner = pa.struct([("y", pa.int64()), ("z", pa.float64())])
    assert source.arrow_schema() == pa.schema(
        [
            ("a", pa.string()),  # null in 1,500 rows, then a string
            ("b", pa.float64()),  # 1,500 integers, then a float
            ("c", pa.list_(pa.string())),
            ("m", pa.list_(message)),  # the key "name" of a message, first seen on line 1,501
            ("d", pa.bool_()),  # a column first seen on line 1,501
            ("e", pa.struct([("x", inner), ("w", pa.list_(pa.list_(pa.float64())))])),
        ]
    )
    assert source.json_columns() == []
    assert source.count() == len(rows)  # counted by the same pass
    table = pa.Table.from_pylist([row for _, row in source], schema=source.arrow_schema())
    assert table.column("b").to_pylist()[-3:] == [2.5, None, None]


def test_schema_all_null_column_is_string(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl([{"prompt": "p", "extra": None, "list": [], "obj": {"k": None}}] * 3))
    schema = opened(path).arrow_schema()
    assert schema.field("extra").type == pa.string()
    assert schema.field("list").type == pa.list_(pa.string())
    assert schema.field("obj").type == pa.struct([("k", pa.string())])


def conflict(tmp_path: Path, text: str, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text)
    source = opened(path)  # the first rows parse: the conflict is found by the schema pass
    with pytest.raises(DatasetError) as caught:
        source.arrow_schema()
    assert "--keep-json-columns" in (caught.value.hint or "")
    return caught.value.message


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"x": "a"}', "", '{"x": {"b": 1}}'],
         "data.jsonl: field 'x' is a string on line 1 and an object on line 3"),
        (['{"x": 1}', '{"x": 2}', '{"y": 1}', '{"x": "3"}'],
         "field 'x' is an integer on line 1 and a string on line 4"),
        (['{"x": true}', '{"x": 1}'], "field 'x' is a boolean on line 1 and an integer on line 2"),
        (['{"x": 1}', f'{{"x": {2**63}}}'], "field 'x' is an integer beyond 64 bits on line 2"),
        (['{"m": [{"content": "a"}]}', '{"m": [{"content": "b"}, {"content": [{"type": "text"}]}]}'],
         "field 'm[].content' is a string on line 1 and a list on line 2"),
        (['{"x": {"y": {"z": 1}}}', '{"x": {"y": {"z": [1]}}}'],
         "field 'x.y.z' is an integer on line 1 and a list on line 2"),
        ([f'{{"x": {2**53 + 1}}}', '{"x": 0.5}'],
         "field 'x' is an integer on line 1 that a float column can't hold exactly, and a float "
         "on line 2"),
        (['{"x": {}}', '{"x": null}', '{"x": {}}'],
         "field 'x' is an empty object ({}) in every row (first on line 1), which Parquet can't"),
    ],
)  # fmt: skip
def test_a_field_without_a_lossless_type_is_named_with_two_lines(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    assert message in conflict(tmp_path, "\n".join(lines) + "\n")


def test_a_conflict_in_a_json_array_names_row_ids_and_in_a_glob_the_files(tmp_path: Path) -> None:
    text = json.dumps([{"x": "a"}, {"x": "b"}, {"x": [1]}], indent=2)
    assert "field 'x' is a string on row_id 0 and a list on row_id 2" in conflict(
        tmp_path, text, "data.json"
    )
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "parts" / "b.jsonl").write_text('\n{"x": "one"}\n')
    with pytest.raises(DatasetError) as caught:
        opened(tmp_path / "parts").arrow_schema()
    assert "field 'x' is an integer on a.jsonl line 1 and a string on b.jsonl line 2" in str(
        caught.value
    )


def test_keep_json_columns_types_such_a_column_as_json_text(tmp_path: Path) -> None:
    rows = [{"chosen": "a", "n": 1, "meta": {"k": 1}}, {"chosen": ["b"], "n": 2, "meta": {"k": "x"}}]
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(rows))
    source = opened(path, keep_json_columns=True)
    schema = source.arrow_schema()
    assert source.json_columns() == ["chosen", "meta"]  # a nested conflict: its whole column
    assert schema.field("n").type == pa.int64() and schema.field("n").metadata is None
    assert schema.field("chosen").type == pa.string()
    assert schema.field("chosen").metadata == {b"ches_filter.encoding": b"json"}
    assert [row for _, row in source] == rows  # rows keep their values; the writer encodes them


def test_the_schema_pass_reads_every_line_before_any_model(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(ROWS * 150) + "{oops\n")
    source = opened(path)
    with pytest.raises(DatasetError, match="data.jsonl line 1501: invalid JSON"):
        source.arrow_schema()
    assert opened(path, limit=1500).columns() == list(ROWS[0])
    assert opened(path, limit=1500).count() == 1500  # --limit: the pass stops there


def test_csv_values_are_their_text(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "id,code,ratio,label,big,note,blank\n"
        '1,007,1.0,true,9223372036854775808,"two\nlines, quoted",\n'
        "-2,12,0.5,false,1,NA,\n"
        ",3,2,x,2,null,\n"
    )
    source = opened(path)
    schema = source.arrow_schema()
    assert schema.field("id").type == pa.int64()  # canonical integers; the empty cell is null
    assert all(schema.field(n).type == pa.string() for n in schema.names if n != "id")
    assert [row for _, row in source] == [
        {"id": 1, "code": "007", "ratio": "1.0", "label": "true", "big": "9223372036854775808",
         "note": "two\nlines, quoted", "blank": ""},
        {"id": -2, "code": "12", "ratio": "0.5", "label": "false", "big": "1", "note": "NA",
         "blank": ""},
        {"id": None, "code": "3", "ratio": "2", "label": "x", "big": "2", "note": "null",
         "blank": ""},
    ]  # fmt: skip
    assert source.count() == 3


# --------------------------------------------------------------------------- limit / sample


def test_limit_and_peek(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(ROWS))
    source = opened(path, limit=3)
    assert source.peek(2) == ROWS[:2]
    assert source.peek(50) == ROWS[:3]
    assert read_all(source) == list(enumerate(ROWS[:3]))
    assert read_all(source) == list(enumerate(ROWS[:3]))  # iterable again
    assert read_all(opened(path, limit=0)) == []


def test_sample_is_reproducible_with_original_ids(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "n": i} for i in range(200)]
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(rows))
    first = read_all(opened(path, sample=20, seed=1))
    again = read_all(opened(path, sample=20, seed=1))
    other = read_all(opened(path, sample=20, seed=2))
    assert first == again
    assert first != other
    ids = [row_id for row_id, _ in first]
    assert len(ids) == 20 and ids == sorted(ids)
    assert all(row["n"] == row_id for row_id, row in first)
    assert len(read_all(opened(path, sample=500))) == 200
    limited = read_all(opened(path, sample=5, limit=10, seed=3))
    assert len(limited) == 5 and all(row_id < 10 for row_id, _ in limited)


def test_sample_is_uniform_enough(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl([{"n": i} for i in range(20)]))
    counts = [0] * 20
    for seed in range(400):
        for row_id, _ in opened(path, sample=5, seed=seed):
            counts[row_id] += 1
    assert min(counts) > 60 and max(counts) < 140  # expected 100 each


def test_negative_limit_or_sample(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(ROWS))
    with pytest.raises(OptionError, match="--limit"):
        opened(path, limit=-1)
    with pytest.raises(OptionError, match="--sample"):
        opened(path, sample=-2)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_content_sensitive(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.jsonl").write_text(jsonl(ROWS))
    assert opened(a).fingerprint() == opened(b).fingerprint()  # names are relative
    assert len(opened(a).fingerprint()) == 64
    (b / "x.jsonl").write_text(jsonl(ROWS[::-1]))
    assert opened(a).fingerprint() != opened(b).fingerprint()
    (b / "x.jsonl").write_text(jsonl(ROWS))
    (b / "x.jsonl").rename(b / "y.jsonl")
    assert opened(a).fingerprint() != opened(b).fingerprint()


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder: .*nope.jsonl"):
        opened(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no such file or folder: data/x.parquet"):
        opened("data/x.parquet")


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no files match the glob"):
        opened(f"{tmp_path}/*.jsonl")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="unsupported file type '.txt'") as caught:
        opened(path)
    assert "Parquet" in str(caught.value) and "JSON lines" in str(caught.value)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no data files under"):
        opened(tmp_path)
    (tmp_path / "a.jsonl").write_text(jsonl(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "b.parquet")
    with pytest.raises(DatasetError, match="mixes file formats"):
        opened(tmp_path)


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(ROWS[:2]) + '{"prompt": "p" "chosen": 1}\n')
    with pytest.raises(DatasetError) as caught:
        opened(path)
    assert str(caught.value).startswith("data.jsonl line 3: invalid JSON (Expecting ',' delimiter)")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n\n[1, 2]\n'))
    with pytest.raises(
        DatasetError, match=r"^data.jsonl.gz line 3: expected a JSON object, found an array"
    ):
        opened(path)


def test_malformed_line_deep_in_the_file_fails_while_iterating(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(jsonl(ROWS * (EAGER_ROWS // 5)) + "{oops\n")
    source = opened(path, limit=EAGER_ROWS)  # the bad line is past what open_source reads
    with pytest.raises(DatasetError, match=f"big.jsonl line {2 * EAGER_ROWS + 1}: invalid JSON"):
        list(opened(path))
    assert len(read_all(source)) == EAGER_ROWS


def test_malformed_json_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2}\n  {"a": 3}\n]')
    with pytest.raises(DatasetError, match=r"data.json line 4: invalid JSON \(expected ',' or ']'"):
        opened(path)
    path.write_text('[\n  {"a": 1},\n  3\n]')
    with pytest.raises(DatasetError, match="data.json line 3: array element 1 is a number"):
        opened(path)
    path.write_text('[\n  {"a": 1},\n  {"a": tru}\n]')
    with pytest.raises(DatasetError, match="data.json line 3: invalid JSON"):
        opened(path)
    path.write_text('{\n  "rows": []\n}')
    with pytest.raises(DatasetError, match="one JSON object, not rows"):
        opened(path)


def test_unreadable_binary_files(tmp_path: Path) -> None:
    for name in ("bad.parquet", "bad.arrow", "bad.jsonl.gz"):
        (tmp_path / name).write_bytes(b"\x00\x01 not really " + name.encode())
        with pytest.raises(DatasetError, match=name.replace(".", r"\.") + ": not a readable"):
            opened(tmp_path / name)
    (tmp_path / "latin.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n')
    with pytest.raises(DatasetError, match="latin.jsonl line 2: not valid UTF-8"):
        opened(tmp_path / "latin.jsonl")


def test_hub_id_offline_error(tmp_path: Path) -> None:
    """Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME on import."""
    code = (
        "from ches_filter.data.sources import open_source, SourceSpec\n"
        "from ches_filter.errors import DatasetError\n"
        "try:\n"
        "    open_source(SourceSpec('someone/no-such-dataset'))\n"
        "except DatasetError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "'someone/no-such-dataset' is not a local path and could not be reached offline" in (
        done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_hh_real_file_source() -> None:
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} is absent (the shared HH-RLHF test split; see shared/data/README)")
    source = opened(HH_FILE)
    assert source.columns() == ["chosen", "rejected"]
    assert sum(1 for _ in source) == 2312


class _Stream(RowSource):
    """A source without a stored schema that can only be streamed (like a hub dataset)."""

    def __init__(self, rows: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(SourceSpec("stream"), description="a stream", split="train", **kwargs)
        self.rows = rows

    def _rows(self):  # type: ignore[no-untyped-def]
        return iter(self.rows)

    def _compute_fingerprint(self) -> str:
        return "stream"


def test_a_stream_is_typed_from_its_first_rows_and_a_later_misfit_stops_by_name(
    tmp_path: Path,
) -> None:
    from ches_filter.data.shards import ShardWriter, output_schema, prepare_output_dir

    rows: list[dict[str, Any]] = [{"n": i, "note": None} for i in range(1200)]
    rows[1100]["note"] = "typed by the rows scanned while it was null"
    rows[1150]["n"] = 7.5
    source = _Stream(rows)
    assert source.arrow_schema() == pa.schema([("n", pa.int64()), ("note", pa.string())])
    prepare_output_dir(tmp_path / "out", overwrite=False)
    schema = output_schema(source.arrow_schema())
    writer = ShardWriter(tmp_path / "out", split="train", schema=schema)
    with pytest.raises(DatasetError) as caught:
        for row_id, row in source:
            writer.write_rows([{**row, "row_id": row_id, "pair_id": "p", "status": "ok"}])
        writer.close()
    assert caught.value.message.startswith(
        "row_id 1150: field 'n' holds a float 7.5, which a column of type int64 can't hold exactly"
    )
    conflict = _Stream([{"x": "a"}, {"x": {"b": 1}}])
    with pytest.raises(DatasetError, match="a stream: field 'x' is a string on row_id 0 and an"):
        conflict.arrow_schema()
    assert _Stream([{"x": "a"}, {"x": {"b": 1}}], keep_json_columns=True).json_columns() == ["x"]


def test_a_long_key_is_cut_in_the_message(tmp_path: Path) -> None:
    key = "k" * 5000
    message = conflict(tmp_path, json.dumps({key: 1}) + "\n" + json.dumps({key: "1"}) + "\n")
    assert len(message) < 300 and "k" * 119 + "…" in message
