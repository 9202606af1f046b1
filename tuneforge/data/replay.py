"""Replay: a share of the parent version's training rows mixed into a new run's training
split, so that adapting a model to new data does not erase what it learnt before (the remedy
for forgetting the guards catch). The parent's rows are found through its lineage: the data
config its run recorded (`tuneforge.data_config`), read, validated and split again exactly as
then, and refused unless they still hash to the data fingerprint it recorded.

    rows = parent_training_rows(parent_data, fingerprint, scratch)
    picked = replay_sample(rows, 0.3, seed=0)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.splitting import split_records
from tuneforge.data.validation import validate_path
from tuneforge.jsonl import read_jsonl


def parent_training_rows(
    data: DataConfig, fingerprint: str, scratch: Path, version: str
) -> list[dict[str, Any]]:
    """The training split the parent version (`version`, for messages) was trained on,
    rebuilt from its data config: a ValueError when its data cannot be read or has changed
    since (its valid rows no longer hash to `fingerprint`)."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        report = validate_path(
            data.path,
            data.max_chars,
            scratch / "valid.jsonl",
            scratch / "quarantine.jsonl",
            data.format,
            data.hf_split,
            data.schema_,
            data.columns,
            data.ignore_columns,
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"data.replay: cannot read {version}'s data {data.path}: {exc}") from None
    if report.fingerprint != fingerprint:
        raise ValueError(
            f"data.replay: {data.path} has changed since {version} was trained on it (its "
            f"valid rows hash to {report.fingerprint}, the version recorded {fingerprint})"
        )
    records = read_jsonl(report.valid_path)
    train, _ = split_records(records, data.eval_fraction, data.seed, data.holdout_tasks)
    return train


def replay_sample(rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """`share` of `rows` (rounded, at least one when `share` > 0), the same ones for the same
    rows and seed: those whose content hashes lowest, in their original order."""
    want = max(1, round(share * len(rows))) if share > 0 and rows else 0

    def rank(row: dict[str, Any]) -> str:
        content = {k: v for k, v in row.items() if k != "row"}
        return hashlib.sha256(json.dumps([seed, content], sort_keys=True).encode()).hexdigest()

    chosen = {id(r) for r in sorted(rows, key=rank)[:want]}
    return [r for r in rows if id(r) in chosen]
