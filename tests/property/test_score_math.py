"""Property tests of the score math (ches_filter.scores) against an exact oracle.

The oracle is rational arithmetic (``fractions.Fraction``: every float64 input is a rational
number, so sums and products of them are exact), written as the spec spells the scores
(``<S+,S-> - ||S+||²``), not as the code computes them (``<S+, S- - S+>`` with numpy). Each
float64 result must be within the rounding bound of its own computation (derived at
``dot_bound``) of the exact value; properties that need no oracle (CHES of a response with
itself is 0, exact scaling by powers of two, symmetry) are checked as such.
"""

from __future__ import annotations

import math
from fractions import Fraction

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

# -- the exact oracle and the rounding bounds ------------------------------------------------

U64 = 2.0**-53  # float64's unit roundoff


def exact_inner(a, b) -> Fraction:
    return sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b, strict=True)), Fraction(0))


def exact_ches(a, b) -> Fraction:
    return exact_inner(a, b) - exact_inner(a, a)


def exact_ln_ches(a, b, n_plus: int, n_minus: int) -> Fraction:
    return exact_inner(a, b) / (n_plus * n_minus) - exact_inner(a, a) / (n_plus * n_plus)


def dot_bound(a, b) -> float:
    """|fl(<a, b - a>) - <a, b - a>| for float64 vectors of dimension d.

    A dot product in any summation order errs by at most γ_d·Σ|x_i y_i|, γ_d = d·u/(1 - d·u)
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1); the rounded b - a adds
    u·Σ|a_i||b_i - a_i|; |b_i - a_i| <= |a_i| + |b_i|. Twice (d + 1)·u covers γ_d, the extra u
    and the second-order terms. A plain dot product <a, b> is within the same bound.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 2 * (len(a) + 1) * U64 * float((np.abs(a) * (np.abs(a) + np.abs(b))).sum())


def ln_bound(a, b, n_plus: int, n_minus: int) -> float:
    """As ``dot_bound`` for the means, which add one rounding (the division) per coordinate."""
    return 2 * dot_bound(np.asarray(a, dtype=np.float64) / n_plus, np.asarray(b, dtype=np.float64) / n_minus)


def close(value: float, exact: Fraction, bound: float) -> bool:
    return abs(Fraction(value) - exact) <= Fraction(bound)


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


# -- agreement with the exact values ----------------------------------------------------------


@quick
@given(vector_pairs())
def test_ches_equals_the_exact_value(pair):
    a, b = pair
    assert close(scores.ches(a, b), exact_ches(a, b), dot_bound(a, b))


@quick
@given(vector_pairs(), counts, counts)
def test_ln_ches_equals_the_exact_value(pair, n_plus, n_minus):
    a, b = pair
    value = scores.ln_ches(a, b, n_plus, n_minus)
    assert close(value, exact_ln_ches(a, b, n_plus, n_minus), ln_bound(a, b, n_plus, n_minus))


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
    """k copies of each response: sums k times larger, k times more tokens, same ln_ches.

    Each value is within ``ln_bound`` of the exact one; k·a rounds once more per coordinate
    (at most one more ``ln_bound``)."""
    a, b = pair
    once = scores.ln_ches(a, b, n_plus, n_minus)
    repeated = scores.ln_ches(k * a, k * b, k * n_plus, k * n_minus)
    assert abs(repeated - once) <= 3 * ln_bound(a, b, n_plus, n_minus)


@quick
@given(vector_pairs())
def test_last_hidden_inner_is_the_exact_inner_product(pair):
    a, b = pair
    assert close(scores.last_hidden_inner(a, b), exact_inner(a, b), dot_bound(a, b))
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
def test_score_pair_equals_the_exact_values(pair, n_plus, n_minus, r_plus, r_minus):
    a, b = pair
    last_plus, last_minus = b[::-1].copy(), a[::-1].copy()
    sums = PairSums(row_id=3, sum_chosen=a, sum_rejected=b, last_chosen=last_plus, last_rejected=last_minus)
    result = scores.score_pair(tokenized(n_plus, n_minus, r_plus, r_minus), sums)
    assert close(result.ches, exact_ches(a, b), dot_bound(a, b))
    assert close(result.ln_ches, exact_ln_ches(a, b, n_plus, n_minus), ln_bound(a, b, n_plus, n_minus))
    assert close(result.dot_chosen_rejected, exact_inner(a, b), dot_bound(a, b))
    assert close(result.sq_norm_chosen, exact_inner(a, a), dot_bound(a, a))
    assert close(result.sq_norm_rejected, exact_inner(b, b), dot_bound(b, b))
    assert close(result.last_hidden_inner, exact_inner(last_plus, last_minus), dot_bound(last_plus, last_minus))
    longest = max(len(r_plus), len(r_minus))
    assert result.edit_distance == (reference.levenshtein(r_plus, r_minus) / longest if longest else 0.0)
    assert (result.chosen_tokens, result.rejected_tokens, result.prompt_tokens) == (
        n_plus,
        n_minus,
        3,
    )
    assert result.status is Status.OK and result.reason is None
    assert result.truncated is True and result.row_id == 3


# -- float64 reductions --------------------------------------------------------------------------


@quick
@given(vector_pairs(dtype=np.float32))
def test_float32_inputs_are_reduced_in_float64(pair):
    """Within float64's rounding bound of the exact value: a float32 reduction errs by ~2^-24
    of the terms, 2^29 times more, unless every product happens to be exact in float32."""
    a, b = pair
    values = (scores.ches(a, b), scores.ln_ches(a, b, 3, 5), scores.last_hidden_inner(a, b))
    assert close(values[0], exact_ches(a, b), dot_bound(a, b))
    assert close(values[1], exact_ln_ches(a, b, 3, 5), ln_bound(a, b, 3, 5))
    assert close(values[2], exact_inner(a, b), dot_bound(a, b))
    for value in values:
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
