"""Non-finite scores get status ``nonfinite``, null values and a reason; never ranked (#12, 3.3).

First on sums fed straight to the scorer (no model), then end to end with a real overflow: a
tiny Llama whose final norm weight is 1e6, loaded in float16, where every hidden state
exceeds float16's largest value (65504) and becomes infinite.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from ches_filter import scores
from ches_filter.records import PairSums, SequenceSpan, Status, TokenizedPair

SUMS = ("ches", "ln_ches", "dot_chosen_rejected", "sq_norm_chosen", "sq_norm_rejected")


def tokenized() -> TokenizedPair:
    prompt = (5, 6, 7)
    return TokenizedPair(
        row_id=9,
        prompt_len=3,
        chosen=SequenceSpan(prompt + (1, 2), start=2, end=4),
        rejected=SequenceSpan(prompt + (1, 3, 4), start=2, end=5),
        chosen_response=(1, 2),
        rejected_response=(1, 3, 4),
    )


def sums(s_plus, s_minus, last_plus=(1.0, 0.0), last_minus=(2.0, 0.0)) -> PairSums:
    return PairSums(9, *(np.asarray(v, dtype=np.float64) for v in (s_plus, s_minus, last_plus, last_minus)))


# Which columns each case makes non-finite, worked out by hand from the definitions:
# S+ = (nan, 1): every inner product with S+ is nan; ||S-||² and <h+_last, h-_last> are finite.
# S- = (inf, 0), S+ = (1, 1): <S+,S-> = ||S-||² = inf, so ches and ln_ches are inf; ||S+||² = 2.
# last states (inf, 0) and (2, 0): only last_hidden_inner = inf.
CASES = [
    (sums((math.nan, 1.0), (1.0, 2.0)), {"ches", "ln_ches", "dot_chosen_rejected", "sq_norm_chosen"}),
    (sums((1.0, 1.0), (math.inf, 0.0)), {"ches", "ln_ches", "dot_chosen_rejected", "sq_norm_rejected"}),
    (sums((1.0, 1.0), (1.0, 2.0), last_plus=(math.inf, 0.0)), {"last_hidden_inner"}),
]


@pytest.mark.parametrize(("pair_sums", "bad"), CASES)
def test_non_finite_sums_give_status_nonfinite(pair_sums, bad):
    result = scores.score_pair(tokenized(), pair_sums)
    assert result.status is Status.NONFINITE
    for name in scores.FLOAT_COLUMNS:
        value = getattr(result, name)
        if name in bad:
            assert value is None, name
            assert f"{name} = " in result.reason, (name, result.reason)
        else:
            assert value is not None and math.isfinite(value), name
            assert f"{name} = " not in result.reason
    # the finite columns are the plain values: e.g. the edit distance of (1, 2) vs (1, 3, 4) is 2/3
    assert result.edit_distance == pytest.approx(2 / 3)
    assert (result.prompt_tokens, result.chosen_tokens, result.rejected_tokens) == (3, 2, 3)
    assert "never ranked" in result.reason


def test_finite_sums_stay_ok():
    result = scores.score_pair(tokenized(), sums((1.0, 1.0), (1.0, 2.0)))
    assert result.status is Status.OK and result.reason is None
    # <S+, S-> - ||S+||² = 3 - 2; ln: 3/(2·3) - 2/4
    assert (result.ches, result.ln_ches) == (pytest.approx(1.0), pytest.approx(0.0))


# -- end to end: a float16 overflow ------------------------------------------------------------


@pytest.fixture(scope="module")
def overflowing_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with its final norm weight scaled to 1e6: finite in float32, not in float16."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_llama_dir))
    with torch.no_grad():
        model.norm.weight.fill_(1e6)
    folder = tmp_path_factory.mktemp("overflowing-llama")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_llama_dir)).save_pretrained(folder)
    return folder


ROWS = [
    {"prompt": "What colour is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
    {"prompt": "2 + 2 =", "chosen": "4", "rejected": "5"},
    {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."},
]


def test_a_float16_overflow_end_to_end(overflowing_dir, tmp_path):
    from ches_filter import Rule, build_report, filter_scores, score_dataset
    from ches_filter.report import render_json

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    common = {"model": str(overflowing_dir), "device": "cpu"}
    # float32: huge but finite scores, ranked as usual
    fine = score_dataset(str(data), output=tmp_path / "fp32", dtype="float32", **common)
    assert fine.summary["by_status"] == {"ok": 2, "identical": 1}

    result = score_dataset(str(data), output=tmp_path / "fp16", dtype="float16", **common)
    assert result.summary["by_status"] == {"nonfinite": 2, "identical": 1}
    assert result.manifest["counts"]["scored"] == 0
    json.dumps(result.summary, allow_nan=False)  # what --json prints: no NaN or infinity
    rows = [row for shard in result.shards for row in pq.read_table(shard).to_pylist()]
    for row in rows[:2]:
        assert row["status"] == "nonfinite", row
        assert "ches = " in row["reason"] and "never ranked" in row["reason"]
        for name in SUMS:
            assert row[name] is None, (name, row)
        assert row["edit_distance"] is not None and row["chosen_tokens"] > 0
    assert rows[2]["status"] == "identical"

    # filter: nothing is rankable, so the rule removes nothing; the rows count as unscored
    for keep_unscored, kept_rows in ((True, 3), (False, 0)):
        out = tmp_path / f"kept-{keep_unscored}"
        filtered = filter_scores(
            tmp_path / "fp16", output=out, rule=Rule("top_k", 1), keep_unscored=keep_unscored, report=False
        )
        assert (filtered.selection.n_ranked, filtered.selection.n_unscored) == (0, 3), filtered.counts
        written = sum(pq.read_metadata(p).num_rows for p in (out / "data").glob("*.parquet"))
        assert written == kept_rows, filtered.counts

    report = build_report(tmp_path / "fp16", top=5)
    counts = report["counts"]
    assert (counts["scored"], counts["ranked"], counts["unranked"]) == (0, 0, 3), counts
    assert counts["by_status"]["nonfinite"] == 2
    text = render_json(report)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)  # valid JSON
