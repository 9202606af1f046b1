"""Validate loaded rows with a pandera schema; quarantine the bad ones with their reasons.

Two row shapes are accepted:
- instruction rows: `instruction`, optional `input`, `output` (Alpaca style);
- chat rows: `messages`, a list of `{"role", "content"}` turns with a user turn and ending in
  the assistant's turn (a JSON string in CSV cells is decoded).
An optional `task` names the task family (used for per-family evaluation and held-out tasks).

Every row ends up in exactly one place: valid rows become canonical records
`{"row", "task", "messages"}`; rejected rows go to a quarantine JSONL entry
`{"row", "reason", "record"}` holding the original row, so nothing is silently dropped and
`valid + rejected == total` always holds. Duplicates keep their first occurrence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from prefect import task

from tuneforge.config import DataConfig
from tuneforge.jsonl import write_jsonl
from tuneforge.records import canonical_record
from tuneforge.run_context import RunContext
from tuneforge.tasks.load_data import RawRow, parse_json, read_raw_rows

ROLES = frozenset({"system", "user", "assistant"})
TEXT_FIELDS = ("instruction", "input", "output", "task")


class TooManyRejectedError(ValueError):
    """More rows were rejected than the configured threshold allows."""


@dataclass(frozen=True)
class ValidationReport:
    total: int
    valid: int
    rejected: int
    valid_path: str
    quarantine_path: str
    fingerprint: str  # sha256 of the valid records: what training will see

    @property
    def rejected_fraction(self) -> float:
        return self.rejected / self.total if self.total else 0.0


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _not_unicode(rec: dict[str, Any]) -> str | None:
    """The reason when a field holds an unpaired surrogate (JSON can spell one, "\\ud800"):
    such text cannot be written as UTF-8 or tokenized. Checked before pandera, whose failure
    report breaks on it."""
    # Text is checked by encoding it directly: a json.dumps per field took a quarter of the
    # validation time (cProfile). Only non-text values (messages, numbers) go through JSON.
    for name in (*TEXT_FIELDS, "messages"):
        value = rec.get(name)
        try:
            if isinstance(value, str):
                value.encode("utf-8")
            elif value is not None:
                json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: is not valid Unicode (an unpaired surrogate)"
    return None


def _is_family_name(value: Any) -> bool:
    """Task families name metric keys (`exact_match.<task>`, which MLflow may store as files), so
    `../x`, `/x` and `a//b` are refused; `qa/math` is fine."""
    if not isinstance(value, str) or not value.strip():
        return True  # reported as "must be text" / "is blank"
    return all(part.strip(". ") for part in value.split("/"))


def _turns(value: Any) -> list[dict[str, str]] | None:
    """The messages as a list of well-formed turns, or None when they are not."""
    if not isinstance(value, list) or not value:
        return None
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            return None
        if turn["role"] not in ROLES:
            return None
        if not isinstance(turn.get("content"), str):
            return None
    return value


def _chat_check(rule: Any) -> Any:
    # Malformed messages are reported once, by the format check; other rules pass them.
    return lambda value: _turns(value) is None or bool(rule(_turns(value)))


def build_schema(max_chars: int) -> pa.DataFrameSchema:
    """The row schema. Each check's `error` is the reason written to the quarantine file."""

    def not_blank(s: pd.Series) -> pd.Series:
        return s.map(lambda v: not isinstance(v, str) or bool(v.strip()))

    def within_limit(s: pd.Series) -> pd.Series:
        return s.map(lambda v: not isinstance(v, str) or len(v) <= max_chars)

    is_text = pa.Check(_is_text, element_wise=True, error="must be text")
    blank = pa.Check(not_blank, error="is blank")
    too_long = pa.Check(within_limit, error=f"is longer than {max_chars} characters")
    family = pa.Check(
        _is_family_name,
        element_wise=True,
        error="must be a family name, not a path (no leading '/', no empty, '.' or '..' parts)",
    )
    chat_checks = [
        pa.Check(
            lambda v: _turns(v) is not None,
            element_wise=True,
            error="must be a non-empty list of {role, content} turns "
            "(role: system, user or assistant; content: text)",
        ),
        pa.Check(
            _chat_check(lambda t: {"user", "assistant"} <= {m["role"] for m in t}),
            element_wise=True,
            error="needs a user turn and an assistant turn",
        ),
        pa.Check(
            _chat_check(lambda t: t[-1]["role"] == "assistant"),
            element_wise=True,
            error="must end with the assistant's turn",
        ),
        pa.Check(
            _chat_check(lambda t: all(m["content"].strip() for m in t)),
            element_wise=True,
            error="has a blank turn",
        ),
        pa.Check(
            _chat_check(lambda t: all(len(m["content"]) <= max_chars for m in t)),
            element_wise=True,
            error=f"has a turn longer than {max_chars} characters",
        ),
    ]

    def shape_check(error: str, bad: Any) -> pa.Check:
        # ignore_na=False: pandera would otherwise skip rows whose fields are all missing.
        return pa.Check(lambda df: ~bad(df), error=error, ignore_na=False)

    def alpaca(df: pd.DataFrame) -> pd.Series:
        return df["instruction"].notna() | df["output"].notna()

    return pa.DataFrameSchema(
        {
            "instruction": pa.Column(object, nullable=True, checks=[is_text, blank, too_long]),
            "input": pa.Column(object, nullable=True, checks=[is_text, too_long]),
            "output": pa.Column(object, nullable=True, checks=[is_text, blank, too_long]),
            "task": pa.Column(object, nullable=True, checks=[is_text, blank, too_long, family]),
            "messages": pa.Column(object, nullable=True, checks=chat_checks),
        },
        checks=[
            shape_check(
                "has neither instruction/output nor messages",
                lambda df: ~alpaca(df) & df["messages"].isna(),
            ),
            shape_check(
                "has both messages and instruction/output; use one shape per row",
                lambda df: alpaca(df) & df["messages"].notna(),
            ),
            shape_check(
                "instruction is missing", lambda df: df["output"].notna() & df["instruction"].isna()
            ),
            shape_check(
                "output is missing", lambda df: df["instruction"].notna() & df["output"].isna()
            ),
        ],
        coerce=False,
    )


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    columns: dict[str, list[Any]] = {name: [] for name in (*TEXT_FIELDS, "messages")}
    for rec in records:
        for name in TEXT_FIELDS:
            columns[name].append(rec.get(name))
        messages = rec.get("messages")
        if isinstance(messages, str):  # CSV cells carry messages as a JSON string
            # Undecodable text stays a string: the format check rejects it with a reason.
            with contextlib.suppress(ValueError):
                messages = parse_json(messages)
        columns["messages"].append(messages)
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})


def _failure_reasons(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> dict[int, list[str]]:
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return {}
    reasons: dict[int, list[str]] = {}
    for ctx, column, error, index in zip(
        cases["schema_context"], cases["column"], cases["check"], cases["index"], strict=True
    ):
        if index is None or pd.isna(index):
            # A failure without a row (e.g. a missing column) is a bug in _frame, not bad data.
            raise RuntimeError(f"schema failure without a row: {column}: {error}")
        reason = f"{column}: {error}" if ctx == "Column" else error
        row_reasons = reasons.setdefault(int(index), [])
        if reason not in row_reasons:  # frame-level checks are reported once per column
            row_reasons.append(reason)
    return reasons


def validate_rows(
    rows: list[RawRow], max_chars: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits rows into canonical valid records and quarantine entries (each with a reason)."""
    quarantine: list[dict[str, Any]] = []
    parsed = []
    for r in rows:
        if r.record is None:
            quarantine.append({"row": r.row, "reason": r.parse_error, "record": r.raw})
        elif reason := _not_unicode(r.record):
            quarantine.append({"row": r.row, "reason": reason, "record": r.record})
        else:
            parsed.append(r)
    frame = _frame([r.record for r in parsed])
    reasons = _failure_reasons(build_schema(max_chars), frame)

    valid: list[dict[str, Any]] = []
    seen: dict[tuple[tuple[str, str], ...], int] = {}
    for i, r in enumerate(parsed):
        if i in reasons:
            quarantine.append({"row": r.row, "reason": "; ".join(reasons[i]), "record": r.record})
            continue
        record = canonical_record(r.row, r.record)
        # Canonical turns hold exactly role and content, so this tuple is as exact a key as
        # their JSON, at a tenth of the cost.
        key = tuple((m["role"], m["content"]) for m in record["messages"])
        if key in seen:
            reason = f"duplicate of row {seen[key]}"
            quarantine.append({"row": r.row, "reason": reason, "record": r.record})
            continue
        seen[key] = r.row
        valid.append(record)
    quarantine.sort(key=lambda q: q["row"])
    return valid, quarantine


def validate_file(
    rows: list[RawRow], max_chars: int, valid_path: Path, quarantine_path: Path
) -> ValidationReport:
    """Validates rows and writes both outputs; the quarantine file is written even when empty."""
    valid, quarantine = validate_rows(rows, max_chars)
    write_jsonl(valid, valid_path)
    write_jsonl(quarantine, quarantine_path)
    return ValidationReport(
        total=len(rows),
        valid=len(valid),
        rejected=len(quarantine),
        valid_path=str(valid_path),
        quarantine_path=str(quarantine_path),
        fingerprint=hashlib.sha256(valid_path.read_bytes()).hexdigest()[:16],
    )


def check_rejected_fraction(report: ValidationReport, limit: float, source: str) -> None:
    if report.rejected_fraction > limit:
        raise TooManyRejectedError(
            f"{source}: {report.rejected} of {report.total} rows rejected "
            f"({report.rejected_fraction:.1%}), above data.max_rejected_fraction={limit:.1%}; "
            f"reasons in {report.quarantine_path}"
        )


@task(name="validate_dataset")
def validate_dataset(*, loaded_path: str, data: DataConfig, ctx: RunContext) -> ValidationReport:
    """Validates the loaded rows, writes `valid.jsonl` and `quarantine.jsonl` beside them, logs
    the counts (and the quarantine file) to MLflow, and fails when the rejected share is above
    `data.max_rejected_fraction`."""
    from tuneforge.tracking import MetricLogger

    out = Path(loaded_path).parent
    rows = read_raw_rows(Path(loaded_path))
    report = validate_file(rows, data.max_chars, out / "valid.jsonl", out / "quarantine.jsonl")
    metrics = MetricLogger(ctx.tracking_uri, ctx.run_id)
    counts = {"total": report.total, "valid": report.valid, "rejected": report.rejected}
    metrics.log({f"data.{k}": v for k, v in counts.items()}, step=0)
    metrics.flush()
    metrics.client.set_tag(ctx.run_id, "tuneforge.data_fingerprint", report.fingerprint)
    if report.rejected:
        metrics.client.log_artifact(ctx.run_id, report.quarantine_path, artifact_path="data")
    check_rejected_fraction(report, data.max_rejected_fraction, data.path)
    return report
