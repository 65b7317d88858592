"""``--compat official`` against an independent re-computation of the authors' script (#12, 3.5, 3.7).

``script_scores`` below follows ``compute_preference_similarity_per_example.py``
(princeton-nlp/unintentional-unalignment) step by step, written from its logic for this test.
For a tokenizer without a chat template: a pad token if none, ``<|prompter|>`` and
``<|assistant|>`` added as special tokens, ``model.resize_token_embeddings(len(tokenizer))``
(transformers' own, as the script calls it), the query ``<|prompter|>{prompt}<|assistant|>``.
With a chat template: the template applied to one user message. Then ``text = query +
response``; the query and each text tokenised separately, with the tokenizer's special tokens
only when it has no chat template, each cut at ``max_length`` on the right; leading EOS tokens
stripped (``__trim_padding``); rows whose query or responses come out empty skipped; hidden
states ``hidden_states[-1][query_len - 1:]`` summed; ``ln_ches`` divided by the number of those
positions; the normalised edit distance over ``text[query_len:]``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ches_filter.pipeline import PairScorer
from ches_filter.records import PreferencePair, Status, TokenizedPair, Turn
from ches_filter.reference import reference_scores
from ches_filter.tokenization import PairTokenizer, TokenizationOptions


def pair(prompt: str, chosen: str, rejected: str, row_id: int = 0) -> PreferencePair:
    return PreferencePair(row_id, (Turn("user", prompt),), chosen, rejected, prompt, chosen, rejected)


PAIRS = [
    pair("What colour is the sky?", " It is blue.", " It is green, as far as I can tell.", 0),
    pair("Name a prime number.", " Seven.", " Nine, which is odd.", 1),
    pair("Write a long answer.", " word" * 40, " other words" * 30, 2),
]


def trim(ids: list[int], eos: int | None) -> list[int]:
    """``input_ids[argmax(input_ids != eos):]``: argmax of an all-False row is 0."""
    flags = [token != eos for token in ids]
    return ids[flags.index(True) :] if True in flags else ids


def edit_distance(a: list[int], b: list[int]) -> float:
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            same = a[i - 1] == b[j - 1]
            current[j] = previous[j - 1] if same else 1 + min(previous[j - 1], current[j - 1], previous[j])
        previous = current
    return previous[-1] / max(len(a), len(b))


def script_tokenizer_and_model(tokenizer, model):
    """``__update_tokenizer_setting_and_chat_tokens`` and the resize, on copies."""
    tokenizer, model = copy.deepcopy(tokenizer), copy.deepcopy(model)
    if not tokenizer.chat_template:
        if not tokenizer.pad_token:
            tokenizer.add_special_tokens({"pad_token": "<|padding|>"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|prompter|>", "<|assistant|>"]})
    model.resize_token_embeddings(len(tokenizer))
    return tokenizer, model


def script_scores(model, tokenizer, p: PreferencePair, max_length: int = 512) -> dict | None:
    """One example through the script's logic; None where the script skips the row.

    ``model``/``tokenizer`` as :func:`script_tokenizer_and_model` left them.
    """
    import torch

    if tokenizer.chat_template:
        messages = [{"role": "user", "content": p.prompt[-1].content}]
        query = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        query = f"<|prompter|>{p.prompt[-1].content}<|assistant|>"
    text_w, text_l = query + p.chosen, query + p.rejected
    special = not tokenizer.chat_template

    def tok(text: str) -> list[int]:
        return tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=special)["input_ids"]

    raw_query, raw_w, raw_l = tok(query), tok(text_w), tok(text_l)
    if not raw_query or len(raw_w) <= len(raw_query) or len(raw_l) <= len(raw_query):
        return None  # __prepare_and_tokenize_dataset drops it
    eos = tokenizer.eos_token_id
    query_len = len(trim(raw_query, eos))
    preferred, dispreferred = trim(raw_w, eos), trim(raw_l, eos)
    if query_len == len(preferred) or query_len == len(dispreferred):
        return None

    def states(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0][query_len - 1 :].double().numpy()

    h_w, h_l = states(preferred), states(dispreferred)
    s_w, s_l = h_w.sum(0), h_l.sum(0)
    n_w, n_l = h_w.shape[0], h_l.shape[0]
    dot, sq = float(s_w @ s_l), float(s_w @ s_w)
    return {
        "ches": dot - sq,
        "ln_ches": dot / (n_w * n_l) - sq / n_w**2,
        "last_hidden_inner": float(h_w[-1] @ h_l[-1]),
        "edit_distance": edit_distance(raw_w[len(raw_query) :], raw_l[len(raw_query) :]),
        "n_w": n_w,
        "n_l": n_l,
        "query_len": query_len,
        "scale": max(abs(dot), sq),
        "ln_scale": max(abs(dot) / (n_w * n_l), sq / n_w**2),
        "ids": (tuple(preferred), tuple(dispreferred)),
    }


def assert_matches(got, want) -> None:
    # Ours sums float32 states in float32 in another order, then takes float64 inner products;
    # the script's values here are float64 sums of the same float32 states. Each summed vector
    # differs by ~n·eps32 relative, so the difference of the two large terms may move by ~1e-6
    # of their scale. The script's new embedding rows carry noise of ~1e-6 (resize_token_embeddings
    # samples around the mean with 1e-9 of the rows' covariance) where ours are the mean, ~1e-5
    # of the rows here (see fresh_gemma). Measured: below 1e-6 of the scale; 1e-5 leaves room
    # without hiding a wrong position, token or count (those move the scores by percents).
    assert got.status is Status.OK, got.reason
    assert got.ches == pytest.approx(want["ches"], abs=1e-5 * want["scale"])
    assert got.ln_ches == pytest.approx(want["ln_ches"], abs=1e-5 * want["ln_scale"])
    assert got.last_hidden_inner == pytest.approx(want["last_hidden_inner"], rel=1e-5)
    assert got.edit_distance == pytest.approx(want["edit_distance"], abs=1e-12)
    # 3.7: the token counts are what the script divides by (response tokens + 1)
    assert (got.chosen_tokens, got.rejected_tokens) == (want["n_w"], want["n_l"])
    assert got.prompt_tokens == want["query_len"]


@pytest.fixture(scope="module")
def fresh_gemma(tiny_gemma_dir):
    """The tiny Gemma loaded again: official scoring grows its embeddings (not the shared one's).

    Its random embedding rows average to almost nothing (~4e-5 per coordinate), so the noise
    that the script's resize adds around that mean (~1e-6) would be 4% of the new rows, and the
    first RMSNorm would pass that on. Trained embeddings share a common component; a fixed
    one is added to every row here, so the mean row stands clear of the noise as it does there.
    """
    import torch

    from ches_filter.model.load import ModelSpec, load_model

    loaded = load_model(ModelSpec(name=str(tiny_gemma_dir), device="cpu", dtype="float32"))
    weight = loaded.model.get_input_embeddings().weight
    with torch.no_grad():
        weight += torch.linspace(-0.05, 0.05, weight.shape[1])
    return loaded


@pytest.fixture(scope="module")
def script_models(fresh_gemma, tiny_llama):
    """Per fixture: (the model and tokenizer as the script prepares them), made before scoring."""
    return {name: script_tokenizer_and_model(loaded.tokenizer, loaded.model)
            for name, loaded in (("gemma", fresh_gemma), ("llama", tiny_llama))}  # fmt: skip


@pytest.mark.parametrize("room", [None, 6])  # None: the script's 512; 6: six tokens past the query
@pytest.mark.parametrize("fixture", ["gemma", "llama"])
def test_official_convention_equals_the_script(fixture, room, fresh_gemma, tiny_llama, script_models):
    loaded = fresh_gemma if fixture == "gemma" else tiny_llama
    script_tokenizer, script_model = script_models[fixture]
    assert bool(loaded.tokenizer.chat_template) is (fixture == "llama")
    max_length = 512
    if room is not None:
        query = PairTokenizer(loaded.tokenizer, TokenizationOptions(convention="official")).encode(PAIRS[2])
        max_length = query.prompt_len + room
    options = TokenizationOptions(convention="official", max_length=max_length)
    results = PairScorer(loaded, options).score(PAIRS)
    compared = 0
    for p, got in zip(PAIRS, results, strict=True):
        want = script_scores(script_model, script_tokenizer, p, max_length)
        if want is None:
            assert got.status in (Status.PROMPT_TOO_LONG, Status.EMPTY_RESPONSE), got
            continue
        encoded = PairTokenizer(loaded.tokenizer, options).encode(p)
        assert (encoded.chosen.ids, encoded.rejected.ids) == want["ids"]
        assert_matches(got, want)
        compared += 1
        if room is not None and p.row_id == 2:  # cut: the last kept position is summed too
            assert got.truncated and want["n_w"] == room + 1
    assert compared >= 2


def test_official_convention_strips_a_leading_eos(tiny_llama):
    """A template that renders EOS first: the script's ``__trim_padding`` removes it."""
    tokenizer = copy.deepcopy(tiny_llama.tokenizer)
    tokenizer.chat_template = "{{ eos_token }}" + tokenizer.chat_template
    p = PAIRS[0]
    raw = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": p.prompt[-1].content}],
                    tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]  # fmt: skip
    assert raw[0] == tokenizer.eos_token_id
    encoded = PairTokenizer(tokenizer, TokenizationOptions(convention="official")).encode(p)
    assert isinstance(encoded, TokenizedPair)
    want = script_scores(tiny_llama.model, tokenizer, p)  # nothing added: it has a template
    assert (encoded.chosen.ids, encoded.rejected.ids) == want["ids"]
    assert encoded.chosen.ids[0] != tokenizer.eos_token_id and encoded.prompt_len == len(raw) - 1
    assert_matches(reference_scores(tiny_llama.model, encoded), want)


def test_the_markers_get_the_mean_embedding_row_once(tiny_gemma_dir):
    from ches_filter.model.load import ModelSpec, load_model

    loaded = load_model(ModelSpec(name=str(tiny_gemma_dir), device="cpu", dtype="float32"))
    before = loaded.model.get_input_embeddings().weight.detach().double().numpy().copy()
    pair_tokenizer = PairTokenizer(loaded.tokenizer, TokenizationOptions(convention="official"))
    assert pair_tokenizer.description == (
        "plain text in <|prompter|>…<|assistant|> (added tokens, mean embedding rows), official script, "
        "max length 512"
    )
    assert pair_tokenizer.prepare_model(loaded.model) == 2
    after = loaded.model.get_input_embeddings().weight.detach().double().numpy()
    assert after.shape == (before.shape[0] + 2, before.shape[1])
    assert loaded.model.config.vocab_size == before.shape[0] + 2
    np.testing.assert_array_equal(after[: before.shape[0]], before)  # the old rows untouched
    # float32 mean over 262,144 rows against float64's: ~1e-7 of the values' spread
    np.testing.assert_allclose(after[-2:], np.stack([before.mean(axis=0)] * 2), atol=1e-6 * before.std())
    assert pair_tokenizer.prepare_model(loaded.model) == 0  # once
    # a chat-template tokenizer, or the default convention, adds nothing
    assert PairTokenizer(loaded.tokenizer).prepare_model(loaded.model) == 0


def test_score_and_highlight_a_base_model_under_official(tiny_gemma_dir, tmp_path):
    """End to end: ches score --compat official on a model without a chat template, then the
    report's highlighting, which loads the model again and must give the markers rows too."""
    import json

    from ches_filter import build_report, score_dataset

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt_text, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in PAIRS))  # fmt: skip
    result = score_dataset(str(data), output=tmp_path / "out", model=str(tiny_gemma_dir), device="cpu",
                           dtype="float32", convention="official")  # fmt: skip
    assert result.summary["by_status"] == {"ok": 3}
    assert "<|prompter|>" in result.manifest["model"]["tokenization"]
    report = build_report(tmp_path / "out", top=3, highlight="on", device="cpu")
    highlighted = [pair for pair in report["top"] if pair.get("contributions")]
    assert len(highlighted) == 3, report.get("notes")
    assert not any("differs" in note for note in report.get("notes", [])), report["notes"]
    for pair in highlighted:  # the decomposition sums to the stored score
        assert pair["contributions"]["ches"] == pytest.approx(pair["scores"]["ches"], rel=1e-4, abs=1e-6)
