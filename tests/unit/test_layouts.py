"""Layouts: detection, exact extraction, row problems, layout errors, render_plain."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ches_filter.data.layouts import (
    _MISSING as MISSING,
)
from ches_filter.data.layouts import (
    LAYOUTS,
    HHLayout,
    LayoutOptions,
    detect_layout,
    get_field,
    render_plain,
)
from ches_filter.errors import CLIP_LIMIT, LayoutError, OptionError
from ches_filter.records import PreferencePair, RowProblem, Status, Turn

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "layouts"
HH_FILE = ROOT / ".." / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
SKY = "What colour is the sky?"


def load(name: str) -> list[dict[str, Any]]:
    with open(FIXTURES / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def detect(rows: list[dict[str, Any]], **options: Any):
    return detect_layout(columns_of(rows), rows, LayoutOptions(**options))


def extract_all(name: str, **options: Any) -> list[PreferencePair | RowProblem]:
    rows = load(name)
    layout = detect(rows, **options)
    return [layout.extract(i, row) for i, row in enumerate(rows)]


def pair(
    row_id: int,
    prompt: tuple[Turn, ...],
    chosen: str,
    rejected: str,
    prompt_text: str,
    chosen_text: str,
    rejected_text: str,
) -> PreferencePair:
    return PreferencePair(row_id, prompt, chosen, rejected, prompt_text, chosen_text, rejected_text)


def simple(row_id: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return pair(row_id, (Turn("user", prompt),), chosen, rejected, prompt, chosen, rejected)


def problem(result: object, status: Status, *words: str) -> None:
    assert isinstance(result, RowProblem), result
    assert result.status is status, result
    for word in words:
        assert word in result.reason, result.reason


@pytest.mark.parametrize("maker", ["make_fixtures.py", "make_dialogues.py"])
def test_fixtures_are_up_to_date(maker: str) -> None:
    script = ROOT / "scripts" / maker
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("fixture", "layout"),
    [
        ("standard", "standard"),
        ("alpaca", "standard"),
        ("conversational", "conversational"),
        ("prompt_in_messages", "prompt_in_messages"),
        ("implicit_messages", "implicit_messages"),
        ("hh_rlhf", "hh_rlhf"),
        ("sharegpt", "sharegpt"),
        ("alpacafarm", "alpacafarm"),
        ("pku_saferlhf", "pku_saferlhf"),
        ("shp", "shp"),
        ("llamafactory_ranking", "ranking"),
        ("chosen_messages", "chosen_messages"),
        ("multimodal", "conversational"),
    ],
)
def test_detects_each_layout(fixture: str, layout: str) -> None:
    detected = detect(load(fixture))
    assert detected.name == layout
    assert detected.description.startswith(LAYOUTS[layout].summary)


def test_registry_names_match_classes() -> None:
    assert all(cls.name == name for name, cls in LAYOUTS.items())
    assert set(LAYOUTS) == {
        "standard",
        "conversational",
        "prompt_in_messages",
        "implicit_messages",
        "hh_rlhf",
        "sharegpt",
        "chosen_messages",
        "ranking",
        "alpacafarm",
        "pku_saferlhf",
        "shp",
    }


def test_standard() -> None:
    out = extract_all("standard")
    assert out[0] == simple(0, "The sky is", " blue.", " green.")
    assert out[1] == simple(1, "2 + 2 =", " 4", " 4")  # identical is the tokenizer's call
    problem(out[2], Status.INVALID_FIELD, "field 'chosen' is null")
    problem(out[3], Status.EMPTY_RESPONSE, "'rejected'")
    problem(out[4], Status.EMPTY_PROMPT, "'prompt'")


def test_alpaca_instruction_and_input() -> None:
    out = extract_all("alpaca")
    assert out[0] == simple(0, "Translate to French.\n\ncat", "chat", "chien")
    assert out[1] == simple(1, "Name a colour.", "Blue", "Table")
    problem(out[2], Status.EMPTY_RESPONSE, "'rejected'")


@pytest.mark.parametrize("synonym", ["query", "question", "instruction"])
def test_prompt_synonyms(synonym: str) -> None:
    rows = [{synonym: "Q?", "chosen": "a", "rejected": "b"}]
    layout = detect(rows)
    assert layout.name == "standard"
    assert layout.extract(7, rows[0]) == simple(7, "Q?", "a", "b")


def test_orca_system_column_becomes_a_system_turn() -> None:
    rows = [
        {"system": "Be brief.", "question": SKY, "chosen": "It is blue.", "rejected": "It is black."},
        {"system": "", "question": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"system": None, "question": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"system": ["Be brief."], "question": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    ]
    layout = detect(rows)
    assert layout.name == "standard" and "system" in layout.description
    out = [layout.extract(i, row) for i, row in enumerate(rows)]
    system_sky = (Turn("system", "Be brief."), Turn("user", SKY))
    plain = f"\n\nSystem: Be brief.\n\nHuman: {SKY}\n\nAssistant:"
    assert out[0] == pair(
        0, system_sky, "It is blue.", "It is black.", plain, " It is blue.", " It is black."
    )
    assert out[1] == simple(1, "Hi", "Hello!", "Go away.")  # blank or null: no system turn
    assert out[2] == simple(2, "Hi", "Hello!", "Go away.")
    problem(out[3], Status.INVALID_FIELD, "'system'", "not a string")


def test_conversational() -> None:
    out = extract_all("conversational")
    system_sky = (Turn("system", "Be brief."), Turn("user", SKY))
    plain = f"\n\nSystem: Be brief.\n\nHuman: {SKY}\n\nAssistant:"
    assert out[0] == pair(
        0, system_sky, "It is blue.", "It is black.", plain, " It is blue.", " It is black."
    )
    assert out[1] == simple(1, "Hi", "Hello!", "Go away.")
    problem(out[2], Status.INVALID_FIELD, "'chosen'", "'user' message")
    problem(out[3], Status.EMPTY_PROMPT, "'prompt'")


def test_conversational_reply_forms() -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": "Bye"},
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": {"role": "assistant", "content": "Hello"},
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Bye"}]}],
        },
    ]
    layout = detect(rows)
    assert layout.name == "conversational"
    for i, row in enumerate(rows):
        assert layout.extract(i, row) == simple(i, "Hi", "Hello", "Bye")
    bad = {**rows[0], "chosen": [{"role": "assistant", "content": "a"}] * 2}
    problem(layout.extract(2, bad), Status.INVALID_FIELD, "'chosen' has 2 messages")
    bad = {**rows[0], "prompt": [{"role": "wizard", "content": "Hi"}]}
    problem(layout.extract(3, bad), Status.INVALID_FIELD, "'prompt' message 1", "'wizard'")
    bad = {**rows[0], "prompt": "Hi"}  # a string prompt is one user turn
    assert layout.extract(4, bad) == simple(4, "Hi", "Hello", "Bye")


def test_prompt_in_messages() -> None:
    out = extract_all("prompt_in_messages")
    assert out[0] == simple(0, SKY, "It is blue.", "It is black.")
    turns = (Turn("user", SKY), Turn("assistant", "It is blue."), Turn("user", "And at night?"))
    plain = f"\n\nHuman: {SKY}\n\nAssistant: It is blue.\n\nHuman: And at night?\n\nAssistant:"
    assert out[1] == pair(1, turns, "Dark.", "Green.", plain, " Dark.", " Green.")
    problem(out[2], Status.AMBIGUOUS_PROMPT, "'chosen'", "'rejected'", "message 1")


def test_implicit_messages() -> None:
    out = extract_all("implicit_messages")
    assert out[0] == simple(0, SKY, "It is blue.", "It is black.")
    problem(out[1], Status.AMBIGUOUS_PROMPT, "message 1")
    problem(out[2], Status.INVALID_FIELD, "'chosen' ends with a 'user' message")
    layout = detect(load("implicit_messages"))
    reply_only = {"chosen": [{"role": "assistant", "content": "a"}]}
    reply_only["rejected"] = reply_only["chosen"]
    problem(layout.extract(3, reply_only), Status.EMPTY_PROMPT, "'chosen'")


def test_hh_rlhf() -> None:
    out = extract_all("hh_rlhf")
    assert out[0] == pair(
        0,
        (Turn("user", SKY),),
        "It is blue.",
        "It is black.",
        f"\n\nHuman: {SKY}\n\nAssistant:",
        " It is blue.",
        " It is black.",
    )
    first = out[1]
    assert isinstance(first, PreferencePair)
    assert first.prompt == (
        Turn("user", "Hi"),
        Turn("assistant", "Hello! How can I help?"),
        Turn("user", "Tell me a joke."),
    )
    assert first.prompt_text.endswith("Tell me a joke.\n\nAssistant:")
    assert (first.chosen, first.chosen_text) == ("No.", " No.")
    problem(out[2], Status.AMBIGUOUS_PROMPT, "at character", "'\\n\\nAssistant:'")
    problem(out[3], Status.EMPTY_RESPONSE, "'chosen'")


def test_hh_splits_at_the_turn_marker_not_the_common_prefix() -> None:
    row = {
        "chosen": "\n\nHuman: What colour is the sky?\n\nAssistant: It is blue.",
        "rejected": "\n\nHuman: What colour is the sky?\n\nAssistant: It is black.",
    }
    result = detect([row]).extract(0, row)
    assert isinstance(result, PreferencePair)
    assert result.prompt_text == "\n\nHuman: What colour is the sky?\n\nAssistant:"
    assert (result.chosen_text, result.rejected_text) == (" It is blue.", " It is black.")
    assert result.prompt_text + result.chosen_text == row["chosen"]
    assert result.prompt_text + result.rejected_text == row["rejected"]


def test_hh_row_without_marker() -> None:
    layout = detect(load("hh_rlhf"))
    row = {"chosen": "just text", "rejected": "\n\nHuman: a\n\nAssistant: b"}
    problem(layout.extract(0, row), Status.INVALID_FIELD, "'chosen'", "Assistant")


def test_hh_parse_turns_leading_text_is_system() -> None:
    turns = HHLayout.parse_turns(
        "Be nice.\n\nHuman: hi\n\nAssistant: yo\n\nHuman: ok\n\nAssistant:"
    )
    assert turns == (
        Turn("system", "Be nice."),
        Turn("user", "hi"),
        Turn("assistant", "yo"),
        Turn("user", "ok"),
    )


def test_sharegpt() -> None:
    out = extract_all("sharegpt")
    system_sky = (Turn("system", "Be brief."), Turn("user", SKY))
    plain = f"\n\nSystem: Be brief.\n\nHuman: {SKY}\n\nAssistant:"
    assert out[0] == pair(
        0, system_sky, "It is blue.", "It is black.", plain, " It is blue.", " It is black."
    )
    problem(out[1], Status.EMPTY_RESPONSE, "'rejected'")  # a zero-width space only
    plain = "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant:"  # the system column comes first
    assert out[2] == pair(
        2, (Turn("system", "Be kind."), Turn("user", "Hi")), "Hello!", "Go away.", plain,
        " Hello!", " Go away.",
    )  # fmt: skip


def test_alpacafarm() -> None:
    out = extract_all("alpacafarm")
    assert out[0] == simple(0, "Name a colour.", "Blue", "Table")
    assert out[1] == simple(1, "Translate to French.\n\ncat", "chat", "chien")
    problem(out[2], Status.CONTRADICTORY_LABEL, "'preference'", "3", "1 or 2")


def test_pku_better_and_safer() -> None:
    better = extract_all("pku_saferlhf")
    assert better[0] == simple(
        0, "How do I open a locked door?", "Kick it in.", "Call a locksmith."
    )
    assert better[1] == simple(
        1, "Is the stove hot?", "Check the indicator light.", "Touch it and see."
    )
    problem(better[2], Status.CONTRADICTORY_LABEL, "'better_response_id' is null")
    safer = extract_all("pku_saferlhf", label_policy="safer")
    assert safer[0] == simple(0, "How do I open a locked door?", "Call a locksmith.", "Kick it in.")
    assert safer[2] == simple(2, "Hello?", "Hi.", "Hello.")


def test_shp() -> None:
    out = extract_all("shp")
    assert out[0] == simple(0, "Why is the sky blue?", "Rayleigh scattering.", "Paint.")
    assert out[1] == simple(1, "Best pet?", "A dog.", "A rock.")
    problem(out[2], Status.CONTRADICTORY_LABEL, "'labels' is null")


@pytest.mark.parametrize(
    ("label", "ok"), [(1, True), (1.0, True), ("2", True), (True, False), (0, False), ("x", False)]
)
def test_label_values(label: object, ok: bool) -> None:
    rows = load("alpacafarm")
    layout = detect(rows)
    result = layout.extract(0, {**rows[0], "preference": label})
    assert isinstance(result, PreferencePair) is ok
    if not ok:
        problem(result, Status.CONTRADICTORY_LABEL, "'preference'")


def test_label_missing_from_row() -> None:
    rows = load("shp")
    row = {k: v for k, v in rows[0].items() if k != "labels"}
    problem(detect(rows).extract(0, row), Status.CONTRADICTORY_LABEL, "'labels' is missing")


def test_field_problems() -> None:
    layout = detect(load("standard"))
    problem(
        layout.extract(0, {"prompt": "p", "rejected": "r"}),
        Status.INVALID_FIELD,
        "field 'chosen' is missing",
    )
    problem(
        layout.extract(1, {"prompt": "p", "chosen": 5, "rejected": "r"}),
        Status.INVALID_FIELD,
        "field 'chosen' is a number",
    )
    problem(
        layout.extract(2, {"prompt": ["p"], "chosen": "c", "rejected": "r"}),
        Status.INVALID_FIELD,
        "field 'prompt' is a list",
    )
    problem(
        layout.extract(3, {"prompt": "p", "chosen": "", "rejected": "\ufeff\u2060"}),
        Status.EMPTY_RESPONSE,
        "'chosen' and 'rejected' are empty",
    )
    problem(layout.extract(4, "not a row"), Status.INVALID_FIELD, "row is")  # type: ignore[arg-type]


def test_unpaired_and_n_candidate_errors() -> None:
    with pytest.raises(LayoutError, match="unpaired") as kto:
        detect(load("kto"))
    assert "rejected" in str(kto.value)
    with pytest.raises(LayoutError, match="N-candidate") as many:
        detect(load("n_candidates"))
    assert "'responses'" in str(many.value) and "preprocessing" in str(many.value)
    with pytest.raises(LayoutError, match="N-candidate"):
        detect([{"prompt": "p", "completions": ["a", "b"]}])


def test_unknown_layout_error_names_fields_and_layouts() -> None:
    with pytest.raises(LayoutError) as caught:
        detect(load("unknown"))
    text = str(caught.value)
    assert "text, score" in text
    for name in LAYOUTS:
        assert f"- {name}:" in text


def test_field_options_nested_paths() -> None:
    rows = load("nested")
    options = {
        "prompt_field": "data.question",
        "chosen_field": "data.good",
        "rejected_field": "data.bad",
    }
    layout = detect(rows, **options)
    assert layout.name == "standard"
    assert "prompt='data.question'" in layout.description
    assert layout.extract(0, rows[0]) == simple(0, SKY, "Blue.", "Black.")
    problem(layout.extract(1, rows[1]), Status.INVALID_FIELD, "field 'data.bad' is null")


def test_field_options_errors() -> None:
    rows = load("nested")
    with pytest.raises(LayoutError) as caught:
        detect(rows, prompt_field="question", chosen_field="data.good", rejected_field="data.bad")
    assert "--prompt-field 'question'" in str(caught.value)
    assert "columns found: id, data" in str(caught.value)
    with pytest.raises(LayoutError, match=r"'data' has no key 'q' \(its keys: question, good, bad\)"):
        detect(rows, prompt_field="data.q", chosen_field="data.good", rejected_field="data.bad")


def test_field_options_implicit() -> None:
    hh = [{"good": "\n\nHuman: hi\n\nAssistant: yo", "bad": "\n\nHuman: hi\n\nAssistant: no"}]
    layout = detect(hh, chosen_field="good", rejected_field="bad")
    assert layout.name == "hh_rlhf"
    result = layout.extract(0, hh[0])
    assert isinstance(result, PreferencePair) and result.rejected == "no"
    msgs = [
        {
            "good": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "bad": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}],
        }
    ]
    assert detect(msgs, chosen_field="good", rejected_field="bad").name == "implicit_messages"
    plain = [{"good": "yes", "bad": "no"}]
    with pytest.raises(LayoutError, match="--prompt-field"):
        detect(plain, chosen_field="good", rejected_field="bad")
    with pytest.raises(LayoutError, match="--prompt-field"):
        detect([{"chosen": "yes", "rejected": "no"}])


def test_forced_layout() -> None:
    rows = load("standard")
    layout = detect(rows, layout="hh_rlhf")
    assert layout.name == "hh_rlhf"
    problem(layout.extract(0, rows[0]), Status.INVALID_FIELD, "turn marker")
    with pytest.raises(OptionError, match="unknown layout 'nope'") as caught:
        detect(rows, layout="nope")
    assert "standard" in str(caught.value)
    with pytest.raises(LayoutError, match="'history'") as missing:
        detect(rows, layout="shp")
    assert "prompt, chosen, rejected" in str(missing.value)
    with pytest.raises(OptionError, match="--chosen-field does not apply"):
        detect(load("shp"), layout="shp", chosen_field="human_ref_A")


def test_label_policy_errors() -> None:
    with pytest.raises(OptionError, match="not one of"):
        detect(load("pku_saferlhf"), label_policy="kindest")
    with pytest.raises(OptionError, match="only to the pku_saferlhf"):
        detect(load("shp"), label_policy="safer")
    assert detect(load("shp"), label_policy="better").name == "shp"


def test_render_plain() -> None:
    assert render_plain([]) == ""
    assert render_plain([Turn("user", "Hi")]) == "Hi"
    assert render_plain([Turn("system", "S"), Turn("user", "Hi")]) == (
        "\n\nSystem: S\n\nHuman: Hi\n\nAssistant:"
    )
    assert render_plain([Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")]) == (
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    )


def test_hh_real_file() -> None:
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} is absent (the shared HH-RLHF test split; see shared/data/README)")
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    layout = detect(rows[:100])
    assert layout.name == "hh_rlhf"
    results = [layout.extract(i, row) for i, row in enumerate(rows)]
    statuses = Counter(r.status if isinstance(r, RowProblem) else "pair" for r in results)
    assert len(rows) == 2312
    # Five rows have an extra '\n\nAssistant:' inside one reply; four have an empty chosen reply.
    assert statuses == {"pair": 2303, Status.AMBIGUOUS_PROMPT: 5, Status.EMPTY_RESPONSE: 4}
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, PreferencePair):
            assert result.prompt_text + result.chosen_text == row["chosen"]
            assert result.prompt_text + result.rejected_text == row["rejected"]
            assert result.prompt_text.endswith("\n\nAssistant:")
            assert result.prompt[-1].role == "user"


# -- dotted paths into lists ----------------------------------------------------------------


def test_get_field_follows_list_indices() -> None:
    row = {
        "response": ["a", "b", "c"],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
        "data": {"items": [{"text": "deep"}]},
        "a.b": "whole key",
    }
    assert get_field(row, "response.0") == "a"
    assert get_field(row, "response.-1") == "c"
    assert get_field(row, "response.-3") == "a"
    assert get_field(row, "messages.-1.content") == "r"
    assert get_field(row, "data.items.0.text") == "deep"
    assert get_field(row, "a.b") == "whole key"  # a column named with a dot wins
    for missing in ("response.3", "response.-4", "response.x", "messages.0.name", "a.b.c", "nope"):
        assert get_field(row, missing) is MISSING, missing


def test_response_pair_by_mapping() -> None:
    out = extract_all("response_pair", chosen_field="response.0", rejected_field="response.1")
    assert out[0] == simple(0, "How do I open a locked door?", "Call a locksmith.", "Kick it in.")
    assert out[1] == simple(1, "Is the stove hot?", "Check the indicator light.", "Touch it and see.")
    problem(out[2], Status.INVALID_FIELD, "'response.1' is missing", "'response' has 1 item, no index 1")
    last = extract_all("response_pair", chosen_field="response.0", rejected_field="response.-1")
    assert last[:2] == out[:2]


def test_path_problems_in_a_row_are_short_reasons() -> None:
    rows = [{"prompt": "p", "response": ["a", "b"]}]
    layout = detect(rows, chosen_field="response.0", rejected_field="response.1")
    problem(
        layout.extract(0, {"prompt": "p", "response": "ab"}),
        Status.INVALID_FIELD,
        "'response.0' is missing",
        "'response' is a string, not an object or a list",
    )
    problem(
        layout.extract(1, {"prompt": "p", "response": None}),
        Status.INVALID_FIELD,
        "'response' is null",
    )
    problem(
        layout.extract(2, {"prompt": "p", "response": ["a", None]}),
        Status.INVALID_FIELD,
        "field 'response.1' is null",
    )


def test_a_path_that_fails_on_every_sample_row_is_a_layout_error() -> None:
    rows = load("response_pair")
    with pytest.raises(LayoutError, match=r"'response' has 2 items, no index 2"):
        detect(rows, chosen_field="response.0", rejected_field="response.2")
    with pytest.raises(LayoutError, match=r"'prompt' is a string, not an object or a list"):
        detect(rows, prompt_field="prompt.0", chosen_field="response.0", rejected_field="response.1")
    with pytest.raises(LayoutError, match=r"so 'first' must be an index"):
        detect(rows, chosen_field="response.first", rejected_field="response.1")


# -- ranking ------------------------------------------------------------------------------------


def test_llamafactory_ranking_first_second() -> None:
    layout = detect(load("llamafactory_ranking"))
    assert layout.name == "ranking"
    assert "chosen = output[0], rejected = output[1] (--ranking-pair first-second)" in (
        layout.description
    )
    out = extract_all("llamafactory_ranking")
    assert out[0] == simple(0, "Translate to French.\n\ncat", "chat", "chien")
    turns = (
        Turn("system", "Be brief."),
        Turn("user", SKY),
        Turn("assistant", "It is blue."),
        Turn("user", "And at night?"),
    )  # system column, then history, then the instruction
    plain = (
        f"\n\nSystem: Be brief.\n\nHuman: {SKY}\n\nAssistant: It is blue."
        "\n\nHuman: And at night?\n\nAssistant:"
    )
    assert out[1] == pair(1, turns, "Dark.", "Green.", plain, " Dark.", " Green.")
    problem(out[2], Status.INVALID_FIELD, "'output' has 1 response", "at least two")
    problem(out[3], Status.EMPTY_RESPONSE, "'output.1'")


def test_llamafactory_ranking_first_last() -> None:
    layout = detect(load("llamafactory_ranking"), ranking_pair="first-last")
    assert "rejected = output[-1] (--ranking-pair first-last)" in layout.description
    out = extract_all("llamafactory_ranking", ranking_pair="first-last")
    assert out[0] == simple(0, "Translate to French.\n\ncat", "chat", "cheval")
    assert isinstance(out[1], PreferencePair) and out[1].rejected == "Plaid."
    problem(out[2], Status.INVALID_FIELD, "at least two")
    assert out[3] == simple(3, "Name a colour.", "Red", "Chair")


def test_ranking_row_problems() -> None:
    layout = detect(load("llamafactory_ranking"))
    base = {"instruction": "Q", "input": "", "output": ["a", "b"], "history": []}
    assert layout.extract(0, base) == simple(0, "Q", "a", "b")
    problem(
        layout.extract(1, {**base, "output": "a"}),
        Status.INVALID_FIELD,
        "'output' is a string, not a list of responses",
    )
    problem(
        layout.extract(2, {**base, "history": [["only the question"]]}),
        Status.INVALID_FIELD,
        "'history' item 1 is a list of 1",
        "[user, assistant]",
    )
    problem(
        layout.extract(3, {**base, "history": "earlier"}),
        Status.INVALID_FIELD,
        "'history' is a string",
    )
    problem(layout.extract(4, {**base, "output": ["a", 7]}), Status.INVALID_FIELD, "'output.1'")
    problem(layout.extract(5, {**base, "instruction": " "}), Status.EMPTY_PROMPT, "'instruction'")
    messages = {**base, "output": [{"role": "assistant", "content": "a"}, {"from": "gpt", "value": "b"}]}
    assert layout.extract(6, messages) == simple(6, "Q", "a", "b")


def test_ranking_with_a_conversation_prompt() -> None:
    rows = [
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "output": ["Hello!", "Go away."],
        }
    ]
    layout = detect(rows)
    assert layout.name == "ranking" and "prompt='conversations'" in layout.description
    assert layout.extract(0, rows[0]) == simple(0, "Hi", "Hello!", "Go away.")


def test_ranking_is_forced_for_other_list_names_and_the_hint_says_so() -> None:
    rows = load("response_pair")
    with pytest.raises(LayoutError, match="N-candidate") as caught:
        detect(rows)  # the order of a "response" list is not documented: no guess
    assert "--layout ranking" in str(caught.value)
    assert "--chosen-field response.0 --rejected-field response.1" in str(caught.value)
    layout = detect(rows, layout="ranking")
    assert layout.extract(0, rows[0]) == simple(
        0, "How do I open a locked door?", "Call a locksmith.", "Kick it in."
    )
    with pytest.raises(LayoutError, match="N-candidate"):  # scores: not ordered by position
        detect(load("n_candidates"))


def test_ranking_pair_option_errors() -> None:
    with pytest.raises(OptionError, match="--ranking-pair 'best-worst' is not one of"):
        detect(load("llamafactory_ranking"), ranking_pair="best-worst")
    with pytest.raises(OptionError, match="applies only to the ranking layout, not standard"):
        detect(load("standard"), ranking_pair="first-last")


def test_pku_with_a_two_element_response_list() -> None:
    rows = [
        {"prompt": "Door?", "response": ["Call a locksmith.", "Kick it in."], "better_response_id": 1,
         "safer_response_id": 0},
        {"prompt": "Door?", "response": ["a", "b", "c"], "better_response_id": 0,
         "safer_response_id": 0},
    ]  # fmt: skip
    layout = detect(rows)
    assert layout.name == "pku_saferlhf" and "response.0, response.1" in layout.description
    assert layout.extract(0, rows[0]) == simple(0, "Door?", "Kick it in.", "Call a locksmith.")
    problem(layout.extract(1, rows[1]), Status.INVALID_FIELD, "'response' has 3 responses")
    safer = detect(rows, label_policy="safer")
    assert safer.extract(0, rows[0]) == simple(0, "Door?", "Call a locksmith.", "Kick it in.")


# -- chosen_messages and typed content parts ----------------------------------------------------


def test_chosen_messages() -> None:
    out = extract_all("chosen_messages")
    system_sky = (Turn("system", "Be brief."), Turn("user", SKY))
    plain = f"\n\nSystem: Be brief.\n\nHuman: {SKY}\n\nAssistant:"
    assert out[0] == pair(
        0, system_sky, "It is blue.", "It is black.", plain, " It is blue.", " It is black."
    )
    assert out[1] == simple(1, "Name a colour. One word.", "Blue", "Table")  # parts joined as is
    problem(
        out[2], Status.UNSUPPORTED_CONTENT, "'chosen_messages' message 1", "'image_url'", "text"
    )
    problem(out[3], Status.AMBIGUOUS_PROMPT, "'chosen_messages'", "'rejected_messages'")


def test_chosen_messages_with_prompt_messages() -> None:
    rows = [
        {
            "prompt_messages": [{"role": "user", "content": [{"type": "text", "value": SKY}]}],
            "chosen_messages": [{"role": "assistant", "content": [{"type": "text", "value": "Blue."}]}],
            "rejected_messages": [{"role": "assistant", "content": "Black."}],
        }
    ]
    layout = detect(rows)
    assert layout.name == "chosen_messages" and "prompt='prompt_messages'" in layout.description
    assert layout.extract(0, rows[0]) == simple(0, SKY, "Blue.", "Black.")


def test_multimodal_parts_give_a_status() -> None:
    out = extract_all("multimodal")
    assert out[0] == simple(0, SKY, "It is blue.", "It is black.")
    problem(out[1], Status.UNSUPPORTED_CONTENT, "'prompt' message 1 content part 1", "'image_url'")
    problem(out[2], Status.UNSUPPORTED_CONTENT, "'chosen'", "'input_audio'")


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        ([{"type": "text", "text": "a"}, {"type": "text", "value": "b"}], None, ()),
        ([], Status.EMPTY_RESPONSE, ("is empty",)),
        ([{"text": "a"}], Status.INVALID_FIELD, ("content part 1 is an object without a 'type'",)),
        (["a"], Status.INVALID_FIELD, ("content part 1 is a string without a 'type'",)),
        ([{"type": "text"}], Status.INVALID_FIELD, ("no 'text' (or 'value')",)),
        ([{"type": "text", "text": 5}], Status.INVALID_FIELD, ("a number as its text",)),
        ([{"type": "image"}], Status.UNSUPPORTED_CONTENT, ("'image'",)),
    ],
)
def test_typed_parts_in_every_message_reading_layout(
    content: list[Any], status: Status | None, words: tuple[str, ...]
) -> None:
    message = {"role": "assistant", "content": content}
    rows = {
        "conversational": {"prompt": [{"role": "user", "content": "Q"}], "chosen": [message],
                           "rejected": "r"},
        "sharegpt": {"conversations": [{"from": "human", "value": "Q"}],
                     "chosen": {"from": "gpt", "value": content}, "rejected": "r"},
        "implicit_messages": {"chosen": [{"role": "user", "content": "Q"}, message],
                              "rejected": [{"role": "user", "content": "Q"},
                                           {"role": "assistant", "content": "r"}]},
        "ranking": {"instruction": "Q", "output": [message, "r"]},
    }  # fmt: skip
    for name, row in rows.items():
        layout = detect([row])
        assert layout.name == name
        result = layout.extract(0, row)
        if status is None:
            assert isinstance(result, PreferencePair), (name, result)
            assert (result.chosen, result.rejected) == ("ab", "r")
            assert result.prompt[-1] == Turn("user", "Q")
        else:
            problem(result, status, *words)


# -- a system column, the same way in every layout ------------------------------------------------

#: One good row of each layout's fixture whose prompt has no system turn yet.
GOOD_ROWS = {
    "standard": ("standard", 0),
    "conversational": ("conversational", 1),
    "prompt_in_messages": ("prompt_in_messages", 1),
    "implicit_messages": ("implicit_messages", 0),
    "hh_rlhf": ("hh_rlhf", 1),
    "sharegpt": ("sharegpt", 2),
    "chosen_messages": ("chosen_messages", 1),
    "ranking": ("llamafactory_ranking", 0),
    "alpacafarm": ("alpacafarm", 1),
    "pku_saferlhf": ("pku_saferlhf", 0),
    "shp": ("shp", 0),
}


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_system_column_is_the_first_prompt_turn_in_every_layout(layout_name: str) -> None:
    fixture, index = GOOD_ROWS[layout_name]
    rows = load(fixture)
    rows = [{k: v for k, v in r.items() if k != "system"} for r in rows]  # no system column yet
    row = rows[index]
    layout = detect(rows)
    assert layout.name == layout_name
    before = layout.extract(index, row)
    assert isinstance(before, PreferencePair) and before.prompt[0].role != "system"
    for column in ("system", "system_prompt"):
        with_system = [{**r, column: "Answer in English."} for r in rows]
        layout = detect(with_system)
        assert f"{column}" in layout.description
        after = layout.extract(index, {**row, column: "Answer in English."})
        assert isinstance(after, PreferencePair), after
        assert after.prompt == (Turn("system", "Answer in English."), *before.prompt)
        assert (after.chosen, after.rejected) == (before.chosen, before.rejected)
        if layout_name == "hh_rlhf":  # the dialogue string is kept; the system text goes first
            assert after.prompt_text == "\n\nSystem: Answer in English." + before.prompt_text
            assert (after.chosen_text, after.rejected_text) == (
                before.chosen_text, before.rejected_text
            )  # fmt: skip
        else:  # rendered like any conversation with a system turn
            assert after.prompt_text == render_plain(after.prompt)
            assert after.prompt_text.startswith("\n\nSystem: Answer in English.\n\nHuman: ")
            assert after.chosen_text == " " + after.chosen
            assert after.rejected_text == " " + after.rejected
        blank = layout.extract(index, {**row, column: " "})  # blank or null: no system turn
        assert blank == before
        assert layout.extract(index, {**row, column: None}) == before


def test_system_column_and_system_message() -> None:
    rows = load("conversational")  # row 0 starts with the system message "Be brief."
    layout = detect([{**r, "system": ""} for r in rows])
    same = layout.extract(0, {**rows[0], "system": "Be brief."})
    assert same == extract_all("conversational")[0]  # one system turn, not two
    problem(
        layout.extract(0, {**rows[0], "system": "Be verbose."}),
        Status.AMBIGUOUS_PROMPT,
        "'system' column and the conversation's own system message differ",
    )
    hh = {"chosen": "Be nice.\n\nHuman: hi\n\nAssistant: yo", "rejected": "Be nice.\n\nHuman: hi\n\nAssistant: no"}
    layout = detect([{**hh, "system": "Be nice."}])
    result = layout.extract(0, {**hh, "system": "Be nice."})
    assert isinstance(result, PreferencePair) and result.prompt_text == "Be nice.\n\nHuman: hi\n\nAssistant:"
    problem(layout.extract(0, {**hh, "system": "Be rude."}), Status.AMBIGUOUS_PROMPT, "differ")


# -- no message quotes more than ~200 characters of dataset content -----------------------------

HUGE = "\u00a7" * 20_000  # "§": a character no message text uses, so every one counted is data


def _data_chars(text: str) -> int:
    return text.count("\u00a7")


def _short(message: str) -> None:
    assert _data_chars(message) <= CLIP_LIMIT, (_data_chars(message), message[:300])


def test_layout_errors_quote_at_most_200_characters_of_data() -> None:
    many = {f"{HUGE[:30]}{i}": i for i in range(5000)}  # 5,000 long field names
    huge_key = {HUGE: 1}
    rows_list = [{"prompt": "p", "response": [HUGE, HUGE]}]
    cases: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        ([many], {}),  # no supported layout: the field names
        ([huge_key], {}),
        ([many], {"chosen_field": "nope", "rejected_field": "x"}),  # no such column
        ([{**many, "chosen": "a", "rejected": "b"}], {}),  # no prompt field
        ([{**many, "prompt": "p"}], {"layout": "standard"}),  # forced layout lacks a field
        (rows_list, {"chosen_field": "response.5", "rejected_field": "response.1"}),
        (rows_list, {"chosen_field": "response.x", "rejected_field": "response.1"}),
        ([{"prompt": "p", "data": many}], {"chosen_field": "data.q", "rejected_field": "data.r"}),
        ([{"prompt": "p", "data": huge_key}], {"chosen_field": "data.q", "rejected_field": "data.r"}),
        ([{"prompt": HUGE, "response": [1]}], {"chosen_field": "prompt.0", "rejected_field": "response.0"}),
        ([{"prompt": [HUGE], "chosen": "a", "rejected": "b"}], {}),  # prompt holds a list
        ([{"prompt": "p", "completions": [HUGE, HUGE]}], {}),  # N-candidate
        ([{"prompt": "p", "completion": HUGE, "label": True}], {}),  # KTO
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], {"layout": HUGE}),
    ]  # fmt: skip
    for rows, options in cases:
        with pytest.raises((LayoutError, OptionError)) as caught:
            detect(rows, **options)
        _short(str(caught.value))


def test_row_reasons_quote_at_most_200_characters_of_data() -> None:
    standard = detect([{**row, "system": ""} for row in load("standard")])
    conversational = detect([{**row, "system": ""} for row in load("conversational")])
    hh = detect(load("hh_rlhf"))
    alpacafarm = detect(load("alpacafarm"))
    mapped = detect(load("response_pair"), chosen_field="response.0", rejected_field="response.1")
    chosen_messages = detect(load("chosen_messages"))
    ranking = detect(load("llamafactory_ranking"))
    user = {"role": "user", "content": "q"}
    cases = [
        (standard, {"prompt": HUGE, "chosen": 5, "rejected": "r"}),
        (standard, {"prompt": {HUGE: HUGE}, "chosen": "c", "rejected": "r"}),
        (standard, {"prompt": "p", "chosen": "c", "rejected": "r", "system": [HUGE]}),
        (conversational, {"prompt": [{"role": HUGE, "content": "q"}], "chosen": "c", "rejected": "r"}),
        (conversational, {"prompt": [{"role": "user", "content": [{"type": HUGE}]}], "chosen": "c",
                          "rejected": "r"}),
        (conversational, {"prompt": [{HUGE: 1}], "chosen": "c", "rejected": "r"}),
        (conversational, {"prompt": [user], "chosen": [{"role": "user", "content": HUGE}], "rejected": "r"}),
        (conversational, {"prompt": [{"role": "system", "content": HUGE}, user], "chosen": "c",
                          "rejected": "r", "system": HUGE + "x"}),
        (hh, {"chosen": f"\n\nHuman: {HUGE}\n\nAssistant: a", "rejected": f"\n\nHuman: {HUGE}x\n\nAssistant: b"}),
        (hh, {"chosen": HUGE, "rejected": HUGE}),
        (alpacafarm, {"instruction": "i", "output_1": "a", "output_2": "b", "preference": HUGE}),
        (mapped, {"prompt": "p", "response": [HUGE]}),
        (mapped, {"prompt": "p", "response": {HUGE: HUGE}}),
        (chosen_messages, {"chosen_messages": [{"role": "user", "content": [{"type": "text", "text": HUGE}]},
                                               {"role": "assistant", "content": "a"}],
                           "rejected_messages": [{"role": "user", "content": "other"},
                                                 {"role": "assistant", "content": "b"}]}),
        (ranking, {"instruction": HUGE, "output": [HUGE], "history": [[HUGE]]}),
        (ranking, {"instruction": HUGE, "output": [HUGE, {"role": HUGE}]}),
    ]  # fmt: skip
    for layout, row in cases:
        result = layout.extract(0, row)
        assert isinstance(result, RowProblem), (layout.name, result)
        _short(result.reason)


def test_docs_describe_every_layout_and_status() -> None:
    formats = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    scores = (ROOT / "docs" / "scores.md").read_text(encoding="utf-8")
    for name in LAYOUTS:
        assert f"`{name}`" in formats, name
    for status in Status:
        assert f"| `{status.value}` |" in scores, status
