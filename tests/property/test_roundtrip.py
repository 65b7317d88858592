"""Every value of every input row comes out of ``ches score`` and ``ches filter`` unchanged.

Hypothesis writes the same random rows as JSON lines, JSON, Parquet and CSV: fields whose
numbers mix integers and floats, objects (also inside lists) whose keys vary from row to row,
fields that are absent from most rows or first appear late, nulls, lists, and text with astral
characters and NUL. Each file is scored with the tiny random Llama (loaded once), the scores are
filtered (``--top-k 1`` with the removed rows kept apart), and each output is compared with the
input as this test reads it itself (``json.loads`` per line, the ``csv`` module, Parquet's own
rows), value by value.

The plain tests below check the cases the issue names: a float after 1,100 integers, a nested
key first seen on row 1,500, a column first seen on row 1,200, and a field that no column type
can hold (a string in one row, an object in another), which stops before any model is loaded.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ches_filter.pipeline as pipeline
from ches_filter.cli.app import app
from ches_filter.data.shards import SCORE_COLUMNS
from ches_filter.filtering import filter_scores
from ches_filter.selection import Rule

# --------------------------------------------------------------------------- comparison


def same(given: Any, written: Any, path: str = "row") -> None:
    """``written`` (read back from Parquet) holds exactly the value ``given`` (the input)."""
    if given is None:
        assert written is None, (path, given, written)
    elif isinstance(given, dict):
        assert isinstance(written, dict), (path, given, written)
        for key, value in given.items():
            assert key in written, (path, key)
            same(value, written[key], f"{path}.{key}")
        # One Parquet column has one set of keys: a key a row lacks comes back as null.
        for key in written.keys() - given.keys():
            assert written[key] is None or _all_null(written[key]), (path, key, written[key])
    elif isinstance(given, list):
        assert isinstance(written, list) and len(written) == len(given), (path, given, written)
        for index, (a, b) in enumerate(zip(given, written, strict=True)):
            same(a, b, f"{path}[{index}]")
    elif isinstance(given, bool):
        assert written is given, (path, given, written)
    elif isinstance(given, int):
        # An integer in a column that also holds floats is widened to float: 7 == 7.0 is the
        # same value, and the float must be exactly that integer (no rounding above 2**53).
        assert type(written) in (int, float) and written == given, (path, given, written)
        assert isinstance(written, int) or int(written) == given, (path, given, written)
    elif isinstance(given, float):
        # repr tells -0.0 from 0.0 and every other pair of distinct doubles apart
        assert isinstance(written, float) and repr(written) == repr(given), (path, given, written)
    else:
        assert type(written) is type(given) and written == given, (path, given, written)


def _all_null(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(map(_all_null, value.values())))


def same_rows(given: list[dict[str, Any]], written: list[dict[str, Any]]) -> None:
    assert len(written) == len(given)
    for index, (row, out) in enumerate(zip(given, written, strict=True)):
        original = {k: v for k, v in out.items() if k not in SCORE_COLUMNS}
        for key in original.keys() - row.keys():  # a column this row lacks
            assert original[key] is None, (index, key, original[key])
        same(row, {k: original.get(k) for k in row}, f"row {index}")


def as_cell(value: Any) -> str:
    """The text a CSV cell holds for a value: what this test writes and what must come back."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- rows

text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # any code point but surrogates: astral ones, NUL …
        st.sampled_from(["\x00", "😀", "𝄞", "é", "\n", '"', ",", "\r"]),
    ),
    max_size=6,
)
keys = st.sampled_from(["a", "name", "é", "k 1", "😀", "content"])
shapes = st.recursive(
    st.sampled_from(["number", "text", "bool", "null"]),
    lambda inner: st.one_of(
        st.tuples(st.just("list"), inner),
        st.tuples(st.just("object"), st.dictionaries(keys, inner, min_size=1, max_size=3)),
    ),
    max_leaves=5,
)


def values(shape: Any) -> st.SearchStrategy[Any]:
    """Values of one type family (so that a lossless column type exists), or null."""
    if shape == "number":
        found = st.one_of(
            st.integers(min_value=-(2**53), max_value=2**53),
            st.floats(allow_nan=False, allow_infinity=False),
        )
    elif shape == "text":
        found = text
    elif shape == "bool":
        found = st.booleans()
    elif shape == "null":
        return st.none()
    elif shape[0] == "list":
        found = st.lists(values(shape[1]), max_size=3)
    else:  # an object holding a varying, non-empty subset of its keys
        fields = shape[1]
        found = st.lists(st.sampled_from(sorted(fields)), min_size=1, unique=True).flatmap(
            lambda chosen: st.fixed_dictionaries({k: values(fields[k]) for k in chosen})
        )
    return st.one_of(st.none(), found)


@st.composite
def datasets(draw: st.DrawFn) -> list[dict[str, Any]]:
    columns = draw(st.dictionaries(st.sampled_from(["x_one", "x_two", "x_three"]), shapes, max_size=3))
    count = draw(st.integers(min_value=1, max_value=5))
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {
            "prompt": draw(st.text(alphabet="abc 😀", min_size=1, max_size=5)),
            "chosen": draw(st.text(alphabet="xyz\x00", max_size=4)),
            "rejected": draw(st.text(alphabet="xyzé", max_size=4)),
        }
        for name, shape in columns.items():
            if draw(st.booleans()):  # absent from some rows: sparse, or first seen late
                row[name] = draw(values(shape))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def score(tiny_llama_dir, tiny_llama) -> Iterator[Any]:
    """score_dataset on the tiny Llama, loaded once: each run gets the session's model."""
    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "load_model", lambda spec, log=None: tiny_llama)

    def run(dataset: Path, out: Path, **kwargs: Any) -> Any:
        return pipeline.score_dataset(
            str(dataset), output=out, model=str(tiny_llama_dir), device="cpu", dtype="float32",
            **kwargs,
        )  # fmt: skip

    yield run
    patch.undo()


def read_output(folder: Path) -> list[dict[str, Any]]:
    shards = sorted((folder / "data").glob("*.parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


def scored_and_filtered(score: Any, dataset: Path, work: Path, **kwargs: Any) -> list[list[dict]]:
    """The rows of ``ches score``, and of ``ches filter`` kept ∪ removed, in row_id order."""
    score(dataset, work / "scores", **kwargs)
    filter_scores(
        work / "scores", output=work / "kept", removed=work / "removed",
        rule=Rule("top_k", 1), keep_scores=True, report=False,
    )  # fmt: skip
    filtered = sorted(read_output(work / "kept") + read_output(work / "removed"), key=_row_id)
    return [read_output(work / "scores"), filtered]


def _row_id(row: dict[str, Any]) -> int:
    return row["row_id"]


def decoded(rows: list[dict[str, Any]], json_columns: list[str]) -> list[dict[str, Any]]:
    return [
        {k: json.loads(v) if k in json_columns and v is not None else v for k, v in row.items()}
        for row in rows
    ]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows=datasets(), anything=st.lists(st.one_of(st.none(), st.integers(), text,
                                                    st.lists(st.integers(), max_size=2)),
                                          min_size=5, max_size=5))  # fmt: skip
def test_every_value_comes_back_from_every_format(score, rows, anything):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        # JSON lines, with one more column of any JSON values at all, kept as JSON text when
        # no column type holds them (--keep-json-columns).
        mixed = [{**row, "x_any": anything[i]} for i, row in enumerate(rows)]
        path = work / "rows.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mixed), "utf-8")
        given_rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        outputs = scored_and_filtered(score, path, work / "jsonl", keep_json_columns=True)
        stored = json.loads((work / "jsonl" / "scores" / "manifest.json").read_text())
        for written in outputs:
            same_rows(given_rows, decoded(written, stored["input"]["json_columns"]))

        # JSON (an array), the same rows without that column: no JSON text anywhere.
        path = work / "rows.json"
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), "utf-8")
        given_rows = json.loads(path.read_text("utf-8"))
        for written in scored_and_filtered(score, path, work / "json"):
            same_rows(given_rows, written)

        # Parquet: its stored schema is kept, so every value comes back with its very type.
        path = work / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        given_rows = pq.read_table(path).to_pylist()
        for written in scored_and_filtered(score, path, work / "parquet"):
            assert written[0].keys() - set(SCORE_COLUMNS) == given_rows[0].keys()
            same_rows(given_rows, written)
        assert pq.read_schema(work / "parquet" / "kept" / "data" / "train-00000-of-00001.parquet")\
            .field("prompt") == pq.read_schema(path).field("prompt")

        # CSV: a cell's value is its text; what comes back must print as the very same text.
        names = list(dict.fromkeys(k for row in rows for k in row))
        path = work / "rows.csv"
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            for row in rows:
                writer.writerow([as_cell(row.get(name)) for name in names])
        with open(path, encoding="utf-8", newline="") as handle:
            cells = list(csv.DictReader(handle))
        for written in scored_and_filtered(score, path, work / "csv"):
            assert [{n: as_cell(r[n]) for n in names} for r in written] == cells


# --------------------------------------------------------------------------- the named cases


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
    return path


def test_late_floats_keys_and_columns_past_a_thousand_rows(score, tmp_path):
    """A float after 1,100 integers, a message key first seen on row 1,500, a column on 1,200."""
    rows: list[dict[str, Any]] = []
    for i in range(1600):
        row: dict[str, Any] = {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Yo"}],  # identical: no model run needed
            "rejected": [{"role": "assistant", "content": "Yo"}],
            "score": 7.5 if i == 1100 else i,
        }
        if i == 1499:  # row 1,500 (line 1,500)
            row["chosen"] = [{"role": "assistant", "content": "Yo", "name": "bot"}]
        if i >= 1199:
            row["source"] = f"late {i}"
        rows.append(row)
    path = write_jsonl(tmp_path / "late.jsonl", rows)
    result = score(path, tmp_path / "out")
    out = read_output(tmp_path / "out")
    assert out[1100]["score"] == 7.5 and out[1099]["score"] == 1099.0  # not truncated to 7
    assert out[1499]["chosen"] == [{"role": "assistant", "content": "Yo", "name": "bot"}]
    assert out[0]["chosen"] == [{"role": "assistant", "content": "Yo", "name": None}]
    assert [r["source"] for r in out[1198:1201]] == [None, "late 1199", "late 1200"]
    assert result.manifest["input"]["columns"] == ["prompt", "chosen", "rejected", "score", "source"]
    same_rows([json.loads(line) for line in path.read_text("utf-8").splitlines()], out)


def test_a_field_without_a_lossless_type_stops_before_the_model(monkeypatch, tmp_path):
    loads: list[Any] = []
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: loads.append(a) or 1 / 0)
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "meta": {"src": "web"}}] * 1200
    rows = rows + [{"prompt": "p", "chosen": "c", "rejected": "r", "meta": {"src": {"url": "u"}}}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = CliRunner().invoke(app, ["score", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())  # rich may wrap the line
    assert "field 'meta.src' is a string on line 1 and an object on line 1201" in message
    assert "--keep-json-columns" in message
    assert loads == []  # no model was loaded
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_json_text_columns_are_read_back_as_values_by_the_report(score, tmp_path):
    from ches_filter.filtering import ScoreFolder
    from ches_filter.report import build_report

    rows = [
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Sea?", "chosen": {"text": "Blue."}, "rejected": "Red."},  # invalid_field
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = score(path, tmp_path / "out", keep_json_columns=True)
    assert result.manifest["input"]["json_columns"] == ["chosen"]
    assert [r["chosen"] for r in read_output(tmp_path / "out")] == ['"Blue."', '{"text": "Blue."}']
    (top,) = build_report(ScoreFolder.open(tmp_path / "out"), top=5)["top"]
    assert top["text"] == {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green.", "source": "layout"}
