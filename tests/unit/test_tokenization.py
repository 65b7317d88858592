"""Tokenisation exactly as ../shared/spec/ches.md defines it, on the real bundled tokenizers.

SmolLM2's tokenizer (with its chat template) comes with the ``tiny_llama`` fixture, Gemma-3's
(no chat template) with ``tiny_gemma``; the tiny random models themselves are only needed where a
pair goes through :class:`ches_filter.pipeline.PairScorer`.
"""

from __future__ import annotations

import pytest

from ches_filter.errors import OptionError
from ches_filter.pipeline import PairScorer
from ches_filter.records import PreferencePair, RowProblem, Status, TokenizedPair, Turn
from ches_filter.tokenization import (
    OFFICIAL_MAX_LENGTH,
    PairTokenizer,
    TokenizationOptions,
    chat_template_fingerprint,
    tokenizer_fingerprint,
)


def pair(prompt: str, chosen: str, rejected: str, row_id: int = 0) -> PreferencePair:
    """A standard-layout pair: one user turn; plain text concatenates as is."""
    return PreferencePair(
        row_id=row_id,
        prompt=(Turn("user", prompt),),
        chosen=chosen,
        rejected=rejected,
        prompt_text=prompt,
        chosen_text=chosen,
        rejected_text=rejected,
    )


SKY = pair("What colour is the sky?", "It is blue.", "It is black, as far as I can tell.")


def encode(tokenizer, p: PreferencePair, **options) -> TokenizedPair:
    encoded = PairTokenizer(tokenizer, TokenizationOptions(**options)).encode(p)
    assert isinstance(encoded, TokenizedPair), encoded
    return encoded


def problem(tokenizer, p: PreferencePair, **options) -> RowProblem:
    encoded = PairTokenizer(tokenizer, TokenizationOptions(**options)).encode(p)
    assert isinstance(encoded, RowProblem), encoded
    return encoded


def ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


@pytest.fixture(scope="module")
def smol(tiny_llama):
    assert tiny_llama.tokenizer.chat_template
    return tiny_llama.tokenizer


@pytest.fixture(scope="module")
def gemma(tiny_gemma):
    assert not tiny_gemma.tokenizer.chat_template
    return tiny_gemma.tokenizer


# -- chat template ------------------------------------------------------------------------------


def test_chat_template_prompt_response_and_span(smol):
    encoded = encode(smol, SKY)
    messages = [{"role": "user", "content": "What colour is the sky?"}]
    prompt_str = smol.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt_str.endswith("<|im_start|>assistant\n")
    prompt_ids = ids(smol, prompt_str, special=False)
    P = len(prompt_ids)
    assert encoded.prompt_len == P
    for side, reply, span, response in (
        ("chosen", SKY.chosen, encoded.chosen, encoded.chosen_response),
        ("rejected", SKY.rejected, encoded.rejected, encoded.rejected_response),
    ):
        full = smol.apply_chat_template(
            messages + [{"role": "assistant", "content": reply}], tokenize=False
        )
        # the response is the suffix of the full rendering, end-of-turn included
        assert smol.decode(response) == full[len(prompt_str) :] == f"{reply}<|im_end|>\n", side
        assert smol.eos_token_id in response  # <|im_end|>
        # the model input is p ⊕ r by concatenation, and equals the one-piece tokenisation here
        assert span.ids == tuple(prompt_ids) + response == tuple(ids(smol, full, special=False))
        # summed positions: P-1 … P+n-2, i.e. [P-1, P+n-1); the final position is not summed
        n = len(response)
        assert (span.start, span.end, span.n_summed) == (P - 1, P + n - 1, n)
        assert span.end == len(span.ids) - 1
    assert not encoded.truncated and not encoded.identical
    assert PairTokenizer(smol).uses_chat_template
    assert PairTokenizer(smol).description == "chat template"


def test_chat_template_with_a_system_turn_and_history(smol):
    p = PreferencePair(
        row_id=4,
        prompt=(
            Turn("system", "Be brief."),
            Turn("user", "Hi"),
            Turn("assistant", "Hello!"),
            Turn("user", "Sky colour?"),
        ),
        chosen="Blue.",
        rejected="Green.",
        prompt_text="unused",
        chosen_text="unused",
        rejected_text="unused",
    )
    encoded = encode(smol, p)
    prompt = smol.decode(encoded.chosen.ids[: encoded.prompt_len])
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n")
    assert smol.decode(encoded.rejected_response) == "Green.<|im_end|>\n"


def test_identical_responses_are_flagged_and_not_run(smol):
    encoded = encode(smol, pair("2 + 2 =", "4", "4"))
    assert encoded.identical and encoded.chosen == encoded.rejected


def test_chat_template_that_renders_the_prompt_differently(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}BOT: {{ m.content }}\n"
        "{% else %}USER: {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    found = problem(tokenizer, SKY)
    assert found.status is Status.PROMPT_MISMATCH
    assert "renders the prompt differently once the chosen reply follows" in found.reason


def test_chat_template_error_on_a_row_is_a_row_status(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('no system turns') }}{% endif %}{{ m.content }}{% endfor %}"
    )
    p = PreferencePair(0, (Turn("system", "x"), Turn("user", "y")), "a", "b", "", "", "")
    found = problem(tokenizer, p)
    assert found.status is Status.INVALID_FIELD and "no system turns" in found.reason


# -- plain text -------------------------------------------------------------------------------


def test_plain_text_with_bos_and_eos_for_a_tokenizer_without_template(gemma):
    p = pair("The sky is", " blue.", " green, I think.")
    encoded = encode(gemma, p)
    prompt_ids = ids(gemma, "The sky is", special=True)
    assert prompt_ids[0] == gemma.bos_token_id
    assert encoded.prompt_len == len(prompt_ids)
    for text, span, response in (
        (" blue.", encoded.chosen, encoded.chosen_response),
        (" green, I think.", encoded.rejected, encoded.rejected_response),
    ):
        assert response == tuple(ids(gemma, text, special=False) + [gemma.eos_token_id])
        assert span.ids == tuple(prompt_ids) + response
        assert span.ids[-1] == gemma.eos_token_id
        assert (span.start, span.end) == (len(prompt_ids) - 1, len(span.ids) - 1)
    assert PairTokenizer(gemma).description == "plain text + EOS"
    assert not PairTokenizer(gemma).uses_chat_template
    assert chat_template_fingerprint(gemma) is None


def test_no_chat_template_forces_plain_text(smol):
    tok = PairTokenizer(smol, TokenizationOptions(use_chat_template=False))
    assert not tok.uses_chat_template and tok.description == "plain text + EOS"
    p = pair("The sky is", " blue.", " green.")
    encoded = tok.encode(p)
    assert isinstance(encoded, TokenizedPair)
    assert "<|im_start|>" not in smol.decode(encoded.chosen.ids)
    assert encoded.chosen.ids == tuple(
        ids(smol, "The sky is blue.", special=True) + [smol.eos_token_id]
    )
    assert encode(smol, p).chosen.ids != encoded.chosen.ids  # the template changes the input


@pytest.mark.parametrize("fixture", ["smol", "gemma"])
def test_merge_across_the_prompt_boundary_is_a_prompt_mismatch(request, fixture):
    tokenizer = request.getfixturevalue(fixture)
    # "Hello wor" + "ld" tokenises as "Hello world" in one piece: the prompt ids are no prefix
    prompt_ids = ids(tokenizer, "Hello wor", True)
    assert ids(tokenizer, "Hello world", True)[: len(prompt_ids)] != prompt_ids
    found = problem(tokenizer, pair("Hello wor", "ld", "ld!"), use_chat_template=False)
    assert found.status is Status.PROMPT_MISMATCH
    assert "prompt ids are not a prefix of the chosen rendering's ids" in found.reason


def test_a_clean_boundary_is_not_a_mismatch(gemma):
    encode(gemma, pair("Hello", " world", " there"))


def test_fingerprints_are_stable_and_tell_tokenizers_apart(smol, gemma, tmp_path):
    """Equal for the same tokenizer saved and loaded again (another object, another folder);
    different for another tokenizer, one more token, or another chat template."""
    from transformers import AutoTokenizer

    smol.save_pretrained(tmp_path / "smol")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "smol"))
    assert reloaded is not smol
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(smol)
    assert chat_template_fingerprint(reloaded) == chat_template_fingerprint(smol)
    assert len(tokenizer_fingerprint(smol)) == len(chat_template_fingerprint(smol) or "") == 16
    assert tokenizer_fingerprint(smol) != tokenizer_fingerprint(gemma)
    reloaded.add_tokens(["<an-extra-token>"])
    assert tokenizer_fingerprint(reloaded) != tokenizer_fingerprint(smol)
    reloaded.chat_template = smol.chat_template.replace("assistant", "Assistant")
    assert chat_template_fingerprint(reloaded) != chat_template_fingerprint(smol)


# -- --max-length ---------------------------------------------------------------------------------


def test_max_length_cuts_responses_and_keeps_the_prompt(smol):
    whole = encode(smol, SKY)
    P = whole.prompt_len
    # four tokens each: "It is blue." / "It is black,": the third differs and is read
    cut = encode(smol, SKY, max_length=P + 4)
    assert cut.truncated and not cut.truncation_collapsed and cut.degeneracy() is None
    assert cut.prompt_len == P and cut.chosen.ids[:P] == whole.chosen.ids[:P]
    assert cut.chosen_response == whole.chosen_response[:4]
    assert cut.rejected_response == whole.rejected_response[:4]
    for span in (cut.chosen, cut.rejected):
        assert len(span.ids) == P + 4 and (span.start, span.end) == (P - 1, P + 3)
    room = P + len(whole.chosen_response)  # the chosen reply fits, the longer rejected one doesn't
    partly = encode(smol, SKY, max_length=room)
    assert partly.truncated and partly.chosen == whole.chosen
    assert len(partly.rejected.ids) == room
    longest = max(len(whole.chosen.ids), len(whole.rejected.ids))
    fits = encode(smol, SKY, max_length=longest)
    assert not fits.truncated and fits.chosen == whole.chosen and fits.rejected == whole.rejected
    assert PairTokenizer(smol, TokenizationOptions(max_length=64)).description == (
        "chat template, max length 64"
    )


def test_a_prompt_that_fills_max_length(smol):
    P = encode(smol, SKY).prompt_len
    for limit in (P, P - 5):
        found = problem(smol, SKY, max_length=limit)
        assert found.status is Status.PROMPT_TOO_LONG
        assert f"the prompt has {P} tokens and fills --max-length {limit}" == found.reason
    assert encode(smol, SKY, max_length=P + 1).chosen.n_summed == 1


def test_responses_equal_after_the_cut_are_truncated_identical(smol, tiny_llama):
    p = pair("Continue.", "The same long beginning, then yes.", "The same long beginning, then no.")
    P = encode(smol, p).prompt_len
    collapsed = encode(smol, p, max_length=P + 4)
    assert collapsed.truncated and collapsed.truncation_collapsed and collapsed.identical
    assert not encode(smol, p).truncation_collapsed
    # through the scorer: flagged, CHES 0, never sent to the model
    scorer = PairScorer(tiny_llama, TokenizationOptions(max_length=P + 4))
    same = pair("Continue.", "Same.", "Same.", row_id=1)
    results = scorer.score([p, same])
    assert scorer.runner.stats.forward_calls == 0
    assert [r.status for r in results] == [Status.TRUNCATED_IDENTICAL, Status.IDENTICAL]
    assert results[0].ches == 0.0 and results[0].truncated is True
    assert "--max-length" in (results[0].reason or "")


@pytest.mark.parametrize("bad", [0, 1, -3])
def test_max_length_below_two_is_an_option_error(bad):
    with pytest.raises(OptionError, match="--max-length must be at least 2"):
        TokenizationOptions(max_length=bad)


def test_unknown_convention_is_an_option_error():
    with pytest.raises(OptionError, match="--compat must be 'default' or 'official', not 'bogus'"):
        TokenizationOptions(convention="bogus")  # type: ignore[arg-type]


# -- --compat official -------------------------------------------------------------------------------


def test_official_convention_with_a_chat_template(smol):
    encoded = encode(smol, SKY, convention="official")
    messages = [{"role": "user", "content": "What colour is the sky?"}]
    query = smol.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    query_ids = ids(smol, query, special=False)
    Q = len(query_ids)
    assert encoded.prompt_len == Q
    for reply, span, response in (
        (SKY.chosen, encoded.chosen, encoded.chosen_response),
        (SKY.rejected, encoded.rejected, encoded.rejected_response),
    ):
        text_ids = ids(smol, query + reply, special=False)  # query + response, no EOS
        assert span.ids == tuple(text_ids)
        assert smol.eos_token_id not in span.ids[Q:]
        assert response == tuple(text_ids[Q:])
        # summed from query_len - 1 through the FINAL position
        assert (span.start, span.end) == (Q - 1, len(text_ids))
        assert span.n_summed == len(response) + 1
    tok = PairTokenizer(smol, TokenizationOptions(convention="official"))
    assert tok.max_length == OFFICIAL_MAX_LENGTH
    assert tok.description == "chat template, official script, max length 512"


def test_official_convention_plain_text(gemma):
    """No chat template: the script's <|prompter|>…<|assistant|> query, markers as new tokens."""
    tok = PairTokenizer(gemma, TokenizationOptions(convention="official"))
    encoded = tok.encode(pair("The sky is", " blue.", " green."))
    prompter, assistant = len(gemma), len(gemma) + 1  # appended after the vocabulary
    assert tok.tokenizer.convert_tokens_to_ids(["<|prompter|>", "<|assistant|>"]) == [prompter, assistant]
    body = ids(gemma, "The sky is", special=False)
    reply = ids(gemma, " blue.", special=False)
    assert encoded.chosen.ids == (gemma.bos_token_id, prompter, *body, assistant, *reply)
    assert encoded.prompt_len == len(body) + 3 and encoded.chosen.ids[-1] != gemma.eos_token_id
    assert encoded.chosen.end == len(encoded.chosen.ids)
    assert len(gemma) == prompter  # the caller's tokenizer is left alone


def test_official_convention_truncates_each_text(smol):
    long_reply = "word " * 600
    encoded = encode(smol, pair("Say words.", long_reply, "No."), convention="official")
    assert encoded.truncated and len(encoded.chosen.ids) == OFFICIAL_MAX_LENGTH
    assert encoded.chosen.end == OFFICIAL_MAX_LENGTH
    short = encode(
        smol, pair("Say words.", long_reply, "No."), convention="official", max_length=40
    )
    assert len(short.chosen.ids) == 40 and len(short.rejected.ids) < 40


def test_official_convention_prompt_that_fills_the_limit(smol):
    Q = encode(smol, SKY, convention="official").prompt_len
    for limit in (Q - 3, Q):
        found = problem(smol, SKY, convention="official", max_length=limit)
        assert found.status is Status.PROMPT_TOO_LONG, (limit, found)
    assert encode(smol, SKY, convention="official", max_length=Q + 1).chosen.n_summed == 2


def test_official_convention_collapse_after_truncation(smol):
    p = pair("Continue.", "Same start here, then yes.", "Same start here, then no.")
    Q = encode(smol, p, convention="official").prompt_len
    cut = encode(smol, p, convention="official", max_length=Q + 2)
    assert cut.truncated and cut.truncation_collapsed
