"""How pairs become rows of tokens: the layouts of the fast engine, without torch.

A *unit* is the smallest piece of a row that attends only to itself:

* ``two_sequences``: one unit per sequence (``prompt ⊕ chosen`` and ``prompt ⊕ rejected``), the
  layout of the official code, each causal on its own;
* ``prefix_shared``: one unit per pair, ``shared ⊕ chosen suffix ⊕ rejected suffix``, where
  ``shared`` is the longest common prefix of the two sequences (the prompt, at least, whenever
  both really start with the same prompt ids; nothing when they don't, which makes the unit two
  independent sequences side by side). Position ids of the rejected suffix continue from the end
  of the shared prefix, and its tokens attend to the shared prefix and to themselves, never to
  the chosen suffix. Because the model is causal, the hidden state at a position ``t`` of a
  sequence depends only on its tokens ``0..t``, so the shared prefix computed once equals what
  each of the two forward passes would compute.

Each token carries a position id, a *branch* (0 shared, 1 chosen, 2 rejected; single sequences
are all branch 0) and its unit. Token ``q`` attends to token ``k`` iff they are in the same unit,
``pos[k] <= pos[q]`` (and ``pos[q] - pos[k] < window`` on sliding-window layers), and ``k`` is
shared or in ``q``'s own branch. :func:`attention_allowed` is that rule; masks are built from it.

*Rows* hold units side by side: one unit per row, right-padded (``two_sequences``,
``prefix_shared``), or several units per row (``packed``: first-fit decreasing, so almost no
padding). Batches of rows are bounded by a token budget counted with padding, longest first.

Hidden states are summed per *slot*: slot ``2i`` is S+ of pair ``i``, slot ``2i + 1`` is S-.

A *window prefix* goes one step further than prefix sharing, across pairs: the tokens that every
sequence of a window starts with (a chat template's system prompt and first role header: 24 of
the ~224 tokens a packed HH-RLHF pair costs with SmolLM2) are computed once per window, and
:func:`without_prefix` takes them off every unit. The unit's ``offset`` says how many were taken;
its queries then attend to the prefix's keys and values (held by the attention executor) before
their own, by the same rule, with the prefix as shared tokens at positions ``0..offset-1``
(:func:`attention_allowed` with ``prefix``). :func:`window_prefix` stops the prefix before the
first position any score reads, so no summed or final hidden state is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ches_filter.records import SequenceSpan, TokenizedPair

SHARED, CHOSEN, REJECTED = 0, 1, 2
MODES = ("two_sequences", "prefix_shared", "packed")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    limit = min(len(a), len(b))
    if limit == 0:
        return 0
    x = np.asarray(a[:limit], dtype=np.int64)
    y = np.asarray(b[:limit], dtype=np.int64)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else limit


@dataclass(frozen=True)
class Unit:
    """Tokens that attend only among themselves, and what is read from their hidden states.

    ``sums`` maps a slot to the unit-local indices whose hidden states are summed into it;
    ``lasts`` maps a slot to the unit-local index of its sequence's final position.
    """

    ids: np.ndarray  # int64, the unit's tokens
    positions: np.ndarray  # int64, position ids
    branch: np.ndarray  # int8: SHARED / CHOSEN / REJECTED
    sums: tuple[tuple[int, np.ndarray], ...]
    lasts: tuple[tuple[int, int], ...]
    shared: int  # tokens computed once for both sequences (0 for a single sequence)
    offset: int = 0  # leading tokens taken off (a window prefix, computed once for many units)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def plain(self) -> bool:
        """A single causal sequence (positions 0..n-1, one branch): no custom mask needed."""
        return self.offset == 0 and bool((self.branch == SHARED).all())

    def attended_pairs(self, window: int | None = None) -> int:
        """How many (query, key) pairs the attention rule allows: the useful attention work."""
        return int(attention_allowed(self.positions, self.branch, window, prefix=self.offset).sum())


def sequence_unit(span: SequenceSpan, slot: int) -> Unit:
    """One sequence on its own (the two-sequence layout)."""
    n = len(span.ids)
    return Unit(
        ids=np.asarray(span.ids, dtype=np.int64),
        positions=np.arange(n, dtype=np.int64),
        branch=np.zeros(n, dtype=np.int8),
        sums=((slot, np.arange(span.start, span.end, dtype=np.int64)),),
        lasts=((slot, n - 1),),
        shared=0,
    )


def pair_unit(pair: TokenizedPair, index: int) -> Unit:
    """One pair as ``shared ⊕ chosen suffix ⊕ rejected suffix`` (see the module docstring).

    The shared part is the longest common prefix of the two sequences, checked on the ids rather
    than trusted from ``prompt_len`` (the official convention tokenises the query and the full
    texts separately, so its prompt length need not be a common prefix).
    """
    a, b = pair.chosen.ids, pair.rejected.ids
    shared = common_prefix(a, b)
    la, lb = len(a), len(b)
    ids = np.asarray(tuple(a) + tuple(b[shared:]), dtype=np.int64)
    positions = np.concatenate(
        [np.arange(la, dtype=np.int64), np.arange(shared, lb, dtype=np.int64)]
    )
    branch = np.concatenate(
        [
            np.full(shared, SHARED, dtype=np.int8),
            np.full(la - shared, CHOSEN, dtype=np.int8),
            np.full(lb - shared, REJECTED, dtype=np.int8),
        ]
    )

    def rejected_index(t: np.ndarray) -> np.ndarray:  # position in b -> index in the unit
        return np.where(t < shared, t, la + t - shared)

    chosen_summed = np.arange(pair.chosen.start, pair.chosen.end, dtype=np.int64)
    rejected_summed = rejected_index(np.arange(pair.rejected.start, pair.rejected.end, dtype=np.int64))
    return Unit(
        ids=ids,
        positions=positions,
        branch=branch,
        sums=((2 * index, chosen_summed), (2 * index + 1, rejected_summed)),
        lasts=((2 * index, la - 1), (2 * index + 1, int(rejected_index(np.asarray(lb - 1))))),
        shared=shared,
    )


def attention_allowed(
    positions: np.ndarray, branch: np.ndarray, window: int | None = None, *, prefix: int = 0
) -> np.ndarray:
    """``[q, k]`` is True where query ``q`` may attend to key ``k`` within one unit.

    With ``prefix`` (a unit's ``offset``), the keys are the window prefix's ``prefix`` tokens
    (shared, at positions ``0..prefix-1``) followed by the unit's own: ``[n, prefix + n]``.
    """
    k_positions = np.concatenate([np.arange(prefix, dtype=positions.dtype), positions])
    k_branch = np.concatenate([np.full(prefix, SHARED, dtype=branch.dtype), branch])
    q_pos, k_pos = positions[:, None], k_positions[None, :]
    allowed = (k_pos <= q_pos) & ((k_branch[None, :] == SHARED) | (k_branch[None, :] == branch[:, None]))
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def window_prefix(pairs: Sequence[TokenizedPair]) -> int:
    """How many leading tokens every sequence of these pairs shares, before any position read.

    The longest common prefix of all the sequences, cut at the first position whose hidden
    state a score sums (``start``) and before every sequence's final position, so that each
    unit keeps at least one token and every state that is read is computed in its unit.
    """
    spans = [span for pair in pairs for span in (pair.chosen, pair.rejected)]
    if not spans:
        return 0
    first = spans[0].ids
    length = min(min(span.start for span in spans), min(len(span.ids) for span in spans) - 1)
    for span in spans[1:]:
        if length <= 0:
            break
        length = min(length, common_prefix(first[:length], span.ids[:length]))
    return max(0, length)


def without_prefix(unit: Unit, length: int) -> Unit:
    """The unit less its first ``length`` tokens, a window prefix computed once elsewhere.

    Those tokens must be shared tokens at positions ``0..length-1`` whose states nothing reads.
    """
    if length == 0:
        return unit
    lead_positions = unit.positions[:length]
    if (
        unit.offset
        or length >= len(unit)
        or not (unit.branch[:length] == SHARED).all()
        or not np.array_equal(lead_positions, np.arange(length))
        or any(int(index.min(initial=length)) < length for _, index in unit.sums)
        or any(index < length for _, index in unit.lasts)
    ):
        raise ValueError(f"a unit can't give up its first {length} tokens to a window prefix")
    return Unit(
        ids=unit.ids[length:],
        positions=unit.positions[length:],
        branch=unit.branch[length:],
        sums=tuple((slot, index - length) for slot, index in unit.sums),
        lasts=tuple((slot, index - length) for slot, index in unit.lasts),
        shared=unit.shared,
        offset=length,
    )


def units_for(pairs: Sequence[TokenizedPair], mode: str) -> list[Unit]:
    if mode == "two_sequences":
        return [
            sequence_unit(span, 2 * i + side)
            for i, pair in enumerate(pairs)
            for side, span in enumerate((pair.chosen, pair.rejected))
        ]
    if mode in ("prefix_shared", "packed"):
        return [pair_unit(pair, i) for i, pair in enumerate(pairs)]
    raise ValueError(f"unknown engine mode {mode!r}; one of {', '.join(MODES)}")


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group row indices, longest first, so that ``len(batch) * longest <= max_batch_tokens``.

    A row longer than the budget goes alone in its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: unit indices grouped into rows of at most ``capacity`` tokens.

    Units are placed longest first, each into the first row with room; a unit longer than the
    capacity gets a row of its own. Rows come out longest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        need = lengths[index]
        for r, free in enumerate(room):
            if need <= free:
                rows[r].append(index)
                room[r] -= need
                break
        else:
            rows.append([index])
            room.append(capacity - need)
    fill = [sum(lengths[i] for i in row) for row in rows]
    return [rows[r] for r in sorted(range(len(rows)), key=lambda r: (-fill[r], r))]


@dataclass
class RowBatch:
    """Rows of units ready for one forward pass, as host arrays (``[rows, length]``).

    Padding tokens get ``unit == -1 - column`` (a unit of their own, so they attend only to
    themselves and no softmax row is empty), position 0 and the shared branch.
    """

    units: list[list[Unit]]  # per row
    ids: np.ndarray
    positions: np.ndarray
    branch: np.ndarray
    unit: np.ndarray  # unit number within the row, or -1 - column for padding
    sum_tokens: np.ndarray  # flat token index (row * length + column) of each summed state
    sum_slots: np.ndarray  # the slot it is added to
    last_tokens: np.ndarray  # flat token index of each final state
    last_slots: np.ndarray
    real_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.ids.shape[0]), int(self.ids.shape[1]))

    @property
    def padded_tokens(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def plain(self) -> bool:
        """One plain sequence per row: a causal model with a padding mask needs nothing more."""
        return all(len(row) == 1 and row[0].plain for row in self.units)

    def unit_extents(self) -> list[tuple[int, int, int, Unit]]:
        """``(row, start, end, unit)`` of every unit, in row order."""
        extents = []
        for r, row in enumerate(self.units):
            offset = 0
            for unit in row:
                extents.append((r, offset, offset + len(unit), unit))
                offset += len(unit)
        return extents


def build_batch(rows: Sequence[Sequence[Unit]], pad_id: int) -> RowBatch:
    length = max(sum(len(u) for u in row) for row in rows)
    n = len(rows)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    positions = np.zeros((n, length), dtype=np.int64)
    branch = np.zeros((n, length), dtype=np.int8)
    unit_no = np.broadcast_to(-1 - np.arange(length, dtype=np.int64), (n, length)).copy()
    sum_tokens, sum_slots, last_tokens, last_slots = [], [], [], []
    real = 0
    for r, row in enumerate(rows):
        offset = 0
        for k, unit in enumerate(row):
            end = offset + len(unit)
            ids[r, offset:end] = unit.ids
            positions[r, offset:end] = unit.positions
            branch[r, offset:end] = unit.branch
            unit_no[r, offset:end] = k
            base = r * length + offset
            for slot, index in unit.sums:
                sum_tokens.append(base + index)
                sum_slots.append(np.full(index.shape[0], slot, dtype=np.int64))
            for slot, index in unit.lasts:
                last_tokens.append(base + index)
                last_slots.append(slot)
            offset = end
        real += offset
    return RowBatch(
        units=[list(row) for row in rows],
        ids=ids,
        positions=positions,
        branch=branch,
        unit=unit_no,
        sum_tokens=np.concatenate(sum_tokens) if sum_tokens else np.zeros(0, dtype=np.int64),
        sum_slots=np.concatenate(sum_slots) if sum_slots else np.zeros(0, dtype=np.int64),
        last_tokens=np.asarray(last_tokens, dtype=np.int64),
        last_slots=np.asarray(last_slots, dtype=np.int64),
        real_tokens=real,
    )


def plan(
    units: Sequence[Unit], *, mode: str, max_batch_tokens: int, row_tokens: int | None = None
) -> list[list[list[int]]]:
    """Batches of rows of unit indices: one unit per row, or packed rows of ``row_tokens``.

    Every batch holds at most ``max_batch_tokens`` tokens counted with padding, except a batch of
    a single row that is longer than the budget on its own. Longest batches come first.
    """
    lengths = [len(u) for u in units]
    if mode == "packed":
        rows = pack_rows(lengths, min(row_tokens or max_batch_tokens, max_batch_tokens))
    else:
        rows = [[i] for i in range(len(units))]
    row_lengths = [sum(lengths[i] for i in row) for row in rows]
    return [[rows[r] for r in batch] for batch in plan_batches(row_lengths, max_batch_tokens)]
