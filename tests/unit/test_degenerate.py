"""Pairs whose summed hidden states are equal are flagged, whatever made them equal (#12, 3.2).

The summed positions of ``prompt ⊕ response`` are ``P-1 … P+n-2``; a causal model's state at
position t reads ids ``0 … t``, so the response's last token is never read under the default
convention. Two responses that agree on all but their last token (typically after
``--max-length`` cut them to the same length) have S+ == S- exactly: ches = 0 by construction,
not by similarity, and such a pair must never be ranked as ``ok``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ches_filter.pipeline import PairScorer
from ches_filter.records import (
    PreferencePair,
    SequenceSpan,
    Status,
    TokenizedPair,
    Turn,
    same_summed_states,
)
from ches_filter.reference import reference_scores
from ches_filter.tokenization import PairTokenizer, TokenizationOptions


def pair(prompt: str, chosen: str, rejected: str, row_id: int = 0) -> PreferencePair:
    return PreferencePair(row_id, (Turn("user", prompt),), chosen, rejected, prompt, chosen, rejected)


def causal_sum(ids: tuple[int, ...], start: int, end: int) -> np.ndarray:
    """An independent stand-in for a causal model: the state at t is a hash of ids[: t + 1]."""
    states = []
    for t in range(start, end):
        digest = hashlib.sha256(repr(ids[: t + 1]).encode()).digest()
        states.append(np.frombuffer(digest, dtype=np.uint8).astype(np.float64))
    return np.sum(states, axis=0)


SPANS = [
    # (chosen ids, rejected ids, start, end_chosen, end_rejected)
    ((1, 2, 3, 4), (1, 2, 3, 5), 1, 3, 3),  # differ in the unread final token
    ((1, 2, 3, 4), (1, 2, 3, 4), 1, 3, 3),  # equal
    ((1, 2, 3, 4), (1, 2, 9, 4), 1, 3, 3),  # differ at a read position
    ((1, 2, 3, 4), (1, 2, 3, 5), 1, 4, 4),  # final position summed (official): read
    ((1, 2, 3, 4), (1, 2, 3), 1, 3, 2),  # spans of different lengths
    ((7, 2, 3, 4), (1, 2, 3, 4), 1, 3, 3),  # differ before the span: the states read it
]


@pytest.mark.parametrize(("a", "b", "start", "end_a", "end_b"), SPANS)
def test_same_summed_states_iff_a_causal_model_sums_the_same(a, b, start, end_a, end_b):
    chosen, rejected = SequenceSpan(a, start, end_a), SequenceSpan(b, start, end_b)
    expected = end_a == end_b and np.array_equal(causal_sum(a, start, end_a), causal_sum(b, start, end_b))
    assert same_summed_states(chosen, rejected) is expected
    found = TokenizedPair(0, 2, chosen, rejected, a[2:], b[2:]).degeneracy()
    assert (found is not None) is expected
    if expected:
        assert found.status is Status.IDENTICAL
        assert ("last token" in found.reason) is (a != b), found.reason


@pytest.fixture(scope="module")
def smol(tiny_llama):
    return tiny_llama.tokenizer


# "It is blue." / "It is black, …" agree on "It is" and differ in their third token.
SKY = pair("What colour is the sky?", "It is blue.", "It is black, as far as I can tell.")


def test_cut_to_the_same_length_and_differing_in_the_last_kept_token(smol, tiny_llama):
    whole = PairTokenizer(smol).encode(SKY)
    assert whole.chosen_response[:2] == whole.rejected_response[:2]
    assert whole.chosen_response[2] != whole.rejected_response[2]
    limit = whole.prompt_len + 3
    cut = PairTokenizer(smol, TokenizationOptions(max_length=limit)).encode(SKY)
    assert cut.truncated and cut.chosen.ids != cut.rejected.ids
    assert cut.truncation_collapsed and cut.identical
    verdict = cut.degeneracy()
    assert verdict.status is Status.TRUNCATED_IDENTICAL
    assert f"after --max-length {limit}" in verdict.reason and "last token" in verdict.reason
    # the verdict is true of the model: the reference, one sequence at a time, sums the same
    # states (float32 states summed in float64; equal prefixes give equal states, so only the
    # rounding of two identical computations could differ: none expected, 1e-9 of the scale)
    ref = reference_scores(tiny_llama.model, cut)
    assert abs(ref.ches) <= 1e-9 * ref.sq_norm_chosen
    assert ref.dot_chosen_rejected == pytest.approx(ref.sq_norm_rejected, rel=1e-9)

    scorer = PairScorer(tiny_llama, TokenizationOptions(max_length=limit))
    [scored] = scorer.score([SKY])
    assert scorer.runner.stats.forward_calls == 0  # never reaches the model
    assert scored.status is Status.TRUNCATED_IDENTICAL and scored.reason == verdict.reason
    assert (scored.ches, scored.ln_ches, scored.truncated) == (0.0, 0.0, True)
    # the edit distance is still the responses' own: 1 substitution in 3 tokens
    assert scored.edit_distance == pytest.approx(1 / 3)
    assert (scored.chosen_tokens, scored.rejected_tokens) == (3, 3)


def test_one_more_token_makes_the_difference_read_and_the_pair_scored(smol, tiny_llama):
    limit = PairTokenizer(smol).encode(SKY).prompt_len + 4
    scorer = PairScorer(tiny_llama, TokenizationOptions(max_length=limit))
    [scored] = scorer.score([SKY])
    assert scored.status is Status.OK and scored.ches != 0.0


def test_official_convention_reads_the_final_position(smol, tiny_llama):
    """The official script sums through the final position: a last-token difference is read."""
    query = PairTokenizer(smol, TokenizationOptions(convention="official")).encode(SKY).prompt_len
    options = TokenizationOptions(convention="official", max_length=query + 3)
    cut = PairTokenizer(smol, options).encode(SKY)
    assert cut.truncated and cut.chosen.ids[:-1] == cut.rejected.ids[:-1]
    assert cut.chosen.ids[-1] != cut.rejected.ids[-1]
    assert cut.degeneracy() is None
    [scored] = PairScorer(tiny_llama, options).score([SKY])
    assert scored.status is Status.OK and scored.ches != 0.0
    # cut before the difference: equal ids everywhere, identical once truncated
    options = TokenizationOptions(convention="official", max_length=query + 2)
    [scored] = PairScorer(tiny_llama, options).score([SKY])
    assert scored.status is Status.TRUNCATED_IDENTICAL, scored.reason
    assert f"after --max-length {query + 2}, chosen and rejected are identical" in scored.reason


def test_equal_responses_stay_plain_identical_even_when_cut(smol, tiny_llama):
    same = pair("Say it.", "the same words " * 5, "the same words " * 5)
    limit = PairTokenizer(smol).encode(same).prompt_len + 3
    [scored] = PairScorer(tiny_llama, TokenizationOptions(max_length=limit)).score([same])
    assert scored.status is Status.IDENTICAL and scored.reason == "chosen and rejected are identical"
    assert scored.truncated is True and scored.edit_distance == 0.0
