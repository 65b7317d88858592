"""The batched two-sequence engine equals the one-pair-at-a-time reference (ches_filter.reference).

The prefix-shared and packed layouts are checked in test_engine_equivalence.py.

Tolerance: each score within the bound float32 justifies for that score, derived from the sizes
of the pair's hidden states (``score_fixtures.assert_scores_close``, which says why). Multi-turn
pairs in HH-RLHF's layout come from tests/fixtures/dialogues/hh_style.jsonl (written by
scripts/make_dialogues.py), so nothing outside the checkout is needed; the real HH-RLHF file of
../shared/data is used by the e2e and slow tests.
"""

from __future__ import annotations

import json
import random

import pytest
from score_fixtures import HH_FIXTURE, StateMagnitudes, assert_scores_close, state_magnitudes

from ches_filter.data.layouts import LayoutOptions, detect_layout
from ches_filter.model.runner import HiddenStateRunner
from ches_filter.records import PairScores, PreferencePair, TokenizedPair
from ches_filter.reference import reference_scores
from ches_filter.scores import score_pair
from ches_filter.tokenization import PairTokenizer, TokenizationOptions

HANDWRITTEN = [
    {"prompt": "What colour is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hello there, how are you doing today? " * 3},
    {
        "prompt": "Write a haiku about autumn leaves falling in a quiet park at dusk.",
        "chosen": "Red leaves drift and fall\nthe bench is cold, the path hushed\ndusk gathers them all",
        "rejected": "No.",
    },
    {"prompt": "2+2?", "chosen": "4", "rejected": "4."},
]


def hh_rows(n: int, max_chars: int = 700) -> list[dict]:
    """The first ``n`` HH-style fixture rows whose dialogues are each under ``max_chars``."""
    rows = []
    with open(HH_FIXTURE, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["chosen"]) < max_chars and len(row["rejected"]) < max_chars:
                rows.append(row)
            if len(rows) == n:
                break
    assert len(rows) == n, f"{HH_FIXTURE.name} has only {len(rows)} rows under {max_chars} characters"
    return rows


def to_pairs(rows: list[dict]) -> list[PreferencePair]:
    layout = detect_layout(list(rows[0]), rows, LayoutOptions())
    pairs = [layout.extract(i, row) for i, row in enumerate(rows)]
    assert all(isinstance(p, PreferencePair) for p in pairs)
    return pairs  # type: ignore[return-value]


def tokenize(loaded, pairs, **options) -> list[TokenizedPair]:
    tokenizer = PairTokenizer(loaded.tokenizer, TokenizationOptions(**options))
    encoded = [tokenizer.encode(p) for p in pairs]
    assert all(isinstance(e, TokenizedPair) for e in encoded), encoded
    return encoded  # type: ignore[return-value]


Reference = tuple[PairScores, StateMagnitudes]


def reference_of(loaded, encoded: list[TokenizedPair]) -> dict[int, Reference]:
    """The reference's scores of each pair, and the sizes its tolerance is derived from."""
    return {p.row_id: (reference_scores(loaded.model, p), state_magnitudes(loaded.model, p)) for p in encoded}


def assert_close(batched: PairScores, reference: Reference) -> None:
    assert_scores_close(batched, *reference)


def check_equal(loaded, encoded: list[TokenizedPair], budgets=(1, 600, 1 << 20), shuffle=True):
    expected = reference_of(loaded, encoded)
    orders = [list(encoded)]
    if shuffle:
        shuffled = list(encoded)
        random.Random(7).shuffle(shuffled)
        orders.append(shuffled)
    for budget in budgets:
        for order in orders:
            runner = HiddenStateRunner(loaded, max_batch_tokens=budget, mode="two_sequences")
            sums = runner.run(order)
            assert [s.row_id for s in sums] == [p.row_id for p in order]  # results in input order
            for pair, pair_sums in zip(order, sums, strict=True):
                assert_close(score_pair(pair, pair_sums), expected[pair.row_id])
            if budget == 1:
                assert runner.stats.forward_calls == 2 * len(order)  # a batch of one sequence
            if budget == 1 << 20:
                assert runner.stats.forward_calls == 1  # mixed lengths in one padded batch


# -- tiny random models: breadth -------------------------------------------------------------


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_tiny_models_equal_reference(request, model_fixture):
    loaded = request.getfixturevalue(model_fixture)
    pairs = to_pairs(HANDWRITTEN) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(hh_rows(6))
    ]
    check_equal(loaded, tokenize(loaded, pairs))


def test_tiny_llama_plain_text_and_truncation(tiny_llama):
    pairs = to_pairs(HANDWRITTEN)
    check_equal(tiny_llama, tokenize(tiny_llama, pairs, use_chat_template=False, max_length=24))


def test_tiny_llama_official_convention(tiny_llama):
    pairs = to_pairs(HANDWRITTEN)
    check_equal(tiny_llama, tokenize(tiny_llama, pairs, convention="official"))


# -- the real bundled models: truth ------------------------------------------------------------


def test_smollm2_chat_template_equals_reference(smollm2):
    pairs = to_pairs(hh_rows(4, max_chars=500)) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(HANDWRITTEN[:2])
    ]
    encoded = tokenize(smollm2, pairs)
    assert smollm2.tokenizer.chat_template
    assert len({len(p.chosen.ids) for p in encoded}) > 3  # mixed lengths
    check_equal(smollm2, encoded, budgets=(1, 700, 1 << 20))


def test_gemma3_plain_text_equals_reference(gemma3):
    assert not gemma3.tokenizer.chat_template
    pairs = to_pairs(hh_rows(3, max_chars=400)) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(HANDWRITTEN[:2])
    ]
    encoded = tokenize(gemma3, pairs)
    assert all(p.chosen.ids[-1] == gemma3.tokenizer.eos_token_id for p in encoded)
    check_equal(gemma3, encoded, budgets=(1, 1 << 20))
