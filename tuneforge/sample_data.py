"""Generator of the bundled instruction dataset (`data/instructions.jsonl`).

Regenerate it with ``tuneforge sample-data data/instructions.jsonl``; a test checks that the
committed file is exactly what this module produces, so the two never drift apart.

Each task family has several instruction phrasings, and every row records its family in
``task``: evaluation can then report per family, and whole families can be held out of training
to measure generalisation to instructions the model never saw (the FLAN claim).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

WORDS = (
    "apple bird cake door fish gold hand iron king lamp moon nest oak pear queen rain salt tree "
    "vase wind yard zinc arm boat cow dog egg fox hat ink jam key leg map net owl pen rug sun "
    "toy urn van web box cup bell coin drum fork goat horn kite leaf milk nose pipe ring ship "
    "sock tent wolf"
).split()

ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "fast": "slow",
    "light": "dark",
    "old": "new",
    "open": "closed",
    "happy": "sad",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "high": "low",
    "long": "short",
    "rich": "poor",
    "strong": "weak",
    "thick": "thin",
    "wet": "dry",
    "young": "old",
    "loud": "quiet",
    "near": "far",
    "clean": "dirty",
    "first": "last",
    "left": "right",
    "win": "lose",
    "push": "pull",
    "buy": "sell",
    "give": "take",
    "love": "hate",
    "day": "night",
    "in": "out",
}

# family -> (phrasings, make(rng) -> (input, output))
Family = tuple[tuple[str, ...], Callable[[random.Random], tuple[str, str]]]


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 3)
    return " ".join(words), " ".join(reversed(words))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return word, word.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"{a} + {b}", str(a + b)


def _first_letter(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return word, word[0]


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = rng.sample("0123456789", 4)
    return " ".join(digits), " ".join(sorted(digits))


def _antonym(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(ANTONYMS))
    return word, ANTONYMS[word]


FAMILIES: dict[str, Family] = {
    "reverse": (
        (
            "Reverse the order of the words.",
            "Write these words backwards, last word first.",
            "Put the words in reverse order.",
            "List the words from last to first.",
        ),
        _reverse,
    ),
    "uppercase": (
        (
            "Write the word in capital letters.",
            "Convert to uppercase.",
            "Make every letter upper case.",
            "Shout this word.",
        ),
        _uppercase,
    ),
    "add": (
        (
            "Add the two numbers.",
            "What is the sum?",
            "Compute the total.",
            "Work out the answer.",
        ),
        _add,
    ),
    "first_letter": (
        (
            "Give the first letter of the word.",
            "Which letter does this word start with?",
            "What is the initial letter?",
            "Say only the first letter.",
        ),
        _first_letter,
    ),
    "sort": (
        (
            "Sort the digits in ascending order.",
            "Put these numbers from smallest to largest.",
            "Order the digits, lowest first.",
            "Arrange the digits in increasing order.",
        ),
        _sort,
    ),
    "antonym": (
        (
            "Give the opposite of the word.",
            "What is the antonym?",
            "Name a word with the opposite meaning.",
            "Write the opposite.",
        ),
        _antonym,
    ),
}


def generate_rows(rows_per_family: int = 300, seed: int = 0) -> Iterator[dict[str, str]]:
    """Yields Alpaca-style rows (`instruction`, `input`, `output`, `task`), families interleaved.

    Identical (instruction, input) pairs are skipped so the bundled data has no duplicates (the
    validator's duplicate check is exercised by test fixtures instead). A family with fewer
    distinct pairs than `rows_per_family` (antonym has 30 words x 4 phrasings) stops early.
    """
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    counts = dict.fromkeys(FAMILIES, 0)
    misses = dict.fromkeys(FAMILIES, 0)  # draws in a row that gave nothing new
    active = set(FAMILIES)
    while active:
        for task, (phrasings, make) in FAMILIES.items():
            if task not in active:
                continue
            instruction = rng.choice(phrasings)
            source, answer = make(rng)
            if (instruction, source) in seen:
                misses[task] += 1
                if misses[task] > 500:
                    active.discard(task)
                continue
            seen.add((instruction, source))
            counts[task] += 1
            misses[task] = 0
            if counts[task] >= rows_per_family:
                active.discard(task)
            yield {"instruction": instruction, "input": source, "output": answer, "task": task}


def write_sample(path: Path, rows_per_family: int = 300, seed: int = 0) -> int:
    """Writes the sample dataset as JSONL and returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in generate_rows(rows_per_family, seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# A narrow domain for a second stage (deployments/pipelines/forgetting.yaml): sums and
# differences of numbers up to 50, phrased as the bundled `add` family and a few new ways.
ARITHMETIC_PHRASINGS = {
    "add": (*FAMILIES["add"][0], "Add these.", "How much is this?"),
    "subtract": (
        "Subtract the second number from the first.",
        "What is the difference?",
        "Work out the subtraction.",
        "How much is left?",
    ),
}


def arithmetic_rows(rows: int = 1200, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-style rows of the arithmetic domain, `add` and `subtract` interleaved, no
    (instruction, input) pair twice."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < rows:
        task = ("add", "subtract")[len(out) % 2]
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        if task == "subtract":
            a, b = max(a, b), min(a, b)
        source, answer = (f"{a} + {b}", str(a + b)) if task == "add" else (f"{a} - {b}", str(a - b))
        instruction = rng.choice(ARITHMETIC_PHRASINGS[task])
        if (instruction, source) in seen:
            continue
        seen.add((instruction, source))
        out.append({"instruction": instruction, "input": source, "output": answer, "task": task})
    return out


def write_arithmetic(path: Path, rows: int = 1200, seed: int = 0) -> int:
    """Writes the arithmetic domain as JSONL and returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in arithmetic_rows(rows, seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows
