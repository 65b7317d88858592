"""Write the small fixture datasets of tests/fixtures/layouts/: one JSON lines file per layout.

Each file has a few good rows and at least one bad row (a row problem, see the comment beside it).
The tests check extraction values exactly, so change a row here and in the tests together.

    python scripts/make_fixtures.py          # (re)write the files
    python scripts/make_fixtures.py --check  # exit 1 if the files on disk differ from these
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "layouts"

SKY = "What colour is the sky?"


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _parts(role: str, text: str, weight: float | None = None) -> dict[str, Any]:
    """A LLaMA-Factory message: content as typed parts, with a loss weight when given."""
    message: dict[str, Any] = {"role": role, "content": [{"type": "text", "value": text}]}
    if weight is not None:
        message["loss_weight"] = weight
    return message


def _hh(*turns: str) -> str:
    """Alternating Human/Assistant turns, HH-RLHF style."""
    names = ("Human", "Assistant")
    return "".join(f"\n\n{names[i % 2]}: {text}" for i, text in enumerate(turns))


FIXTURES: dict[str, list[dict[str, Any]]] = {
    # 1. explicit prompt, standard (TRL): prompt/chosen/rejected strings.
    "standard": [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 4"},  # identical: not a problem here
        {"prompt": "Say hi.", "chosen": None, "rejected": "hi"},  # INVALID_FIELD: chosen is null
        {"prompt": "Say hi.", "chosen": "hi", "rejected": " \u200b\n"},  # EMPTY_RESPONSE rejected
        {"prompt": " \t", "chosen": "a", "rejected": "b"},  # EMPTY_PROMPT
    ],
    # 1b. Alpaca-style instruction + input.
    "alpaca": [
        {
            "instruction": "Translate to French.",
            "input": "cat",
            "chosen": "chat",
            "rejected": "chien",
        },
        {"instruction": "Name a colour.", "input": "", "chosen": "Blue", "rejected": "Table"},
        {"instruction": "Name a colour.", "input": "", "chosen": "Red", "rejected": ""},  # EMPTY
    ],
    # 2. conversational, explicit prompt.
    "conversational": [
        {
            "prompt": [_msg("system", "Be brief."), _msg("user", SKY)],
            "chosen": [_msg("assistant", "It is blue.")],
            "rejected": [_msg("assistant", "It is black.")],
        },
        {
            "prompt": [_msg("user", "Hi")],
            "chosen": [_msg("assistant", "Hello!")],
            "rejected": [_msg("assistant", "Go away.")],
        },
        {  # INVALID_FIELD: the chosen reply is a user message
            "prompt": [_msg("user", "Hi")],
            "chosen": [_msg("user", "Hello!")],
            "rejected": [_msg("assistant", "Go away.")],
        },
        {  # EMPTY_PROMPT: no messages
            "prompt": [],
            "chosen": [_msg("assistant", "Hello!")],
            "rejected": [_msg("assistant", "Go away.")],
        },
    ],
    # 3. conversational, the prompt repeated inside chosen/rejected (UltraFeedback-binarized).
    "prompt_in_messages": [
        {
            "prompt": SKY,
            "chosen": [_msg("user", SKY), _msg("assistant", "It is blue.")],
            "rejected": [_msg("user", SKY), _msg("assistant", "It is black.")],
            "score_chosen": 8.0,
            "score_rejected": 3.0,
        },
        {
            "prompt": "And at night?",
            "chosen": [
                _msg("user", SKY),
                _msg("assistant", "It is blue."),
                _msg("user", "And at night?"),
                _msg("assistant", "Dark."),
            ],
            "rejected": [
                _msg("user", SKY),
                _msg("assistant", "It is blue."),
                _msg("user", "And at night?"),
                _msg("assistant", "Green."),
            ],
            "score_chosen": 7.5,
            "score_rejected": 2.0,
        },
        {  # AMBIGUOUS_PROMPT: the conversations differ before the last reply
            "prompt": SKY,
            "chosen": [_msg("user", SKY), _msg("assistant", "It is blue.")],
            "rejected": [_msg("user", "What colour is grass?"), _msg("assistant", "Green.")],
            "score_chosen": 9.0,
            "score_rejected": 1.0,
        },
    ],
    # 4. implicit prompt, message lists.
    "implicit_messages": [
        {
            "chosen": [_msg("user", SKY), _msg("assistant", "It is blue.")],
            "rejected": [_msg("user", SKY), _msg("assistant", "It is black.")],
        },
        {  # AMBIGUOUS_PROMPT
            "chosen": [_msg("user", SKY), _msg("assistant", "It is blue.")],
            "rejected": [_msg("user", "Why?"), _msg("assistant", "Because.")],
        },
        {  # INVALID_FIELD: chosen ends with a user message
            "chosen": [_msg("user", SKY), _msg("assistant", "It is blue."), _msg("user", "Ok")],
            "rejected": [_msg("user", SKY), _msg("assistant", "It is black.")],
        },
    ],
    # 5. implicit prompt, HH-RLHF dialogue strings.
    "hh_rlhf": [
        {"chosen": _hh(SKY, "It is blue."), "rejected": _hh(SKY, "It is black.")},
        {
            "chosen": _hh("Hi", "Hello! How can I help?", "Tell me a joke.", "No."),
            "rejected": _hh("Hi", "Hello! How can I help?", "Tell me a joke.", "Knock knock."),
        },
        {  # AMBIGUOUS_PROMPT: the chosen dialogue has an extra turn
            "chosen": _hh("Hi", "Hello!", "Bye", "Bye!"),
            "rejected": _hh("Hi", "Hello! Bye!"),
        },
        {"chosen": _hh(SKY, " "), "rejected": _hh(SKY, "Blue.")},  # EMPTY_RESPONSE chosen
    ],
    # 6. ShareGPT.
    "sharegpt": [
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": SKY},
            ],
            "chosen": {"from": "gpt", "value": "It is blue."},
            "rejected": {"from": "gpt", "value": "It is black."},
        },
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello!"},
            "rejected": {"from": "gpt", "value": "\u200b"},  # EMPTY_RESPONSE rejected
        },
        {  # a system column (LLaMA-Factory's sharegpt format): the first prompt turn
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello!"},
            "rejected": {"from": "gpt", "value": "Go away."},
            "system": "Be kind.",
        },
    ],
    # 7a. AlpacaFarm: two outputs and a preference (1 or 2).
    "alpacafarm": [
        {
            "instruction": "Name a colour.",
            "input": "",
            "output_1": "Blue",
            "output_2": "Table",
            "preference": 1,
        },
        {
            "instruction": "Translate to French.",
            "input": "cat",
            "output_1": "chien",
            "output_2": "chat",
            "preference": 2,
        },
        {  # CONTRADICTORY_LABEL: 3 is neither output
            "instruction": "Name a colour.",
            "input": "",
            "output_1": "Red",
            "output_2": "Chair",
            "preference": 3,
        },
    ],
    # 7b. PKU-SafeRLHF: two responses, better_response_id and safer_response_id.
    "pku_saferlhf": [
        {
            "prompt": "How do I open a locked door?",
            "response_0": "Call a locksmith.",
            "response_1": "Kick it in.",
            "better_response_id": 1,
            "safer_response_id": 0,
        },
        {
            "prompt": "Is the stove hot?",
            "response_0": "Touch it and see.",
            "response_1": "Check the indicator light.",
            "better_response_id": 1,
            "safer_response_id": 1,
        },
        {  # CONTRADICTORY_LABEL under the default policy: better_response_id is null
            "prompt": "Hello?",
            "response_0": "Hi.",
            "response_1": "Hello.",
            "better_response_id": None,
            "safer_response_id": 0,
        },
    ],
    # 7c. SHP: history, two human references, labels (1: A preferred, 0: B preferred).
    "shp": [
        {
            "history": "Why is the sky blue?",
            "human_ref_A": "Rayleigh scattering.",
            "human_ref_B": "Paint.",
            "labels": 1,
        },
        {"history": "Best pet?", "human_ref_A": "A rock.", "human_ref_B": "A dog.", "labels": 0},
        {
            "history": "Tea or coffee?",
            "human_ref_A": "Tea.",
            "human_ref_B": "Coffee.",
            "labels": None,
        },  # CONTRADICTORY_LABEL: null label
    ],
    # 8. LLaMA-Factory's Alpaca ranking format: output ranked best first, history, system.
    "llamafactory_ranking": [
        {
            "instruction": "Translate to French.",
            "input": "cat",
            "output": ["chat", "chien", "cheval"],
            "history": [],
        },
        {
            "system": "Be brief.",
            "instruction": "And at night?",
            "input": "",
            "output": ["Dark.", "Green.", "Plaid."],
            "history": [[SKY, "It is blue."]],
        },
        {  # INVALID_FIELD: a ranking needs two responses
            "instruction": "Name a colour.",
            "input": "",
            "output": ["Blue"],
            "history": [],
        },
        {  # EMPTY_RESPONSE: the runner-up is blank (first-last reads "Chair" instead)
            "instruction": "Name a colour.",
            "input": "",
            "output": ["Red", " ", "Chair"],
            "history": None,
        },
    ],
    # 9. A safety set with the two responses in one list, safer first (a documented order):
    #    --chosen-field response.0 --rejected-field response.1
    "response_pair": [
        {
            "prompt": "How do I open a locked door?",
            "response": ["Call a locksmith.", "Kick it in."],
            "category": "property",
        },
        {
            "prompt": "Is the stove hot?",
            "response": ["Check the indicator light.", "Touch it and see."],
            "category": "injury",
        },
        {  # INVALID_FIELD: response.1 is missing (one response only)
            "prompt": "Hello?",
            "response": ["Hi."],
            "category": "none",
        },
    ],
    # 10. LLaMA-Factory's DPO sample: whole conversations, typed content parts, loss weights.
    "chosen_messages": [
        {
            "chosen_messages": [
                _parts("system", "Be brief.", weight=0.0),
                _parts("user", SKY, weight=0.0),
                _parts("assistant", "It is blue.", weight=1.0),
            ],
            "rejected_messages": [
                _parts("system", "Be brief.", weight=0.0),
                _parts("user", SKY, weight=0.0),
                _parts("assistant", "It is black.", weight=1.0),
            ],
        },
        {  # the OpenAI spelling, two text parts in one message (concatenated as they are)
            "chosen_messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Name a colour. "},
                        {"type": "text", "text": "One word."},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Blue"}]},
            ],
            "rejected_messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Name a colour. "},
                        {"type": "text", "text": "One word."},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Table"}]},
            ],
        },
        {  # UNSUPPORTED_CONTENT: an image part in the prompt
            "chosen_messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "value": "cat.png"},
                        {"type": "text", "value": "What is this?"},
                    ],
                    "loss_weight": 0.0,
                },
                _parts("assistant", "A cat.", weight=1.0),
            ],
            "rejected_messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "value": "cat.png"},
                        {"type": "text", "value": "What is this?"},
                    ],
                    "loss_weight": 0.0,
                },
                _parts("assistant", "A dog.", weight=1.0),
            ],
        },
        {  # AMBIGUOUS_PROMPT: the conversations differ before the reply
            "chosen_messages": [_parts("user", SKY), _parts("assistant", "It is blue.")],
            "rejected_messages": [_parts("user", "Why?"), _parts("assistant", "Because.")],
        },
    ],
    # 11. Conversational rows with OpenAI-style typed parts: text, image, audio.
    "multimodal": [
        {
            "prompt": [{"role": "user", "content": [{"type": "text", "text": SKY}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]}],
            "rejected": [
                {"role": "assistant", "content": [{"type": "text", "text": "It is black."}]}
            ],
        },
        {  # UNSUPPORTED_CONTENT: an image in the prompt
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}],
        },
        {  # UNSUPPORTED_CONTENT: audio in the chosen reply
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}],
            "chosen": [
                {
                    "role": "assistant",
                    "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                }
            ],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Hi."}]}],
        },
    ],
    # Nested fields, for --prompt-field data.question etc.
    "nested": [
        {"id": 1, "data": {"question": SKY, "good": "Blue.", "bad": "Black."}},
        {"id": 2, "data": {"question": "Hi", "good": "Hello!", "bad": None}},  # INVALID_FIELD
    ],
    # Layouts that can't be scored as they are: detect_layout raises LayoutError.
    "kto": [
        {"prompt": SKY, "completion": "It is blue.", "label": True},
        {"prompt": SKY, "completion": "It is black.", "label": False},
    ],
    "n_candidates": [
        {"prompt": SKY, "responses": ["Blue.", "Black.", "Green."], "scores": [9.0, 2.0, 1.0]},
    ],
    "unknown": [
        {"text": "The sky is blue.", "score": 1},
    ],
}


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the files on disk")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in FIXTURES.items():
        path = args.out / f"{name}.jsonl"
        text = render(rows)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale fixtures: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
