"""``ches filter DATASET -o OUT``: score first, once, then filter (defect 3.1), and the same from
Python with plain strings for paths (defect 3.7)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import ches_filter.pipeline as pipeline
from ches_filter.cli.app import app
from ches_filter.filtering import filter_dataset, filter_scores
from ches_filter.selection import Rule

EXAMPLE = Path(pipeline.__file__).parent / "examples" / "preference_pairs.jsonl"
ROWS = 16  # 14 ok, one identical, one empty response (docs/scores.md's demo)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def model_args(tiny_llama_dir: Path) -> list[str]:
    return ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"]


def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the dataset was scored again")

    monkeypatch.setattr(pipeline, "load_model", refuse)


def test_filter_a_dataset_into_a_fresh_folder_scores_once(tiny_llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "kept"
    loads = []
    real_load = pipeline.load_model
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    result = invoke("filter", EXAMPLE, "--top-k", "3", "-o", out, *model_args(tiny_llama_dir))
    assert result.exit_code == 0, result.output
    assert loads == [1]
    assert f"scoring it first into {tmp_path / 'kept.scores'}" in result.stderr
    assert f"kept {ROWS - 3} of {ROWS} rows" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["counts"]["removed_by_rule"] == 3
    assert pq.read_table(out / "data").num_rows == ROWS - 3
    assert json.loads((tmp_path / "kept.scores" / "manifest.json").read_text())["kind"] == "scores"

    # Another rule into the same folders: the scores are reused, the model is not loaded.
    no_model(monkeypatch)
    before = (tmp_path / "kept.scores" / "manifest.json").read_bytes()
    again = invoke("filter", EXAMPLE, "--top-k", "5", "-o", out, "--overwrite", *model_args(tiny_llama_dir))
    assert again.exit_code == 0, again.output
    assert "reusing the scores" in again.stderr
    assert f"kept {ROWS - 5} of {ROWS} rows" in again.stdout
    assert (tmp_path / "kept.scores" / "manifest.json").read_bytes() == before

    # Other scoring options: those scores are not these; --overwrite rescores, nothing else does.
    other = invoke("filter", EXAMPLE, "--top-k", "5", "-o", tmp_path / "other",
                   "--scores-output", tmp_path / "kept.scores", "--max-length", "40",
                   *model_args(tiny_llama_dir))
    assert other.exit_code == 2
    assert "holds scores of another input, model or options" in other.stderr
    assert not (tmp_path / "other").exists()


def test_filter_a_dataset_with_overwrite_rescores_other_scores(tiny_llama_dir, tmp_path):
    scores = tmp_path / "s"
    first = invoke("filter", EXAMPLE, "--top-k", "1", "-o", tmp_path / "a", "--scores-output", scores,
                   *model_args(tiny_llama_dir))
    assert first.exit_code == 0, first.output
    second = invoke("filter", EXAMPLE, "--top-k", "1", "-o", tmp_path / "b", "--scores-output", scores,
                    "--max-length", "40", "--overwrite", *model_args(tiny_llama_dir))
    assert second.exit_code == 0, second.output
    manifest = json.loads((scores / "manifest.json").read_text())
    assert manifest["options"]["max_length"] == 40


def test_filter_dataset_takes_string_paths_from_python(tiny_llama_dir, tmp_path):
    result = filter_dataset(
        str(EXAMPLE), output=str(tmp_path / "kept"), rule=Rule("top_k", 2),
        scores_output=str(tmp_path / "scores"), removed=str(tmp_path / "removed"), report=False,
        scoring={"model": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"},
    )
    assert result.removed_output == tmp_path / "removed"
    kept = pq.read_table(tmp_path / "kept" / "data").to_pylist()
    removed = pq.read_table(tmp_path / "removed" / "data").to_pylist()
    assert len(kept) == ROWS - 2 and len(removed) == 2
    source = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert sorted(map(key, kept + removed)) == sorted(map(key, source))

    # filter_scores as well, with the scores just made and str paths everywhere
    again = filter_scores(str(tmp_path / "scores"), output=str(tmp_path / "k2"), rule=Rule("top_k", 1),
                          removed=str(tmp_path / "r2"), report=False)
    assert again.counts["removed"] == 1 and (tmp_path / "r2" / "manifest.json").is_file()
