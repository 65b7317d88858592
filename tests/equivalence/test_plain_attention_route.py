"""Plain sequences run under the project's ``ches`` attention on CUDA (#12, 3.4), checked on CPU.

On CUDA the model's own attention (transformers' ``repeat_kv`` view) gave wrong states for
models with one key/value head, so every all-plain batch (the ``two_sequences`` engine, the
automatic fallback to it, the out-of-memory retry of a single pair as two sequences) and the
report's token highlighting run under ``ches`` there. Without a GPU this file checks:

* the routing decision (:func:`attention.routes_plain_sequences`) for a CUDA device object, and
  that each runner path (asked for, fallback) takes it;
* that the routed path, forced on the CPU, really runs under ``ches`` (a spy on the attention
  function) and equals the one-pair-at-a-time reference, on the tiny Gemma-3 (one key/value
  head, sliding window of 8 tokens shorter than the sequences), for each of the four paths.

The same paths on a real GPU: tests/equivalence/test_engine_gpu.py (``-m gpu``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ches_filter.contributions import hidden_states, pair_contributions
from ches_filter.model import attention as attn
from ches_filter.model.runner import HiddenStateRunner
from ches_filter.records import SequenceSpan, TokenizedPair
from ches_filter.reference import reference_scores
from ches_filter.scores import score_pair

torch = pytest.importorskip("torch")

# float32 states summed in another order than the reference's float64 loop: the inner products
# of sums agree to ~1e-6 relative; ches/ln_ches are differences, compared at 1e-4 of the terms
# subtracted (as test_batched_vs_reference.py does), never of their own possibly tiny size.
REL = 1e-4


def assert_close(got, want) -> None:
    scale = max(abs(want.dot_chosen_rejected), want.sq_norm_chosen)
    n, m = want.chosen_tokens, want.rejected_tokens
    ln_scale = max(abs(want.dot_chosen_rejected) / (n * m), want.sq_norm_chosen / (n * n))
    assert got.ches == pytest.approx(want.ches, abs=REL * scale), want.row_id
    assert got.ln_ches == pytest.approx(want.ln_ches, abs=REL * ln_scale), want.row_id
    for name in ("dot_chosen_rejected", "sq_norm_chosen", "sq_norm_rejected", "last_hidden_inner"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=REL), (want.row_id, name)


def synthetic_pairs(n: int, vocab: int, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of mixed lengths (longer than the 8-token window), responses sharing prefixes or not."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        prompt = [int(x) for x in rng.integers(3, vocab, int(rng.integers(2, 30)))]
        chosen = [int(x) for x in rng.integers(3, vocab, int(rng.integers(1, 20)))]
        rejected = chosen[: len(chosen) // 2] + [int(x) for x in rng.integers(3, vocab, int(rng.integers(1, 20)))]
        p = len(prompt)

        def span(response, prompt=prompt, p=p):
            return SequenceSpan(tuple(prompt + response), p - 1, p + len(response) - 1)

        pairs.append(TokenizedPair(i, p, span(chosen), span(rejected), tuple(chosen), tuple(rejected)))
    return pairs


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the ``ches`` attention, by whether they carried a per-unit plan."""
    calls = {"mask": 0, "segments": 0}
    real = attn.ches_attention

    def counting(module, query, key, value, attention_mask, **kwargs):
        plan = kwargs.get("ches_plan")
        calls["segments" if plan is not None and plan.extents is not None else "mask"] += 1
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attn, "ches_attention", counting)  # registered again on each use
    return calls


@pytest.fixture(scope="module")
def pairs_and_reference(tiny_gemma):
    assert tiny_gemma.model.config.num_key_value_heads == 1
    pairs = synthetic_pairs(6, vocab=2000)
    return pairs, {p.row_id: reference_scores(tiny_gemma.model, p) for p in pairs}


def on_fake_cuda(loaded):
    """The same LoadedModel claiming a CUDA device: enough to build a runner that doesn't probe."""
    return dataclasses.replace(loaded, device=torch.device("cuda"))


# -- the decision --------------------------------------------------------------------------------


def test_routing_decision(tiny_gemma, tiny_llama):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for loaded in (tiny_gemma, tiny_llama):
        for implementation in attn.SUPPORTED_IMPLEMENTATIONS:
            assert attn.routes_plain_sequences(loaded.model, cuda, implementation)
            assert not attn.routes_plain_sequences(loaded.model, cpu, implementation)
        assert not attn.routes_plain_sequences(loaded.model, cuda, "flash_attention_2")
    # a pattern an explicit mask can't express keeps the model's own attention
    odd = type("Model", (), {"config": type("Config", (), {"use_bidirectional_attention": True})()})()
    assert not attn.routes_plain_sequences(odd, cuda, "sdpa")


def test_two_sequences_and_the_fallback_take_the_route_on_cuda(tiny_gemma, monkeypatch):
    asked = HiddenStateRunner(on_fake_cuda(tiny_gemma), mode="two_sequences")
    assert asked.plain_via_ches and "plain sequences via the ches attention" in asked.describe()
    assert not HiddenStateRunner(tiny_gemma, mode="two_sequences").plain_via_ches
    # the automatic fallback: the packed layout's check fails, two sequences it is
    monkeypatch.setattr(HiddenStateRunner, "_check", lambda self, executor, window_prefix=False: (False, "no"))
    fallback = HiddenStateRunner(on_fake_cuda(tiny_gemma), mode="auto")
    assert fallback.mode == "two_sequences" and fallback.plain_via_ches


# -- the routed path, forced on the CPU --------------------------------------------------------


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_routed_two_sequences_equal_the_reference(tiny_gemma, pairs_and_reference, spy, implementation):
    pairs, reference = pairs_and_reference
    for budget in (1, 1 << 20):  # each sequence alone, and all in one padded batch
        runner = HiddenStateRunner(
            tiny_gemma, mode="two_sequences", max_batch_tokens=budget, attn_implementation=implementation
        )
        runner.plain_via_ches = True
        before = spy["mask"]
        for pair, sums in zip(pairs, runner.run(pairs), strict=True):
            assert_close(score_pair(pair, sums), reference[pair.row_id])
        assert spy["mask"] > before  # it did run under ches
    own = HiddenStateRunner(tiny_gemma, mode="two_sequences")
    calls = dict(spy)
    own.run(pairs)
    assert spy == calls  # without the route: the model's own attention


def test_routed_out_of_memory_retry_equals_the_reference(tiny_gemma, pairs_and_reference, spy, monkeypatch):
    """A lone pair that runs out of memory is retried as two plain sequences: routed too."""
    pairs, reference = pairs_and_reference
    runner = HiddenStateRunner(tiny_gemma, mode="packed", attention="segments", max_batch_tokens=1)
    runner.plain_via_ches = True
    before = dict(spy)  # after the runner's own layout check
    real = runner._forward_layout
    failed = []

    def out_of_memory_unless_plain(batch, executor, *args, **kwargs):
        if not batch.plain:
            failed.append(batch)
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch, executor, *args, **kwargs)

    monkeypatch.setattr(runner, "_forward_layout", out_of_memory_unless_plain)
    for pair, sums in zip(pairs, runner.run(pairs), strict=True):
        assert_close(score_pair(pair, sums), reference[pair.row_id])
    assert len(failed) == len(pairs) and runner.stats.oom_retries == len(pairs)
    # every retried sequence ran under ches (with an explicit mask), no packed batch got through
    assert spy["mask"] > before["mask"] and spy["segments"] == before["segments"]


def test_routed_highlighting_equals_the_models_own_attention(tiny_gemma, pairs_and_reference, spy):
    pairs, _ = pairs_and_reference
    ids = pairs[0].rejected.ids
    own = hidden_states(tiny_gemma.model, ids, via_ches=False)
    assert spy["mask"] == 0
    routed = hidden_states(tiny_gemma.model, ids, via_ches=True)
    assert spy["mask"] > 0
    # float32 states of the same computation through two attention paths: ~1e-6 relative
    np.testing.assert_allclose(routed, own, rtol=1e-4, atol=1e-4 * np.abs(own).max())
    assert hidden_states(tiny_gemma.model, ids).shape == own.shape  # CPU: not routed
    contributions = pair_contributions(tiny_gemma.model, pairs[0], via_ches=True)
    want = reference_scores(tiny_gemma.model, pairs[0])
    scale = max(abs(want.dot_chosen_rejected), want.sq_norm_chosen)
    assert contributions.ches == pytest.approx(want.ches, abs=REL * scale)
