"""Row dict → :class:`PreferencePair` | :class:`RowProblem`: one adapter per input layout.

Every layout yields the same two renderings of a pair (see ``records.PreferencePair``): messages
(``prompt`` turns + ``chosen``/``rejected`` reply contents) for chat templates, and plain text
(``prompt_text`` + ``chosen_text``/``rejected_text``, concatenated as is) for tokenizers without
one. The prompt boundary matters to CHES, so implicit prompts are split at turn markers or message
boundaries, never at the longest common character prefix (which cuts "It is bl|ue.").

:func:`detect_layout` picks an adapter from the field names and value types of a few sample rows
(or the one forced with ``--layout``); a row the adapter can't use becomes a :class:`RowProblem`
with a reason naming the field, never an exception. Layouts are documented for users in
``docs/formats.md`` ("Input layouts").

Three things work the same way in every layout:

* field paths: ``data.question`` reaches into objects, ``response.0`` / ``output.-1`` into lists
  (negative indices count from the end); a path that doesn't resolve says why, briefly;
* message contents: a string, or a list of typed parts (``{"type": "text", "text"|"value": …}``)
  whose text parts are concatenated as they are; any other part (an image, audio) gives the row
  ``unsupported_content``;
* a ``system`` (or ``system_prompt``) column: a non-blank one becomes a system turn before the
  prompt (:meth:`Layout.extract`), unless the conversation starts with the same system message;
  a different one there makes the row ``ambiguous_prompt``.

No message quotes more than ``errors.CLIP_LIMIT`` characters of dataset content.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ches_filter.errors import LayoutError, OptionError, clip, clip_names
from ches_filter.records import PreferencePair, RowProblem, Status, Turn

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_MISSING = object()
PROMPT_SYNONYMS = ("prompt", "query", "question", "instruction")
SYSTEM_FIELDS = ("system", "system_prompt")
LABEL_POLICIES = ("better", "safer")
#: ``--ranking-pair``: which two of a ranked list (best first) become chosen and rejected.
RANKING_PAIRS = ("first-second", "first-last")
#: Columns that hold a list of candidate responses (``output``: LLaMA-Factory's ranking format).
RESPONSE_LISTS = (
    "output", "outputs", "response", "responses", "completions", "candidates", "answers",
)
_INDEX = re.compile(r"-?[0-9]+")
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant|System):")
#: ``from``/``role`` values → chat roles (ShareGPT uses human/gpt).
ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}
_PLAIN_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}


@dataclass(frozen=True)
class LayoutOptions:
    """How to read rows: force a layout, map field names (dotted paths), pick a label."""

    layout: str | None = None
    prompt_field: str | None = None
    chosen_field: str | None = None
    rejected_field: str | None = None
    label_policy: str | None = None  # "better" (default) or "safer" (PKU-SafeRLHF only)
    ranking_pair: str | None = None  # "first-second" (default) or "first-last" (ranking only)


def render_plain(turns: Sequence[Turn]) -> str:
    """The plain-text prompt for a message list, for tokenizers without a chat template.

    A single user turn renders as its content, unchanged (like a standard ``prompt`` string; the
    response then follows it directly). Anything else renders HH-RLHF style: one
    ``"\\n\\nHuman: {content}"`` / ``"\\n\\nAssistant: {content}"`` per turn (system turns as
    ``"\\n\\nSystem: {content}"``), then ``"\\n\\nAssistant:"``; the response text then starts
    with a space (``chosen_text = " " + chosen``). No turns render as "".
    """
    if not turns:
        return ""
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].content
    parts = [f"\n\n{_PLAIN_NAMES.get(t.role, t.role.title())}: {t.content}" for t in turns]
    return "".join(parts) + HH_ASSISTANT


def is_blank(text: str) -> bool:
    """Empty or whitespace only; zero-width spaces (U+200B/C/D, U+2060, U+FEFF) count as space."""
    return not text.translate(_ZERO_WIDTH).strip()


# --------------------------------------------------------------------------- row helpers


class _Problem(Exception):
    """Raised inside an adapter; ``Layout.extract`` turns it into a RowProblem."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _walk(row: Any, path: str) -> tuple[Any, str | None]:
    """``(value, None)`` for ``path`` in ``row``, or ``(_MISSING, why)`` with a short reason.

    A key holding the whole path wins (a column named ``"a.b"``); otherwise the path is split at
    dots and each part is a key of an object or an index of a list (``0``, ``-1``: from the end).
    """
    if isinstance(row, Mapping) and path in row:
        return row[path], None
    value: Any = row
    done: list[str] = []
    for part in path.split("."):
        where = ".".join(done)
        if isinstance(value, Mapping):
            if part not in value:
                if not done:
                    return _MISSING, f"no field {clip(part, 60)!r}"
                return _MISSING, (
                    f"{where!r} has no key {clip(part, 60)!r} (its keys: {clip_names(value)})"
                )
            value = value[part]
        elif isinstance(value, (list, tuple)):
            if not _INDEX.fullmatch(part):
                return _MISSING, (
                    f"{where!r} is a list of {len(value)}, so {clip(part, 60)!r} must be an index "
                    "such as 0 or -1"
                )
            index = int(part)
            if not -len(value) <= index < len(value):
                items = f"{len(value)} item{'s' * (len(value) != 1)}"
                return _MISSING, f"{where!r} has {items}, no index {index}"
            value = value[index]
        else:
            kind = "null" if value is None else _kind(value)
            return _MISSING, f"{where!r} is {kind}, not an object or a list"
        done.append(part)
    return value, None


def get_field(row: Mapping[str, Any], path: str) -> Any:
    """``row[path]``, following dots into objects (``data.question``) and lists (``output.0``,
    ``messages.-1.content``); or _MISSING."""
    return _walk(row, path)[0]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _present(row: Mapping[str, Any], field: str) -> Any:
    value, why = _walk(row, field)
    if value is _MISSING:
        detail = f" ({why})" if why and "." in field and field not in row else ""
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is missing{detail}")
    if value is None:
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is null")
    return value


def _string(row: Mapping[str, Any], field: str) -> str:
    value = _present(row, field)
    if not isinstance(value, str):
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is {_kind(value)}, not a string")
    return value


def _parts_text(parts: Sequence[Any], where: str) -> str:
    """The text of typed content parts, concatenated with nothing between them (as the chat
    templates of multimodal models render a list of text parts); any other part is a problem."""
    texts = []
    for number, part in enumerate(parts, 1):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if not isinstance(kind, str):
            raise _Problem(
                Status.INVALID_FIELD,
                f"{where} content part {number} is {_kind(part)} without a 'type'",
            )
        if kind != "text":
            raise _Problem(
                Status.UNSUPPORTED_CONTENT,
                f"{where} content part {number} is of type {clip(kind, 40)!r}; only text parts "
                "can be scored",
            )
        text = part.get("text", part.get("value", _MISSING))
        if not isinstance(text, str):
            state = "no 'text' (or 'value')" if text is _MISSING else f"{_kind(text)} as its text"
            raise _Problem(Status.INVALID_FIELD, f"{where} content part {number} has {state}")
        texts.append(text)
    return "".join(texts)


def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content", message.get("value", _MISSING))
    if content is _MISSING:
        raise _Problem(Status.INVALID_FIELD, f"{where} has no 'content' (or 'value')")
    if content is None:
        raise _Problem(Status.INVALID_FIELD, f"{where} has null content")
    if isinstance(content, (list, tuple)):  # typed parts: [{"type": "text", "text"|"value": ...}]
        return _parts_text(content, where)
    if not isinstance(content, str):
        raise _Problem(Status.INVALID_FIELD, f"{where} content is {_kind(content)}, not a string")
    return content


def _turn(message: Any, where: str) -> Turn:
    if not isinstance(message, Mapping):
        raise _Problem(Status.INVALID_FIELD, f"{where} is {_kind(message)}, not a message object")
    role = message.get("role", message.get("from"))
    if not isinstance(role, str):
        raise _Problem(Status.INVALID_FIELD, f"{where} has no 'role' (or 'from')")
    mapped = ROLES.get(role.strip().lower())
    if mapped is None:
        raise _Problem(Status.INVALID_FIELD, f"{where} has an unknown role {clip(role, 40)!r}")
    return Turn(mapped, _content(message, where))


def _turns(value: Any, field: str) -> tuple[Turn, ...]:
    if value is None:
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is null")
    if not isinstance(value, (list, tuple)):
        raise _Problem(
            Status.INVALID_FIELD, f"field {field!r} is {_kind(value)}, not a message list"
        )
    return tuple(_turn(m, f"field {field!r} message {i + 1}") for i, m in enumerate(value))


def _reply(value: Any, field: str) -> str:
    """A response given as a string, one message object, or a list of one assistant message."""
    if value is None:
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is null")
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        turns: tuple[Turn, ...] = (_turn(value, f"field {field!r}"),)
    else:
        turns = _turns(value, field)
        if len(turns) != 1:
            raise _Problem(
                Status.INVALID_FIELD,
                f"field {field!r} has {len(turns)} messages, expected one assistant message",
            )
    if turns[0].role != "assistant":
        raise _Problem(
            Status.INVALID_FIELD,
            f"field {field!r} is a {turns[0].role!r} message, expected an assistant message",
        )
    return turns[0].content


def _history(row: Mapping[str, Any], fields: Mapping[str, str]) -> tuple[Turn, ...]:
    """Earlier turns from an Alpaca ``history`` column: ``[[user, assistant], …]``; none when the
    layout has no such column or the row leaves it missing, null or empty."""
    if "history" not in fields:
        return ()
    field = fields["history"]
    value = get_field(row, field)
    if value is None or value is _MISSING:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _Problem(
            Status.INVALID_FIELD,
            f"field {field!r} is {_kind(value)}, not a list of [user, assistant] pairs",
        )
    turns: list[Turn] = []
    for number, item in enumerate(value, 1):
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(text, str) for text in item)
        ):
            what = f"a list of {len(item)}" if isinstance(item, (list, tuple)) else _kind(item)
            raise _Problem(
                Status.INVALID_FIELD,
                f"field {field!r} item {number} is {what}, expected a [user, assistant] pair of "
                "strings",
            )
        turns += (Turn("user", item[0]), Turn("assistant", item[1]))
    return tuple(turns)


def _check_responses(chosen: str, rejected: str, fields: tuple[str, str]) -> None:
    empty = [name for name, text in zip(fields, (chosen, rejected), strict=True) if is_blank(text)]
    if empty:
        what = " and ".join(repr(name) for name in empty)
        raise _Problem(
            Status.EMPTY_RESPONSE,
            f"field {what} {'is' if len(empty) == 1 else 'are'} empty or whitespace only",
        )


def _string_pair(row_id: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    """A pair with a plain-string prompt: one user turn; the texts concatenate as they are."""
    return PreferencePair(
        row_id=row_id,
        prompt=(Turn("user", prompt),),
        chosen=chosen,
        rejected=rejected,
        prompt_text=prompt,
        chosen_text=chosen,
        rejected_text=rejected,
    )


def _messages_pair(
    row_id: int, turns: tuple[Turn, ...], chosen: str, rejected: str
) -> PreferencePair:
    """A pair with a message-list prompt; plain text by :func:`render_plain`."""
    single = len(turns) == 1 and turns[0].role == "user"
    sep = "" if single else " "
    return PreferencePair(
        row_id=row_id,
        prompt=turns,
        chosen=chosen,
        rejected=rejected,
        prompt_text=render_plain(turns),
        chosen_text=sep + chosen,
        rejected_text=sep + rejected,
    )


def _check_prompt_turns(turns: tuple[Turn, ...], field: str) -> None:
    if all(is_blank(t.content) for t in turns):
        raise _Problem(Status.EMPTY_PROMPT, f"the prompt ({field}) is empty")


def _split_last_reply(turns: tuple[Turn, ...], field: str) -> tuple[tuple[Turn, ...], str]:
    if not turns:
        raise _Problem(Status.INVALID_FIELD, f"field {field!r} is an empty message list")
    if turns[-1].role != "assistant":
        raise _Problem(
            Status.INVALID_FIELD,
            f"field {field!r} ends with a {turns[-1].role!r} message, expected the assistant reply",
        )
    return turns[:-1], turns[-1].content


def _optional_text(row: Mapping[str, Any], fields: Mapping[str, str], role: str) -> str | None:
    """An optional string field's text: None when the layout has no such column, or the row
    leaves it missing, null or blank; a _Problem naming the field when it isn't a string."""
    if role not in fields:
        return None
    value = get_field(row, fields[role])
    if value is None or value is _MISSING:
        return None
    if not isinstance(value, str):
        raise _Problem(Status.INVALID_FIELD, f"field {fields[role]!r} is {_kind(value)}, not a string")
    return None if is_blank(value) else value


def _prompt_with_input(row: Mapping[str, Any], fields: Mapping[str, str]) -> str:
    """The prompt string; Alpaca style, ``instruction + "\\n\\n" + input`` when input is set."""
    prompt = _string(row, fields["prompt"])
    extra = _optional_text(row, fields, "input")
    return prompt if extra is None else f"{prompt}\n\n{extra}"


def _has_column(columns: Sequence[str], candidate: str) -> bool:
    """A candidate is present when it is a column, or a path (``response.0``) into one."""
    return candidate in columns or ("." in candidate and candidate.split(".")[0] in columns)


def _first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _excerpt(text: str, at: int) -> str:
    snippet = text[max(0, at - 15) : at + 25]
    return repr(("…" if at > 15 else "") + snippet + ("…" if at + 25 < len(text) else ""))


# --------------------------------------------------------------------------- layouts


class Layout(ABC):
    """One adapter: knows which fields hold the prompt and responses, and how to read them."""

    name: ClassVar[str]
    summary: ClassVar[str]  # e.g. "conversational, implicit prompt"
    expects: ClassVar[str]  # the fields it needs, for error messages
    #: role → candidate column names (or paths), first match wins; roles in ``optional`` may be
    #: absent. Every layout also takes an optional ``system`` role (SYSTEM_FIELDS).
    roles: ClassVar[dict[str, tuple[str, ...]]]
    optional: ClassVar[tuple[str, ...]] = ()
    uses_label_policy: ClassVar[bool] = False
    #: Whether a ``history`` role, like ``input``, applies only beside an ``instruction`` prompt
    #: (Alpaca style); the ranking layout reads history whatever its prompt is called.
    alpaca_history_only: ClassVar[bool] = True

    def __init__(self, fields: Mapping[str, str], options: LayoutOptions | None = None) -> None:
        self.fields = dict(fields)
        self.options = options or LayoutOptions()
        shown = ", ".join(
            name if name == role or role in ("first", "second") else f"{role}={name!r}"
            for role, name in self.fields.items()
        )
        self.description = f"{self.summary} ({shown})"

    @classmethod
    def _roles(cls, options: LayoutOptions) -> dict[str, tuple[str, ...]]:
        return cls.roles

    @classmethod
    def bind(cls, columns: Sequence[str], options: LayoutOptions) -> Layout:
        """This layout over ``columns``: resolve its field names, or raise a LayoutError."""
        roles = {**cls._roles(options), "system": SYSTEM_FIELDS}
        optional = (*cls.optional, "system")
        overrides = {
            "prompt": options.prompt_field,
            "chosen": options.chosen_field,
            "rejected": options.rejected_field,
        }
        for role, path in overrides.items():
            if path and role not in roles:
                raise OptionError(
                    f"--{role}-field does not apply to the {cls.name} layout",
                    hint=f"{cls.name} expects {cls.expects}",
                )
        fields: dict[str, str] = {}
        for role, candidates in roles.items():
            override = overrides.get(role)
            found = override or next((c for c in candidates if _has_column(columns, c)), None)
            if found is not None:
                fields[role] = found
            elif role not in optional:
                option = f"--{role}-field" if role in overrides else None
                raise LayoutError(
                    f"layout {cls.name!r} needs a field {' or '.join(map(repr, candidates))}, "
                    f"not among the columns found: {clip_names(columns)}",
                    hint=(f"map it with {option}; " if option else "")
                    + f"{cls.name} expects {cls.expects}",
                )
        if fields.get("prompt") != "instruction":  # Alpaca's input and history go with instruction
            fields.pop("input", None)
            if cls.alpaca_history_only:
                fields.pop("history", None)
        # a field mapped as the prompt or a response is not also the system prompt
        taken = {fields.get(role) for role in ("prompt", "chosen", "rejected")}
        if "system" in fields and fields["system"] in taken:
            fields.pop("system")
        return cls(fields, options)

    def extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair | RowProblem:
        """The pair in ``row``, or why there is none (never raises for a bad row)."""
        if not isinstance(row, Mapping):
            return RowProblem(row_id, Status.INVALID_FIELD, f"row is {_kind(row)}, not an object")
        try:
            pair = self._extract(row_id, row)
            system = _optional_text(row, self.fields, "system")
            return pair if system is None else self._with_system(pair, system)
        except _Problem as problem:
            return RowProblem(row_id, problem.status, problem.reason)

    @abstractmethod
    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        """The pair in a row of this layout; raises _Problem for a row that has none."""

    def _check_system(self, pair: PreferencePair, system: str) -> bool:
        """Whether ``pair`` already starts with this system message (True), or with none (False);
        a _Problem when it starts with a different one."""
        if not pair.prompt or pair.prompt[0].role != "system":
            return False
        if pair.prompt[0].content.strip() == system.strip():
            return True
        raise _Problem(
            Status.AMBIGUOUS_PROMPT,
            f"the {self.fields['system']!r} column and the conversation's own system message "
            "differ, so the system prompt is ambiguous",
        )

    def _with_system(self, pair: PreferencePair, system: str) -> PreferencePair:
        """``pair`` with a system turn first; its plain text re-rendered (see render_plain)."""
        if self._check_system(pair, system):
            return pair
        turns = (Turn("system", system), *pair.prompt)
        return _messages_pair(pair.row_id, turns, pair.chosen, pair.rejected)


class StandardLayout(Layout):
    name = "standard"
    summary = "explicit prompt, standard"
    expects = (
        "string fields prompt (or query / question / instruction [+ input, history]), chosen, "
        "rejected [+ system]"
    )
    roles = {
        "prompt": PROMPT_SYNONYMS,
        "chosen": ("chosen",),
        "rejected": ("rejected",),
        "input": ("input",),
        "history": ("history",),  # LLaMA-Factory's Alpaca format: [[user, assistant], ...]
    }
    optional = ("input", "history")

    def _prompt(self, row: Mapping[str, Any]) -> str:
        return _prompt_with_input(row, self.fields)

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        prompt = self._prompt(row)
        history = _history(row, self.fields)
        chosen = _string(row, self.fields["chosen"])
        rejected = _string(row, self.fields["rejected"])
        if is_blank(prompt):
            raise _Problem(Status.EMPTY_PROMPT, f"field {self.fields['prompt']!r} is empty")
        _check_responses(chosen, rejected, (self.fields["chosen"], self.fields["rejected"]))
        if history:
            return _messages_pair(row_id, (*history, Turn("user", prompt)), chosen, rejected)
        return _string_pair(row_id, prompt, chosen, rejected)


class ConversationalLayout(Layout):
    name = "conversational"
    summary = "conversational, explicit prompt"
    expects = (
        "prompt as a list of {role, content} messages (or a string), chosen and rejected as one "
        "assistant message each (a list of one message, a message object, or a string)"
    )
    roles = {"prompt": PROMPT_SYNONYMS, "chosen": ("chosen",), "rejected": ("rejected",)}

    def _prompt_turns(self, row: Mapping[str, Any]) -> tuple[Turn, ...]:
        field = self.fields["prompt"]
        value = _present(row, field)
        return (Turn("user", value),) if isinstance(value, str) else _turns(value, field)

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        turns = self._prompt_turns(row)
        chosen = _reply(_present(row, self.fields["chosen"]), self.fields["chosen"])
        rejected = _reply(_present(row, self.fields["rejected"]), self.fields["rejected"])
        _check_prompt_turns(turns, repr(self.fields["prompt"]))
        _check_responses(chosen, rejected, (self.fields["chosen"], self.fields["rejected"]))
        return _messages_pair(row_id, turns, chosen, rejected)


class ShareGPTLayout(ConversationalLayout):
    name = "sharegpt"
    summary = "ShareGPT conversations, explicit prompt"
    expects = (
        "conversations as a list of {from, value} messages (from: human / gpt / system), chosen "
        "and rejected as {from: gpt, value} objects or strings"
    )
    roles = {"prompt": ("conversations",), "chosen": ("chosen",), "rejected": ("rejected",)}


class ImplicitMessagesLayout(Layout):
    name = "implicit_messages"
    summary = "conversational, implicit prompt"
    expects = (
        "chosen and rejected as whole conversations ({role, content} message lists) that end "
        "with the assistant reply and share every message before it"
    )
    roles = {"chosen": ("chosen",), "rejected": ("rejected",)}

    def _fallback_prompt(self, row: Mapping[str, Any]) -> tuple[Turn, ...]:
        return ()

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        cf, rf = self.fields["chosen"], self.fields["rejected"]
        c_prefix, chosen = _split_last_reply(_turns(_present(row, cf), cf), cf)
        r_prefix, rejected = _split_last_reply(_turns(_present(row, rf), rf), rf)
        if c_prefix != r_prefix:
            at = next(
                (i for i, (a, b) in enumerate(zip(c_prefix, r_prefix, strict=False)) if a != b),
                min(len(c_prefix), len(r_prefix)),
            )
            raise _Problem(
                Status.AMBIGUOUS_PROMPT,
                f"{cf!r} and {rf!r} differ at message {at + 1}, before their last assistant "
                "message, so the prompt is ambiguous",
            )
        turns = c_prefix or self._fallback_prompt(row)
        if not turns:
            raise _Problem(
                Status.EMPTY_PROMPT, f"field {cf!r} has no messages before the assistant reply"
            )
        _check_prompt_turns(turns, f"the messages before the reply in {cf!r}")
        _check_responses(chosen, rejected, (cf, rf))
        return _messages_pair(row_id, turns, chosen, rejected)


class RepeatedPromptLayout(ImplicitMessagesLayout):
    name = "prompt_in_messages"
    summary = "conversational, prompt repeated in chosen/rejected (UltraFeedback-binarized)"
    expects = (
        "prompt (a string), and chosen and rejected as whole conversations (message lists) that "
        "repeat the prompt and end with the assistant reply"
    )
    roles = {"prompt": PROMPT_SYNONYMS, "chosen": ("chosen",), "rejected": ("rejected",)}

    def _fallback_prompt(self, row: Mapping[str, Any]) -> tuple[Turn, ...]:
        # Used only when the lists hold the reply alone: the prompt field is then the prompt.
        if "prompt" not in self.fields:
            return ()
        value = get_field(row, self.fields["prompt"])
        if isinstance(value, str):
            return (Turn("user", value),)
        if isinstance(value, (list, tuple)):
            return _turns(value, self.fields["prompt"])
        return ()


class MessagesPairLayout(RepeatedPromptLayout):
    name = "chosen_messages"
    summary = "whole conversations in chosen_messages / rejected_messages (LLaMA-Factory)"
    expects = (
        "chosen_messages and rejected_messages as whole conversations ({role, content} "
        "messages, content a string or typed parts [{type: text, value}]) that end with the "
        "assistant reply and share every message before it [+ prompt_messages]"
    )
    roles = {
        "prompt": ("prompt_messages",),
        "chosen": ("chosen_messages",),
        "rejected": ("rejected_messages",),
    }
    optional = ("prompt",)


class HHLayout(Layout):
    name = "hh_rlhf"
    summary = "HH-RLHF dialogue strings, implicit prompt"
    expects = (
        "chosen and rejected as whole dialogues of '\\n\\nHuman: …' / '\\n\\nAssistant: …' turns "
        "that share everything up to the last '\\n\\nAssistant:'"
    )
    roles = {"chosen": ("chosen",), "rejected": ("rejected",)}

    @staticmethod
    def _split(text: str, field: str) -> tuple[str, str]:
        at = text.rfind(HH_ASSISTANT)
        if at < 0:
            raise _Problem(
                Status.INVALID_FIELD, f"field {field!r} has no '\\n\\nAssistant:' turn marker"
            )
        cut = at + len(HH_ASSISTANT)
        return text[:cut], text[cut:]

    @staticmethod
    def parse_turns(prompt_text: str) -> tuple[Turn, ...]:
        """The turns of an HH prompt (without its final ``\\n\\nAssistant:``), contents stripped.

        Text before the first marker, if any, becomes a system turn.
        """
        body = (
            prompt_text[: -len(HH_ASSISTANT)] if prompt_text.endswith(HH_ASSISTANT) else prompt_text
        )
        turns = []
        marks = list(_HH_MARKER.finditer(body))
        head = body[: marks[0].start()] if marks else body
        if not is_blank(head):
            turns.append(Turn("system", head.strip()))
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
            role = {"Human": "user", "Assistant": "assistant", "System": "system"}[mark.group(1)]
            turns.append(Turn(role, body[mark.end() : end].strip()))
        return tuple(turns)

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        cf, rf = self.fields["chosen"], self.fields["rejected"]
        c_prompt, chosen_text = self._split(_string(row, cf), cf)
        r_prompt, rejected_text = self._split(_string(row, rf), rf)
        if c_prompt != r_prompt:
            at = _first_difference(c_prompt, r_prompt)
            turn = len(_HH_MARKER.findall(c_prompt[:at])) or 1
            raise _Problem(
                Status.AMBIGUOUS_PROMPT,
                f"{cf!r} and {rf!r} differ before their last '\\n\\nAssistant:' "
                f"(at character {at}, turn {turn}: {cf} has {_excerpt(c_prompt, at)}, "
                f"{rf} has {_excerpt(r_prompt, at)})",
            )
        turns = self.parse_turns(c_prompt)
        if all(is_blank(t.content) for t in turns):
            raise _Problem(Status.EMPTY_PROMPT, f"field {cf!r} has no turn before its reply")
        _check_responses(chosen_text, rejected_text, (cf, rf))
        return PreferencePair(
            row_id=row_id,
            prompt=turns,
            chosen=chosen_text.strip(),
            rejected=rejected_text.strip(),
            prompt_text=c_prompt,
            chosen_text=chosen_text,
            rejected_text=rejected_text,
        )

    def _with_system(self, pair: PreferencePair, system: str) -> PreferencePair:
        """The dialogue string keeps its own text: ``"\n\nSystem: …"`` goes before it, as
        render_plain renders a system turn, and the responses are unchanged."""
        if self._check_system(pair, system):
            return pair
        sep = "" if pair.prompt_text.startswith("\n\n") else "\n\n"
        return replace(
            pair,
            prompt=(Turn("system", system), *pair.prompt),
            prompt_text=f"\n\nSystem: {system}{sep}{pair.prompt_text}",
        )


class _LabelLayout(Layout):
    """Two outputs and a label that says which one is preferred."""

    uses_label_policy = True
    first: ClassVar[str]
    second: ClassVar[str]
    #: label value → index of the preferred output (0: first, 1: second)
    label_values: ClassVar[dict[int, int]]

    def _prompt(self, row: Mapping[str, Any]) -> str:
        return _string(row, self.fields["prompt"])

    def _check_pair_list(self, row: Mapping[str, Any]) -> None:
        """Outputs read from one list (``response.0``, ``response.1``): it must hold exactly two,
        or the label (an index into two) would leave some of them out unseen."""
        first = self.fields["first"]
        if "." not in first or first in row:
            return
        field = first.split(".")[0]
        value = get_field(row, field)
        if isinstance(value, (list, tuple)) and len(value) != 2:
            raise _Problem(
                Status.INVALID_FIELD,
                f"field {field!r} has {len(value)} responses; the label picks one of exactly two",
            )

    def _label(self, row: Mapping[str, Any]) -> int:
        field = self.fields["label"]
        value = get_field(row, field)
        allowed = " or ".join(str(v) for v in self.label_values)
        if value is _MISSING or value is None:
            state = "missing" if value is _MISSING else "null"
            raise _Problem(
                Status.CONTRADICTORY_LABEL, f"label {field!r} is {state}; expected {allowed}"
            )
        number: Any = value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if (
            isinstance(value, bool)
            or not isinstance(number, int)
            or number not in self.label_values
        ):
            raise _Problem(
                Status.CONTRADICTORY_LABEL,
                f"label {field!r} is {clip(repr(value), 60)}; expected {allowed}",
            )
        return self.label_values[number]

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        prompt = self._prompt(row)
        self._check_pair_list(row)
        outputs = (_string(row, self.fields["first"]), _string(row, self.fields["second"]))
        names = (self.fields["first"], self.fields["second"])
        index = self._label(row)
        if is_blank(prompt):
            raise _Problem(Status.EMPTY_PROMPT, f"field {self.fields['prompt']!r} is empty")
        chosen, rejected = outputs[index], outputs[1 - index]
        _check_responses(chosen, rejected, (names[index], names[1 - index]))
        return _string_pair(row_id, prompt, chosen, rejected)


class AlpacaFarmLayout(_LabelLayout):
    name = "alpacafarm"
    summary = "two outputs + preference label (AlpacaFarm)"
    expects = "instruction (+ input), output_1, output_2, preference (1 or 2: the preferred output)"
    roles = {
        "prompt": ("instruction", "prompt"),
        "input": ("input",),
        "first": ("output_1",),
        "second": ("output_2",),
        "label": ("preference",),
    }
    optional = ("input",)
    label_values = {1: 0, 2: 1}

    def _prompt(self, row: Mapping[str, Any]) -> str:
        return _prompt_with_input(row, self.fields)


class PKULayout(_LabelLayout):
    name = "pku_saferlhf"
    summary = "two responses + preferred id (PKU-SafeRLHF)"
    expects = (
        "prompt, response_0 and response_1 (or a two-element response / responses list), "
        "better_response_id (0 or 1; safer_response_id with --label-policy safer)"
    )
    roles = {
        "prompt": ("prompt",),
        "first": ("response_0", "response.0", "responses.0"),
        "second": ("response_1", "response.1", "responses.1"),
        "label": ("better_response_id",),
    }
    label_values = {0: 0, 1: 1}

    @classmethod
    def _roles(cls, options: LayoutOptions) -> dict[str, tuple[str, ...]]:
        if options.label_policy == "safer":
            return {**cls.roles, "label": ("safer_response_id",)}
        return cls.roles


class SHPLayout(_LabelLayout):
    name = "shp"
    summary = "two responses + label (SHP)"
    expects = "history, human_ref_A, human_ref_B, labels (1: A preferred, 0: B preferred)"
    roles = {
        "prompt": ("history",),
        "first": ("human_ref_A",),
        "second": ("human_ref_B",),
        "label": ("labels",),
    }
    label_values = {1: 0, 0: 1}


class RankingLayout(Layout):
    """A list of two or more responses ranked best first (LLaMA-Factory's ranking format)."""

    name = "ranking"
    summary = "ranked responses, best first"
    expects = (
        "a list of two or more responses ranked best first in output (LLaMA-Factory's ranking "
        "format; response / responses / outputs / completions / candidates / answers with "
        "--layout ranking), a prompt string in instruction [+ input] / prompt / question / query "
        "or a message list in conversations / messages, optional history [[user, assistant], …]"
    )
    roles = {
        "prompt": (*PROMPT_SYNONYMS, "conversations", "messages"),
        "input": ("input",),
        "responses": RESPONSE_LISTS,
        "history": ("history",),
    }
    optional = ("input", "history")
    alpaca_history_only = False  # history is part of the format, whatever the prompt is called

    def __init__(self, fields: Mapping[str, str], options: LayoutOptions | None = None) -> None:
        super().__init__(fields, options)
        self.ranking_pair = self.options.ranking_pair or RANKING_PAIRS[0]
        name = self.fields["responses"]
        second = "1" if self.ranking_pair == "first-second" else "-1"
        self.description += (
            f"; chosen = {name}[0], rejected = {name}[{second}] "
            f"(--ranking-pair {self.ranking_pair})"
        )

    def _prompt_turns(self, row: Mapping[str, Any]) -> tuple[Turn, ...]:
        field = self.fields["prompt"]
        value = _present(row, field)
        if isinstance(value, str):
            return (Turn("user", _prompt_with_input(row, self.fields)),)
        return _turns(value, field)

    def _extract(self, row_id: int, row: Mapping[str, Any]) -> PreferencePair:
        turns = (*_history(row, self.fields), *self._prompt_turns(row))
        field = self.fields["responses"]
        ranked = _present(row, field)
        if not isinstance(ranked, (list, tuple)):
            raise _Problem(
                Status.INVALID_FIELD, f"field {field!r} is {_kind(ranked)}, not a list of responses"
            )
        if len(ranked) < 2:
            raise _Problem(
                Status.INVALID_FIELD,
                f"field {field!r} has {len(ranked)} response{'s' * (len(ranked) != 1)}; a ranking "
                "needs at least two",
            )
        second = 1 if self.ranking_pair == "first-second" else len(ranked) - 1
        names = (f"{field}.0", f"{field}.{second}")
        chosen, rejected = _reply(ranked[0], names[0]), _reply(ranked[second], names[1])
        _check_prompt_turns(turns, repr(self.fields["prompt"]))
        _check_responses(chosen, rejected, names)
        return _messages_pair(row_id, turns, chosen, rejected)


LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls
    for cls in (
        StandardLayout,
        ConversationalLayout,
        RepeatedPromptLayout,
        ImplicitMessagesLayout,
        HHLayout,
        ShareGPTLayout,
        MessagesPairLayout,
        RankingLayout,
        AlpacaFarmLayout,
        PKULayout,
        SHPLayout,
    )
}


# --------------------------------------------------------------------------- detection


def _is_messages(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    return isinstance(first, Mapping) and (
        ("role" in first and "content" in first) or ("from" in first and "value" in first)
    )


def _values(rows: Sequence[Mapping[str, Any]], field: str) -> list[Any]:
    """The non-null values of ``field`` in the sample rows."""
    found = []
    for row in rows:
        if isinstance(row, Mapping):
            value = get_field(row, field)
            if value is not _MISSING and value is not None:
                found.append(value)
    return found


def _has_hh_markers(value: Any) -> bool:
    return isinstance(value, str) and (
        HH_ASSISTANT in value or (value.startswith("Human:") and "Assistant:" in value)
    )


def _expected_layouts() -> str:
    return "".join(f"\n  - {cls.name}: {cls.expects}" for cls in LAYOUTS.values())


def _check_mapped_fields(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], options: LayoutOptions
) -> None:
    for option, path in (
        ("--prompt-field", options.prompt_field),
        ("--chosen-field", options.chosen_field),
        ("--rejected-field", options.rejected_field),
    ):
        if not path:
            continue
        top = path if path in columns else path.split(".")[0]
        if top not in columns:
            raise LayoutError(
                f"{option} {path!r}: no such column; columns found: {clip_names(columns)}",
                hint="use one of those names (a dotted path reaches into objects and lists: "
                "data.question, response.0, output.-1)",
            )
        if top == path or not rows:
            continue
        walked = [_walk(r, path) for r in rows if isinstance(r, Mapping)]
        if walked and all(value is _MISSING for value, _ in walked):
            raise LayoutError(
                f"{option} {path!r}: not found in any of the first {len(walked)} rows "
                f"(row 0: {walked[0][1]})",
                hint="check the dotted path: keys of objects, indices of lists (0 is the first "
                "item, -1 the last)",
            )


def _check_label_policy(layout: Layout, options: LayoutOptions) -> None:
    policy = options.label_policy
    if policy is None:
        return
    if policy not in LABEL_POLICIES:
        raise OptionError(
            f"--label-policy {policy!r} is not one of: {', '.join(LABEL_POLICIES)}",
            hint="better (default): the output the label prefers; safer: PKU-SafeRLHF's "
            "safer_response_id",
        )
    if policy == "safer" and not isinstance(layout, PKULayout):
        raise OptionError(
            f"--label-policy safer applies only to the pku_saferlhf layout, not {layout.name}",
            hint="leave --label-policy out",
        )


def _check_ranking_pair(layout: Layout, options: LayoutOptions) -> None:
    choice = options.ranking_pair
    if choice is None:
        return
    if choice not in RANKING_PAIRS:
        raise OptionError(
            f"--ranking-pair {choice!r} is not one of: {', '.join(RANKING_PAIRS)}",
            hint="first-second (default): the best response against the runner-up; first-last: "
            "the best against the worst",
        )
    if not isinstance(layout, RankingLayout):
        raise OptionError(
            f"--ranking-pair applies only to the ranking layout, not {layout.name}",
            hint="leave --ranking-pair out, or force the layout with --layout ranking",
        )


def _ranked_lists(rows: Sequence[Mapping[str, Any]], field: str) -> bool:
    """Every sample value of ``field`` is a list, and some hold two or more responses."""
    values = _values(rows, field)
    return (
        bool(values)
        and all(isinstance(v, (list, tuple)) for v in values)
        and any(len(v) >= 2 for v in values)
    )


def _unpaired_error(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    cols = set(columns)
    if "completion" in cols and "label" in cols:
        labels = _values(rows, "label")
        if not labels or all(isinstance(v, bool) for v in labels):
            raise LayoutError(
                "this looks like unpaired (KTO) data: prompt/completion/label rows, each one "
                "completion marked good or bad",
                hint="CHES compares a chosen with a rejected response to the same prompt; pair a "
                "desirable and an undesirable completion of the same prompt into "
                "prompt/chosen/rejected rows first",
            )
    for name in RESPONSE_LISTS:
        values = _values(rows, name)
        if name in cols and (not values or isinstance(values[0], (list, tuple))):
            ranked = [c for c in ("ranks", "rankings", "scores", "ratings") if c in cols]
            extra = f" with {'/'.join(ranked)}" if ranked else ""
            raise LayoutError(
                f"this looks like N-candidate data: a list of responses in {name!r}{extra}, "
                "not one chosen/rejected pair per row",
                hint=(
                    "pick two responses per prompt in a preprocessing step (e.g. best and worst "
                    "by score) and write them as prompt/chosen/rejected"
                    if ranked
                    else f"if the list is ordered best first, --layout ranking scores the first "
                    f"response against the second (--ranking-pair first-last: against the last); "
                    f"or map two of them: --chosen-field {name}.0 --rejected-field {name}.1"
                ),
            )


def _pair_layout(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], options: LayoutOptions
) -> Layout:
    """Layouts with chosen/rejected fields: which one, from the value types."""
    chosen_f = options.chosen_field or "chosen"
    prompt_f = options.prompt_field or next((c for c in PROMPT_SYNONYMS if c in columns), None)
    chosen_values = _values(rows, chosen_f)
    first_chosen = chosen_values[0] if chosen_values else None
    chosen_lists = [v for v in chosen_values if _is_messages(v)]
    if prompt_f is None:
        if first_chosen is not None and _is_messages(first_chosen):
            return ImplicitMessagesLayout.bind(columns, options)
        if any(_has_hh_markers(v) for v in chosen_values):
            return HHLayout.bind(columns, options)
        raise LayoutError(
            f"no prompt field, and {chosen_f!r} holds "
            + ("no values in the first rows" if first_chosen is None else _kind(first_chosen))
            + " without '\\n\\nHuman:' / '\\n\\nAssistant:' turn markers, so the prompt can't be "
            f"told apart from the response (columns found: {clip_names(columns)})",
            hint="name the prompt field with --prompt-field",
        )
    prompt_values = _values(rows, prompt_f)
    first_prompt = prompt_values[0] if prompt_values else None
    if (
        first_prompt is not None
        and not isinstance(first_prompt, str)
        and not _is_messages(first_prompt)
    ):
        raise LayoutError(
            f"prompt field {prompt_f!r} holds {_kind(first_prompt)}, "
            "expected a string or a list of {role, content} messages",
            hint="name another field with --prompt-field",
        )
    if chosen_lists and any(len(v) > 1 for v in chosen_lists):
        return RepeatedPromptLayout.bind(columns, options)
    if isinstance(first_prompt, str) and (first_chosen is None or isinstance(first_chosen, str)):
        return StandardLayout.bind(columns, options)
    return ConversationalLayout.bind(columns, options)


def _named_layout(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> type[Layout] | None:
    """The layout whose field names the columns have, if one does (None: look further)."""
    cols = set(columns)
    if "conversations" in cols and {"chosen", "rejected"} <= cols:
        return ShareGPTLayout
    if {"chosen_messages", "rejected_messages"} <= cols:
        return MessagesPairLayout
    if {"output_1", "output_2", "preference"} <= cols:
        return AlpacaFarmLayout
    pku_labels = {"better_response_id", "safer_response_id"} & cols
    if pku_labels and (
        {"response_0", "response_1"} <= cols
        or any(_ranked_lists(rows, name) for name in ("response", "responses") if name in cols)
    ):
        return PKULayout
    if {"human_ref_A", "human_ref_B", "labels"} <= cols:
        return SHPLayout
    if (
        "output" in cols
        and not {"chosen", "rejected"} & cols
        and not {"ranks", "rankings", "scores", "ratings"} & cols
        and _ranked_lists(rows, "output")
    ):
        return RankingLayout
    return None


def detect_layout(
    columns: list[str], sample_rows: list[dict[str, Any]], options: LayoutOptions
) -> Layout:
    """The layout of a dataset from its columns and first rows (or the one ``options`` forces).

    Raises LayoutError when no layout fits (naming the fields found and what each layout
    expects), for unpaired (KTO) or N-candidate data, and for mapped fields that don't exist;
    OptionError for an unknown ``--layout``, ``--label-policy`` or ``--ranking-pair``.
    """
    columns = list(columns)
    _check_mapped_fields(columns, sample_rows, options)
    if options.layout is not None:
        cls = LAYOUTS.get(options.layout)
        if cls is None:
            raise OptionError(
                f"unknown layout {clip(options.layout, 60)!r}",
                hint=f"choose one of: {', '.join(LAYOUTS)}",
            )
        layout = cls.bind(columns, options)
    elif options.prompt_field or options.chosen_field or options.rejected_field:
        layout = _pair_layout(columns, sample_rows, options)
    else:
        named = _named_layout(columns, sample_rows)
        if named is not None:
            layout = named.bind(columns, options)
        elif {"chosen", "rejected"} <= set(columns):
            layout = _pair_layout(columns, sample_rows, options)
        else:
            _unpaired_error(columns, sample_rows)
            raise LayoutError(
                f"no supported layout matches the fields found: {clip_names(columns)}",
                hint="map your fields with --prompt-field/--chosen-field/--rejected-field, or force a "
                f"layout with --layout NAME; the layouts and the fields they expect:"
                f"{_expected_layouts()}",
            )
    _check_label_policy(layout, options)
    _check_ranking_pair(layout, options)
    return layout
