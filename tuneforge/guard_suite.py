"""Generator of the bundled guard suite's data (`deployments/benchmarks/data/`): harness tasks
that check abilities of the bundled instruction data a narrower retrain does not train.

    tuneforge sample-data --guards deployments/benchmarks

Three tasks, each prompt in the plain template the tiny models train with (a chat model would
take the bare request with `apply_chat_template: true`):
- `guard_uppercase`, `guard_first_letter` (generate_until, exact match): a word to write in
  capitals, a word's first letter;
- `guard_antonym` (multiple_choice, accuracy): the opposite of a word among four candidates,
  each scored by its log-likelihood.
Drawn with their own seed: rows may repeat ones of the bundled data (its word lists are short),
which is what a guard wants: abilities the model had, checked again after a retrain.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneforge.sample_data import ANTONYMS, FAMILIES, WORDS

DOCS_PER_TASK = 60


def _generative(family: str, rng: random.Random) -> list[dict[str, str]]:
    phrasings, make = FAMILIES[family]
    docs, seen = [], set()
    while len(docs) < DOCS_PER_TASK:
        instruction = rng.choice(phrasings)
        source, answer = make(rng)
        if (instruction, source) in seen:
            continue
        seen.add((instruction, source))
        docs.append({"prompt": f"{instruction}\n\n{source}", "answer": answer})
    return docs


def _antonym_choices(rng: random.Random) -> list[dict[str, object]]:
    phrasings = FAMILIES["antonym"][0]
    answers = sorted(set(ANTONYMS.values()) | set(WORDS[:10]))
    docs = []
    for word in sorted(ANTONYMS):
        for instruction in rng.sample(phrasings, 2):
            right = ANTONYMS[word]
            choices = [right, *rng.sample([a for a in answers if a not in (right, word)], 3)]
            rng.shuffle(choices)
            docs.append(
                {
                    "prompt": f"{instruction}\n\n{word}",
                    "choices": choices,
                    "label": choices.index(right),
                }
            )
    return docs


def guard_docs(seed: int = 1) -> dict[str, list[dict]]:
    """Each task's documents, by data file name."""
    rng = random.Random(seed)
    return {
        "uppercase.jsonl": _generative("uppercase", rng),
        "first_letter.jsonl": _generative("first_letter", rng),
        "antonym.jsonl": _antonym_choices(rng),
    }


def write_guard_suite(folder: Path, seed: int = 1) -> dict[str, int]:
    """Writes the data files under `folder/data/`; returns the rows written per file."""
    out = folder / "data"
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, docs in guard_docs(seed).items():
        with (out / name).open("w", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        written[name] = len(docs)
    return written
