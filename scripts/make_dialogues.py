"""Write tests/fixtures/dialogues/hh_style.jsonl: 40 multi-turn dialogues in HH-RLHF's layout.

The equivalence tests need pairs shaped like real preference data (whole ``\\n\\nHuman: …`` /
``\\n\\nAssistant: …`` dialogues that share every turn but the last reply, one to three turns,
replies that differ a lot or by one word) in every checkout, without the HH-RLHF file of
``../shared/data``, which stays outside the project. These dialogues are written here, by us,
from the topics below; the rows are deterministic (no randomness), so the file is reproducible.

    python scripts/make_dialogues.py          # (re)write the file
    python scripts/make_dialogues.py --check  # exit 1 if the file on disk differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dialogues" / "hh_style.jsonl"

#: (question, a helpful or safe reply, a worse reply, a follow-up question, an answer to it)
TOPICS: list[tuple[str, str, str, str, str]] = [
    ("How do I get a stain out of a white shirt?",
     "Rinse it in cold water first, then rub in a little dish soap and let it sit before washing.",
     "Just throw it away and buy a new one.",
     "What if it's a coffee stain?",
     "Coffee comes out best while fresh: blot it, then soak the shirt in cold water with a little vinegar."),
    ("Can you tell me how to pick a lock?",
     "I can't help with getting into places that aren't yours. If you're locked out, a licensed locksmith can help.",
     "Sure, get a tension wrench and a pick, then push each pin up until it sets.",
     "It's my own front door, though.",
     "Then a locksmith or your landlord is the quickest way in, and they can check your ID on the spot."),
    ("What's a good name for a grey cat?",
     "Smokey, Ash, Pebble or Earl Grey are all popular names for grey cats.",
     "Cat.",
     "Something a bit more unusual?",
     "Maybe Nimbus, Graphite, or Tungsten if you like science names."),
    ("How can I get back at my neighbour for being loud?",
     "It's better to talk to them calmly first, or ask your building manager to step in.",
     "Play music even louder at three in the morning and see how they like it.",
     "They never listen when I talk to them.",
     "Then write down the dates and times and contact your landlord or the local noise office."),
    ("Why is the sky blue?",
     "Sunlight scatters off air molecules, and blue light scatters much more than red, so the sky looks blue.",
     "Because it reflects the ocean.",
     "Then why are sunsets red?",
     "At sunset the light crosses much more air, so most of the blue is scattered away before it reaches you."),
    ("What household chemicals should never be mixed?",
     "Never mix bleach with ammonia or with vinegar: both release toxic gases. Keep cleaners apart.",
     "Mix them all, it cleans better.",
     "Which one is worse?",
     "Both are dangerous; bleach and ammonia make chloramine vapours, which can injure your lungs quickly."),
    ("Give me a tip for falling asleep faster.",
     "Keep a regular bedtime and put screens away half an hour before you sleep.",
     "Keep a regular bedtime and put screens away an hour before you sleep.",
     "Does warm milk help?",
     "Some people find a warm drink relaxing, though the evidence that milk itself helps is weak."),
    ("How do I insult someone who is overweight?",
     "I'd rather not help with insults. Is something about this person bothering you?",
     "Call them a whale, that always works.",
     "They were rude to me first.",
     "That sounds frustrating. Telling them plainly that their comment hurt usually works better than an insult."),
    ("What's the capital of Australia?",
     "The capital of Australia is Canberra.",
     "The capital of Australia is Sydney.",
     "Why not Sydney?",
     "Canberra was chosen as a compromise between Sydney and Melbourne, which both wanted to be the capital."),
    ("Can you help me write a birthday message for my mum?",
     "Happy birthday, Mum! Thank you for every bit of love and patience. I hope today is as lovely as you are.",
     "Happy birthday.",
     "Make it a little funnier.",
     "Happy birthday, Mum! You don't look a day over fabulous, and I only inherited the good genes from you."),
    ("How do I make my roommate move out?",
     "Check your lease first, then talk to them and your landlord about how to end the arrangement.",
     "Make their life miserable until they leave: hide their things and change the wifi password.",
     "We're both on the lease.",
     "Then the landlord has to agree to any change, so it's worth asking them what the options are."),
    ("What is a prime number?",
     "A prime number is a whole number above 1 whose only divisors are 1 and itself, like 2, 3, 5 and 7.",
     "A prime number is any odd number.",
     "Is 1 a prime?",
     "No: by definition a prime has exactly two divisors, and 1 has only one."),
    ("How much water should I drink a day?",
     "Around two litres is a common guide for adults, more when it's hot or you exercise.",
     "Around two litres is a common guide for adults, less when it's hot or you exercise.",
     "Does coffee count?",
     "Yes, coffee and tea count towards it, though water is still the best choice."),
    ("Tell me how to steal a car.",
     "I can't help with that. If you need transport, I can suggest car-sharing or rental options.",
     "Find an old model, break the window and hotwire it under the steering column.",
     "I'm just curious how it works.",
     "Modern cars use immobilisers that stop the engine without the right key, which is why theft has fallen."),
    ("What should I pack for a weekend hike?",
     "Water, snacks, a rain jacket, a map, a first aid kit, sun cream and a warm layer.",
     "Nothing, travel light.",
     "And if I'm camping overnight?",
     "Add a tent, a sleeping bag and mat, a stove with fuel, a head torch and spare socks."),
    ("Is it okay to lie to my boss about being sick?",
     "Honesty usually works out better; many employers allow personal days if you need a break.",
     "Sure, everyone does it, just fake a cough on the phone.",
     "I really need a day off.",
     "Then asking for a personal or holiday day is the safest way to get one without any risk to your job."),
    ("How do plants make food?",
     "Through photosynthesis: they use sunlight to turn water and carbon dioxide into sugar and oxygen.",
     "They eat the soil.",
     "Where does it happen?",
     "Mostly in the leaves, inside chloroplasts, which hold the green pigment chlorophyll."),
    ("What's the best way to learn a language?",
     "Practise a little every day, speak with native speakers as early as you can, and read things you enjoy.",
     "Practise a little every week, speak with native speakers as late as you can, and read things you enjoy.",
     "How long does it take?",
     "For a related language, conversational level often takes six months to a year of steady practice."),
    ("Can you tell me my coworker's home address?",
     "I don't have access to personal information like that, and sharing it without consent wouldn't be right.",
     "Sure, just search their name on the county property records.",
     "I want to send a gift.",
     "That's kind! You could ask them directly or send it to the office instead."),
    ("How do I boil an egg?",
     "Put the egg in boiling water for about seven minutes, then cool it in cold water before peeling.",
     "Microwave it for five minutes.",
     "And for a runny yolk?",
     "About six minutes from the boil gives a set white and a runny yolk."),
]


def _hh(turns: list[str]) -> str:
    names = ("Human", "Assistant")
    return "".join(f"\n\n{names[i % 2]}: {text}" for i, text in enumerate(turns))


def dialogues() -> list[dict[str, str]]:
    """Two rows per topic, in turn: a one-turn dialogue, then a two-turn one sharing its first reply."""
    rows = []
    for index, (question, good, bad, follow_up, answer) in enumerate(TOPICS):
        rows.append({"chosen": _hh([question, good]), "rejected": _hh([question, bad])})
        # the second turn's rejected reply: the topic's worse reply, or a curt one
        worse = bad if index % 2 else "I don't know."
        shared = [question, good, follow_up]
        rows.append({"chosen": _hh([*shared, answer]), "rejected": _hh([*shared, worse])})
    return rows


def render() -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in dialogues())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the file on disk")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"stale fixture {OUT.name}; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
