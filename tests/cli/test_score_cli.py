"""``ches score`` through the real typer app: exit codes, stdout and stderr asserted apart.

Bad input exits 2 with one clear message on stderr, nothing on stdout, no traceback, and
before any model is loaded (``load_model`` is replaced by a function that fails the test).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import ches_filter.pipeline as pipeline
from ches_filter.cli.app import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"
STANDARD = FIXTURES / "standard.jsonl"

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(pipeline, "load_model", refuse)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir) -> list[str]:
    """Model options for a quick CPU run with the tiny random Llama."""
    return ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"]


def assert_bad_input(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error: ") == 1  # one message


# -- a successful run -------------------------------------------------------------------------


def test_score_prints_detected_layout_and_a_summary_on_stderr(tiny, tmp_path):
    out = tmp_path / "out"
    result = invoke("score", STANDARD, "--output", out, *tiny)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # results go to files; messages to stderr
    assert "reading standard.jsonl (jsonl)" in result.stderr
    assert "detected: explicit prompt, standard (prompt, chosen, rejected)" in result.stderr
    assert "scored 1 of 5 rows" in result.stderr
    assert "rows by status" in result.stderr and "empty_response" in result.stderr
    assert "scores of ok pairs" in result.stderr and "ln_ches" in result.stderr
    assert (out / "manifest.json").is_file()
    assert pq.read_metadata(out / "data" / "train-00000-of-00001.parquet").num_rows == 5


def test_json_prints_the_summary_on_stdout_only(tiny, tmp_path):
    result = invoke("score", STANDARD, "-o", tmp_path / "out", "--json", *tiny)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 5 and summary["scored"] == 1
    assert summary["by_status"]["identical"] == 1
    assert set(summary["quantiles"]) == {"ches", "ln_ches", "last_hidden_inner", "edit_distance"}
    assert summary["top"][0]["row_id"] == 0 and summary["output"] == str(tmp_path / "out")
    assert "rows by status" not in result.stderr  # the table is replaced, not repeated
    assert "detected:" in result.stderr


def test_quiet_prints_nothing(tiny, tmp_path):
    result = invoke("score", STANDARD, "-o", tmp_path / "out", "--quiet", *tiny)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "out" / "manifest.json").is_file()
    both = invoke("score", STANDARD, "-o", tmp_path / "out2", "--quiet", "--json", *tiny)
    assert both.exit_code == 0 and both.stderr == ""
    assert json.loads(both.stdout)["rows"] == 5


def test_default_output_folder_and_options_reach_the_manifest(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "nested.jsonl", tmp_path / "pairs.jsonl")
    result = invoke(
        "score", "pairs.jsonl", *tiny, "--prompt-field", "data.question", "--chosen-field",
        "data.good", "--rejected-field", "data.bad", "--no-chat-template", "--max-length", "64",
        "--limit", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "pairs.ches" / "manifest.json").read_text())
    assert manifest["options"]["prompt_field"] == "data.question"
    assert manifest["options"]["use_chat_template"] is False
    assert manifest["options"]["max_length"] == 64
    assert manifest["model"]["tokenization"] == "plain text + EOS, max length 64"
    assert manifest["input"]["limit"] == 1 and manifest["counts"]["read"] == 1
    assert manifest["command"][0].split(" ")[0] == "ches"  # the rest is pytest's own argv here


def test_compat_official_is_recorded(tiny, tmp_path):
    result = invoke("score", STANDARD, "-o", tmp_path / "out", "--compat", "official", *tiny)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["convention"] == "official" and manifest["options"]["max_length"] == 512
    assert "official script" in manifest["model"]["tokenization"]


def test_row_problems_do_not_stop_the_run(tiny, tmp_path):
    rows = [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "Hi", "chosen": None, "rejected": "Go away."},
        {"prompt": "Hi", "chosen": "\u200b", "rejected": "Go away."},
        {"prompt": "Hi", "chosen": 42, "rejected": "Go away."},
        {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("score", path, "-o", tmp_path / "out", "--json", *tiny)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 5 and summary["scored"] == 1
    assert summary["by_status"] == {
        "invalid_field": 2,
        "empty_response": 1,
        "identical": 1,
        "ok": 1,
    }


# -- the layouts of issue #12: a ranking file, a response list, a wrong path ------------------


def test_help_lists_every_layout():
    from ches_filter.data.layouts import LAYOUTS

    help_text = invoke("score", "--help").stdout.replace("\u2502", " ")  # rich's box, wrapped
    text = " ".join(help_text.split())
    assert "--ranking-pair" in text and "[default: first-second]" in text  # not eaten as markup
    for name in LAYOUTS:
        assert name in text, name


def test_llamafactory_ranking_file_by_detection(tiny, tmp_path):
    from ches_filter.pipeline import pair_id
    from ches_filter.records import PreferencePair, Turn

    path = FIXTURES / "llamafactory_ranking.jsonl"
    source = [json.loads(line) for line in path.open()]
    prompt = "Translate to French.\n\ncat"  # row 0: instruction + "\n\n" + input
    for args, rejected, choice, by_status in (
        ([], "chien", "rejected = output[1] (--ranking-pair first-second)",
         {"ok": 2, "invalid_field": 1, "empty_response": 1}),
        (["--ranking-pair", "first-last"], "cheval", "rejected = output[-1] (--ranking-pair first-last)",
         {"ok": 3, "invalid_field": 1}),  # the last row's blank runner-up is skipped
    ):  # fmt: skip
        out = tmp_path / f"out{len(args)}"
        result = invoke("score", path, "-o", out, "--json", *args, *tiny)
        assert result.exit_code == 0, result.stderr
        stderr = " ".join(result.stderr.split())  # rich may wrap the line
        assert "detected: ranked responses, best first" in stderr and choice in stderr
        assert json.loads(result.stdout)["by_status"] == by_status
        rows = pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()
        assert [row["output"] for row in rows] == [row["output"] for row in source]
        expected = PreferencePair(0, (Turn("user", prompt),), "chat", rejected, prompt, "chat", rejected)
        assert rows[0]["pair_id"] == pair_id(expected, {})  # the pair the option picked
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["input"]["layout"] == "ranking"
        assert manifest["options"]["ranking_pair"] == (args[1] if args else None)
        # the report reads the rows back with the same layout and the same --ranking-pair
        report = invoke("report", out, "--no-highlight", "--quiet", "--json", out / "r.json")
        assert report.exit_code == 0, report.stderr
        shown = {p["row_id"]: p for p in json.loads((out / "r.json").read_text())["top"]}
        assert shown[0]["text"] == {"prompt": prompt, "chosen": "chat", "rejected": rejected,
                                    "source": "layout"}  # fmt: skip


def test_response_pair_file_by_the_documented_mapping(tiny, tmp_path):
    path = FIXTURES / "response_pair.jsonl"
    unmapped = invoke("score", path, "-o", tmp_path / "o1", *tiny)
    assert unmapped.exit_code == 2
    assert "--chosen-field response.0 --rejected-field response.1" in " ".join(unmapped.stderr.split())
    out = tmp_path / "out"
    result = invoke("score", path, "-o", out, "--json", "--chosen-field", "response.0",
                    "--rejected-field", "response.1", *tiny)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "chosen='response.0', rejected='response.1'" in result.stderr
    assert json.loads(result.stdout)["by_status"] == {"ok": 2, "invalid_field": 1}
    rows = pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert "'response' has 1 item, no index 1" in rows[2]["reason"]
    forced = invoke("score", path, "-o", tmp_path / "o2", "--json", "--layout", "ranking", *tiny)
    assert forced.exit_code == 0, forced.stderr
    ranked = pq.read_table(tmp_path / "o2" / "data" / "train-00000-of-00001.parquet").to_pylist()
    for a, b in zip(rows[:2], ranked[:2], strict=True):  # the same pairs, the same scores
        assert a["pair_id"] == b["pair_id"] and a["ln_ches"] == b["ln_ches"]


def test_a_wrong_path_shows_at_most_200_characters_of_data(no_model_load, tmp_path):
    """Before: "'response' has keys: " and then every response in the list, kilobytes of text."""
    text = "§" * 5000  # a character no message uses: each one shown is dataset content
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": text, "response": [text, text]}) + "\n")
    for option in ("response.2", "response.best", "prompt.0", "response.0.text"):
        result = invoke("score", path, "-o", tmp_path / "out", "--chosen-field", option,
                        "--rejected-field", "response.1")  # fmt: skip
        assert_bad_input(result, f"--chosen-field '{option}': not found")
        assert result.stderr.count("§") <= 200, result.stderr[:400]
        assert len(result.stderr) < 600
    wide = tmp_path / "wide.jsonl"
    wide.write_text(json.dumps({f"field_{i:04d}_{'x' * 8}": i for i in range(5000)}) + "\n")
    result = invoke("score", wide, "-o", tmp_path / "out")
    assert_bad_input(result, "no supported layout matches the fields found: field_0000")
    assert "4," in result.stderr and "more)" in result.stderr  # "… (4,9xx more)"
    assert len(result.stderr.split("hint:")[0]) < 300


# -- bad input: exit 2, one message, no traceback, no model load ------------------------------


def test_missing_file(no_model_load, tmp_path):
    result = invoke("score", tmp_path / "nope.jsonl", "-o", tmp_path / "out")
    assert_bad_input(result, "no such file or folder", "nope.jsonl")
    assert not (tmp_path / "out").exists()


def test_unreadable_formats(no_model_load, tmp_path):
    (tmp_path / "pairs.txt").write_text("prompt\tchosen\trejected\n")
    assert_bad_input(invoke("score", tmp_path / "pairs.txt", "-o", tmp_path / "o1"), "pairs.txt")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    assert_bad_input(
        invoke("score", tmp_path / "bad.parquet", "-o", tmp_path / "o2"),
        "bad.parquet: not a readable Parquet file",
    )


def test_unknown_layout_names_the_fields_and_the_layouts(no_model_load, tmp_path):
    result = invoke("score", FIXTURES / "unknown.jsonl", "-o", tmp_path / "out")
    assert_bad_input(result, "no supported layout matches the fields found: text, score")
    assert "hint:" in result.stderr
    for layout in ("standard", "conversational", "hh_rlhf", "pku_saferlhf", "shp"):
        assert layout in result.stderr, layout


def test_malformed_json_line_names_file_and_line(no_model_load, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(STANDARD.read_text().splitlines()[0] + '\n\n{"prompt": oops}\n')
    assert_bad_input(invoke("score", path, "-o", tmp_path / "out"), "broken.jsonl line 3", "JSON")


def test_malformed_json_line_deep_in_a_file(tiny, tmp_path):
    """Past the rows read up front: found while scoring, still exit 2, nothing looks complete."""
    # rows with an empty response never reach the tokenizer or the model: a quick long file
    row = json.dumps({"prompt": "Hi", "chosen": "", "rejected": "Bye."})
    path = tmp_path / "long.jsonl.gz"
    path.write_bytes(gzip.compress(((row + "\n") * 1500 + "{oops\n").encode()))
    out = tmp_path / "out"
    result = invoke("score", path, "-o", out, "--quiet", "--rows-per-shard", "100", *tiny)
    assert_bad_input(result, "long.jsonl.gz line 1501: invalid JSON")
    assert not (out / "manifest.json").exists()
    assert list((out / "data").glob("*.parquet")) == []
    # the rows scored before the bad line are kept (#13 item 6) in complete files that keep
    # their .tmp names: never renamed, so nothing looks finished
    assert list((out / "data").glob(".*.tmp"))
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in (out / "data").iterdir())


def test_interrupt_exits_130_and_leaves_no_complete_output(tiny, tmp_path, monkeypatch):
    from ches_filter.model.runner import HiddenStateRunner

    def interrupted(self, pairs):
        raise KeyboardInterrupt

    monkeypatch.setattr(HiddenStateRunner, "run", interrupted)
    out = tmp_path / "out"
    result = invoke("score", FIXTURES / "hh_rlhf.jsonl", "-o", out, *tiny)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "manifest.json").exists()
    assert list((out / "data").glob("*.parquet")) == []


@pytest.mark.parametrize(
    ("fixture", "words"),
    [("kto", ["unpaired (KTO)", "hint:"]), ("n_candidates", ["N-candidate", "'responses'"])],
)
def test_unpaired_and_n_candidate_data(no_model_load, tmp_path, fixture, words):
    result = invoke("score", FIXTURES / f"{fixture}.jsonl", "-o", tmp_path / "out")
    assert_bad_input(result, *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sample", "-1"], ["--sample must be 0 or more"]),
        (["--limit", "-5"], ["--limit must be 0 or more"]),
        (["--max-length", "1"], ["--max-length must be at least 2"]),
        (["--compat", "bogus"], ["--compat must be 'default' or 'official'"]),
        (["--dtype", "bogus"], ["--dtype must be one of", "float32"]),
        (["--device", "bogus"], ["--device 'bogus' is not a device"]),
        (["--layout", "bogus"], ["unknown layout 'bogus'", "standard"]),
        (["--label-policy", "bogus"], ["--label-policy 'bogus' is not one of"]),
        (["--label-policy", "safer"], ["--label-policy safer applies only to the pku_saferlhf"]),
        (["--ranking-pair", "first-last"], ["--ranking-pair applies only to the ranking layout"]),
        (["--ranking-pair", "bogus"], ["--ranking-pair 'bogus' is not one of"]),
        (["--prompt-field", "nonexistent"], ["--prompt-field 'nonexistent': no such column",
                                             "prompt, chosen, rejected"]),
        (["--layout", "shp"], ["layout 'shp' needs a field", "prompt, chosen, rejected"]),
        (["--rows-per-shard", "0"], ["--rows-per-shard must be at least 1"]),
        (["--config", "x"], ["--config applies to hub datasets only"]),
        (["--revision", "main", "--config", "x"], ["--config and --revision apply to hub"]),
        (["--max-batch-tokens", "0"], ["--max-batch-tokens must be at least 1"]),
        (["--tokenizer-workers", "many"], ["--tokenizer-workers must be 'auto' or a number"]),
        (["--tokenizer-workers", "-1"], ["--tokenizer-workers must be 'auto' or a number"]),
        (["--model", "no-such-model"], ["unknown model 'no-such-model'"]),
        (["--model", "./no/such/folder"], ["unknown model './no/such/folder'"]),
        (["--model", "someone/not-a-cached-model"], ["not in the local Hugging Face cache"]),
    ],
)  # fmt: skip
def test_invalid_options(no_model_load, tmp_path, args, words):
    result = invoke("score", STANDARD, "-o", tmp_path / "out", *args)
    assert_bad_input(result, *words)
    assert not (tmp_path / "out").exists()


def test_empty_file_and_a_scored_output_as_input(no_model_load, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = invoke("score", tmp_path / "empty.jsonl", "-o", tmp_path / "o1")
    assert_bad_input(result, "empty.jsonl (jsonl) has no rows")
    (tmp_path / "scored.jsonl").write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "ches": 1.0}) + "\n"
    )
    result = invoke("score", tmp_path / "scored.jsonl", "-o", tmp_path / "o2")
    assert_bad_input(result, "already has column(s) ches")


def test_model_folder_without_config(no_model_load, tmp_path):
    (tmp_path / "model").mkdir()
    result = invoke("score", STANDARD, "-o", tmp_path / "out", "--model", tmp_path / "model")
    assert_bad_input(result, "is not a transformers model folder (no config.json)")


def test_hub_dataset_offline_and_not_cached(no_model_load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("score", "someone/no-such-dataset", "--split", "train", "-o", tmp_path / "o")
    assert_bad_input(result, "'someone/no-such-dataset' is not a local path")


def test_non_empty_output_without_overwrite(no_model_load, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("score", STANDARD, "-o", out)
    assert_bad_input(result, f"output folder {out} is not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_debug_shows_the_traceback(no_model_load, tmp_path):
    result = invoke("score", tmp_path / "nope.jsonl", "--debug")
    assert result.exit_code != 0
    from ches_filter.errors import DatasetError

    assert isinstance(result.exception, DatasetError)


# -- the installed command ----------------------------------------------------------------------


def installed_ches() -> str:
    beside = Path(sys.executable).parent / "ches"
    found = str(beside) if beside.is_file() else shutil.which("ches")
    if found is None:
        pytest.skip("the `ches` console script is not installed (pip install -e .)")
    return found


def test_installed_ches_scores_a_fixture(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [installed_ches(), "score", str(FIXTURES / "hh_rlhf.jsonl"), "--model", str(tiny_llama_dir),
         "--output", str(out), "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 4
    assert "detected: HH-RLHF dialogue strings" in done.stderr
    assert (out / "data" / "train-00000-of-00001.parquet").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 4
    assert manifest["command"][0].startswith("ches score ")
    bad = subprocess.run(
        [installed_ches(), "score", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout == ""


def test_json_summary_has_no_nan():
    from ches_filter.cli.score_cmd import json_safe

    summary = {"quantiles": {"ches": {"min": float("nan"), "max": float("inf"), "p25": 1.5}}, "top": [(1, -float("inf"))]}
    assert json_safe(summary) == {"quantiles": {"ches": {"min": None, "max": None, "p25": 1.5}}, "top": [[1, None]]}
