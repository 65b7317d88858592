"""The equivalence tolerance can fail: a fast path that is wrong by a little is caught.

``score_fixtures.assert_scores_close`` allows each score the error float32 justifies for it
(derived there). Here the real fast path's sums are mutated the way a plausible bug would:
one summed position dropped (an off-by-one in a span), or one sum off by 1e-3 of itself
(a wrong scale, a lost small term), and every mutated pair must fail on ``ches`` and
``ln_ches``, while the unmutated sums pass. One sum off by 1e-4 of itself, which the old rule
let through, must fail the comparison too (on whichever columns float32 can tell it by). On the bundled demo pairs scored by the default
model, the bound is also checked to be far below the old rule (1e-4 of the larger subtracted
term), which allowed ~15% of ``ches`` itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from score_fixtures import assert_scores_close, float32_tolerances, score_ratios
from test_batched_vs_reference import HANDWRITTEN, hh_rows, reference_of, to_pairs, tokenize

from ches_filter.model.runner import HiddenStateRunner
from ches_filter.records import PairSums, PreferencePair
from ches_filter.reference import hidden_states
from ches_filter.scores import score_pair

DEMO = Path(__file__).resolve().parents[2] / "ches_filter" / "examples" / "preference_pairs.jsonl"


def state_at(model, span, position: int) -> np.ndarray:
    return np.asarray(hidden_states(model, span.ids)[position], dtype=np.float64)


def mutations(model, pair, sums: PairSums) -> dict[str, PairSums]:
    """Plausible bugs in a fast path, applied to its real sums."""
    replace = dataclasses.replace
    chosen, rejected = pair.chosen, pair.rejected
    return {
        "chosen without its first summed position": replace(
            sums, sum_chosen=sums.sum_chosen - state_at(model, chosen, chosen.start)),
        "rejected without its last summed position": replace(
            sums, sum_rejected=sums.sum_rejected - state_at(model, rejected, rejected.end - 1)),
        "S+ off by 1e-3 of itself": replace(sums, sum_chosen=sums.sum_chosen * (1 + 1e-3)),
        "S- off by 1e-3 of itself": replace(sums, sum_rejected=sums.sum_rejected * (1 - 1e-3)),
        "S- off by 1e-4 of itself": replace(sums, sum_rejected=sums.sum_rejected * (1 + 1e-4)),
    }  # fmt: skip


def check_mutations_fail(loaded, pairs: list[PreferencePair]) -> None:
    encoded = tokenize(loaded, pairs)
    reference = reference_of(loaded, encoded)
    runner = HiddenStateRunner(loaded)  # the automatic engine: what `ches score` runs
    for pair, sums in zip(encoded, runner.run(encoded), strict=True):
        want, magnitudes = reference[pair.row_id]
        assert_scores_close(score_pair(pair, sums), want, magnitudes)  # the real sums pass
        for bug, wrong in mutations(loaded.model, pair, sums).items():
            ratios = score_ratios(score_pair(pair, wrong), want, magnitudes)
            if "1e-4" not in bug:  # caught by each score on its own
                assert ratios["ches"] > 1 and ratios["ln_ches"] > 1, (pair.row_id, bug, ratios)
            with pytest.raises(AssertionError, match="float32 bound"):
                assert_scores_close(score_pair(pair, wrong), want, magnitudes)


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_a_slightly_wrong_fast_path_fails_on_tiny_models(request, model_fixture):
    loaded = request.getfixturevalue(model_fixture)
    pairs = to_pairs(HANDWRITTEN) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(hh_rows(6))
    ]
    check_mutations_fail(loaded, pairs)


def demo_pairs() -> list[PreferencePair]:
    with open(DEMO, encoding="utf-8") as handle:
        return to_pairs([json.loads(line) for line in handle][:6])


def test_a_slightly_wrong_fast_path_fails_on_the_demo_pairs(smollm2):
    check_mutations_fail(smollm2, demo_pairs())


def test_the_bound_is_far_below_the_old_rule_on_the_demo_pairs(smollm2):
    """The old rule allowed 1e-4·max(|<S+,S->|, ||S+||²): 15% of ches on the first demo pair,
    80% on the second. The float32 bound is 5x to 9x tighter on each pair (2% and 10%)."""
    encoded = tokenize(smollm2, demo_pairs())
    reference = reference_of(smollm2, encoded)
    for pair in encoded:
        want, magnitudes = reference[pair.row_id]
        old = 1e-4 * max(abs(want.dot_chosen_rejected), want.sq_norm_chosen)
        new = float32_tolerances(magnitudes)["ches"]
        assert new < old / 5, (pair.row_id, new, old, want.ches)
    first, _ = reference[0]
    assert float32_tolerances(reference[0][1])["ches"] < 0.03 * abs(first.ches)
