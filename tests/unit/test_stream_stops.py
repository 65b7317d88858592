"""A streamed source that fails mid-run keeps what was scored and says where it stopped (#13, 6).

Local files are validated whole before the model loads; a dataset streamed from the hub can only
show a malformed row when it is reached. The fake source below is such a stream: it yields rows
and raises the DatasetError a bad row would raise at row ``BAD``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ches_filter.errors import DatasetError
from ches_filter.pipeline import plan_scoring, run_scoring

ROWS, BAD = 7, 5


class FailingStream:
    """The plan's source, but iterating it raises at row ``at`` (as a streamed hub dataset would)."""

    def __init__(self, source, at: int) -> None:
        self._source, self._at = source, at

    def __getattr__(self, name):
        return getattr(self._source, name)

    def count(self):
        return None  # a stream can't tell

    def __iter__(self):
        for row_id, row in self._source:
            if row_id == self._at:
                raise DatasetError(f"row {row_id}: field 'chosen' is missing")
            yield row_id, row


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i * 7}."} for i in range(ROWS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _plan(pairs_file, out, tiny_llama_dir):
    return plan_scoring(pairs_file, output=out, model=str(tiny_llama_dir), device="cpu", dtype="float32",
                        window=2, rows_per_shard=3, tokenizer_workers=0)


def test_a_stream_failing_mid_run_keeps_the_scored_rows_unfinished(pairs_file, tmp_path, tiny_llama_dir) -> None:
    out = tmp_path / "out"
    plan = _plan(pairs_file, out, tiny_llama_dir)
    plan = dataclasses.replace(plan, source=FailingStream(plan.source, BAD))
    with pytest.raises(DatasetError) as caught:
        run_scoring(plan)
    message = str(caught.value)
    assert message.startswith(f"row {BAD}: field 'chosen' is missing\n")
    assert f"the {BAD:,} rows before it (row_id 0 to {BAD - 1}, the last row written)" in message
    assert str(out / "data") in message and ".tmp and no manifest" in message

    # nothing looks finished: no manifest, no shard with a final name; the rows are in .tmp files
    assert not (out / "manifest.json").exists()
    assert list((out / "data").glob("*.parquet")) == []
    kept = sorted((out / "data").glob("*.tmp"))
    assert len(kept) == 2  # 5 rows at 3 per shard
    assert all(path.name in message for path in kept)
    rows = [row for path in kept for row in pq.read_table(path).to_pylist()]
    assert [row["row_id"] for row in rows] == list(range(BAD))

    # the kept rows are the rows and scores a full run writes for them
    full = run_scoring(_plan(pairs_file, tmp_path / "full", tiny_llama_dir))
    expected = pq.read_table(full.shards).to_pylist()[:BAD]
    for got, want in zip(rows, expected, strict=True):
        assert {k: got[k] for k in ("prompt", "chosen", "rejected", "status")} == {
            k: want[k] for k in ("prompt", "chosen", "rejected", "status")
        }
        # the last window differs (row 4 alone vs with row 5): scores agree within the batching
        # tolerance the engine is held to (docs/scores.md, Numerics: 1e-4 relative in float32)
        assert math.isclose(got["ches"], want["ches"], rel_tol=1e-4, abs_tol=1e-4)


def test_a_stream_failing_at_its_first_row_says_nothing_was_scored(pairs_file, tmp_path, tiny_llama_dir) -> None:
    plan = _plan(pairs_file, tmp_path / "out", tiny_llama_dir)
    plan = dataclasses.replace(plan, source=FailingStream(plan.source, 0))
    with pytest.raises(DatasetError, match="scoring stopped there; no row before it was scored"):
        run_scoring(plan)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_cli_exits_2_naming_the_row_and_what_was_kept(pairs_file, tmp_path, tiny_llama_dir, monkeypatch) -> None:
    from typer.testing import CliRunner

    from ches_filter import pipeline
    from ches_filter.cli.app import app

    real_open = pipeline.open_source
    monkeypatch.setattr(pipeline, "open_source", lambda *a, **k: FailingStream(real_open(*a, **k), BAD))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["score", str(pairs_file), "-o", str(out), "--model", str(tiny_llama_dir),
                                      "--device", "cpu", "--dtype", "float32", "--rows-per-shard", "3"])
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"row {BAD}: field 'chosen' is missing" in result.stderr
    assert f"the {BAD} rows before it (row_id 0 to {BAD - 1}, the last row written)" in result.stderr
    assert not (out / "manifest.json").exists() and len(list((out / "data").glob("*.tmp"))) == 2
