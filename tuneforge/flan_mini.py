"""FLAN in miniature: a generated corpus in which instruction tuning can be seen to help on
tasks the model was never instruction-tuned on.

    tuneforge sample-data --flan-mini data/flan-mini

Eight task families are relations between words ("the opposite of hot is cold", "the plural of
fox is foxes", "the capital of Japan is Tokyo", ...). Three files:

- `prose.jsonl` (schema text): short documents stating facts of every family as ordinary
  sentences, never as instructions. Continued pretraining on it is where a model learns them.
- `instructions.jsonl` (alpaca): questions about half the facts of the held-in families, each
  asked with several phrasings (`SEEN`), answered with the fact as a sentence. Evaluation-only
  rows (`data.holdout_tasks`): the held-out families (`HELD_OUT`), whose knowledge is in the
  prose alone; the same held-in facts asked in phrasings no training row uses (`UNSEEN`), tagged
  `new_phrasing`; the other half of the held-in facts, tagged `new_fact`.
- `instructions-one-phrasing.jsonl`: the same, with the held-in training rows all asked one
  way: the comparison FLAN makes (its evaluation rows are identical).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

from tuneforge.sample_data import ANTONYMS

PLURALS = {
    w: (w + "es" if w.endswith(("s", "x", "sh", "ch")) else w + "s")
    for w in (
        "cat dog bird fox box bus tree lamp ship kite coin drum bell ring sock tent wolf"
        " goat pen cup door boat hat map key owl brush church dish glass"
    ).split()
}
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Russia": "Moscow",
    "China": "Beijing",
    "India": "Delhi",
    "Cuba": "Havana",
    "Iran": "Tehran",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Portugal": "Lisbon",
    "Sweden": "Stockholm",
}
COLORS = {
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "the sky": "blue",
    "a lemon": "yellow",
    "an orange": "orange",
    "milk": "white",
    "a cherry": "red",
    "ink": "black",
    "a leaf": "green",
    "the sea": "blue",
    "a banana": "yellow",
    "soot": "black",
    "a plum": "purple",
    "chalk": "white",
}
PAST = {
    "go": "went",
    "eat": "ate",
    "see": "saw",
    "run": "ran",
    "sing": "sang",
    "swim": "swam",
    "drink": "drank",
    "write": "wrote",
    "take": "took",
    "give": "gave",
    "come": "came",
    "make": "made",
    "know": "knew",
    "fly": "flew",
    "draw": "drew",
    "speak": "spoke",
    "break": "broke",
    "drive": "drove",
    "ride": "rode",
    "begin": "began",
    "walk": "walked",
    "jump": "jumped",
    "play": "played",
    "cook": "cooked",
}
BABIES = {
    "cat": "kitten",
    "dog": "puppy",
    "cow": "calf",
    "sheep": "lamb",
    "horse": "foal",
    "duck": "duckling",
    "goat": "kid",
    "frog": "tadpole",
    "bear": "cub",
    "lion": "cub",
    "swan": "cygnet",
    "hen": "chick",
    "kangaroo": "joey",
    "deer": "fawn",
    "owl": "owlet",
    "pig": "piglet",
}
SOUNDS = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "pig": "oink",
    "owl": "hoot",
    "horse": "neigh",
    "lion": "roar",
    "snake": "hiss",
    "bee": "buzz",
    "frog": "croak",
    "mouse": "squeak",
    "crow": "caw",
}
NUMBERS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    " sixteen seventeen eighteen nineteen twenty"
).split()

# family -> (the relation's name in a sentence, its facts)
FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
    "opposite": ("opposite", ANTONYMS),
    "plural": ("plural", PLURALS),
    "capital": ("capital", CAPITALS),
    "color": ("color", COLORS),
    "past": ("past tense", PAST),
    "baby": ("baby", BABIES),
    "sound": ("sound", SOUNDS),
    "next": ("successor", dict(pairwise(NUMBERS))),
}
HELD_OUT = ("opposite", "baby")  # in the prose only: never instruction-tuned

# How the prose states a fact; the first is also how every answer is phrased.
PROSE = (
    "The {rel} of {x} is {y}.",
    "Everyone knows that the {rel} of {x} is {y}.",
    "As you may know, the {rel} of {x} is {y}.",
    "It is true that the {rel} of {x} is {y}.",
    "In a book I read that the {rel} of {x} is {y}.",
    "I wondered about the {rel} of {x}. The {rel} of {x} is {y}.",
    "Here is a fact about {x}: the {rel} of {x} is {y}.",
    "Think of {x}. Its {rel} is {y}, so the {rel} of {x} is {y}.",
)
SEEN = (
    "What is the {rel} of {x}?",
    "Tell me the {rel} of {x}.",
    "Give the {rel} of {x}.",
    "Name the {rel} of {x}.",
    "I need the {rel} of {x}.",
    "Please state the {rel} of {x}.",
)
UNSEEN = (
    "Do you know the {rel} of {x}?",
    "Which word is the {rel} of {x}?",
)


def _facts() -> Iterator[tuple[str, str, str, str]]:
    for family, (rel, facts) in FAMILIES.items():
        for x, y in facts.items():
            yield family, rel, x, y


def prose_rows(documents: int = 1500, sentences: int = 5, seed: int = 0) -> list[dict[str, str]]:
    """Short documents of `sentences` facts each, drawn so that every fact appears about
    equally often (a shuffled deck of all facts, dealt again when it runs out)."""
    rng = random.Random(seed)
    facts = list(_facts())
    deck: list[tuple[str, str, str, str]] = []
    rows = []
    for _ in range(documents):
        lines = []
        for _ in range(sentences):
            if not deck:
                deck = facts[:]
                rng.shuffle(deck)
            _, rel, x, y = deck.pop()
            frame = rng.choice(PROSE)
            sentence = frame.format(rel=rel, x=x, y=y)
            lines.append(sentence[0].upper() + sentence[1:])
        rows.append({"text": " ".join(lines)})
    return rows


def _row(phrasing: str, rel: str, x: str, y: str, task: str) -> dict[str, str]:
    answer = PROSE[0].format(rel=rel, x=x, y=y)
    return {"instruction": phrasing.format(rel=rel, x=x), "output": answer, "task": task}


def instruction_rows(one_phrasing: bool = False) -> list[dict[str, str]]:
    """The instruction-tuning file, family by family:

    - held-in families: every other fact in the `SEEN` phrasings (only the first with
      `one_phrasing`), task = the family; the same facts in `UNSEEN` phrasings, task
      `new_phrasing`; the other facts, task `new_fact` (known from the prose only);
    - held-out families (`HELD_OUT`): every fact in every phrasing, task = the family.

    The split sends `new_phrasing`, `new_fact` and the held-out families wholly to evaluation
    (`data.holdout_tasks`), so their rows are identical with or without `one_phrasing`.
    """
    rows = []
    for family, (rel, facts) in FAMILIES.items():
        for i, (x, y) in enumerate(facts.items()):
            if family in HELD_OUT:
                rows += [_row(p, rel, x, y, family) for p in SEEN + UNSEEN]
            elif i % 2 == 0:
                rows += [_row(p, rel, x, y, family) for p in SEEN[:1] if one_phrasing]
                rows += [_row(p, rel, x, y, family) for p in SEEN if not one_phrasing]
                rows += [_row(p, rel, x, y, "new_phrasing") for p in UNSEEN]
            else:
                rows += [_row(p, rel, x, y, "new_fact") for p in SEEN[:2]]
    return rows


def write_flan_mini(out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Writes the three files under `out_dir`; returns rows per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "prose.jsonl": prose_rows(seed=seed),
        "instructions.jsonl": instruction_rows(),
        "instructions-one-phrasing.jsonl": instruction_rows(one_phrasing=True),
    }
    for name, rows in files.items():
        with (out_dir / name).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: len(rows) for name, rows in files.items()}
