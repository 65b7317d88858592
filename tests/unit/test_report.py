"""The report: numbers match the shards, every format escapes dataset text, snapshots, and the
per-token CHES decomposition on a tiny in-process Llama."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from score_fixtures import (
    MARKDOWN_NASTY,
    XSS_SCRIPT,
    make_score_output,
    nasty_rows,
    patch_load_model,
    tiny_llama,
)

from ches_filter.filtering import filter_scores
from ches_filter.records import SequenceSpan, TokenizedPair
from ches_filter.report import (
    build_report,
    md_block,
    md_inline,
    render,
    render_json,
    render_markdown,
    render_terminal_text,
    spearman,
)
from ches_filter.selection import Rule

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
UPDATE = os.environ.get("CHES_UPDATE_SNAPSHOTS") == "1"


def check_snapshot(name: str, text: str) -> None:
    """Compare with tests/snapshots/NAME; CHES_UPDATE_SNAPSHOTS=1 rewrites it."""
    path = SNAPSHOTS / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"snapshot {name} was missing and has been written: review and rerun")
    assert text == path.read_text(encoding="utf-8"), f"rerun with CHES_UPDATE_SNAPSHOTS=1 if {name} should change"


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    return make_score_output(tmp_path_factory.mktemp("scores") / "scores", nasty_rows())


@pytest.fixture(scope="module")
def data(scores_dir):
    return build_report(scores_dir, top=5)


def shard_table(folder):
    return pq.read_table(sorted((folder / "data").glob("*.parquet")))


def test_json_numbers_match_the_shards(scores_dir, data):
    table = shard_table(scores_dir)
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    reloaded = json.loads(render_json(data))
    counts = reloaded["counts"]
    assert counts["rows"] == table.num_rows == 40
    assert counts["by_status"] == {s: int((status == s).sum()) for s in set(status)}
    ok = status == "ok"
    for name in ("ln_ches", "ches", "last_hidden_inner", "edit_distance"):
        values = table.column(name).to_numpy(zero_copy_only=False).astype(float)[ok]
        values = values[np.isfinite(values)]
        stats = reloaded["scores"][name]
        assert stats["n"] == values.size
        assert stats["quantiles"]["median"] == pytest.approx(float(np.median(values)))
        assert stats["quantiles"]["max"] == pytest.approx(values.max())
        assert stats["mean"] == pytest.approx(values.mean())
        assert sum(stats["histogram"]["counts"]) == values.size
    assert counts["ranked"] == 34  # 36 ok rows, one null and one NaN ln_ches
    assert [p["row_id"] for p in reloaded["top"]] == [28, 29, 16, 4, 5]  # ties by row_id
    ln = dict(zip(table.column("row_id").to_pylist(), table.column("ln_ches").to_pylist(), strict=True))
    for pair in reloaded["top"]:
        assert pair["scores"]["ln_ches"] == ln[pair["row_id"]]
    assert reloaded["top"][0]["text"]["rejected"].startswith("Hi! <script>")  # raw text, JSON-escaped
    assert "<script>" not in render_json(data)  # < > & are \u escapes, safe to embed in HTML
    assert reloaded["highlight"]["status"] == "off"


def test_histogram_bins_the_bulk_and_counts_the_tails_in_the_edge_bins():
    from ches_filter.report import clipped_histogram

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 990), [-1e8, -5e7, 3e7] + [1e6] * 7])  # raw-CHES-like tails
    hist = clipped_histogram(values, bins=20)
    assert sum(hist["counts"]) == values.size
    edges = np.array(hist["edges"])
    assert hist["below"] == int((values < edges[0]).sum()) > 0
    assert hist["above"] == int((values > edges[-1]).sum()) > 0
    assert edges[-1] - edges[0] < 20  # bins over the bulk, not over 1e8
    assert sum(c > 0 for c in hist["counts"]) > 10  # the bulk is spread over the bins
    constant = clipped_histogram(np.full(5, 2.0))
    assert sum(constant["counts"]) == 5 and constant["below"] == constant["above"] == 0


def test_length_section_shows_raw_ches_tracks_length():
    x = np.arange(50, dtype=float)
    assert spearman(x, x**2) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(50)) is None


def test_markdown_escapes_dataset_text():
    line = md_inline(MARKDOWN_NASTY)
    assert "\n" not in line and "|" not in line.replace("\\|", "")
    assert "<b>" not in line and "&lt;b&gt;" in line
    assert "@someone" not in line and "\\x1b" in line
    block = md_block("x ```` y")
    assert block.startswith("`````text\n") and block.endswith("\n`````")


def test_markdown_snapshot(data):
    text = render_markdown(data)
    outside_fences = re.sub(r"(?ms)^(`{3,})text\n.*?\n\1$", "", text)
    assert "<script" not in outside_fences and "<img" not in outside_fences
    assert "<b>html" not in outside_fences and "\x1b" not in text
    check_snapshot("report.md", text)


def test_terminal_snapshot(data):
    text = render_terminal_text(data, width=110)
    assert "[bold red]rich markup[/]" in text  # shown, not parsed as markup
    assert "\x1b" not in text
    check_snapshot("report_terminal.txt", text)


def test_filter_report_shows_what_was_removed(scores_dir, tmp_path):
    out = tmp_path / "kept"
    filter_scores(scores_dir, output=out, rule=Rule("top_k", 3))
    reloaded = json.loads((out / "report.json").read_text())
    assert reloaded["filter"]["counts"]["removed_by_rule"] == 3
    assert [p["removed"] for p in reloaded["top"][:4]] == [True, True, True, False]
    assert "Filter" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "removed by filter" in html and XSS_SCRIPT not in html


def test_highlight_auto_degrades_when_the_model_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = make_score_output(tmp_path / "s", nasty_rows())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["id"] = "no-such-owner/no-such-model"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    messages = []
    data = build_report(folder, top=3, highlight="auto", log=messages.append)
    assert data["highlight"]["status"] == "skipped"
    assert "no-such-owner/no-such-model" in data["highlight"]["message"]
    assert any("token highlighting skipped" in m for m in messages)
    from ches_filter.errors import ChesError

    with pytest.raises(ChesError):
        build_report(folder, top=3, highlight="on")


# ---------------------------------------------------------------------------- contributions


def test_contributions_sum_to_ches_and_ln_ches():
    from ches_filter.contributions import hidden_states, pair_contributions
    from ches_filter.scores import ches, ln_ches

    model = tiny_llama()
    prompt = [5, 17, 3, 44]
    chosen_resp, rejected_resp = [9, 12, 30, 2], [9, 12, 31, 60, 61, 2]
    P = len(prompt)

    def span(resp):
        return SequenceSpan(ids=tuple(prompt + resp), start=P - 1, end=P - 1 + len(resp))

    pair = TokenizedPair(row_id=7, prompt_len=P, chosen=span(chosen_resp), rejected=span(rejected_resp),
                         chosen_response=tuple(chosen_resp), rejected_response=tuple(rejected_resp))
    contrib = pair_contributions(model, pair, decode=lambda i: f"<{i}>")
    # what the scoring pipeline stores: sums over the spans, then the spec's formulas
    s_plus = hidden_states(model, pair.chosen.ids)[P - 1 : P - 1 + 4].sum(axis=0)
    s_minus = hidden_states(model, pair.rejected.ids)[P - 1 : P - 1 + 6].sum(axis=0)
    expected_ches, expected_ln = ches(s_plus, s_minus), ln_ches(s_plus, s_minus, 4, 6)
    assert len(contrib.tokens) == 6
    assert sum(t.ches for t in contrib.tokens) == pytest.approx(expected_ches, rel=1e-9, abs=1e-9)
    assert sum(t.ln_ches for t in contrib.tokens) == pytest.approx(expected_ln, rel=1e-9, abs=1e-9)
    assert contrib.ches == pytest.approx(expected_ches, rel=1e-9, abs=1e-9)
    # position t is attributed to the token it predicts, ids[t + 1]: the rejected response
    assert [t.token_id for t in contrib.tokens] == rejected_resp
    assert [t.text for t in contrib.tokens] == [f"<{i}>" for i in rejected_resp]


def test_report_highlights_rejected_tokens_with_the_scoring_model(tmp_path, monkeypatch):
    rows = nasty_rows()
    folder = make_score_output(tmp_path / "s", rows)
    patch_load_model(monkeypatch, rows)
    data = build_report(folder, top=2, highlight="on")
    assert data["highlight"]["status"] == "computed"
    top = data["top"][0]
    tokens = top["contributions"]["tokens"]
    assert "".join(t["text"] for t in tokens[:-1]) == " " + rows[28]["rejected"] or \
        "".join(t["text"] for t in tokens[:-1]).strip() == rows[28]["rejected"]
    assert sum(t["ln_ches"] for t in tokens) == pytest.approx(top["contributions"]["ln_ches"])
    # the fixture's scores are made up, so the report must say the recomputation disagrees
    assert any("recomputed CHES differs" in n for n in data["notes"])
    html = render(data, "html")
    assert html.count('class="tok"') >= len(tokens) and XSS_SCRIPT not in html
