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
    LAYOUTS,
    HHLayout,
    LayoutOptions,
    detect_layout,
    render_plain,
)
from ches_filter.errors import LayoutError, OptionError
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


def test_fixtures_are_up_to_date() -> None:
    script = ROOT / "scripts" / "make_fixtures.py"
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
    with pytest.raises(LayoutError, match="'data' has keys: bad, good, question"):
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
