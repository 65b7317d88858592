"""Prefix-shared and packed scores equal the one-pair-at-a-time reference (float32, CPU).

Both bundled architectures (Llama and Gemma-3, whose sliding-window layers the tiny model's
window of 8 tokens exercises), both executors (an explicit 4D mask, and per-unit "segments"
attention), SDPA and eager attention, mixed lengths, a budget smaller than any pair (every
pair alone in its batch), a batch of one pair, shuffled order, the official convention. The
tolerance (``score_fixtures.assert_scores_close``) and helpers are those of
test_batched_vs_reference.py.
"""

from __future__ import annotations

import random

import pytest
from score_fixtures import score_ratios
from test_batched_vs_reference import (
    HANDWRITTEN,
    Reference,
    assert_close,
    hh_rows,
    reference_of,
    to_pairs,
    tokenize,
)

from ches_filter.model import attention as attn
from ches_filter.model import packing
from ches_filter.model.runner import HiddenStateRunner
from ches_filter.records import PreferencePair, TokenizedPair
from ches_filter.scores import score_pair

LAYOUTS = [("prefix_shared", "mask"), ("prefix_shared", "segments"), ("packed", "mask"), ("packed", "segments")]
# Window prefixes are a segments-executor feature: with it and without.
LAYOUTS_WITH_WINDOW_PREFIX = [(m, e, False) for m, e in LAYOUTS] + [
    (m, e, True) for m, e in LAYOUTS if e == "segments"
]
IMPLEMENTATIONS = ["sdpa", "eager"]
_expected: dict[tuple[int, str], dict[int, Reference]] = {}


def mixed_pairs() -> list[PreferencePair]:
    return to_pairs(HANDWRITTEN) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(hh_rows(6))
    ]


def expected(loaded, encoded: list[TokenizedPair], key: str) -> dict[int, Reference]:
    cache_key = (id(loaded.model), key)
    if cache_key not in _expected:
        _expected[cache_key] = reference_of(loaded, encoded)
    return _expected[cache_key]


def check_engine(loaded, encoded, reference, *, budgets=(1, 300, 1 << 20), shuffle=True, **engine):
    orders = [list(encoded)]
    if shuffle:
        shuffled = list(encoded)
        random.Random(11).shuffle(shuffled)
        orders.append(shuffled)
    runners = []
    for budget in budgets:
        for order in orders:
            runner = HiddenStateRunner(loaded, max_batch_tokens=budget, **engine)
            assert runner.mode == engine.get("mode", runner.mode), runner.describe()
            sums = runner.run(order)
            assert [s.row_id for s in sums] == [p.row_id for p in order]  # results in input order
            for pair, pair_sums in zip(order, sums, strict=True):
                assert_close(score_pair(pair, pair_sums), reference[pair.row_id])
            runners.append((budget, runner))
    return runners


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("mode", "executor", "window_prefix"), LAYOUTS_WITH_WINDOW_PREFIX)
@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_tiny_models_equal_reference(
    request, model_fixture, mode, executor, window_prefix, implementation
):
    loaded = request.getfixturevalue(model_fixture)
    encoded = tokenize(loaded, mixed_pairs())
    assert len({len(p.chosen.ids) for p in encoded}) > 5  # mixed lengths
    reference = expected(loaded, encoded, "default")
    runners = check_engine(
        loaded,
        encoded,
        reference,
        mode=mode,
        attention=executor,
        attn_implementation=implementation,
        share_window_prefix=window_prefix,
        min_window_prefix=1,  # even Gemma's lone <bos> (its sliding window then reaches past it)
    )
    for budget, runner in runners:
        stats = runner.stats
        assert stats.real_tokens < stats.pair_tokens  # the prompts were computed once
        assert runner.engine.window_prefix == window_prefix
        assert stats.window_prefixes == (1 if window_prefix else 0)  # one window, one run
        assert (stats.prefix_tokens_saved > 0) == window_prefix
        calls = stats.forward_calls - stats.window_prefixes
        if budget == 1:  # each pair longer than the budget: alone in its batch
            assert calls == len(encoded)
        if budget == 1 << 20:
            assert calls == 1
            if mode == "packed":
                assert stats.padded_tokens == stats.real_tokens  # no padding at all


@pytest.mark.parametrize(("mode", "executor"), LAYOUTS)
def test_tiny_llama_official_convention(tiny_llama, mode, executor):
    encoded = tokenize(tiny_llama, to_pairs(HANDWRITTEN), convention="official")
    reference = expected(tiny_llama, encoded, "official")
    check_engine(tiny_llama, encoded, reference, mode=mode, attention=executor)


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_a_batch_of_one_pair(request, model_fixture):
    loaded = request.getfixturevalue(model_fixture)
    encoded = tokenize(loaded, to_pairs(HANDWRITTEN[2:3]))
    reference = expected(loaded, encoded, "one")
    for mode, executor in LAYOUTS:
        (_, runner), *_ = check_engine(
            loaded, encoded, reference, budgets=(8192,), shuffle=False, mode=mode, attention=executor
        )
        assert runner.stats.forward_calls == 1 and runner.stats.sequences == 2


LEAD = "You are a careful assistant. Answer in one short sentence, and never make anything up. "


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_a_long_window_prefix_equals_reference(request, model_fixture, implementation):
    """Every prompt opens with the same text: a window prefix longer than Gemma's window of 8.

    Queries go to attention in blocks of 5 (so a block's keys start past the window prefix
    where Gemma's window of 8 allows)."""
    loaded = request.getfixturevalue(model_fixture)
    rows = [{**row, "prompt": LEAD + row["prompt"]} for row in HANDWRITTEN]
    encoded = tokenize(loaded, to_pairs(rows))
    reference = expected(loaded, encoded, "long-lead")
    runners = check_engine(
        loaded, encoded, reference, budgets=(1, 1 << 20), mode="packed", attention="segments",
        attn_implementation=implementation, query_block=5,
    )  # fmt: skip
    for _budget, runner in runners:
        assert runner.engine.window_prefix and runner.stats.window_prefixes == 1
        saved = runner.stats.prefix_tokens_saved // (len(encoded) - 1)
        assert saved > max(16, getattr(loaded.model.config, "sliding_window", None) or 0)


@pytest.mark.parametrize("query_block", [1, 7])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_queries_in_blocks_equal_reference(request, model_fixture, implementation, query_block):
    """Segments attention over blocks of queries (as units longer than 64 tokens get it)."""
    loaded = request.getfixturevalue(model_fixture)
    encoded = tokenize(loaded, mixed_pairs())
    assert max(len(p.chosen.ids) for p in encoded) > 4 * query_block
    reference = expected(loaded, encoded, "default")
    for window_prefix in (False, True):
        check_engine(
            loaded, encoded, reference, budgets=(300, 1 << 20), shuffle=False, mode="packed",
            attention="segments", attn_implementation=implementation, share_window_prefix=window_prefix,
            min_window_prefix=1, query_block=query_block,
        )  # fmt: skip


def test_window_prefix_below_the_minimum_is_left_in_the_units(tiny_llama):
    encoded = tokenize(tiny_llama, to_pairs(HANDWRITTEN))
    shared = packing.window_prefix(encoded)
    assert shared >= 8  # the chat template's system prompt and user header
    runner = HiddenStateRunner(tiny_llama, min_window_prefix=shared + 1)
    runner.run(encoded)
    assert runner.engine.window_prefix and runner.stats.window_prefixes == 0
    runner = HiddenStateRunner(tiny_llama, share_window_prefix=False)
    assert not runner.engine.window_prefix and "window prefix" not in runner.describe()


def test_a_model_whose_layers_hide_their_index_keeps_segments_without_window_prefix(tiny_llama, monkeypatch):
    def no_index(module):
        raise attn.LayoutUnsupported("the attention layers don't say their index (layer_idx)")

    monkeypatch.setattr(attn, "layer_index", no_index)
    monkeypatch.setattr(attn, "_checked", type(attn._checked)())  # forget earlier checks
    encoded = tokenize(tiny_llama, to_pairs(HANDWRITTEN))
    reference = expected(tiny_llama, encoded, "default-handwritten")
    messages: list[str] = []
    runner = HiddenStateRunner(tiny_llama, log=messages.append)
    assert (runner.mode, runner.engine.executor, runner.engine.window_prefix) == ("packed", "segments", False)
    assert "window prefixes not honoured" in messages[0] and "layer_idx" in messages[0]
    for pair, pair_sums in zip(encoded, runner.run(encoded), strict=True):
        assert_close(score_pair(pair, pair_sums), reference[pair.row_id])
    monkeypatch.undo()
    attn._checked.pop(tiny_llama.model, None)


def test_auto_picks_packed_segments_on_cpu_and_says_so(tiny_llama):
    messages: list[str] = []
    runner = HiddenStateRunner(tiny_llama, log=messages.append)
    assert (runner.engine.mode, runner.engine.executor) == ("packed", "segments")
    assert messages and "packed via segments attention + window prefix" in messages[0]
    assert "checked equal to plain forward passes" in messages[0]


def test_without_an_explicit_mask_the_branches_leak(tiny_llama, monkeypatch):
    """Why the mask is passed: position ids alone make transformers attend across branches."""
    encoded = tokenize(tiny_llama, to_pairs(HANDWRITTEN))
    reference = expected(tiny_llama, encoded, "default-handwritten")
    monkeypatch.setattr(attn, "model_masks", lambda *args, **kwargs: None)
    runner = HiddenStateRunner(tiny_llama, mode="prefix_shared", attention="mask")
    runner.engine = runner.engine.__class__("prefix_shared", "mask", "sdpa", "forced for this test")
    sums = runner.run(encoded)
    wrong = [p for p, s in zip(encoded, sums, strict=True)
             if score_ratios(score_pair(p, s), *reference[p.row_id])["ches"] > 1]  # fmt: skip
    assert wrong  # the rejected branch attended to the chosen one


def test_a_model_that_ignores_custom_masks_falls_back_to_two_sequences(tiny_gemma, monkeypatch):
    encoded = tokenize(tiny_gemma, to_pairs(HANDWRITTEN))
    reference = expected(tiny_gemma, encoded, "default-handwritten")
    monkeypatch.setattr(attn, "model_masks", lambda *args, **kwargs: None)
    monkeypatch.setattr(attn, "_checked", type(attn._checked)())  # forget earlier checks
    messages: list[str] = []
    runner = HiddenStateRunner(tiny_gemma, mode="prefix_shared", attention="mask", log=messages.append)
    assert runner.mode == "two_sequences"
    assert "falling back to two sequences" in messages[0] and "relative error" in messages[0]
    for pair, pair_sums in zip(encoded, runner.run(encoded), strict=True):
        assert_close(score_pair(pair, pair_sums), reference[pair.row_id])


def test_unsupported_attention_implementation_falls_back(tiny_llama):
    runner = HiddenStateRunner(tiny_llama, attn_implementation="flash_attention_2")
    assert runner.mode == "two_sequences"
    assert "not supported" in runner.describe()


def test_cuda_out_of_memory_halves_then_splits_a_lone_pair(tiny_llama, monkeypatch):
    """The OOM path, simulated: a batch of many units is re-planned under half the budget; a
    lone pair that still fails is retried as two sequences; the scores stay equal."""
    import torch

    encoded = tokenize(tiny_llama, to_pairs(HANDWRITTEN))
    reference = expected(tiny_llama, encoded, "default-handwritten")
    messages: list[str] = []
    runner = HiddenStateRunner(tiny_llama, mode="packed", max_batch_tokens=4096, log=messages.append)
    real = runner._forward_layout

    def flaky(batch, executor, sums, lasts, prefix=None):
        if batch.real_tokens > 40:  # "too big": two of the four pair-units (less their window prefix)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, executor, sums, lasts, prefix)

    monkeypatch.setattr(runner, "_forward_layout", flaky)
    sums = runner.run(encoded)
    for pair, pair_sums in zip(encoded, sums, strict=True):
        assert_close(score_pair(pair, pair_sums), reference[pair.row_id])
    assert runner.stats.oom_retries > 0 and runner.max_batch_tokens < 4096
    assert any("halving --max-batch-tokens" in m for m in messages)
    assert any("retrying it as two sequences" in m for m in messages)


def test_other_errors_are_not_retried(tiny_llama, monkeypatch):
    runner = HiddenStateRunner(tiny_llama, mode="packed")

    def broken(*args, **kwargs):
        raise RuntimeError("not an out-of-memory")

    monkeypatch.setattr(runner, "_forward_layout", broken)
    with pytest.raises(RuntimeError, match="not an out-of-memory"):
        runner.run(tokenize(tiny_llama, to_pairs(HANDWRITTEN)))


# -- the real bundled models ---------------------------------------------------------------


def test_smollm2_packed_and_prefix_shared_equal_reference(smollm2):
    pairs = to_pairs(hh_rows(4, max_chars=500)) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(HANDWRITTEN[:2])
    ]
    encoded = tokenize(smollm2, pairs)
    reference = expected(smollm2, encoded, "default")
    for mode, executor in (("packed", "segments"), ("prefix_shared", "mask")):
        check_engine(smollm2, encoded, reference, budgets=(700, 1 << 20), mode=mode, attention=executor)


def test_gemma3_packed_equals_reference(gemma3):
    pairs = to_pairs(hh_rows(3, max_chars=400)) + [
        PreferencePair(**{**p.__dict__, "row_id": p.row_id + 100}) for p in to_pairs(HANDWRITTEN[:2])
    ]
    encoded = tokenize(gemma3, pairs)
    reference = expected(gemma3, encoded, "default")
    check_engine(gemma3, encoded, reference, budgets=(1 << 20,), mode="packed", attention="segments")
    # its sequences share only <bos> and a few tokens: below the minimum, so force one
    (_, runner), *_ = check_engine(
        gemma3, encoded, reference, budgets=(1 << 20,), shuffle=False, mode="packed", attention="segments",
        min_window_prefix=1,
    )  # fmt: skip
    assert runner.stats.window_prefixes == 1


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("mode", "executor"), LAYOUTS)
def test_real_models_every_layout_and_implementation(smollm2, gemma3, mode, executor, implementation):
    for loaded in (smollm2, gemma3):
        encoded = tokenize(loaded, to_pairs(hh_rows(8, max_chars=900)))
        reference = expected(loaded, encoded, "slow")
        check_engine(
            loaded, encoded, reference, budgets=(1, 1500), mode=mode, attention=executor,
            attn_implementation=implementation,
        )  # fmt: skip
