"""``score_dataset`` / ``score_pairs`` end to end on the tiny random Llama (SmolLM2's tokenizer).

Every input row comes out exactly once, in source order, with its original columns unchanged,
a status, a reason where it was not scored and null scores where a score would be meaningless.
The real SmolLM2 checks the numbers on a few HH-RLHF pairs against ``reference.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ches_filter.data.layouts import LayoutOptions, detect_layout
from ches_filter.data.shards import SCORE_COLUMNS
from ches_filter.errors import ChesError, OptionError, OutputError
from ches_filter.model.runner import HiddenStateRunner
from ches_filter.pipeline import PairScorer, ScoreOptions, pair_id, score_dataset, score_pairs
from ches_filter.records import PreferencePair, Status, TokenizedPair
from ches_filter.reference import reference_scores
from ches_filter.tokenization import PairTokenizer, TokenizationOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"
SCORES = ("ches", "ln_ches", "last_hidden_inner", "edit_distance", "dot_chosen_rejected",
          "sq_norm_chosen", "sq_norm_rejected")  # fmt: skip
MANIFEST_KEYS = {"kind", "spec_version", "convention", "tool", "command", "created_at", "model",
                 "input", "options", "counts", "engine", "timing", "shards", "schema"}  # fmt: skip
REL = 1e-4


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def output_rows(out: Path) -> list[dict[str, Any]]:
    shards = sorted((out / "data").glob("*.parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


@pytest.fixture(scope="module")
def score(tiny_llama_dir):
    """score_dataset with the tiny Llama on the CPU in float32 (what the reference uses)."""

    def run(dataset, out, **kwargs):
        kwargs = {"model": str(tiny_llama_dir), "device": "cpu", "dtype": "float32", **kwargs}
        return score_dataset(str(dataset), output=out, **kwargs)

    return run


def assert_unscored(row: dict[str, Any], status: Status, *words: str) -> None:
    assert row["status"] == status.value, row
    for word in words:
        assert word in row["reason"], row["reason"]
    for name in ("ches", "ln_ches", "last_hidden_inner", "dot_chosen_rejected"):
        assert row[name] is None, (name, row)


def assert_scored(row: dict[str, Any]) -> None:
    assert row["status"] == "ok" and row["reason"] is None, row
    for name in SCORES:
        assert isinstance(row[name], float), (name, row)
    assert row["chosen_tokens"] >= 1 and row["rejected_tokens"] >= 1 and row["prompt_tokens"] >= 1
    assert row["truncated"] is False


# -- every layout, from its fixture ------------------------------------------------------------

LAYOUT_CASES = {
    "standard": ({}, ["ok", "identical", "invalid_field", "empty_response", "empty_prompt"]),
    "alpaca": ({}, ["ok", "ok", "empty_response"]),
    "conversational": ({}, ["ok", "ok", "invalid_field", "empty_prompt"]),
    "prompt_in_messages": ({}, ["ok", "ok", "ambiguous_prompt"]),
    "implicit_messages": ({}, ["ok", "ambiguous_prompt", "invalid_field"]),
    "hh_rlhf": ({}, ["ok", "ok", "ambiguous_prompt", "empty_response"]),
    "sharegpt": ({}, ["ok", "empty_response", "ok"]),
    "llamafactory_ranking": ({}, ["ok", "ok", "invalid_field", "empty_response"]),
    "chosen_messages": ({}, ["ok", "ok", "unsupported_content", "ambiguous_prompt"]),
    "multimodal": ({}, ["ok", "unsupported_content", "unsupported_content"]),
    "response_pair": (
        {"chosen_field": "response.0", "rejected_field": "response.1"},
        ["ok", "ok", "invalid_field"],
    ),
    "alpacafarm": ({}, ["ok", "ok", "contradictory_label"]),
    "pku_saferlhf": ({}, ["ok", "ok", "contradictory_label"]),
    "shp": ({}, ["ok", "ok", "contradictory_label"]),
    "nested": (
        {
            "prompt_field": "data.question",
            "chosen_field": "data.good",
            "rejected_field": "data.bad",
        },
        ["ok", "invalid_field"],
    ),
}


def without_added_nulls(written: Any, given: Any) -> Any:
    """``written`` less the null keys ``given`` lacks, at every depth: one Parquet struct has one
    set of keys, so a message part without ``text`` (beside parts with it) comes back with
    ``text: null`` (docs/formats.md, "Every value comes back unchanged")."""
    if isinstance(written, dict) and isinstance(given, dict):
        return {
            k: without_added_nulls(v, given.get(k))
            for k, v in written.items()
            if k in given or v is not None
        }
    if isinstance(written, list) and isinstance(given, list) and len(written) == len(given):
        return [without_added_nulls(w, g) for w, g in zip(written, given, strict=True)]
    return written


@pytest.mark.parametrize("fixture", sorted(LAYOUT_CASES))
def test_every_layout_fixture(score, tmp_path, fixture):
    options, statuses = LAYOUT_CASES[fixture]
    path = FIXTURES / f"{fixture}.jsonl"
    source_rows = read_jsonl(path)
    result = score(path, tmp_path / "out", **options)
    rows = output_rows(tmp_path / "out")
    assert [r["status"] for r in rows] == statuses
    assert [r["row_id"] for r in rows] == list(range(len(source_rows)))
    columns = list(dict.fromkeys(k for row in source_rows for k in row))
    assert list(rows[0]) == columns + list(SCORE_COLUMNS)
    for original, row in zip(source_rows, rows, strict=True):
        # the original columns, unchanged (message parts with other keys: those keys null)
        assert without_added_nulls({k: row[k] for k in original}, original) == original
        if row["status"] == "ok":
            assert_scored(row)
        elif row["status"] != "identical":
            assert row["reason"] and row["ches"] is None
    assert result.manifest["counts"]["read"] == len(source_rows)


# -- bad rows: a status, a reason, null scores; the run goes on --------------------------------

BAD_ROWS = [
    {"id": 0, "prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."},
    {"id": 1, "prompt": "Say hi.", "chosen": None, "rejected": "hi"},
    {"id": 2, "prompt": "Say hi.", "chosen": "", "rejected": "hi"},
    {"id": 3, "prompt": "Say hi.", "chosen": "hi", "rejected": "  \n\t "},
    {"id": 4, "prompt": "Say hi.", "chosen": "\u200b\u200b", "rejected": "hi"},
    {"id": 5, "prompt": "Say hi.", "chosen": "hi", "rejected": "\ufeff \u2060"},
    {"id": 6, "prompt": "2 + 2 =", "chosen": "4", "rejected": "4"},
    {"id": 7, "prompt": "Tell me a story. " * 30, "chosen": "Once upon a time.", "rejected": "No."},
    {"id": 8, "prompt": "   ", "chosen": "a", "rejected": "b"},
    {"id": 9, "prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Pear."},
]  # fmt: skip


def test_each_bad_row_kind_gets_a_status_and_the_run_goes_on(score, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    result = score(path, tmp_path / "out", max_length=60)
    rows = output_rows(tmp_path / "out")
    assert [r["id"] for r in rows] == [r["row_id"] for r in rows] == list(range(len(BAD_ROWS)))
    assert_scored(rows[0])
    assert_unscored(rows[1], Status.INVALID_FIELD, "'chosen'", "null")
    assert_unscored(rows[2], Status.EMPTY_RESPONSE, "'chosen'", "empty")
    assert_unscored(rows[3], Status.EMPTY_RESPONSE, "'rejected'", "whitespace")
    assert_unscored(rows[4], Status.EMPTY_RESPONSE, "'chosen'")  # zero-width spaces only
    assert_unscored(rows[5], Status.EMPTY_RESPONSE, "'rejected'")  # BOM + word joiner
    identical = rows[6]
    assert identical["status"] == "identical" and "identical" in identical["reason"]
    assert (identical["ches"], identical["ln_ches"], identical["edit_distance"]) == (0.0, 0.0, 0.0)
    assert identical["last_hidden_inner"] is None and identical["dot_chosen_rejected"] is None
    assert_unscored(rows[7], Status.PROMPT_TOO_LONG, "fills --max-length 60")
    assert rows[7]["prompt_tokens"] is None
    assert_unscored(rows[8], Status.EMPTY_PROMPT, "'prompt'")
    assert_scored(rows[9])
    counts = result.manifest["counts"]
    assert counts["read"] == len(BAD_ROWS)
    assert counts["scored"] + counts["unscored"] == len(BAD_ROWS)
    assert sum(counts["by_status"].values()) == len(BAD_ROWS)
    assert counts["by_status"]["empty_response"] == 4


def test_non_string_responses_are_row_problems(score, tmp_path):
    """JSON whose responses are sometimes a number, a list or an object: with
    ``keep_json_columns`` those columns are stored as JSON text and the run goes on."""
    rows = [
        {"prompt": "2 + 2 =", "chosen": "4", "rejected": "5"},
        {"prompt": "2 + 2 =", "chosen": 4, "rejected": "5"},
        {"prompt": "Colours?", "chosen": "red", "rejected": ["blue", "green"]},
        {"prompt": "Colours?", "chosen": {"text": "red"}, "rejected": "blue"},
        {"prompt": "Yes?", "chosen": True, "rejected": "no"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(ChesError, match="field 'chosen' is a string on line 1 and an integer on line 2"):
        score(path, tmp_path / "refused")
    result = score(path, tmp_path / "out", keep_json_columns=True)
    out = output_rows(tmp_path / "out")
    assert [r["status"] for r in out] == ["ok"] + ["invalid_field"] * 4
    assert_unscored(out[1], Status.INVALID_FIELD, "'chosen'", "a number, not a string")
    assert_unscored(out[2], Status.INVALID_FIELD, "'rejected'", "a list")
    assert_unscored(out[3], Status.INVALID_FIELD, "'chosen'", "an object")
    assert_unscored(out[4], Status.INVALID_FIELD, "'chosen'", "a boolean")
    # every value of those columns as its JSON text, strings too: json.loads gives it back
    assert [r["chosen"] for r in out] == ['"4"', "4", '"red"', '{"text": "red"}', "true"]
    assert [json.loads(r["rejected"]) for r in out] == [row["rejected"] for row in rows]
    assert [r["prompt"] for r in out] == [row["prompt"] for row in rows]  # a plain string column
    assert result.manifest["input"]["json_columns"] == ["chosen", "rejected"]


def test_a_non_string_response_past_the_first_thousand_rows(score, tmp_path):
    rows = [{"prompt": "Hi", "chosen": "", "rejected": "Bye."}] * 1200  # never reach the model
    rows = rows + [{"prompt": "2 + 2 =", "chosen": 4, "rejected": "5"}]
    path = write_jsonl(tmp_path / "late.jsonl", rows)
    with pytest.raises(ChesError, match="'chosen' is a string on line 1 and an integer on line 1201"):
        score(path, tmp_path / "refused")
    result = score(path, tmp_path / "out", keep_json_columns=True)
    assert result.manifest["counts"]["by_status"] == {"empty_response": 1200, "invalid_field": 1}
    last = output_rows(tmp_path / "out")[-1]
    assert last["row_id"] == 1200 and last["chosen"] == "4" and last["status"] == "invalid_field"


def test_a_field_first_seen_past_the_first_thousand_rows_is_written(score, tmp_path):
    rows = [{"prompt": "Hi", "chosen": "", "rejected": "Bye."}] * 1001
    rows = rows + [{"prompt": "Hi", "chosen": "", "rejected": "Bye.", "source": "late"}] * 2
    path = write_jsonl(tmp_path / "late_field.jsonl", rows)
    result = score(path, tmp_path / "out")
    out = output_rows(tmp_path / "out")
    assert [row["source"] for row in out] == [None] * 1001 + ["late"] * 2
    assert result.manifest["input"]["columns"] == ["prompt", "chosen", "rejected", "source"]


def test_truncation_collapse_and_truncated_flag(score, tmp_path):
    """Responses that differ only past --max-length: truncated_identical, flagged, CHES 0."""
    rows = [
        {"prompt": "Count.", "chosen": "one two three four five six", "rejected": "one two three four five seven"},
        {"prompt": "Count.", "chosen": "one", "rejected": "two"},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    probe = score(path, tmp_path / "probe")  # learn the prompt length under the chat template
    prompt_tokens = output_rows(tmp_path / "probe")[0]["prompt_tokens"]
    assert probe.summary["scored"] == 2
    result = score(path, tmp_path / "out", max_length=prompt_tokens + 3)
    out = output_rows(tmp_path / "out")
    assert out[0]["status"] == "truncated_identical" and out[0]["truncated"] is True
    assert out[0]["ches"] == 0.0 and "--max-length" in out[0]["reason"]
    assert out[0]["chosen_tokens"] == out[0]["rejected_tokens"] == 3
    assert out[1]["status"] == "ok" and out[1]["truncated"] is False  # "one<|im_end|>\n" fits
    assert result.manifest["counts"]["truncated"] == 1
    assert result.manifest["options"]["max_length"] == prompt_tokens + 3


def test_contradictory_labels_in_a_pku_file(score, tmp_path):
    base = {
        "prompt": "Is the stove hot?",
        "response_0": "Check the light.",
        "response_1": "Touch it.",
    }
    rows = [
        {**base, "better_response_id": 0, "safer_response_id": 0},
        {**base, "better_response_id": None, "safer_response_id": 0},
        {**base, "better_response_id": 2, "safer_response_id": 0},
        {**base, "better_response_id": 1, "safer_response_id": 0},
    ]
    path = write_jsonl(tmp_path / "pku.jsonl", rows)
    score(path, tmp_path / "out")
    out = output_rows(tmp_path / "out")
    assert [r["status"] for r in out] == ["ok", "contradictory_label", "contradictory_label", "ok"]
    assert_unscored(out[1], Status.CONTRADICTORY_LABEL, "'better_response_id' is null")
    assert_unscored(out[2], Status.CONTRADICTORY_LABEL, "is 2")
    # the chosen side follows the label: rows 0 and 3 swap chosen and rejected
    assert out[0]["ches"] != out[3]["ches"]
    assert out[0]["pair_id"] != out[3]["pair_id"]
    score(path, tmp_path / "safer", label_policy="safer")
    assert [r["status"] for r in output_rows(tmp_path / "safer")] == ["ok"] * 4


# -- the output folder ------------------------------------------------------------------------


def test_output_loads_with_datasets_and_keeps_the_original_columns(score, tmp_path):
    from datasets import load_dataset

    path = FIXTURES / "pku_saferlhf.jsonl"
    source_rows = read_jsonl(path)
    result = score(path, tmp_path / "out")
    assert [p.name for p in result.shards] == ["train-00000-of-00001.parquet"]
    assert result.shards[0] == tmp_path / "out" / "data" / "train-00000-of-00001.parquet"
    ds = load_dataset("parquet", data_dir=str(tmp_path / "out"))["train"]
    assert ds.column_names == list(source_rows[0]) + list(SCORE_COLUMNS)
    assert ds.num_rows == len(source_rows)
    for original, row in zip(source_rows, ds, strict=True):
        assert {k: row[k] for k in original} == original
    # an explicit schema: types do not depend on the values of a shard
    schema = pq.read_schema(result.shards[0])
    assert str(schema.field("ches").type) == "double"
    assert str(schema.field("prompt_tokens").type) == "int32"
    assert str(schema.field("truncated").type) == "bool"
    assert not schema.field("row_id").nullable and not schema.field("status").nullable
    assert result.manifest["schema"]["better_response_id"] == "int64"


def test_manifest(score, tmp_path):
    path = FIXTURES / "standard.jsonl"
    result = score(path, tmp_path / "out", command=["ches", "score", "x"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    assert set(manifest) >= MANIFEST_KEYS
    assert manifest["kind"] == "scores" and manifest["spec_version"] == "1"
    assert manifest["command"] == ["ches", "score", "x"]
    assert manifest["tool"]["name"] == "ches-filter" and manifest["tool"]["version"]
    model = manifest["model"]
    assert model["kind"] == "local" and model["dtype"] == "float32" and model["device"] == "cpu"
    # the limit is the tiny Llama's context (max_position_embeddings 2048 in conftest), #13 item 4
    assert model["chat_template"] is True and model["tokenization"] == "chat template, max length 2048"
    assert model["context"] == 2048 and manifest["options"]["max_length"] == 2048
    assert (
        len(model["tokenizer_fingerprint"]) == 16 and len(model["chat_template_fingerprint"]) == 16
    )
    assert {"revision", "architecture", "hidden_size"} <= set(model)
    assert manifest["input"]["fingerprint"] and manifest["input"]["layout"] == "standard"
    assert manifest["input"]["columns"] == ["prompt", "chosen", "rejected"]
    assert manifest["counts"] == {
        "read": 5, "scored": 1, "unscored": 4, "truncated": 0,
        "by_status": {"empty_prompt": 1, "empty_response": 1, "identical": 1, "invalid_field": 1,
                      "ok": 1},
    }  # fmt: skip
    assert manifest["engine"]["forward_calls"] >= 1 and manifest["engine"]["sequences"] == 2
    assert {"load_s", "scoring_s", "total_s"} <= set(manifest["timing"])
    shard = tmp_path / "out" / "data" / "train-00000-of-00001.parquet"
    assert manifest["shards"] == [{  # each shard with its rows, size and checksum, computed apart
        "path": "data/train-00000-of-00001.parquet", "rows": pq.read_metadata(shard).num_rows,
        "bytes": shard.stat().st_size, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}]
    assert manifest["convention"] == "default"
    # no stray files: shards, manifest, nothing half-written
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
    )
    assert files == ["data", "data/train-00000-of-00001.parquet", "manifest.json"]


def test_pair_id_is_a_stable_content_hash(score, tmp_path):
    rows = [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "Hi", "chosen": "Go away.", "rejected": "Hello!"},
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    ]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    score(path, tmp_path / "one")
    score(path, tmp_path / "two")
    first, second = output_rows(tmp_path / "one"), output_rows(tmp_path / "two")
    ids = [r["pair_id"] for r in first]
    assert ids == [r["pair_id"] for r in second]  # stable across runs
    assert ids[0] == ids[2] != ids[1]  # equal content, equal id; swapped sides, another id
    # the same pair in another layout and file gets the same id
    conversational = [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    ]
    path = write_jsonl(tmp_path / "b.jsonl", conversational)
    score(path, tmp_path / "three")
    assert output_rows(tmp_path / "three")[0]["pair_id"] == ids[0]
    # The same input scores bitwise the same; scored among other pairs (here: with a window
    # prefix computed in a pass of its own), the same pair may differ in float rounding only.
    assert [r["ches"] for r in first] == [r["ches"] for r in second]
    assert first[0]["ches"] == pytest.approx(output_rows(tmp_path / "three")[0]["ches"], rel=1e-5)


def test_non_empty_output_needs_overwrite(score, tmp_path, monkeypatch):
    path = FIXTURES / "standard.jsonl"
    out = tmp_path / "out"
    score(path, out, rows_per_shard=1)
    assert len(list((out / "data").glob("*.parquet"))) == 5

    import ches_filter.pipeline as pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load for an output that can't be written")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "load_model", no_load)
        with pytest.raises(OutputError, match="is not empty") as caught:
            score(path, out)
    assert "--overwrite" in (caught.value.hint or "")
    assert (out / "manifest.json").is_file()  # untouched
    result = score(path, out, overwrite=True)  # one shard now: the five old ones are gone
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == [
        "train-00000-of-00001.parquet"
    ]
    assert result.manifest["counts"]["read"] == 5
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        score(path, tmp_path / "file", overwrite=True)


def test_rows_per_shard_splits_the_output(score, tmp_path):
    from datasets import load_dataset

    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"No {i}."} for i in range(7)]
    path = write_jsonl(tmp_path / "seven.jsonl", rows)
    result = score(path, tmp_path / "out", rows_per_shard=3, window=2)
    names = [p.name for p in result.shards]
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in result.shards] == [3, 3, 1]
    ds = load_dataset("parquet", data_dir=str(tmp_path / "out"))["train"]
    assert ds["row_id"] == list(range(7)) and ds["prompt"] == [r["prompt"] for r in rows]
    # the split name follows --split
    other = score(path, tmp_path / "val", split="validation")
    assert other.shards[0].name == "validation-00000-of-00001.parquet"


def test_limit_and_sample_keep_original_row_ids(score, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"No {i}."} for i in range(20)]
    path = write_jsonl(tmp_path / "twenty.jsonl", rows)
    score(path, tmp_path / "limit", limit=4)
    assert [r["row_id"] for r in output_rows(tmp_path / "limit")] == [0, 1, 2, 3]
    first = score(path, tmp_path / "s1", sample=5, seed=3)
    second = score(path, tmp_path / "s2", sample=5, seed=3)
    ids = [r["row_id"] for r in output_rows(tmp_path / "s1")]
    assert ids == [r["row_id"] for r in output_rows(tmp_path / "s2")] == sorted(ids)
    assert len(set(ids)) == 5
    for row in output_rows(tmp_path / "s1"):
        assert row["prompt"] == f"Q{row['row_id']}?"
    assert first.manifest["input"]["sample"] == 5 and first.manifest["input"]["seed"] == 3
    assert second.summary["rows"] == 5


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "worker"])
def test_an_interrupted_run_leaves_nothing_that_looks_complete(score, tmp_path, monkeypatch, workers):
    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"No {i}."} for i in range(8)]
    path = write_jsonl(tmp_path / "eight.jsonl", rows)
    out = tmp_path / "out"
    score(path, out)  # a complete earlier output, replaced with --overwrite below
    real_run = HiddenStateRunner.run
    calls = []

    def interrupted(self, pairs):
        calls.append(len(pairs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self, pairs)

    monkeypatch.setattr(HiddenStateRunner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score(path, out, window=2, rows_per_shard=2, overwrite=True, tokenizer_workers=workers)
    assert len(calls) == 3
    assert not (out / "manifest.json").exists()
    assert list((out / "data").glob("*.parquet")) == []  # only hidden .tmp files, if any
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in (out / "data").iterdir())
    monkeypatch.setattr(HiddenStateRunner, "run", real_run)
    result = score(path, out, overwrite=True)  # and the folder can be reused
    assert result.manifest["counts"]["read"] == 8


def test_options_are_checked_before_the_model_loads(score, tmp_path, monkeypatch):
    import ches_filter.pipeline as pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_model", no_load)
    path = FIXTURES / "standard.jsonl"
    cases = [
        ({"max_length": 1}, "--max-length must be at least 2"),
        ({"convention": "bogus"}, "--compat must be"),
        ({"max_batch_tokens": 0}, "--max-batch-tokens must be at least 1"),
        ({"rows_per_shard": 0}, "--rows-per-shard must be at least 1"),
        ({"window": 0}, "window must be at least 1"),
        ({"tokenizer_workers": -1}, "--tokenizer-workers must be at least 0"),
        ({"layout": "bogus"}, "unknown layout 'bogus'"),
        ({"label_policy": "bogus"}, "--label-policy 'bogus'"),
        ({"prompt_field": "nope"}, "--prompt-field 'nope': no such column"),
        ({"sample": -1}, "--sample must be 0 or more"),
        ({"limit": -2}, "--limit must be 0 or more"),
        ({"dtype": "float8"}, "--dtype must be one of"),
        ({"device": "nonsense"}, "--device 'nonsense' is not a device"),
        ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"model": "someone/not-cached-model"}, "not in the local Hugging Face cache"),
        ({"bogus_option": 3}, "unknown score option(s): bogus_option"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ChesError) as caught:
            score(path, tmp_path / "out", **kwargs)
        assert message in str(caught.value), (kwargs, str(caught.value))
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))
    with pytest.raises(OptionError, match="not both"):
        score(path, tmp_path / "out", options=ScoreOptions(), max_length=4)


# -- score_pairs --------------------------------------------------------------------------------


def test_score_pairs_in_memory(tiny_llama, score, tmp_path):
    pairs = [
        {"prompt": "What colour is the sky?", "chosen": "It is blue.", "rejected": "It is black."},
        {"prompt": "2 + 2 =", "chosen": "4", "rejected": "4"},
        {"prompt": "Say hi.", "chosen": "", "rejected": "hi"},
    ]
    out = score_pairs(pairs, model=tiny_llama)
    assert [r["status"] for r in out] == ["ok", "identical", "empty_response"]
    assert [r["row_id"] for r in out] == [0, 1, 2]
    assert set(out[0]) == set(SCORE_COLUMNS)
    # the same numbers as score_dataset on the same rows
    path = write_jsonl(tmp_path / "p.jsonl", pairs)
    score(path, tmp_path / "out")
    from_file = output_rows(tmp_path / "out")
    for mine, theirs in zip(out, from_file, strict=True):
        assert {k: mine[k] for k in SCORE_COLUMNS} == {k: theirs[k] for k in SCORE_COLUMNS}
    assert score_pairs([], model=tiny_llama) == []
    plain = score_pairs(pairs[:1], model=tiny_llama, use_chat_template=False)
    assert plain[0]["prompt_tokens"] < out[0]["prompt_tokens"]  # no system turn, no markers


def test_score_pairs_loads_a_model_by_name(tiny_llama_dir, tiny_llama):
    row = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Bye."}],
    }
    out = score_pairs(
        [row], model=str(tiny_llama_dir), device="cpu", dtype="float32", convention="official"
    )
    assert out[0]["status"] == "ok"
    # official: "Hello!" without <|im_end|>, summed through the final position (one more)
    hello = tiny_llama.tokenizer("Hello!", add_special_tokens=False)["input_ids"]
    assert out[0]["chosen_tokens"] == len(hello) + 1


# -- the real HH-RLHF file ----------------------------------------------------------------------

#: rows of the HH-RLHF harmless-base test split that can't be scored, and why
HH_PROBLEMS = {86: "empty_response", 1254: "ambiguous_prompt", 1950: "ambiguous_prompt"}


@pytest.fixture(scope="module")
def hh_subset(hh_file, tmp_path_factory) -> tuple[Path, list[int]]:
    """The first 30 rows plus the known problem rows, in file order, as a small jsonl file."""
    wanted = set(range(30)) | set(HH_PROBLEMS)
    picked, positions = [], []
    with gzip.open(hh_file, "rt", encoding="utf-8") as handle:
        for position, line in enumerate(handle):
            if position in wanted:
                picked.append(json.loads(line))
                positions.append(position)
    path = write_jsonl(tmp_path_factory.mktemp("hh") / "hh-subset.jsonl", picked)
    return path, positions


def test_hh_rlhf_rows_with_the_tiny_model(score, tiny_llama, hh_subset, tmp_path):
    path, positions = hh_subset
    result = score(path, tmp_path / "out", max_batch_tokens=4096)
    rows = output_rows(tmp_path / "out")
    source_rows = read_jsonl(path)
    assert len(rows) == len(source_rows) == 33
    assert result.manifest["input"]["layout"] == "hh_rlhf"
    for row_id, (position, original, row) in enumerate(
        zip(positions, source_rows, rows, strict=True)
    ):
        assert row["row_id"] == row_id
        assert (row["chosen"], row["rejected"]) == (original["chosen"], original["rejected"])
        expected = HH_PROBLEMS.get(position, "ok")
        assert row["status"] == expected, (position, row["reason"])
    ambiguous = rows[positions.index(1254)]
    assert "differ before their last" in ambiguous["reason"] and ambiguous["ches"] is None
    # a few scored rows equal the reference, computed one pair at a time
    layout = detect_layout(["chosen", "rejected"], source_rows, LayoutOptions())
    tokenizer = PairTokenizer(tiny_llama.tokenizer, TokenizationOptions())
    for row_id in range(4):
        encoded = tokenizer.encode(layout.extract(row_id, source_rows[row_id]))
        assert isinstance(encoded, TokenizedPair)
        assert_close(rows[row_id], reference_scores(tiny_llama.model, encoded))


def test_tokenizer_workers_write_the_same_output(score, hh_subset, tmp_path):
    """Tokenising ahead in worker processes changes when pairs are encoded, never what is written."""
    path, _ = hh_subset
    inline = score(path, tmp_path / "inline", window=5, rows_per_shard=7, tokenizer_workers=0)
    ahead = score(path, tmp_path / "ahead", window=5, rows_per_shard=7, tokenizer_workers=2)
    assert inline.manifest["engine"]["tokenizer_workers"] == 0
    assert ahead.manifest["engine"]["tokenizer_workers"] == 2
    assert [p.name for p in ahead.shards] == [p.name for p in inline.shards]
    assert len(ahead.shards) == 5  # 33 rows, 7 per shard
    assert output_rows(tmp_path / "ahead") == output_rows(tmp_path / "inline")
    assert ahead.summary["by_status"] == inline.summary["by_status"]


def test_tokenizer_workers_by_default(monkeypatch):
    import ches_filter.tokenizer_pool as tokenizer_pool

    assert 1 <= tokenizer_pool.usable_cores() <= (tokenizer_pool.os.cpu_count() or 1)
    for cores, on_gpu in [(16, 8), (2, 1), (1, 0)]:
        monkeypatch.setattr(tokenizer_pool, "usable_cores", lambda cores=cores: cores)
        assert tokenizer_pool.auto_workers("cpu") == 0  # the model's threads use every core
        assert tokenizer_pool.auto_workers("cuda") == on_gpu


def assert_close(row: dict[str, Any], reference) -> None:
    """As in tests/equivalence: relative to the scale of the terms CHES subtracts."""
    scale = max(abs(reference.dot_chosen_rejected), reference.sq_norm_chosen, 1e-12)
    n, m = reference.chosen_tokens, reference.rejected_tokens
    ln_scale = max(abs(reference.dot_chosen_rejected) / (n * m), reference.sq_norm_chosen / (n * n))
    where = f"row {reference.row_id}"
    assert row["ches"] == pytest.approx(reference.ches, abs=REL * scale), where
    assert row["ln_ches"] == pytest.approx(reference.ln_ches, abs=REL * ln_scale), where
    for name in ("dot_chosen_rejected", "sq_norm_chosen", "sq_norm_rejected", "last_hidden_inner"):
        assert row[name] == pytest.approx(getattr(reference, name), rel=REL), (where, name)
    assert row["edit_distance"] == reference.edit_distance, where
    for name in ("prompt_tokens", "chosen_tokens", "rejected_tokens", "truncated"):
        assert row[name] == getattr(reference, name), (where, name)


def test_smollm2_scores_on_hh_rows_equal_the_reference(smollm2, hh_file, tmp_path):
    """The real bundled default model, end to end through score_dataset, on 3 short HH pairs."""
    short = []
    with gzip.open(hh_file, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["chosen"]) + len(row["rejected"]) < 400:
                short.append(row)
            if len(short) == 3:
                break
    path = write_jsonl(tmp_path / "hh4.jsonl", short)
    result = score_dataset(
        str(path), output=tmp_path / "out", model="smollm2-135m-instruct", device="cpu",
        dtype="float32",
    )  # fmt: skip
    assert result.manifest["model"]["id"] == "smollm2-135m-instruct"
    assert result.manifest["model"]["kind"] == "bundled"
    rows = output_rows(tmp_path / "out")
    layout = detect_layout(["chosen", "rejected"], short, LayoutOptions())
    scorer = PairScorer(smollm2, TokenizationOptions())
    for row_id, row in enumerate(rows):
        item = layout.extract(row_id, short[row_id])
        assert isinstance(item, PreferencePair)
        assert row["pair_id"] == pair_id(item, short[row_id])
        encoded = scorer.tokenizer.encode(item)
        assert isinstance(encoded, TokenizedPair)
        assert_close(row, reference_scores(smollm2.model, encoded))
