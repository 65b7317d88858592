"""What the CLI commands used to decide themselves, now library functions: the rule from the
flags, a rule read back from a filter manifest, a report that follows a filter output."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from score_fixtures import make_score_output, synthetic_rows

from ches_filter.errors import OptionError
from ches_filter.filtering import filter_input, filter_scores
from ches_filter.report import report_for
from ches_filter.selection import Rule, rule_from_flags


def test_rule_from_flags_takes_exactly_one_rule() -> None:
    assert rule_from_flags(keep_lowest=0.05) == Rule("keep_lowest", 0.05)
    assert rule_from_flags(quantile_window=0.5, n=3, by="ches") == Rule("quantile_window", 0.5, n=3, by="ches")
    with pytest.raises(OptionError, match="exactly one"):
        rule_from_flags()
    with pytest.raises(OptionError, match=r"got --top-k, --threshold"):
        rule_from_flags(top_k=1, threshold=2.0)
    with pytest.raises(OptionError, match="--n only goes with --quantile-window"):
        rule_from_flags(top_k=1, n=3)


@pytest.mark.parametrize("rule", [Rule("top_k", 3), Rule("quantile_window", 0.25, n=4, by="edit_distance")])
def test_a_rule_survives_its_manifest_form(rule: Rule) -> None:
    assert Rule.from_dict(rule.to_dict()) == rule


def test_a_report_on_a_filter_output_follows_it_to_its_scores(tmp_path) -> None:
    scores = make_score_output(tmp_path / "scores", synthetic_rows(40))
    filter_scores(scores, output=tmp_path / "kept", rule=Rule("top_k", 4), report=False)
    data = report_for(tmp_path / "kept", top=10)
    assert data["filter"]["rule"]["kind"] == "top_k" and data["filter"]["counts"]["removed_by_rule"] == 4
    kept_ids = set(pq.read_table(tmp_path / "kept" / "data", columns=["id"]).column("id").to_pylist())
    # Independent check of the "removed" flags: a top pair is removed iff its row is not in the
    # kept shards (the synthetic rows' ``id`` is 1000 + their row number).
    flags = {p["row_id"]: p["removed"] for p in data["top"]}
    assert flags == {rid: 1000 + rid not in kept_ids for rid in flags}
    assert sum(flags.values()) == 4  # the 4 riskiest are the first 4 of the top 10
    plain = report_for(scores, top=10)
    assert plain["filter"] is None and [p["row_id"] for p in plain["top"]] == list(flags)


def test_filter_input_refuses_scoring_options_for_scores(tmp_path) -> None:
    scores = make_score_output(tmp_path / "scores", synthetic_rows(20))
    with pytest.raises(OptionError, match="--model, --scores-output only apply when scoring"):
        filter_input(scores, output=tmp_path / "o", rule=Rule("top_k", 1), scoring={"model": "x"},
                     scores_output=tmp_path / "s")
    result = filter_input(scores, output=tmp_path / "o", rule=Rule("top_k", 1), report=False,
                          scoring={"model": None})
    assert result.counts["removed_by_rule"] == 1 and np.sum(~result.selection.keep) == 1
