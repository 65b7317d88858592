"""``ches score --engine``: every layout writes the reference's scores; the manifest says which ran."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
from score_fixtures import assert_scores_close
from test_batched_vs_reference import reference_of, tokenize
from typer.testing import CliRunner

from ches_filter.cli.app import app
from ches_filter.data.layouts import LayoutOptions, detect_layout

STANDARD = Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "standard.jsonl"


def score(tmp_path: Path, model_dir: Path, engine: str) -> tuple[list[dict], dict, str]:
    out = tmp_path / engine
    result = CliRunner().invoke(
        app,
        ["score", str(STANDARD), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
         "--dtype", "float32", "--engine", engine, "--max-batch-tokens", "64"],
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    return pq.read_table(out / "data").to_pylist(), manifest, result.stderr


def test_every_engine_writes_the_reference_scores(tiny_llama_dir, tiny_llama, tmp_path):
    rows = [json.loads(line) for line in STANDARD.read_text().splitlines()]
    layout = detect_layout(list(rows[0]), rows, LayoutOptions())
    for engine, mode in (("two_sequences", "two_sequences"), ("prefix-shared", "prefix_shared"),
                         ("packed", "packed"), ("auto", "packed")):  # fmt: skip
        written, manifest, stderr = score(tmp_path, tiny_llama_dir, engine)
        assert manifest["engine"]["mode"] == mode
        assert manifest["options"]["engine"] == engine.replace("-", "_")  # as asked
        if engine != "two_sequences":
            assert manifest["engine"]["real_tokens"] < manifest["engine"]["pair_tokens"]
        if engine == "auto":
            assert "engine: packed via segments attention" in stderr  # said on stderr
        ok = [row for row in written if row["status"] == "ok"]
        assert [row["row_id"] for row in ok] == [0]  # the fixture's one scorable row
        pairs = [layout.extract(row["row_id"], rows[row["row_id"]]) for row in ok]
        reference = reference_of(tiny_llama, tokenize(tiny_llama, pairs))
        for row in ok:
            assert_scores_close(SimpleNamespace(**row), *reference[row["row_id"]], where=f"{engine}, row {row['row_id']}")


def test_unknown_engine_is_an_option_error(tmp_path):
    result = CliRunner().invoke(app, ["score", str(STANDARD), "-o", str(tmp_path / "o"), "--engine", "warp"])
    assert result.exit_code == 2
    assert "--engine must be one of auto, two_sequences, prefix_shared, packed" in result.stderr
    assert not (tmp_path / "o").exists()
