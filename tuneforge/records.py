"""The canonical record every step after validation works on: a task family and chat-style
messages, `{"row": 12, "task": "antonym", "messages": [{"role": "user", ...}, ...]}`."""

from __future__ import annotations

import json
from typing import Any


def canonical_record(row: int, rec: dict[str, Any]) -> dict[str, Any]:
    """The record every later step uses: task family plus chat-style messages."""
    if rec.get("messages") is not None:
        messages = rec["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        prompt = rec["instruction"]
        if isinstance(rec.get("input"), str) and rec["input"].strip():
            prompt = f"{prompt}\n\n{rec['input']}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": rec["output"]},
        ]
    return {"row": row, "task": rec.get("task"), "messages": messages}
