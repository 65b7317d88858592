"""The score formulas of ../shared/spec/ches.md, in float64, on already-summed hidden states.

Nothing here touches a model: the runner supplies S+, S- and the final hidden states, this
module turns them into numbers. Inner products are taken in float64 and ``ches`` is computed as
``<S+, S- - S+>`` rather than ``<S+, S-> - ||S+||²``, which limits cancellation between two
large, nearly equal terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from rapidfuzz.distance import Levenshtein

from . import score_registry
from .records import PairScores, PairSums, Status, TokenizedPair


def _f64(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector, dtype=np.float64)


def ches(sum_chosen: np.ndarray, sum_rejected: np.ndarray) -> float:
    """CHES = <S+, S-> - ||S+||², computed as <S+, S- - S+>."""
    s_plus, s_minus = _f64(sum_chosen), _f64(sum_rejected)
    return float(np.dot(s_plus, s_minus - s_plus))


def ln_ches(sum_chosen: np.ndarray, sum_rejected: np.ndarray, n_chosen: int, n_rejected: int) -> float:
    """Length-normalised CHES = <S+/n+, S-/n-> - ||S+/n+||² = <S+/n+, S-/n- - S+/n+>."""
    mean_plus = _f64(sum_chosen) / n_chosen
    mean_minus = _f64(sum_rejected) / n_rejected
    return float(np.dot(mean_plus, mean_minus - mean_plus))


def last_hidden_inner(last_chosen: np.ndarray, last_rejected: np.ndarray) -> float:
    """<h+_last, h-_last>: inner product of the hidden states at each sequence's final position."""
    return float(np.dot(_f64(last_chosen), _f64(last_rejected)))


def edit_distance(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> float:
    """Levenshtein distance between the response id sequences, divided by the longer length."""
    longest = max(len(chosen_ids), len(rejected_ids))
    if longest == 0:
        return 0.0
    return Levenshtein.distance(list(chosen_ids), list(rejected_ids)) / longest


#: Score columns checked for NaN and infinity: every float column of the registry.
FLOAT_COLUMNS: tuple[str, ...] = tuple(c.name for c in score_registry.COLUMNS if c.dtype == "float64")


def score_pair(tokenized: TokenizedPair, sums: PairSums) -> PairScores:
    """All score columns for one pair whose hidden states went through the model.

    A pair with any non-finite score (NaN or ±inf: hidden states that overflowed, e.g. in
    float16) gets status ``nonfinite``, a reason naming each such column and its value, and
    null in those columns (the finite ones are kept), so that it is never ranked and no NaN or
    infinity reaches a shard, a summary or a JSON document.
    """
    s_plus, s_minus = _f64(sums.sum_chosen), _f64(sums.sum_rejected)
    n_plus, n_minus = tokenized.chosen.n_summed, tokenized.rejected.n_summed
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are reported below
        scores = PairScores(
            row_id=tokenized.row_id,
            status=Status.OK,
            ches=ches(s_plus, s_minus),
            ln_ches=ln_ches(s_plus, s_minus, n_plus, n_minus),
            last_hidden_inner=last_hidden_inner(sums.last_chosen, sums.last_rejected),
            edit_distance=edit_distance(tokenized.chosen_response, tokenized.rejected_response),
            dot_chosen_rejected=float(np.dot(s_plus, s_minus)),
            sq_norm_chosen=float(np.dot(s_plus, s_plus)),
            sq_norm_rejected=float(np.dot(s_minus, s_minus)),
            prompt_tokens=tokenized.prompt_len,
            chosen_tokens=n_plus,
            rejected_tokens=n_minus,
            truncated=tokenized.truncated,
        )
    return without_nonfinite(scores)


def without_nonfinite(scores: PairScores) -> PairScores:
    """``scores`` unchanged when every score is finite; otherwise status ``nonfinite``.

    The non-finite columns become null and the reason names them with their values.
    """
    bad = {
        name: value
        for name in FLOAT_COLUMNS
        if (value := getattr(scores, name)) is not None and not math.isfinite(value)
    }
    if not bad:
        return scores
    listed = ", ".join(f"{name} = {value}" for name, value in bad.items())
    return replace(
        scores,
        status=Status.NONFINITE,
        reason=(
            f"non-finite score ({listed}): the hidden states overflowed or are not numbers "
            "(a float16 model? try --dtype float32); stored as null, never ranked"
        ),
        **{name: None for name in bad},
    )


def score_identical(tokenized: TokenizedPair, *, status: Status, reason: str) -> PairScores:
    """Scores of a degenerate pair whose summed hidden states are the same: no forward pass.

    S+ == S- (see :func:`ches_filter.records.same_summed_states`), so CHES and ln-CHES are 0
    exactly; they are recorded so that nothing downstream has to special-case them, and the
    status flags the pair as degenerate so it is never ranked as if it were informative. The
    edit distance and the token counts are computed as for any pair (the edit distance is not 0
    when the responses differ past the summed positions); ``last_hidden_inner`` and the three
    inner products need the model's hidden states and stay null.
    """
    return PairScores(
        row_id=tokenized.row_id,
        status=status,
        reason=reason,
        ches=0.0,
        ln_ches=0.0,
        last_hidden_inner=None,
        edit_distance=edit_distance(tokenized.chosen_response, tokenized.rejected_response),
        prompt_tokens=tokenized.prompt_len,
        chosen_tokens=tokenized.chosen.n_summed,
        rejected_tokens=tokenized.rejected.n_summed,
        truncated=tokenized.truncated,
    )
