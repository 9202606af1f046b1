"""JSON Lines files: one JSON object per line, UTF-8, the format every step hands on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every object in the file, blank lines skipped."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(items: list[dict[str, Any]], path: str | Path) -> None:
    """Writes `items` one per line, creating the directory; non-JSON values as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A quarantined record may hold a lone surrogate; as `\ud800` it stays the same JSON string.
    with path.open("w", encoding="utf-8", errors="backslashreplace") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
