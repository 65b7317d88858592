"""The small record types that flow through the pipeline.

source row (dict) --layouts--> PreferencePair | RowProblem
PreferencePair --tokenization--> TokenizedPair | RowProblem
TokenizedPair --model.runner--> PairSums --scores--> PairScores
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Status(str, enum.Enum):
    """Why a row has (or lacks) scores. Every input row gets exactly one."""

    OK = "ok"
    IDENTICAL = "identical"  # equal ids wherever the summed states read them: ches is 0 exactly
    TRUNCATED_IDENTICAL = "truncated_identical"  # identical as above only once truncated
    NONFINITE = "nonfinite"  # a score came out NaN or infinite (e.g. a float16 overflow): nulled
    EMPTY_RESPONSE = "empty_response"  # empty or whitespace-only response (null: INVALID_FIELD)
    INVALID_FIELD = "invalid_field"  # a field is missing, null or of the wrong type
    AMBIGUOUS_PROMPT = "ambiguous_prompt"  # implicit prompt: chosen/rejected differ before the last turn
    CONTRADICTORY_LABEL = "contradictory_label"  # labels that pick no side, or both
    PROMPT_MISMATCH = "prompt_mismatch"  # prompt ids are not a prefix of the full rendering's ids
    PROMPT_TOO_LONG = "prompt_too_long"  # the prompt alone fills --max-length
    TOO_LONG = "too_long"  # longer than --max-length (the model's context) under --too-long skip
    EMPTY_PROMPT = "empty_prompt"  # no prompt tokens at all (the spec needs P >= 1)
    UNSUPPORTED_CONTENT = "unsupported_content"  # a non-text message part (image, audio, …)

    def __str__(self) -> str:  # so f-strings print "ok", not "Status.OK"
        return self.value


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair, normalised from any layout.

    Two renderings travel together because the tokenizer decides which one is used:
    ``prompt`` + ``chosen``/``rejected`` (messages) for chat templates, and ``prompt_text`` +
    ``chosen_text``/``rejected_text`` (plain text, concatenated as is) for tokenizers without one.
    """

    row_id: int
    prompt: tuple[Turn, ...]
    chosen: str
    rejected: str
    prompt_text: str
    chosen_text: str
    rejected_text: str


@dataclass(frozen=True)
class RowProblem:
    """A row that can't be scored: kept in the output with this status and reason."""

    row_id: int
    status: Status
    reason: str


@dataclass(frozen=True)
class SequenceSpan:
    """One model input and the positions whose hidden states are summed: ``[start, end)``."""

    ids: tuple[int, ...]
    start: int
    end: int

    @property
    def n_summed(self) -> int:
        return self.end - self.start

    @property
    def read_ids(self) -> tuple[int, ...]:
        """The ids the summed hidden states depend on: positions ``0 … end-1`` (causal model)."""
        return self.ids[: self.end]


def same_summed_states(chosen: SequenceSpan, rejected: SequenceSpan) -> bool:
    """Whether the two spans sum the same hidden states: equal spans over equal ids.

    A causal model's state at position t depends on ids ``0 … t`` only, so two sequences whose
    summed spans are equal and whose ids agree up to the span's end have S+ == S- exactly, even
    when they differ after it (the default convention never reads the final position, whose
    token is the response's last one).
    """
    return (chosen.start, chosen.end) == (rejected.start, rejected.end) and chosen.read_ids == rejected.read_ids


@dataclass(frozen=True)
class Degenerate:
    """Why a tokenised pair is scored without the model: its status and a sentence for people."""

    status: Status
    reason: str


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids ready for the model.

    ``chosen``/``rejected`` are full sequences (prompt ⊕ response). ``prompt_len`` is P.
    ``chosen_response``/``rejected_response`` are the response ids used for edit distance.
    ``degenerate`` (set by the tokenizer, see :meth:`degeneracy`) says why a pair whose summed
    states are equal never reaches the model.
    """

    row_id: int
    prompt_len: int
    chosen: SequenceSpan
    rejected: SequenceSpan
    chosen_response: tuple[int, ...]
    rejected_response: tuple[int, ...]
    truncated: bool = False
    truncation_collapsed: bool = False  # the summed states differed, but not once truncated
    degenerate: Degenerate | None = None

    @property
    def identical(self) -> bool:
        """The two sequences sum the same hidden states (ches = 0 exactly): see same_summed_states."""
        return same_summed_states(self.chosen, self.rejected)

    def degeneracy(self) -> Degenerate | None:
        """The status and reason of a pair scored without the model, None for a pair to run.

        The tokenizer's own verdict when it gave one (it knows what truncation did); otherwise
        ``identical`` when the summed states are the same.
        """
        if self.degenerate is not None:
            return self.degenerate
        if self.identical:
            return Degenerate(Status.IDENTICAL, identical_reason(self.chosen, self.rejected))
        return None

    @property
    def n_tokens(self) -> int:
        return len(self.chosen.ids) + len(self.rejected.ids)


@dataclass
class PairSums:
    """What the model contributes to a pair, in float64 on the host.

    ``sum_chosen``/``sum_rejected`` are S+ and S- (sums of last-layer hidden states over the
    summed span); ``last_chosen``/``last_rejected`` are the hidden states at each sequence's final
    position.
    """

    row_id: int
    sum_chosen: np.ndarray
    sum_rejected: np.ndarray
    last_chosen: np.ndarray
    last_rejected: np.ndarray


@dataclass(frozen=True)
class PairScores:
    """The per-pair score columns (see docs/scores.md). ``None`` where meaningless."""

    row_id: int
    status: Status
    reason: str | None = None
    ches: float | None = None
    ln_ches: float | None = None
    last_hidden_inner: float | None = None
    edit_distance: float | None = None
    dot_chosen_rejected: float | None = None
    sq_norm_chosen: float | None = None
    sq_norm_rejected: float | None = None
    prompt_tokens: int | None = None
    chosen_tokens: int | None = None
    rejected_tokens: int | None = None
    truncated: bool | None = None
    extras: dict[str, object] = field(default_factory=dict)


def identical_reason(chosen_span: SequenceSpan, rejected_span: SequenceSpan, *, limit: str | None = None) -> str:
    """Why two spans with equal summed states make a degenerate pair (``limit``: what cut them)."""
    cut = f"after {limit}, " if limit else ""
    chosen, rejected = chosen_span.ids, rejected_span.ids
    if chosen == rejected:
        return f"{cut}chosen and rejected are identical" + (": identical as scored" if limit else "")
    where = "their last token" if chosen[:-1] == rejected[:-1] else "tokens"
    return (
        f"{cut}chosen and rejected differ only in {where}, which no summed position reads "
        "(the final hidden state predicts nothing of the response): identical as scored"
    )
