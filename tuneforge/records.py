"""The canonical record every step after validation works on: a task family and either
chat-style messages, `{"row": 12, "task": "antonym", "messages": [{"role": "user", ...}, ...]}`,
or raw text, `{"row": 3, "task": null, "text": "..."}` (no prompt: trained on every token).

Preference pairs are chat records whose messages end with the chosen answer, plus the rejected
answer: `{"row", "task", "messages": [..., {"role": "assistant", "content": CHOSEN}],
"rejected": "..."}`; unpaired feedback adds a `label` (true: a good answer) to a chat record.
Whatever reads chat records (generation metrics, splits) reads the chosen or rated answer."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from tuneforge.prompts import instruction_prompt


def canonical_record(row: int, rec: dict[str, Any]) -> dict[str, Any]:
    """The record every later step uses, from a row under tuneforge's field names
    (`instruction`/`input`/`output`, `messages`, or `text`, and `task`)."""
    if rec.get("text") is not None:
        return {"row": row, "task": rec.get("task"), "text": rec["text"]}
    if rec.get("chosen") is not None:  # a preference pair, each side a whole conversation
        messages = _turns(rec["chosen"])
        rejected = rec["rejected"][-1]["content"]
        return {"row": row, "task": rec.get("task"), "messages": messages, "rejected": rejected}
    if rec.get("label") is not None:  # feedback: `output` holds the whole conversation
        messages = _turns(rec["output"])
        return {"row": row, "task": rec.get("task"), "messages": messages, "label": rec["label"]}
    if rec.get("messages") is not None:
        messages = rec["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        messages = _turns(messages)
    else:
        messages = [
            {"role": "user", "content": instruction_prompt(rec["instruction"], rec.get("input"))},
            {"role": "assistant", "content": rec["output"]},
        ]
    return {"row": row, "task": rec.get("task"), "messages": messages}


def _turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def is_text(record: dict[str, Any]) -> bool:
    """Whether a canonical record is raw text (no prompt, no response)."""
    return "text" in record


def assistant_turn_records(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A conversation as one record per assistant turn, each ending at that turn (the turns
    before it become its prompt): `train.assistant_turns: all`. Raw text and single-answer
    records come back as they are."""
    if is_text(record):
        return [record]
    messages = record["messages"]
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    # A turn with no user turn before it has nothing to answer: it stays context.
    asked = [i for i in ends if any(m["role"] == "user" for m in messages[:i])]
    return [{**record, "messages": messages[: i + 1]} for i in asked] or [record]


def spread(records: list[dict], n: int) -> list[dict]:
    """At most `n` records taken round-robin over task families (source order within each),
    so a capped evaluation still covers every family even when the data is sorted by task."""
    families: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        families[rec.get("task") or ""].append(rec)
    picked: list[dict] = []
    queues = [iter(v) for v in families.values()]
    while queues and len(picked) < n:
        for queue in list(queues):
            rec = next(queue, None)
            if rec is None:
                queues.remove(queue)
            elif len(picked) < n:
                picked.append(rec)
    return picked
