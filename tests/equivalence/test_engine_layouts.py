"""The fast engine's layouts (ches_filter.model.packing), without a model.

Where each summed position and final position of the two sequences lands in a prefix-shared
unit, what the attention rule allows, and how units are packed into rows and rows into batches.
The model-level equality with the reference is in test_engine_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from ches_filter.model import attention as attn
from ches_filter.model import packing
from ches_filter.model.runner import attended_pairs
from ches_filter.records import SequenceSpan, TokenizedPair


def pair(prompt, chosen, rejected, *, official=False, row_id=0) -> TokenizedPair:
    """A pair in the default convention (span [P-1, P+n-1)) or the official one (to the end)."""
    p = len(prompt)

    def span(response):
        ids = tuple(prompt) + tuple(response)
        return SequenceSpan(ids, p - 1, len(ids) if official else p + len(response) - 1)

    return TokenizedPair(row_id, p, span(chosen), span(rejected), tuple(chosen), tuple(rejected))


def expand(unit: packing.Unit, slot: int) -> tuple[list[int], int]:
    """Token ids at the summed positions of a slot, and the id at its final position."""
    summed = dict(unit.sums)[slot]
    return [int(unit.ids[i]) for i in summed], int(unit.ids[dict(unit.lasts)[slot]])


@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected"),
    [
        ([1, 2, 3], [10, 11], [20, 21, 22]),
        ([1], [10], [20]),  # one-token prompt and responses
        ([1, 2], [10, 11, 12], [10, 11, 13]),  # responses share a prefix beyond the prompt
        ([1, 2], [10, 11], [10, 11, 12]),  # chosen is a prefix of rejected
        ([1, 2], [10, 11, 12], [10, 11]),  # rejected is a prefix of chosen
    ],
)
def test_pair_unit_reads_the_same_positions_as_two_sequences(prompt, chosen, rejected, official):
    tokenized = pair(prompt, chosen, rejected, official=official)
    unit = packing.pair_unit(tokenized, 3)
    for slot, span in ((6, tokenized.chosen), (7, tokenized.rejected)):
        ids, last = expand(unit, slot)
        assert ids == list(span.ids[span.start : span.end])
        assert last == span.ids[-1]
    # each summed token sits at its position in its own sequence
    for slot, span in ((6, tokenized.chosen), (7, tokenized.rejected)):
        summed = dict(unit.sums)[slot]
        assert list(unit.positions[summed]) == list(range(span.start, span.end))
    assert unit.shared == packing.common_prefix(tokenized.chosen.ids, tokenized.rejected.ids)
    assert len(unit) == len(tokenized.chosen.ids) + len(tokenized.rejected.ids) - unit.shared


def test_prompt_len_that_is_not_a_common_prefix_shares_only_what_is_common():
    # The official convention tokenises query and full text separately: a merge across the
    # boundary makes prompt_len overstate the common prefix. Only the common part is shared.
    chosen = SequenceSpan((1, 2, 99, 10), 2, 4)
    rejected = SequenceSpan((1, 2, 3, 20), 2, 4)
    tokenized = TokenizedPair(0, 3, chosen, rejected, (99, 10), (3, 20))
    unit = packing.pair_unit(tokenized, 0)
    assert unit.shared == 2
    assert expand(unit, 0) == ([99, 10], 10)
    assert expand(unit, 1) == ([3, 20], 20)


def test_nothing_in_common_makes_two_independent_sequences_in_one_unit():
    tokenized = TokenizedPair(
        0, 1, SequenceSpan((5, 6), 0, 2), SequenceSpan((7, 8, 9), 0, 3), (6,), (8, 9)
    )
    unit = packing.pair_unit(tokenized, 0)
    assert unit.shared == 0
    allowed = packing.attention_allowed(unit.positions, unit.branch)
    assert not allowed[:2, 2:].any() and not allowed[2:, :2].any()  # never across
    assert (allowed[2:, 2:] == np.tril(np.ones((3, 3), dtype=bool))).all()


def test_attention_rule():
    unit = packing.pair_unit(pair([1, 2, 3], [10, 11], [20, 21, 22]), 0)
    # indices: 0-2 prompt, 3-4 chosen, 5-7 rejected
    assert list(unit.positions) == [0, 1, 2, 3, 4, 3, 4, 5]
    allowed = packing.attention_allowed(unit.positions, unit.branch)
    assert list(np.flatnonzero(allowed[4])) == [0, 1, 2, 3, 4]  # chosen: prompt + itself
    assert list(np.flatnonzero(allowed[6])) == [0, 1, 2, 5, 6]  # rejected: prompt + itself
    assert list(np.flatnonzero(allowed[2])) == [0, 1, 2]  # prompt: causal
    windowed = packing.attention_allowed(unit.positions, unit.branch, window=2)
    assert list(np.flatnonzero(windowed[7])) == [6, 7]  # positions 5 and 4, not 3
    assert list(np.flatnonzero(windowed[5])) == [2, 5]  # position 3 sees the prompt's 2
    assert attended_pairs(unit) == int(allowed.sum())


@pytest.mark.parametrize("official", [False, True])
def test_window_prefix_stops_before_the_first_position_read(official):
    pairs = [
        pair([1, 2, 3, 4, 5], [10, 11], [20], official=official),
        pair([1, 2, 3, 9], [12], [21, 22], official=official, row_id=1),
    ]
    assert packing.window_prefix(pairs) == 3  # sequences share 1 2 3
    short = pair([1, 2], [10], [20], official=official, row_id=2)  # reads from position 1
    assert packing.window_prefix([*pairs, short]) == 1
    assert packing.window_prefix([pair([7, 2, 3], [10], [20])] + pairs) == 0
    assert packing.window_prefix([]) == 0
    # one pair alone: everything before its first read position
    assert packing.window_prefix(pairs[:1]) == 4


@pytest.mark.parametrize("official", [False, True])
def test_a_unit_without_its_window_prefix_reads_the_same_tokens(official):
    tokenized = pair([1, 2, 3, 4, 5], [10, 11], [20, 21, 22], official=official)
    unit = packing.pair_unit(tokenized, 2)
    cut = packing.without_prefix(unit, 3)
    assert cut.offset == 3 and len(cut) == len(unit) - 3 and not cut.plain
    assert list(cut.positions) == list(unit.positions[3:])
    for slot in (4, 5):
        assert expand(cut, slot) == expand(unit, slot)
    # its attention, prefix keys first, is the uncut unit's with the prefix's queries dropped
    allowed = packing.attention_allowed(unit.positions, unit.branch, window=3)
    assert (packing.attention_allowed(cut.positions, cut.branch, window=3, prefix=3) == allowed[3:]).all()
    prefix_pairs = 3 * 4 // 2  # the prefix's own causal attention, computed once
    assert attended_pairs(cut) + prefix_pairs == attended_pairs(unit)
    assert cut.attended_pairs() + prefix_pairs == unit.attended_pairs()
    assert packing.without_prefix(unit, 0) is unit


def test_a_unit_refuses_to_give_up_tokens_that_are_read():
    unit = packing.pair_unit(pair([1, 2, 3], [10, 11], [20]), 0)  # reads from position 2
    with pytest.raises(ValueError, match="first 3 tokens"):
        packing.without_prefix(unit, 3)
    with pytest.raises(ValueError):
        packing.without_prefix(packing.without_prefix(unit, 1), 1)  # once only
    branches = packing.pair_unit(TokenizedPair(0, 1, SequenceSpan((5, 6, 7), 2, 3),
                                               SequenceSpan((8, 6, 7), 2, 3), (7,), (7,)), 0)  # fmt: skip
    with pytest.raises(ValueError):  # nothing shared: its first token is chosen-only
        packing.without_prefix(branches, 1)


@pytest.mark.parametrize("window", [None, 3, 64])
@pytest.mark.parametrize("query_block", [1, 2, 5, 64])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_query_blocks_cover_exactly_what_the_unit_attends_to(window, query_block, offset, implementation):
    """Blocks of queries, each over a span of keys: every allowed (query, key) inside a block
    with the same mask as one call per unit, nothing allowed left outside."""
    torch = pytest.importorskip("torch")
    unit = packing.pair_unit(pair([1, 2, 3, 4, 5, 6], [10, 11, 12, 13], [20, 21, 22]), 0)
    unit = packing.without_prefix(unit, offset)
    plain = packing.sequence_unit(SequenceSpan(tuple(range(1, 12)), 4, 10), slot=1)
    for index, item in enumerate((unit, plain)):
        plan = attn.AttentionPlan(implementation, torch.device("cpu"), torch.float32,
                                  extents=[(0, 0, len(unit), unit), (0, len(unit), len(unit) + len(plain), plain)],
                                  query_block=query_block)  # fmt: skip
        allowed = packing.attention_allowed(item.positions, item.branch, window, prefix=item.offset)
        blocks = plan.blocks(index, window)
        rows = [i for block in blocks for i in range(len(item))[block.queries]]
        assert rows == list(range(len(item)))  # every query once, in order
        assert len(blocks) == -(-len(item) // query_block) or len(blocks) == 1
        for block in blocks:
            inside = allowed[block.queries, block.keys]
            outside = allowed[block.queries].copy()
            outside[:, block.keys] = False
            assert not outside.any()  # nothing allowed outside the block's keys
            if block.mask is None:  # plain causal under SDPA, one call
                assert implementation == "sdpa" and item.plain and len(blocks) == 1
                assert (inside == np.tril(np.ones_like(inside))).all()
            else:
                assert (block.mask[0, 0].numpy() == 0).tolist() == inside.tolist()
        assert plan.blocks(index, window) is blocks  # built once per forward pass


def test_sequence_unit_is_plain_causal():
    unit = packing.sequence_unit(SequenceSpan((1, 2, 3, 4), 2, 3), slot=5)
    assert unit.plain and unit.shared == 0
    assert [(s, list(i)) for s, i in unit.sums] == [(5, [2])]
    assert unit.lasts == ((5, 3),)
    assert attended_pairs(unit) == 10


def test_pack_rows_first_fit_decreasing():
    rows = packing.pack_rows([5, 9, 3, 4, 12, 1], capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert rows[0] == [4]  # longer than a row: alone
    fills = [sum([5, 9, 3, 4, 12, 1][i] for i in row) for row in rows]
    assert fills == sorted(fills, reverse=True)
    assert all(f <= 10 for f in fills[1:])
    assert len(rows) == 4  # 12 | 9+1 | 5+4 | 3


@pytest.mark.parametrize("mode", packing.MODES)
@pytest.mark.parametrize("budget", [1, 7, 20, 64, 1 << 20])
def test_plan_respects_the_budget_and_covers_every_unit_once(mode, budget):
    rng = np.random.default_rng(budget)
    pairs = [
        pair(list(rng.integers(3, 50, rng.integers(1, 9))), [10] * int(rng.integers(1, 6)),
             [20] * int(rng.integers(1, 6)), row_id=i)
        for i in range(23)
    ]  # fmt: skip
    units = packing.units_for(pairs, mode)
    plan = packing.plan(units, mode=mode, max_batch_tokens=budget)
    seen = sorted(i for batch in plan for row in batch for i in row)
    assert seen == list(range(len(units)))
    longest = []
    for batch in plan:
        lengths = [sum(len(units[i]) for i in row) for row in batch]
        longest.append(max(lengths))
        if len(batch) > 1:
            assert len(batch) * max(lengths) <= budget
        if mode != "packed":
            assert all(len(row) == 1 for row in batch)
    assert longest == sorted(longest, reverse=True)  # longest batch first


def test_build_batch_padding_and_reductions():
    a = packing.pair_unit(pair([1, 2], [10], [20, 21]), 0)  # 5 tokens
    b = packing.pair_unit(pair([3], [30, 31], [40]), 1)  # 4 tokens
    batch = packing.build_batch([[a, b], [b]], pad_id=0)
    assert batch.shape == (2, 9)
    assert batch.real_tokens == 13 and batch.padded_tokens == 18
    assert list(batch.unit[0]) == [0] * 5 + [1] * 4
    assert list(batch.unit[1][:4]) == [0] * 4 and (batch.unit[1][4:] < 0).all()
    assert len(set(batch.unit[1][4:])) == 5  # each pad token is a unit of its own
    flat_ids = batch.ids.reshape(-1)
    by_slot: dict[int, list[int]] = {}
    for token, slot in zip(batch.sum_tokens, batch.sum_slots, strict=True):
        by_slot.setdefault(int(slot), []).append(int(flat_ids[token]))
    assert by_slot[0] == [2] and by_slot[1] == [2, 20]  # the default span: [P-1, P+n-1)
    assert by_slot[2] == [3, 30, 3, 30] and by_slot[3] == [3, 3]  # unit b in both rows
    assert [int(flat_ids[t]) for t in batch.last_tokens] == [10, 21, 31, 40, 31, 40]
    assert batch.unit_extents()[1][:3] == (0, 5, 9)


def test_units_for_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown engine mode"):
        packing.units_for([], "fastest")
