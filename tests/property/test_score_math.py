"""Property tests of the score math (ches_filter.scores) against plain numpy and reference.py.

Every formula is checked on random vectors: CHES of a response with itself is 0 exactly, the
fast formulas agree with the textbook ones (``<S+,S-> - ||S+||²`` with an exactly rounded sum),
and the reductions happen in float64 whatever the input dtype.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ches_filter import reference, scores
from ches_filter.records import PairSums, SequenceSpan, Status, TokenizedPair

quick = settings(max_examples=100, deadline=None)

# Tiny magnitudes flushed to 0: their products underflow to subnormals, where scaling by a power
# of two is not exact (hypothesis found -5.7e-308); hidden states never live there.
finite = st.floats(
    min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=64
).map(lambda x: 0.0 if abs(x) < 1e-6 else x)
dims = st.integers(min_value=1, max_value=48)


@st.composite
def vector_pairs(draw, dtype=np.float64):
    dim = draw(dims)
    elements = finite if dtype == np.float64 else st.floats(-1e4, 1e4, width=32)
    a = draw(arrays(dtype, dim, elements=elements))
    b = draw(arrays(dtype, dim, elements=elements))
    return a, b


counts = st.integers(min_value=1, max_value=4096)
token_ids = st.lists(st.integers(min_value=0, max_value=9), max_size=24)


def textbook_ches(a, b) -> float:
    """<a, b> - ||a||², each inner product summed exactly (math.fsum) from float64 products."""
    return reference.inner(a.tolist(), b.tolist()) - reference.inner(a.tolist(), a.tolist())


def tolerance(a, b) -> float:
    """Rounding bound of a float64 dot product: dim · eps · Σ|a_i b_i| (+ the same for ||a||²)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    scale = float(np.abs(a * b).sum() + (a * a).sum())
    return 4 * len(a) * np.finfo(np.float64).eps * scale + 1e-300


def tokenized(n_plus: int, n_minus: int, response_plus=(1,), response_minus=(2,)) -> TokenizedPair:
    prompt = (5, 6, 7)
    return TokenizedPair(
        row_id=3,
        prompt_len=len(prompt),
        chosen=SequenceSpan(prompt + (0,) * n_plus, start=2, end=2 + n_plus),
        rejected=SequenceSpan(prompt + (1,) * n_minus, start=2, end=2 + n_minus),
        chosen_response=tuple(response_plus),
        rejected_response=tuple(response_minus),
        truncated=True,
    )


# -- CHES of a response with itself ----------------------------------------------------------


@quick
@given(vector_pairs())
def test_ches_of_a_response_with_itself_is_exactly_zero(pair):
    y, _ = pair
    assert scores.ches(y, y) == 0.0
    assert scores.ln_ches(y, y, 7, 7) == 0.0


@quick
@given(vector_pairs(), counts)
def test_score_pair_on_equal_sums_gives_zero(pair, n):
    y, last = pair
    sums = PairSums(
        row_id=3, sum_chosen=y, sum_rejected=y.copy(), last_chosen=last, last_rejected=last
    )
    result = scores.score_pair(tokenized(n, n, (4, 5), (4, 5)), sums)
    assert result.status is Status.OK
    assert result.ches == 0.0 and result.ln_ches == 0.0 and result.edit_distance == 0.0
    assert result.dot_chosen_rejected == result.sq_norm_chosen == result.sq_norm_rejected


def test_score_identical_is_zero_and_flagged():
    result = scores.score_identical(tokenized(3, 3, (4,), (4,)), status=Status.IDENTICAL, reason="same")
    assert (result.ches, result.ln_ches, result.edit_distance) == (0.0, 0.0, 0.0)
    assert result.status is Status.IDENTICAL and result.reason == "same"
    assert result.last_hidden_inner is None and result.dot_chosen_rejected is None
    assert (result.prompt_tokens, result.chosen_tokens, result.rejected_tokens) == (3, 3, 3)


# -- agreement with the textbook formulas ------------------------------------------------------


@quick
@given(vector_pairs())
def test_ches_equals_the_textbook_formula(pair):
    a, b = pair
    assert abs(scores.ches(a, b) - textbook_ches(a, b)) <= tolerance(a, b)


@quick
@given(vector_pairs(), counts, counts)
def test_ln_ches_is_ches_of_the_mean_states(pair, n_plus, n_minus):
    a, b = pair
    mean_a, mean_b = a / n_plus, b / n_minus
    expected = textbook_ches(mean_a, mean_b)
    assert abs(scores.ln_ches(a, b, n_plus, n_minus) - expected) <= tolerance(mean_a, mean_b)
    # and the reference's own spelling: <S+,S->/(n+ n-) - ||S+||²/n+²
    spelled = reference.inner(a.tolist(), b.tolist()) / (n_plus * n_minus) - reference.inner(
        a.tolist(), a.tolist()
    ) / (n_plus * n_plus)
    assert abs(scores.ln_ches(a, b, n_plus, n_minus) - spelled) <= 2 * tolerance(mean_a, mean_b)


@quick
@given(vector_pairs())
def test_ln_ches_with_one_token_each_is_ches(pair):
    a, b = pair
    assert scores.ln_ches(a, b, 1, 1) == scores.ches(a, b)


@quick
@given(vector_pairs(), st.sampled_from([0.5, 2.0, 4.0, 0.25]), counts, counts)
def test_scaling_the_states_scales_the_scores_quadratically(pair, c, n_plus, n_minus):
    # powers of two scale exactly in binary floating point
    a, b = pair
    assert scores.ches(c * a, c * b) == c * c * scores.ches(a, b)
    assert scores.ln_ches(c * a, c * b, n_plus, n_minus) == c * c * scores.ln_ches(
        a, b, n_plus, n_minus
    )
    assert scores.last_hidden_inner(c * a, c * b) == c * c * scores.last_hidden_inner(a, b)


@quick
@given(vector_pairs(), st.integers(1, 64), st.integers(1, 64), st.integers(2, 16))
def test_ln_ches_is_invariant_to_repeating_the_responses(pair, n_plus, n_minus, k):
    """k copies of each response: sums k times larger, k times more tokens, same ln_ches."""
    a, b = pair
    once = scores.ln_ches(a, b, n_plus, n_minus)
    repeated = scores.ln_ches(k * a, k * b, k * n_plus, k * n_minus)
    assert abs(repeated - once) <= tolerance(a / n_plus, b / n_minus) + 1e-12 * abs(once)


@quick
@given(vector_pairs())
def test_last_hidden_inner_is_the_symmetric_inner_product(pair):
    a, b = pair
    expected = reference.inner(a.tolist(), b.tolist())
    assert abs(scores.last_hidden_inner(a, b) - expected) <= tolerance(a, b)
    assert scores.last_hidden_inner(a, b) == scores.last_hidden_inner(b, a)


@quick
@given(token_ids, token_ids)
def test_edit_distance_equals_the_reference_levenshtein(a, b):
    longest = max(len(a), len(b))
    expected = reference.levenshtein(a, b) / longest if longest else 0.0
    assert scores.edit_distance(a, b) == expected
    assert scores.edit_distance(b, a) == expected
    assert 0.0 <= expected <= 1.0
    assert (expected == 0.0) == (a == b)


@quick
@given(vector_pairs(), counts, counts, token_ids, token_ids)
def test_score_pair_columns_agree_with_each_other(pair, n_plus, n_minus, r_plus, r_minus):
    a, b = pair
    sums = PairSums(row_id=3, sum_chosen=a, sum_rejected=b, last_chosen=b, last_rejected=a)
    result = scores.score_pair(tokenized(n_plus, n_minus, r_plus, r_minus), sums)
    assert abs(result.ches - (result.dot_chosen_rejected - result.sq_norm_chosen)) <= tolerance(
        a, b
    )
    assert result.sq_norm_rejected == float(np.dot(b, b))
    assert result.ln_ches == scores.ln_ches(a, b, n_plus, n_minus)
    assert result.last_hidden_inner == scores.last_hidden_inner(b, a)
    assert result.edit_distance == scores.edit_distance(r_plus, r_minus)
    assert (result.chosen_tokens, result.rejected_tokens, result.prompt_tokens) == (
        n_plus,
        n_minus,
        3,
    )
    assert result.truncated is True and result.row_id == 3 and result.reason is None


# -- float64 reductions --------------------------------------------------------------------------


@quick
@given(vector_pairs(dtype=np.float32))
def test_float32_inputs_are_reduced_in_float64(pair):
    a, b = pair
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert scores.ches(a, b) == scores.ches(a64, b64)
    assert scores.ln_ches(a, b, 3, 5) == scores.ln_ches(a64, b64, 3, 5)
    assert scores.last_hidden_inner(a, b) == scores.last_hidden_inner(a64, b64)
    for value in (scores.ches(a, b), scores.ln_ches(a, b, 3, 5), scores.last_hidden_inner(a, b)):
        assert type(value) is float


def test_cancellation_that_float32_would_lose():
    """Large, nearly equal terms: float32 arithmetic gives 0 here, float64 the right answer."""
    s_plus = np.array([4096.0, 1.0], dtype=np.float32)
    s_minus = np.array([4096.0, 1.0 + 2.0**-10], dtype=np.float32)  # exact in float32
    exact = 2.0**-10  # <S+, S- - S+> = 1 · 2^-10
    in_float32 = np.float32(np.dot(s_plus, s_minus)) - np.float32(np.dot(s_plus, s_plus))
    assert in_float32 != exact  # what a float32 reduction would report
    assert scores.ches(s_plus, s_minus) == exact
    assert math.isclose(scores.ln_ches(s_plus, s_minus, 1, 1), exact, rel_tol=0, abs_tol=1e-15)
