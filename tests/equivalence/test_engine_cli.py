"""``ches score --engine``: every layout writes the same scores; the manifest says which ran."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ches_filter.cli.app import app

STANDARD = Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "standard.jsonl"
SCORES = ("ches", "ln_ches", "last_hidden_inner", "dot_chosen_rejected", "sq_norm_chosen")


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


def test_every_engine_writes_the_same_scores(tiny_llama_dir, tmp_path):
    baseline, manifest, _ = score(tmp_path, tiny_llama_dir, "two_sequences")
    assert manifest["engine"]["mode"] == "two_sequences"
    assert manifest["options"]["engine"] == "two_sequences"
    for engine, mode in (("prefix-shared", "prefix_shared"), ("packed", "packed"), ("auto", "packed")):
        rows, manifest, stderr = score(tmp_path, tiny_llama_dir, engine)
        assert manifest["engine"]["mode"] == mode
        assert manifest["engine"]["real_tokens"] < manifest["engine"]["pair_tokens"]
        if engine == "auto":
            assert "engine: packed via segments attention" in stderr  # said on stderr
        for got, want in zip(rows, baseline, strict=True):
            assert got["status"] == want["status"]
            if want["status"] != "ok":
                continue
            for name in SCORES:
                if want[name] is not None:
                    scale = max(abs(want["dot_chosen_rejected"]), want["sq_norm_chosen"])
                    tolerance = 1e-4 * (scale if name in ("ches", "dot_chosen_rejected") else abs(want[name]))
                    if name == "ln_ches":
                        n, m = want["chosen_tokens"], want["rejected_tokens"]
                        tolerance = 1e-4 * max(abs(want["dot_chosen_rejected"]) / (n * m),
                                               want["sq_norm_chosen"] / (n * n))  # fmt: skip
                    assert got[name] == pytest.approx(want[name], abs=tolerance), (name, got["row_id"])


def test_unknown_engine_is_an_option_error(tmp_path):
    result = CliRunner().invoke(app, ["score", str(STANDARD), "-o", str(tmp_path / "o"), "--engine", "warp"])
    assert result.exit_code == 2
    assert "--engine must be one of auto, two_sequences, prefix_shared, packed" in result.stderr
    assert not (tmp_path / "o").exists()
