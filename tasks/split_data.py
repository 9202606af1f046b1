"""Deterministic train/eval split of validated records.

Each record's side is decided by a hash of its content and the seed, not by its position: when
new rows arrive between retrains, old rows stay on the side they were on, so the eval set never
leaks into training. Task families listed in `holdout_tasks` go entirely to evaluation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge.config import DataConfig
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.records import is_text


@dataclass(frozen=True)
class SplitPaths:
    train_path: str
    eval_path: str
    train_rows: int
    eval_rows: int


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


@task(name="split_dataset")
def split_dataset(*, valid_path: str, data: DataConfig) -> SplitPaths:
    """Writes `train.jsonl` and `eval.jsonl` beside the valid records (`data.eval_fraction`,
    `data.seed`, whole `data.holdout_tasks` families to eval)."""
    records = read_jsonl(valid_path)
    train, evaluation = split_records(records, data.eval_fraction, data.seed, data.holdout_tasks)
    if not train or not evaluation:
        raise ValueError(
            f"{valid_path}: split of {len(records)} valid rows left train={len(train)}, "
            f"eval={len(evaluation)}; adjust data.eval_fraction or data.holdout_tasks"
        )
    out = Path(valid_path).parent
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(evaluation, out / "eval.jsonl")
    return SplitPaths(
        str(out / "train.jsonl"), str(out / "eval.jsonl"), len(train), len(evaluation)
    )
