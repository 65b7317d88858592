"""From a PreferencePair to model inputs, exactly as ../shared/spec/ches.md defines them.

Default convention (Definition 2 with the response as a trainer feeds it):

* chat template (when the tokenizer has one and ``use_chat_template``): the prompt is the
  template applied to the prompt messages with ``add_generation_prompt=True``; the response is
  the rest of the rendering of prompt + assistant message (the suffix after the prompt
  rendering, end-of-turn tokens included), tokenised without adding special tokens.
* plain text otherwise: ``prompt_text`` tokenised with the tokenizer's special tokens (BOS),
  the response ``chosen_text``/``rejected_text`` tokenised without them, followed by EOS.

The model input is ``p ⊕ r``, built by concatenating ids. As a check, the full rendering is
also tokenised in one piece; if the prompt ids are not its prefix (a BPE merge across the
boundary, or a template that renders the prompt differently once a reply follows) the row gets
``prompt_mismatch`` rather than a score computed on tokens a trainer would not see.

Hidden states summed: positions ``P-1 … P+n-2`` (``SequenceSpan(start=P-1, end=P+n-1)``).

Length limit (``max_length``; by default the model's context, ``context``: its config's
``max_position_embeddings``, so no score reads a position the model was not trained on): the
prompt is never cut (CHES is conditioned on it). With ``too_long="truncate"`` (the default) each
response is cut at the right so that ``P + n <= max_length`` and the pair is flagged
``truncated``; with ``too_long="skip"`` a pair that would be cut gets ``too_long`` and no score.
A prompt with ``P >= max_length`` leaves no room and gets ``prompt_too_long`` either way.

Degenerate pairs: when both sequences sum the same hidden states (equal spans over equal ids up
to the span's end, :func:`~ches_filter.records.same_summed_states`) the pair is ``identical``;
when only the cut made them so (e.g. two responses cut to one length that differ in their last
kept token, which no summed position reads), the tokenizer records ``truncated_identical`` on
the TokenizedPair (``degenerate``) with its reason.

``convention="official"`` follows the authors' per-example script instead: strings
``query + response`` without EOS, query and full text tokenised separately and each truncated
at ``max_length`` (512 by default there), leading EOS tokens stripped (its ``__trim_padding``),
prompt length from the query, and hidden states summed from ``query_len - 1`` through the
final position. For tokenizers without a chat template the query is
``<|prompter|>{prompt}<|assistant|>``, both markers added to a copy of the tokenizer as special
tokens, and :meth:`PairTokenizer.prepare_model` gives them rows in the model's embeddings (the
mean row), as the script's ``resize_token_embeddings`` does (docs/scores.md lists what differs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ModelError, OptionError, clip
from .records import (
    Degenerate,
    PreferencePair,
    RowProblem,
    SequenceSpan,
    Status,
    TokenizedPair,
    identical_reason,
    same_summed_states,
)

Convention = Literal["default", "official"]
#: What happens to a pair longer than the limit: cut the responses (flagged), or leave it unscored.
TOO_LONG_POLICIES = ("truncate", "skip")
OFFICIAL_MAX_LENGTH = 512
#: The official script's query markers for tokenizers without a chat template (added as tokens).
PROMPTER, ASSISTANT = "<|prompter|>", "<|assistant|>"
OFFICIAL_PADDING = "<|padding|>"  # the script's pad token when the tokenizer has none


@dataclass(frozen=True)
class TokenizationOptions:
    use_chat_template: bool = True
    max_length: int | None = None  # None: the model's context (``context``), if it has one
    convention: Convention = "default"
    too_long: str = "truncate"  # TOO_LONG_POLICIES
    context: int | None = None  # the model's positions (max_position_embeddings); None: unknown

    def __post_init__(self) -> None:
        if self.convention not in ("default", "official"):
            raise OptionError(f"--compat must be 'default' or 'official', not {self.convention!r}")
        if self.max_length is not None and self.max_length < 2:
            raise OptionError("--max-length must be at least 2 (one prompt and one response token)")
        if self.too_long not in TOO_LONG_POLICIES:
            raise OptionError(f"--too-long must be one of {', '.join(TOO_LONG_POLICIES)}, not {self.too_long!r}")
        check_max_length(self.max_length, self.context)


def check_max_length(max_length: int | None, context: int | None) -> None:
    """An explicit ``--max-length`` above the model's context is refused (OptionError)."""
    if max_length is not None and context is not None and max_length > context:
        raise OptionError(
            f"--max-length {max_length} is above the model's context of {context} tokens "
            "(max_position_embeddings): positions past it were never trained",
            hint=f"leave --max-length out (it defaults to {context}) or pass at most {context}",
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def chat_template_fingerprint(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else repr(template)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PairTokenizer:
    """Turns PreferencePairs into TokenizedPairs (or RowProblems) for one tokenizer."""

    def __init__(self, tokenizer: Any, options: TokenizationOptions | None = None) -> None:
        self.tokenizer = tokenizer
        self.options = options or TokenizationOptions()
        self.uses_chat_template = bool(self.options.use_chat_template and tokenizer.chat_template)
        self.eos_id = tokenizer.eos_token_id
        if not self.uses_chat_template and self.options.convention == "default" and self.eos_id is None:
            raise ModelError("the tokenizer has no EOS token, which plain-text scoring appends")
        context = self.options.context
        self.max_length: int | None = self.options.max_length
        if self.max_length is not None:
            self.limit_name = f"--max-length {self.max_length}"
        elif self.options.convention == "official":  # the script's own limit, within the context
            self.max_length = OFFICIAL_MAX_LENGTH if context is None else min(OFFICIAL_MAX_LENGTH, context)
            self.limit_name = f"the script's {self.max_length}-token limit"
        else:
            self.max_length = context
            self.limit_name = f"the model's context of {context} tokens"
        #: where the limit came from (the manifest's ``options.max_length_from``)
        self.max_length_from = (
            "--max-length" if self.options.max_length is not None
            else "official script" if self.options.convention == "official"
            else "model context" if context is not None
            else "none (the model's config gives no context length)"
        )
        #: the official script's query markers, added to a copy of the tokenizer
        self.official_markers = self.options.convention == "official" and not self.uses_chat_template
        if self.official_markers:
            self.tokenizer = _with_official_tokens(tokenizer)

    def prepare_model(self, model: Any) -> int:
        """Rows for the tokens this tokenizer added to the model's embeddings (official markers).

        Call once on the model that will score this tokenizer's pairs (the runner's, the report's).
        The script resizes the embeddings for the markers it adds; the new rows are the mean of
        the existing ones (:mod:`ches_filter.model.vocabulary`). Returns the rows added, 0 when
        nothing was needed (every other convention and tokenizer).
        """
        if not self.official_markers:
            return 0
        from .model.vocabulary import grow_embeddings

        return grow_embeddings(model, len(self.tokenizer))

    @property
    def description(self) -> str:
        how = "chat template" if self.uses_chat_template else "plain text + EOS"
        if self.options.convention == "official":
            how = (
                "chat template, official script"
                if self.uses_chat_template
                else f"plain text in {PROMPTER}…{ASSISTANT} (added tokens, mean embedding rows), official script"
            )
        limit = f", max length {self.max_length}" if self.max_length else ""
        return how + limit

    # -- helpers ---------------------------------------------------------------------------
    def _ids(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _messages(self, pair: PreferencePair) -> list[dict[str, str]]:
        return [{"role": turn.role, "content": turn.content} for turn in pair.prompt]

    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(rendered)

    # -- public ----------------------------------------------------------------------------
    def encode(self, pair: PreferencePair) -> TokenizedPair | RowProblem:
        if self.options.convention == "official":
            return self._encode_official(pair)
        return self._encode_default(pair)

    def _encode_default(self, pair: PreferencePair) -> TokenizedPair | RowProblem:
        row = pair.row_id
        if self.uses_chat_template:
            messages = self._messages(pair)
            try:
                prompt_str = self._render(messages, generation_prompt=True)
                fulls = [
                    self._render(messages + [{"role": "assistant", "content": reply}], generation_prompt=False)
                    for reply in (pair.chosen, pair.rejected)
                ]
            except Exception as exc:  # jinja raises TemplateError and friends on odd roles
                return RowProblem(row, Status.INVALID_FIELD, f"chat template failed on this row: {clip(exc)}")
            for side, full in zip(("chosen", "rejected"), fulls, strict=False):
                if not full.startswith(prompt_str):
                    return RowProblem(
                        row,
                        Status.PROMPT_MISMATCH,
                        f"the chat template renders the prompt differently once the {side} reply follows",
                    )
            prompt_ids = self._ids(prompt_str, special=False)
            responses = [self._ids(full[len(prompt_str) :], special=False) for full in fulls]
            full_ids = [self._ids(full, special=False) for full in fulls]
        else:
            prompt_ids = self._ids(pair.prompt_text, special=True)
            responses = [
                self._ids(text, special=False) + [self.eos_id]
                for text in (pair.chosen_text, pair.rejected_text)
            ]
            full_ids = [
                self._ids(pair.prompt_text + text, special=True)
                for text in (pair.chosen_text, pair.rejected_text)
            ]
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            return RowProblem(row, Status.EMPTY_PROMPT, "the prompt has no tokens")
        for side, ids in zip(("chosen", "rejected"), full_ids, strict=False):
            if ids[:n_prompt] != prompt_ids:
                at = _common_prefix(ids, prompt_ids)
                return RowProblem(
                    row,
                    Status.PROMPT_MISMATCH,
                    f"prompt ids are not a prefix of the {side} rendering's ids "
                    f"(they differ at token {at} of {n_prompt}: a merge across the boundary)",
                )
        for side, ids in zip(("chosen", "rejected"), responses, strict=False):
            if not ids:
                return RowProblem(row, Status.EMPTY_RESPONSE, f"the {side} response has no tokens")
        return self._finish(row, prompt_ids, responses[0], responses[1])

    def _finish(
        self, row: int, prompt_ids: list[int], chosen: list[int], rejected: list[int]
    ) -> TokenizedPair | RowProblem:
        n_prompt = len(prompt_ids)

        def span(response: list[int]) -> SequenceSpan:
            ids = tuple(prompt_ids + response)
            return SequenceSpan(ids=ids, start=n_prompt - 1, end=n_prompt - 1 + len(response))

        whole = (span(chosen), span(rejected))
        truncated = False
        if self.max_length is not None:
            if n_prompt >= self.max_length:
                return RowProblem(
                    row,
                    Status.PROMPT_TOO_LONG,
                    f"the prompt has {n_prompt} tokens and fills {self.limit_name}",
                )
            room = self.max_length - n_prompt
            truncated = len(chosen) > room or len(rejected) > room
            if truncated and self.options.too_long == "skip":
                return self._too_long(row, n_prompt + max(len(chosen), len(rejected)))
            chosen, rejected = chosen[:room], rejected[:room]
        return _tokenized(
            row,
            n_prompt,
            whole,
            (span(chosen), span(rejected)),
            (tuple(chosen), tuple(rejected)),
            truncated=truncated,
            limit=self.limit_name,
        )

    def _too_long(self, row: int, tokens: int) -> RowProblem:
        return RowProblem(
            row,
            Status.TOO_LONG,
            f"the longer sequence has {tokens} tokens, more than {self.limit_name} (--too-long skip)",
        )

    def _strip_leading_eos(self, ids: list[int]) -> list[int]:
        """The official script's ``__trim_padding``: ids from the first one that is not EOS.

        It is meant for left padding (the script pads with EOS), but it also removes a leading
        EOS that a tokenizer adds as its BOS (the same token in GPT-2-style vocabularies) or a
        chat template renders first. Ids that are all EOS are kept whole, as ``argmax`` there
        gives 0.
        """
        eos = self.eos_id
        for start, token in enumerate(ids):
            if token != eos:
                return ids[start:]
        return ids

    def _encode_official(self, pair: PreferencePair) -> TokenizedPair | RowProblem:
        row = pair.row_id
        if self.uses_chat_template:
            try:
                query = self._render(self._messages(pair), generation_prompt=True)
            except Exception as exc:
                return RowProblem(row, Status.INVALID_FIELD, f"chat template failed on this row: {clip(exc)}")
            texts = [query + pair.chosen, query + pair.rejected]
            special = False
        else:
            query = _official_query(pair)
            texts = [query + pair.chosen, query + pair.rejected]
            special = True
        limit = self.max_length

        def tok(text: str) -> tuple[list[int], list[int], bool]:
            """Full ids and ids as scored: cut at ``limit``, then leading EOS tokens stripped."""
            ids = self._ids(text, special=special)
            if limit is not None and len(ids) > limit:
                return self._strip_leading_eos(ids), self._strip_leading_eos(ids[:limit]), True
            ids = self._strip_leading_eos(ids)
            return ids, ids, False

        _, query_ids, query_cut = tok(query)
        (chosen_full, chosen_ids, chosen_cut), (rejected_full, rejected_ids, rejected_cut) = (
            tok(texts[0]),
            tok(texts[1]),
        )
        full_ids = (chosen_full, rejected_full)
        n_query = len(query_ids)
        # A query of exactly ``limit`` tokens fills it too: every response token is cut away.
        if query_cut or (limit is not None and n_query >= limit):
            return RowProblem(
                row,
                Status.PROMPT_TOO_LONG,
                f"the query alone fills {self.limit_name} (the official script scores no response tokens)",
            )
        if n_query == 0:
            return RowProblem(row, Status.EMPTY_PROMPT, "the query has no tokens")
        for side, ids in zip(("chosen", "rejected"), (chosen_ids, rejected_ids), strict=False):
            if len(ids) <= n_query:
                return RowProblem(
                    row,
                    Status.EMPTY_RESPONSE,
                    f"the {side} response has no tokens after the query (the official script drops this row)",
                )

        if (chosen_cut or rejected_cut) and self.options.too_long == "skip":
            return self._too_long(row, max(len(chosen_full), len(rejected_full)))

        def span(ids: list[int]) -> SequenceSpan:
            return SequenceSpan(ids=tuple(ids), start=n_query - 1, end=len(ids))

        return _tokenized(
            row,
            n_query,
            (span(full_ids[0]), span(full_ids[1])),
            (span(chosen_ids), span(rejected_ids)),
            (tuple(chosen_ids[n_query:]), tuple(rejected_ids[n_query:])),
            truncated=query_cut or chosen_cut or rejected_cut,
            limit=self.limit_name,
        )


def _with_official_tokens(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` with the script's additions: a pad token if none, both markers."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    if not tokenizer.pad_token:
        tokenizer.add_special_tokens({"pad_token": OFFICIAL_PADDING})
    tokenizer.add_special_tokens({"additional_special_tokens": [PROMPTER, ASSISTANT]})
    return tokenizer


def _official_query(pair: PreferencePair) -> str:
    """The script's query for tokenizers without a chat template: ``<|prompter|>…<|assistant|>``.

    One user turn (the script's only case): ``<|prompter|>{content}<|assistant|>``. The script
    has no format for a system message or earlier turns; here a system message comes first as is
    (then a newline), each user turn after ``<|prompter|>``, each assistant turn after
    ``<|assistant|>``, and the query ends with ``<|assistant|>`` (docs/scores.md).
    """
    parts = []
    for turn in pair.prompt:
        if turn.role == "system":
            parts.append(f"{turn.content}\n")
        elif turn.role == "assistant":
            parts.append(f"{ASSISTANT}{turn.content}")
        else:
            parts.append(f"{PROMPTER}{turn.content}")
    return "".join(parts) + ASSISTANT


def _tokenized(
    row: int,
    prompt_len: int,
    whole: tuple[SequenceSpan, SequenceSpan],
    spans: tuple[SequenceSpan, SequenceSpan],
    responses: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    truncated: bool,
    limit: str,
) -> TokenizedPair:
    """The TokenizedPair, with its verdict when truncation made the summed states equal.

    ``whole``: the spans before truncation, ``spans``: as scored. A pair whose summed states
    were equal before the cut is plain ``identical`` (TokenizedPair.degeneracy says so).
    """
    collapsed = truncated and same_summed_states(*spans) and not same_summed_states(*whole)
    degenerate = None
    if collapsed:
        degenerate = Degenerate(Status.TRUNCATED_IDENTICAL, identical_reason(*spans, limit=limit))
    return TokenizedPair(
        row_id=row,
        prompt_len=prompt_len,
        chosen=spans[0],
        rejected=spans[1],
        chosen_response=responses[0],
        rejected_response=responses[1],
        truncated=truncated,
        truncation_collapsed=collapsed,
        degenerate=degenerate,
    )
