"""Selection rules (pure) and ``filter_scores`` (shards in, shards out)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from score_fixtures import (
    NAN_SCORE_ROW,
    NULL_SCORE_ROW,
    ORIGINAL_COLUMNS,
    SPECIAL,
    make_score_output,
    synthetic_rows,
)

from ches_filter.data.shards import MANIFEST_NAME, SCORE_COLUMNS
from ches_filter.errors import DatasetError, OptionError, OutputError
from ches_filter.filtering import filter_scores
from ches_filter.selection import Rule, fraction_count, select


def arrays(scores, status=None, row_id=None):
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    return {
        "row_id": np.arange(n) if row_id is None else np.asarray(row_id),
        "status": np.asarray(status if status is not None else ["ok"] * n, dtype=object),
        "score": scores,
    }


def removed_ids(rule, data, **kw):
    sel = select(rule, **data, **kw)
    return sorted(int(r) for r in data["row_id"][~sel.keep])


SCORES = [0.5, 3.0, -1.0, 2.0, 2.0, 7.0, 0.0, 1.0]  # row ids 0..7; rows 3 and 4 tie


# ---------------------------------------------------------------------------- pure rules


def test_top_k_drops_the_highest_and_breaks_ties_by_row_id():
    data = arrays(SCORES)
    assert removed_ids(Rule("top_k", 2), data) == [1, 5]
    assert removed_ids(Rule("top_k", 3), data) == [1, 3, 5]  # 3 and 4 tie: lower row_id first
    sel = select(Rule("top_k", 3), **data)
    assert sel.cutoff == 2.0 and sel.kept_range == (-1.0, 2.0)


def test_top_k_zero_and_at_least_dataset_size():
    data = arrays(SCORES, status=["ok"] * 7 + ["identical"])
    zero = select(Rule("top_k", 0), **data)
    assert zero.keep.all() and zero.cutoff is None
    for k in (7, 8, 10_000):
        sel = select(Rule("top_k", k), **data)
        assert sorted(data["row_id"][sel.keep]) == [7]  # only the unscored row survives
        assert sel.counts()["removed_by_rule"] == 7 and sel.kept_range is None


def test_top_fraction_rounds_up_after_removing_float_noise():
    assert fraction_count(0.1, 30) == 3  # 0.1 * 30 = 3.0000000000000004 in floats
    assert fraction_count(0.05, 2312) == 116  # 115.6 -> 116
    assert fraction_count(0.5, 3) == 2
    assert fraction_count(1e-9, 10) == 1  # any F > 0 selects at least one pair
    assert fraction_count(0.0, 10) == 0 and fraction_count(1.0, 10) == 10
    assert fraction_count(0.3, 0) == 0
    data = arrays(SCORES)
    assert removed_ids(Rule("top_fraction", 0.25), data) == [1, 5]  # 0.25 * 8 = 2
    assert removed_ids(Rule("top_fraction", 0.26), data) == [1, 3, 5]  # 2.08 -> 3


def test_threshold_drops_strictly_above_and_edit_distance_below():
    data = arrays(SCORES)
    assert removed_ids(Rule("threshold", 2.0), data) == [1, 5]
    assert select(Rule("threshold", 2.0), **data).cutoff == 2.0
    edit = Rule("threshold", 0.5, by="edit_distance")
    assert removed_ids(edit, data) == [2, 6]  # lower distance = more similar = riskier


def test_keep_lowest_keeps_the_least_risky_fraction():
    data = arrays(SCORES)
    sel = select(Rule("keep_lowest", 0.25), **data)  # ceil(0.25 * 8) = 2 kept
    assert sorted(data["row_id"][sel.keep]) == [2, 6]
    assert sel.cutoff == 0.5  # the least risky removed pair
    # the same as top_k (n - kept) under the same order
    assert removed_ids(Rule("keep_lowest", 0.25), data) == removed_ids(Rule("top_k", 6), data)


def test_keep_lowest_on_edit_distance_keeps_the_largest_distances():
    data = arrays(SCORES)
    sel = select(Rule("keep_lowest", 0.25, by="edit_distance"), **data)
    assert sorted(data["row_id"][sel.keep]) == [1, 5]


def test_quantile_window_centres_on_the_quantile():
    data = arrays(np.arange(10, dtype=float))  # least risky first: rows 0..9
    kept = lambda q, n: sorted(data["row_id"][select(Rule("quantile_window", q, n=n), **data).keep])  # noqa: E731
    assert kept(0.5, 2) == [4, 5]
    assert kept(0.0, 3) == [0, 1, 2]  # clamped at the low end
    assert kept(1.0, 3) == [7, 8, 9]  # clamped at the high end
    assert kept(0.5, 0) == []
    assert kept(0.5, 50) == list(range(10))


def test_unscored_and_nan_rows_are_never_ranked():
    data = arrays([9.0, np.nan, 0.0, 0.0, 5.0],
                  status=["ok", "ok", "identical", "truncated_identical", "ok"])
    sel = select(Rule("top_k", 10), **data)
    assert sorted(data["row_id"][sel.keep]) == [1, 2, 3]  # kept by default, never removed by rank
    assert sel.n_ranked == 2 and sel.n_unscored == 3
    dropped = select(Rule("top_k", 0), **data, keep_unscored=False)
    assert sorted(data["row_id"][dropped.keep]) == [0, 4]
    assert dropped.counts()["unscored_dropped"] == 3


def test_rule_validation():
    with pytest.raises(OptionError):
        Rule("top_k", 1.5)
    with pytest.raises(OptionError):
        Rule("top_k", -1)
    with pytest.raises(OptionError):
        Rule("keep_lowest", 1.5)
    with pytest.raises(OptionError):
        Rule("quantile_window", 0.5)  # needs n
    with pytest.raises(OptionError):
        Rule("top_k", 3, n=2)
    with pytest.raises(OptionError):
        Rule("top_k", 3, by="perplexity")
    with pytest.raises(OptionError):
        Rule("threshold", float("nan"))


rules = st.one_of(
    st.builds(Rule, st.just("top_k"), st.integers(0, 40)),
    st.builds(Rule, st.just("top_fraction"), st.floats(0, 1)),
    st.builds(Rule, st.just("keep_lowest"), st.floats(0, 1)),
    st.builds(Rule, st.just("threshold"), st.floats(-3, 3)),
    st.builds(lambda q, n: Rule("quantile_window", q, n=n), st.floats(0, 1), st.integers(0, 40)),
)


@settings(max_examples=60, deadline=None)
@given(
    rule=rules,
    scores=st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, np.nan]), max_size=30),
    seed=st.integers(0, 2**16),
)
def test_selection_is_invariant_to_row_order(rule, scores, seed):
    data = arrays(scores)
    perm = np.random.default_rng(seed).permutation(len(scores))
    shuffled = {k: v[perm] for k, v in data.items()}
    assert removed_ids(rule, data) == removed_ids(rule, shuffled)


# ---------------------------------------------------------------------------- filter_scores


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    return make_score_output(tmp_path_factory.mktemp("scores") / "scores")


def read_rows(folder):
    return pq.read_table(sorted((folder / "data").glob("*.parquet"))).to_pylist()


def originals(row):
    return {c: row[c] for c in ORIGINAL_COLUMNS}


def test_filter_writes_input_columns_and_values_and_partitions_the_input(scores_dir, tmp_path):
    out, rem = tmp_path / "kept", tmp_path / "removed"
    result = filter_scores(scores_dir, output=out, rule=Rule("top_k", 5), removed=rem,
                           batch_size=3, rows_per_shard=7, report=False)
    source = [originals(r) for r in synthetic_rows()]
    kept, removed = read_rows(out), read_rows(rem)
    for rows in (kept, removed):
        assert all(tuple(r) == ORIGINAL_COLUMNS for r in rows)
    assert len(kept) == 35 and len(removed) == 5
    assert sorted(kept + removed, key=lambda r: r["id"]) == source  # kept ∪ removed = input
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)  # input order preserved
    assert {r["id"] - 1000 for r in removed} == {28, 29, 16, 4, 5}
    assert pq.read_schema(next((out / "data").glob("*.parquet"))).names == list(ORIGINAL_COLUMNS)
    assert result.counts["kept"] == 35 and len(list((out / "data").glob("*.parquet"))) == 5


def test_filtered_output_loads_with_datasets(scores_dir, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "kept"
    filter_scores(scores_dir, output=out, rule=Rule("keep_lowest", 0.05))
    ds = load_dataset("parquet", data_dir=str(out))
    assert list(ds) == ["train"]
    assert ds["train"].column_names == list(ORIGINAL_COLUMNS)
    # ceil(0.05 * 34 ranked) = 2 kept + 6 unscored kept by default
    assert ds["train"].num_rows == 8
    by_id = {r["id"]: originals(r) for r in synthetic_rows()}
    for row in ds["train"]:
        assert row == by_id[row["id"]]


def test_keep_scores_and_drop_unscored(scores_dir, tmp_path):
    out = tmp_path / "kept"
    result = filter_scores(scores_dir, output=out, rule=Rule("top_k", 0), keep_scores=True,
                           keep_unscored=False, report=False)
    rows = read_rows(out)
    assert tuple(rows[0]) == ORIGINAL_COLUMNS + SCORE_COLUMNS
    assert {r["status"] for r in rows} == {"ok"}
    unscored = set(SPECIAL) | {NULL_SCORE_ROW, NAN_SCORE_ROW}
    assert {r["row_id"] for r in rows} == set(range(40)) - unscored
    assert result.counts["unscored_dropped"] == len(unscored)


def test_manifest_records_rule_cutoff_counts_and_fingerprints(scores_dir, tmp_path):
    out = tmp_path / "kept"
    filter_scores(scores_dir, output=out, rule=Rule("top_fraction", 0.1), removed=tmp_path / "r")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["rule"]["kind"] == "top_fraction" and manifest["by"] == "ln_ches"
    assert manifest["counts"]["removed_by_rule"] == 4  # ceil(0.1 * 34)
    assert manifest["counts"]["kept"] + manifest["counts"]["removed"] == 40
    assert manifest["cutoff"] == pytest.approx(1.8186, abs=1e-3)
    assert manifest["input"]["fingerprint"] == "feedfacecafebeef"
    assert len(manifest["scores"]["fingerprint"]) == 16
    assert manifest["input"]["columns"] == list(ORIGINAL_COLUMNS)
    assert {p.name for p in out.iterdir()} >= {"data", MANIFEST_NAME, "report.html", "report.md",
                                               "report.json"}
    again = tmp_path / "again"
    filter_scores(scores_dir, output=again, rule=Rule("top_fraction", 0.1), report=False)
    assert json.loads((again / MANIFEST_NAME).read_text())["scores"]["fingerprint"] == \
        manifest["scores"]["fingerprint"]
    assert read_rows(again) == read_rows(out)  # a rerun selects the same rows


def test_filter_refuses_bad_paths(scores_dir, tmp_path):
    with pytest.raises(OutputError):
        filter_scores(scores_dir, output=scores_dir, rule=Rule("top_k", 1), overwrite=True)
    with pytest.raises(OutputError):
        filter_scores(scores_dir, output=tmp_path / "a", removed=tmp_path / "a", rule=Rule("top_k", 1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputError):
        filter_scores(scores_dir, output=tmp_path / "full", rule=Rule("top_k", 1))
    with pytest.raises(DatasetError):
        filter_scores(tmp_path / "nope", output=tmp_path / "b", rule=Rule("top_k", 1))
