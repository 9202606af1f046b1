"""Generator of the bundled preference data (`data/preferences.jsonl`, `data/feedback.jsonl`).

Regenerate them with ``tuneforge sample-data data/preferences.jsonl --preferences`` and
``tuneforge sample-data data/feedback.jsonl --feedback``; a test checks that the committed files
are exactly what this module produces, so the two never drift apart.

They are for preference training (DPO-style): the prompts are the bundled task families'
(`tuneforge.sample_data`), rendered as the instruction data's rows render, so a model fine-tuned
on `data/instructions.jsonl` meets the same questions. Each `chosen` answer is the right one and
each `rejected` a *near miss* of it, the kind of mistake a half-trained model makes: the wrong
case, an integer off by one, the answer cut short, the answer wrapped in chatter, or the right
items in the wrong order. Near misses teach more than random wrong answers, since the model must
tell apart two answers that differ only in what matters.

`preference_rows` gives paired rows (`prompt`, `chosen`, `rejected`, `task`); `feedback_rows`
gives the same material unpaired (`prompt`, `completion`, `label`, `task`, KTO-style), every right
answer labelled true and about half of the near misses labelled false.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from tuneforge.prompts import instruction_prompt
from tuneforge.sample_data import generate_rows

# The kinds of near miss, in a fixed order so a seed always gives the same choices.
KINDS = ("case", "off_by_one", "truncated", "chatty", "order")

# How far a kind may run ahead of the least used kind that also fits a row: keeps the kinds
# roughly even overall while each row still gets a seeded random pick among those that fit.
_SLACK = 3

_CHATTY = (
    "Sure! The answer is {answer}.",
    "The answer is: {answer}",
    "Of course. {answer}",
    "{answer}. Hope that helps!",
    "Here you go: {answer}",
    "Great question! It is {answer}.",
    "I think it's {answer}, but let me know if you need more.",
    "Answer: {answer}. Anything else?",
)


def _case(answer: str, rng: random.Random) -> str | None:
    """The answer in another case (swapped, upper, lower, capitalised), if any differs."""
    variants = [answer.swapcase(), answer.upper(), answer.lower(), answer.capitalize()]
    options = sorted({v for v in variants if v != answer})
    return rng.choice(options) if options else None


def _off_by_one(answer: str, rng: random.Random) -> str | None:
    """An integer answer plus or minus one (never below zero for a non-negative answer)."""
    try:
        value = int(answer)
    except ValueError:
        return None
    step = 1 if value == 0 else rng.choice((-1, 1))
    return str(value + step)


def _truncated(answer: str, rng: random.Random) -> str | None:
    """The answer cut short: a proper, non-blank prefix (at least one character dropped)."""
    if len(answer) < 2:
        return None
    return answer[: rng.randint(1, len(answer) - 1)].rstrip()


def _chatty(answer: str, rng: random.Random) -> str | None:
    """The right answer wrapped in chatter the task did not ask for."""
    return rng.choice(_CHATTY).format(answer=answer)


def _order(answer: str, rng: random.Random) -> str | None:
    """The answer's words in another order, if it has at least two different ones."""
    items = answer.split(" ")
    if len(set(items)) < 2:
        return None
    shuffled = items[:]
    while shuffled == items:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


_MAKERS: dict[str, Callable[[str, random.Random], str | None]] = {
    "case": _case,
    "off_by_one": _off_by_one,
    "truncated": _truncated,
    "chatty": _chatty,
    "order": _order,
}


def near_miss(answer: str, kind: str, rng: random.Random) -> str | None:
    """A near miss of `answer` of the given kind, or None when that kind does not apply (or gives
    nothing different from the answer, or nothing but blanks)."""
    wrong = _MAKERS[kind](answer, rng)
    if wrong is None or not wrong.strip() or wrong == answer:
        return None
    return wrong


def _preference_rows_with_kinds(
    rows_per_family: int, seed: int
) -> list[tuple[dict[str, str], str]]:
    """The preference rows, each with the kind of near miss its `rejected` is."""
    rng = random.Random(f"preferences:{seed}")
    used = dict.fromkeys(KINDS, 0)
    out: list[tuple[dict[str, str], str]] = []
    for row in generate_rows(rows_per_family, seed):
        answer = row["output"]
        # Try each kind on its own copy of the stream, so a kind that does not apply draws
        # nothing from the shared one and the choice below stays a function of the seed.
        candidates = {}
        for kind in KINDS:
            wrong = near_miss(answer, kind, random.Random(rng.getrandbits(64)))
            if wrong is not None:
                candidates[kind] = wrong
        least = min(used[k] for k in candidates)
        kind = rng.choice([k for k in candidates if used[k] <= least + _SLACK])
        used[kind] += 1
        prompt = instruction_prompt(row["instruction"], row["input"])
        pair = {"prompt": prompt, "chosen": answer, "rejected": candidates[kind]}
        out.append(({**pair, "task": row["task"]}, kind))
    return out


def preference_rows(rows_per_family: int = 100, seed: int = 0) -> list[dict[str, str]]:
    """Paired preference rows (`prompt`, `chosen`, `rejected`, `task`), families interleaved.

    `prompt` is the instruction and input as the instruction data renders them, `chosen` the
    right answer and `rejected` a near miss of it (never equal to it, never blank), its kind
    picked per row from those that apply, seeded, and kept roughly even over the whole set.
    """
    return [row for row, _ in _preference_rows_with_kinds(rows_per_family, seed)]


def feedback_rows(rows_per_family: int = 100, seed: int = 0) -> list[dict[str, str | bool]]:
    """Unpaired feedback rows (`prompt`, `completion`, `label`, `task`) from the preference rows.

    Every preference row gives its chosen answer labelled true; a seeded half of them also give
    their rejected answer labelled false, right after it. The data thus holds both labels without
    every prompt being a pair, and no (prompt, completion) twice.
    """
    pairs = preference_rows(rows_per_family, seed)
    bad = set(random.Random(f"feedback:{seed}").sample(range(len(pairs)), len(pairs) // 2))
    out: list[dict[str, str | bool]] = []
    for i, row in enumerate(pairs):
        prompt, task = row["prompt"], row["task"]
        out.append({"prompt": prompt, "completion": row["chosen"], "label": True, "task": task})
        if i in bad:
            out.append(
                {"prompt": prompt, "completion": row["rejected"], "label": False, "task": task}
            )
    return out


def write_preferences(
    path: Path, rows_per_family: int = 100, seed: int = 0, feedback: bool = False
) -> int:
    """Writes the preference pairs (or, with `feedback`, the unpaired feedback rows) as JSONL and
    returns the number of rows."""
    rows = (
        feedback_rows(rows_per_family, seed) if feedback else preference_rows(rows_per_family, seed)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
