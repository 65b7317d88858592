"""``ches filter`` and ``ches report`` through the real typer app: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from score_fixtures import ORIGINAL_COLUMNS, XSS_SCRIPT, make_score_output, nasty_rows
from typer.testing import CliRunner

from ches_filter.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    return make_score_output(tmp_path_factory.mktemp("scores") / "scores", nasty_rows(200), n_shards=3)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("rule", "kept"),
    [(["--keep-lowest", "0.05"], 10 + 6), (["--top-k", "100"], 200 - 100), (["--top-k", "1000"], 6)],
)
def test_filter_produces_a_loadable_dataset_in_the_input_layout(scores_dir, tmp_path, rule, kept):
    from datasets import load_dataset

    out = tmp_path / "out"
    result = invoke("filter", scores_dir, "--output", out, *rule)
    assert result.exit_code == 0, result.output
    assert f"kept {kept:,} of 200 rows" in result.stdout
    ds = load_dataset("parquet", data_dir=str(out))["train"]
    assert ds.column_names == list(ORIGINAL_COLUMNS) and ds.num_rows == kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == kept and manifest["counts"]["unscored_kept"] == 6
    assert (out / "report.html").is_file()


def test_filter_removed_drop_unscored_and_keep_scores(scores_dir, tmp_path):
    out, rem = tmp_path / "out", tmp_path / "removed"
    result = invoke("filter", scores_dir, "-o", out, "--top-fraction", "0.1", "--removed", rem,
                    "--drop-unscored", "--keep-scores", "--by", "edit_distance", "--no-report")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # by edit_distance, 196 rows rank (the null/NaN ln_ches rows have a distance): ceil(19.6)
    assert manifest["counts"]["removed_by_rule"] == 20
    assert manifest["counts"]["removed"] == 20 + 4 and manifest["by"] == "edit_distance"
    assert not (out / "report.html").exists()
    assert json.loads((rem / "manifest.json").read_text())["kind"] == "filter-removed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one selection rule"),
        (["--top-k", "3", "--threshold", "1"], "exactly one selection rule"),
        (["--top-k", "3", "--n", "5"], "--n only goes with --quantile-window"),
        (["--quantile-window", "0.5"], "--quantile-window needs --n"),
        (["--top-k", "3", "--model", "gpt2"], "filtering never rescores"),
    ],
)
def test_bad_options_exit_2_with_a_message_on_stderr(scores_dir, tmp_path, args, message):
    result = invoke("filter", scores_dir, "--output", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_non_empty_output_needs_overwrite(scores_dir, tmp_path):
    out = tmp_path / "out"
    assert invoke("filter", scores_dir, "-o", out, "--top-k", "1").exit_code == 0
    again = invoke("filter", scores_dir, "-o", out, "--top-k", "2")
    assert again.exit_code == 2 and "not empty" in again.stderr
    assert invoke("filter", scores_dir, "-o", out, "--top-k", "2", "--overwrite").exit_code == 0


def test_report_writes_every_format(scores_dir, tmp_path):
    html, md, js = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.json"
    result = invoke("report", scores_dir, "--top", "7", "--no-highlight", "--html", html,
                    "--markdown", md, "--json", js)
    assert result.exit_code == 0, result.output
    assert "Top 7 pairs by ln_ches" in result.stdout
    assert len(json.loads(js.read_text())["top"]) == 7
    assert XSS_SCRIPT not in html.read_text()
    assert md.read_text().startswith("## CHES report")


def test_report_on_a_filter_output_shows_the_decision(scores_dir, tmp_path):
    out = tmp_path / "out"
    assert invoke("filter", scores_dir, "-o", out, "--top-k", "4").exit_code == 0
    result = invoke("report", out, "--top", "5", "--no-highlight", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert [p["removed"] for p in data["top"]] == [True] * 4 + [False]
    assert "filter: drop the 4 highest-ln_ches pairs" in result.stdout


def test_report_bad_input_exits_2(tmp_path):
    result = invoke("report", tmp_path / "missing")
    assert result.exit_code == 2 and "no such scores folder" in result.stderr


def test_filtering_scores_never_imports_torch(scores_dir, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from ches_filter.filtering import filter_scores
        from ches_filter.selection import Rule
        filter_scores({str(scores_dir)!r}, output={str(tmp_path / "o")!r}, rule=Rule("top_k", 5))
        heavy = sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
