"""Deterministic train/eval split of validated records.

Each record's side is decided by a hash of its content and the seed, not by its position: when
new rows arrive between retrains, old rows stay on the side they were on, so the eval set never
leaks into training. Task families listed in `holdout_tasks` go entirely to evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.jsonl import loads
from tuneforge.records import is_text


def _bucket(record: dict[str, Any], seed: int) -> float:
    content = record["text"] if is_text(record) else record["messages"]
    key = json.dumps([seed, content], sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def split_records(
    records: list[dict[str, Any]], eval_fraction: float, seed: int, holdout_tasks: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Returns (train, eval); order within each side follows the source."""
    held_out = set(holdout_tasks)
    unknown = held_out - {rec.get("task") for rec in records}
    if unknown:
        tasks = sorted({str(rec.get("task")) for rec in records})
        raise ValueError(
            f"data.holdout_tasks: {sorted(unknown)} not among the task families in the data "
            f"({', '.join(tasks)})"
        )
    train, evaluation = [], []
    for rec in records:
        if rec.get("task") in held_out or _bucket(rec, seed) < eval_fraction:
            evaluation.append(rec)
        else:
            train.append(rec)
    return train, evaluation


def split_file(
    valid_path: Path,
    train_path: Path,
    eval_path: Path,
    eval_fraction: float,
    seed: int,
    holdout_tasks: list[str],
) -> tuple[int, int]:
    """`split_records` of a JSONL file of records, streamed: each line is copied as it is to
    the train or eval file (memory holds one record). Returns the two counts."""
    held_out, seen = set(holdout_tasks), set()
    counts = [0, 0]
    with (
        valid_path.open("rb") as lines,
        train_path.open("wb") as train,
        eval_path.open("wb") as evaluation,
    ):
        for line in lines:
            rec = loads(line)
            seen.add(rec.get("task"))
            to_eval = rec.get("task") in held_out or _bucket(rec, seed) < eval_fraction
            (evaluation if to_eval else train).write(line)
            counts[to_eval] += 1
    unknown = held_out - seen
    if unknown:
        train_path.unlink()
        eval_path.unlink()
        tasks = sorted(str(t) for t in seen)
        raise ValueError(
            f"data.holdout_tasks: {sorted(unknown)} not among the task families in the data "
            f"({', '.join(tasks)})"
        )
    return counts[0], counts[1]
