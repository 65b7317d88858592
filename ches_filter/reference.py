"""The slow, obviously-correct implementation of ../shared/spec/ches.md.

One pair at a time, one sequence per forward pass (no batching, no padding, no masks), plain
Python loops over positions and coordinates, float64 throughout. Every fast path in ches-filter
is tested equal to this. Do not optimise it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .records import PairScores, SequenceSpan, Status, TokenizedPair


def hidden_states(model: Any, ids: Sequence[int]) -> list[list[float]]:
    """Last-layer hidden states (after the final norm) of one unpadded sequence, as float64."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        output = model(input_ids=input_ids, use_cache=False)
    states = output.last_hidden_state[0].to(torch.float64).cpu()
    return [[float(x) for x in row] for row in states.tolist()]


def summed_state(states: list[list[float]], span: SequenceSpan) -> list[float]:
    """S = Σ_{t=start}^{end-1} h_t, one position at a time."""
    total = [0.0] * len(states[0])
    for t in range(span.start, span.end):
        for i, value in enumerate(states[t]):
            total[i] += value
    return total


def inner(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        previous = current
    return previous[len(b)]


def reference_scores(model: Any, pair: TokenizedPair) -> PairScores:
    """Scores of one tokenized pair straight from the spec's definitions."""
    chosen_states = hidden_states(model, pair.chosen.ids)
    rejected_states = hidden_states(model, pair.rejected.ids)
    s_plus = summed_state(chosen_states, pair.chosen)
    s_minus = summed_state(rejected_states, pair.rejected)
    n_plus, n_minus = pair.chosen.n_summed, pair.rejected.n_summed
    dot = inner(s_plus, s_minus)
    sq_plus = inner(s_plus, s_plus)
    sq_minus = inner(s_minus, s_minus)
    longest = max(len(pair.chosen_response), len(pair.rejected_response))
    return PairScores(
        row_id=pair.row_id,
        status=Status.OK,
        ches=dot - sq_plus,
        ln_ches=dot / (n_plus * n_minus) - sq_plus / (n_plus * n_plus),
        last_hidden_inner=inner(chosen_states[-1], rejected_states[-1]),
        edit_distance=(levenshtein(pair.chosen_response, pair.rejected_response) / longest)
        if longest
        else 0.0,
        dot_chosen_rejected=dot,
        sq_norm_chosen=sq_plus,
        sq_norm_rejected=sq_minus,
        prompt_tokens=pair.prompt_len,
        chosen_tokens=n_plus,
        rejected_tokens=n_minus,
        truncated=pair.truncated,
    )
