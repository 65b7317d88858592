"""No score reads a position past the model's context (#13, item 4).

A copy of the tiny Llama with ``max_position_embeddings`` 48 stands for a model whose context a
long pair overruns (the issue's 8,905 tokens against 8,192).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ches_filter import pipeline
from ches_filter.errors import OptionError
from ches_filter.pipeline import plan_scoring, run_scoring
from ches_filter.tokenization import PairTokenizer, TokenizationOptions

CONTEXT = 48


@pytest.fixture(scope="module")
def short_context_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("short-context") / "model"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long-pairs") / "pairs.jsonl"
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "Go away."},  # short: ok
        {"prompt": "Tell me a story.", "chosen": "Once upon a time " * 40, "rejected": "No."},  # long
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _rows(out: Path) -> list[dict]:
    return pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()


def test_the_default_limit_is_the_models_context_and_long_pairs_are_flagged(
    short_context_dir, pairs_file, tmp_path
) -> None:
    plan = plan_scoring(pairs_file, output=tmp_path / "out", model=str(short_context_dir), device="cpu",
                        dtype="float32")
    result = run_scoring(plan)
    short, long = _rows(tmp_path / "out")
    assert short["status"] == "ok" and short["truncated"] is False
    assert long["status"] == "ok" and long["truncated"] is True
    # positions read: the prompt and the cut response fill at most the context
    assert long["prompt_tokens"] + long["chosen_tokens"] <= CONTEXT
    assert long["prompt_tokens"] + long["chosen_tokens"] == CONTEXT  # the chosen side was cut
    options = result.manifest["options"]
    assert options["max_length"] == CONTEXT and options["max_length_from"] == "model context"
    assert options["too_long"] == "truncate"
    assert result.manifest["model"]["context"] == CONTEXT
    assert result.manifest["counts"]["truncated"] == 1


def test_too_long_skip_keeps_the_row_unscored_with_a_reason(short_context_dir, pairs_file, tmp_path) -> None:
    plan = plan_scoring(pairs_file, output=tmp_path / "out", model=str(short_context_dir), device="cpu",
                        dtype="float32", too_long="skip")
    result = run_scoring(plan)
    short, long = _rows(tmp_path / "out")
    assert short["status"] == "ok"
    assert long["status"] == "too_long" and long["ches"] is None and long["ln_ches"] is None
    assert f"the model's context of {CONTEXT} tokens" in long["reason"]
    assert long["chosen"] == "Once upon a time " * 40  # the row itself is kept whole
    assert result.manifest["options"]["too_long"] == "skip"
    assert result.manifest["counts"]["by_status"] == {"ok": 1, "too_long": 1}


def test_max_length_above_the_context_is_refused_before_the_model_loads(
    short_context_dir, pairs_file, tmp_path, monkeypatch
) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_model", no_load)
    with pytest.raises(OptionError, match=rf"--max-length {CONTEXT + 1} is above the model's context of {CONTEXT}"):
        plan_scoring(pairs_file, output=tmp_path / "out", model=str(short_context_dir), max_length=CONTEXT + 1)
    assert not (tmp_path / "out").exists()
    plan_scoring(pairs_file, output=tmp_path / "out", model=str(short_context_dir), max_length=CONTEXT)


def test_max_length_above_the_context_is_refused_after_the_load_when_the_config_is_unreadable(
    short_context_dir, pairs_file, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(pipeline, "config_context", lambda resolved, spec: None)  # e.g. a GGUF not converted yet
    plan = plan_scoring(pairs_file, output=tmp_path / "out", model=str(short_context_dir), device="cpu",
                        max_length=CONTEXT + 1)
    with pytest.raises(OptionError, match="above the model's context"):
        run_scoring(plan)


def test_the_limit_by_convention_and_context(tiny_llama) -> None:
    tokenizer = tiny_llama.tokenizer
    assert PairTokenizer(tokenizer, TokenizationOptions(context=CONTEXT)).max_length == CONTEXT
    assert PairTokenizer(tokenizer, TokenizationOptions(max_length=20, context=CONTEXT)).max_length == 20
    unknown = PairTokenizer(tokenizer, TokenizationOptions())  # a config without a context: no limit
    assert unknown.max_length is None and unknown.max_length_from.startswith("none")
    official = TokenizationOptions(convention="official", context=CONTEXT)
    assert PairTokenizer(tokenizer, official).max_length == CONTEXT  # the script's 512, within the context
    assert PairTokenizer(tokenizer, TokenizationOptions(convention="official", context=4096)).max_length == 512
    with pytest.raises(OptionError, match="--too-long must be one of truncate, skip"):
        TokenizationOptions(too_long="drop")


def test_the_cli_refuses_max_length_above_the_context_and_takes_too_long(
    short_context_dir, pairs_file, tmp_path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from ches_filter.cli.app import app

    model = ["--model", str(short_context_dir), "--device", "cpu", "--dtype", "float32"]
    refused = CliRunner().invoke(app, ["score", str(pairs_file), "-o", str(tmp_path / "a"), *model,
                                       "--max-length", "1000"])
    assert refused.exit_code == 2 and "above the model's context of 48 tokens" in refused.stderr
    assert "Traceback" not in refused.stderr
    bad = CliRunner().invoke(app, ["score", str(pairs_file), "-o", str(tmp_path / "b"), *model,
                                   "--too-long", "drop"])
    assert bad.exit_code == 2 and "--too-long must be one of truncate, skip" in bad.stderr
    skipped = CliRunner().invoke(app, ["score", str(pairs_file), "-o", str(tmp_path / "c"), *model,
                                       "--too-long", "skip", "--json"])
    assert skipped.exit_code == 0, skipped.stderr
    assert json.loads(skipped.stdout)["by_status"] == {"ok": 1, "too_long": 1}


def test_filter_passes_too_long_to_the_scoring(short_context_dir, pairs_file, tmp_path) -> None:
    from typer.testing import CliRunner

    from ches_filter.cli.app import app

    result = CliRunner().invoke(app, ["filter", str(pairs_file), "-o", str(tmp_path / "kept"), "--top-k", "1",
                                      "--model", str(short_context_dir), "--device", "cpu", "--too-long", "skip",
                                      "--scores-output", str(tmp_path / "scores")])
    assert result.exit_code == 0, result.stderr
    statuses = [row["status"] for row in _rows(tmp_path / "scores")]
    assert statuses == ["ok", "too_long"]


def test_the_context_is_read_from_config_json_without_weights(tmp_path) -> None:
    from transformers import Gemma3Config, MambaConfig

    from ches_filter.model.load import ModelSpec, ResolvedModel, config_context, context_length

    folder = tmp_path / "multimodal"
    # a multimodal checkpoint: the context is its text config's, not the wrapper's
    Gemma3Config(text_config={"max_position_embeddings": 777, "vocab_size": 64}).save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))  # a config alone: nothing to load
    resolved = ResolvedModel(model_id=str(folder), kind="local", local_path=folder)
    assert config_context(resolved, ModelSpec()) == 777
    assert context_length(MambaConfig()) is None  # a model with no position limit: no context
    unreadable = ResolvedModel(model_id="x", kind="local", local_path=tmp_path / "nothing-here")
    assert config_context(unreadable, ModelSpec()) is None  # known only after the load
