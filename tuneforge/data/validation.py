"""Validate loaded rows with a pandera schema; quarantine the bad ones with their reasons.

First the file's columns are matched to a dataset schema (`tuneforge/data_schemas.py`:
alpaca, dolly, prompt_completion, openai, sharegpt, text; `auto` recognises them), then every
row is checked in the shape that schema gives it:
- instruction rows: `instruction`, optional `input`, `output` (alpaca, dolly,
  prompt_completion);
- chat rows: `messages`, a list of turns with a user turn and ending in the assistant's turn
  (openai `{role, content}`, sharegpt `{from, value}`; a JSON string in CSV cells is decoded);
- text rows: `text`, raw text trained on every token (any length: training splits it into
  blocks);
- preference rows: an optional `prompt` (text or turns), `chosen` and `rejected` (answers as
  text, or whole conversations whose turns before the answer agree); each side is checked as
  a conversation, and the pair must have one prompt and two different answers;
- feedback rows: `prompt`, `completion` and `label` (true: a good answer, false: a bad one).
An optional `task` names the task family (used for per-family evaluation and held-out tasks).

Every row ends up in exactly one place: valid rows become canonical records
(`{"row", "task", "messages"}`, or `{"row", "task", "text"}`; a preference pair's messages end
with its chosen answer and `rejected` holds the other, a feedback row adds its `label`);
rejected rows go to a quarantine JSONL entry `{"row", "reason", "record"}` holding the original
row, so nothing is silently dropped and `valid + rejected == total` always holds. Duplicates
keep their first occurrence. A column that nothing reads makes the whole file unusable
(`SchemaError`), unless it is mapped or listed in `data.ignore_columns`.

Rows are checked in chunks and written as they are judged, so memory does not grow with the
file beyond 24 bytes per valid row (`SeenKeys`, for duplicates). JSONL and Parquet files
(`validate_path`) are read in Arrow chunks, whose plainly valid rows `columnar.accept` takes
at column speed; every other row, and every row of other formats, is judged here, row by row
(pandera over `CHUNK` rows at a time). Either way the verdicts are these rules'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from tuneforge.data import columnar
from tuneforge.data.columnar import Chunk
from tuneforge.data.reading import (
    Columns,
    DataLoadError,
    RawRow,
    detect_format,
    iter_rows,
    parse_json,
)
from tuneforge.data_schemas import SCHEMAS, ColumnMap, SchemaError, convert_turns, resolve_columns
from tuneforge.jsonl import JsonlWriter
from tuneforge.records import canonical_record

ROLES = frozenset({"system", "user", "assistant"})
PAIR_FIELDS = ("instruction", "input", "output")
# Rows per pandera call: large enough to amortise its fixed cost per call (10,000 made it a
# quarter slower on 1M rows), small enough to bound memory (~100 MB of rows in flight).
CHUNK = 50_000

__all__ = [
    "CHUNK",
    "SchemaError",
    "TooManyRejectedError",
    "ValidationReport",
    "check_rejected_fraction",
    "column_stats",
    "resolve_rows",
    "validate_file",
    "validate_path",
    "validate_rows",
    "validate_source",
]


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
    schema: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)  # tuneforge field -> file column

    @property
    def rejected_fraction(self) -> float:
        return self.rejected / self.total if self.total else 0.0


def column_stats(rows: Iterable[RawRow]) -> Columns:
    """Which columns the rows have, and in how many rows."""
    columns = Columns()
    for r in rows:
        columns.add(r)
    return columns


def resolve_rows(
    rows: Iterable[RawRow] | Columns,
    source: str,
    schema: str = "auto",
    columns: dict[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> ColumnMap | None:
    """The file's `ColumnMap` from its rows or their `Columns` (raises `SchemaError`), or
    None when no row parsed at all."""
    found = rows if isinstance(rows, Columns) else column_stats(rows)
    if not found.parsed:
        return None
    return resolve_columns(found.found, source, schema, columns, ignore)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _not_unicode(fields: dict[str, Any], cmap: ColumnMap) -> str | None:
    """The reason when a field holds an unpaired surrogate (JSON can spell one, "\\ud800"):
    such text cannot be written as UTF-8 or tokenized. Checked before pandera, whose failure
    report breaks on it."""
    # Text is checked by encoding it directly: a json.dumps per field took a quarter of the
    # validation time (cProfile). Only non-text values (messages, numbers) go through JSON.
    for name, value in fields.items():
        try:
            if isinstance(value, str):
                value.encode("utf-8")
            elif value is not None:
                json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            return f"{cmap.column(name)}: is not valid Unicode (an unpaired surrogate)"
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


def _kind(cmap: ColumnMap) -> str:
    if cmap.schema in ("preference", "feedback"):
        return cmap.schema
    fields = SCHEMAS[cmap.schema].columns
    return "chat" if "messages" in fields else "text" if "text" in fields else "pair"


def build_schema(max_chars: int, cmap: ColumnMap) -> pa.DataFrameSchema:
    """The row schema of the file's kind of rows. Columns are tuneforge's field names; each
    check's `error` is the reason written to the quarantine file (reported under the file's
    own column name)."""

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
    role, text = ("role", "content") if cmap.turns is None else cmap.turns[:2]
    turn_keys = f"{{{role}, {text}}}"
    chat_checks = [
        pa.Check(
            lambda v: _turns(v) is not None,
            element_wise=True,
            error=f"must be a non-empty list of {turn_keys} turns "
            "(roles: system, user and assistant; text in each)",
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

    def missing(name: str) -> pa.Check:
        # ignore_na=False: pandera would otherwise skip the very rows whose value is missing.
        return pa.Check(
            lambda df: df[name].notna(), error=f"{cmap.column(name)} is missing", ignore_na=False
        )

    columns = {"task": pa.Column(object, nullable=True, checks=[is_text, blank, too_long, family])}
    kind = _kind(cmap)
    if kind == "preference":
        # Each side is read as a whole conversation: the prompt's turns, then its answer.
        columns["chosen"] = pa.Column(object, nullable=True, checks=chat_checks)
        columns["rejected"] = pa.Column(object, nullable=True, checks=chat_checks)
        frame_checks = [missing("chosen"), missing("rejected"), *_pair_checks(cmap)]
    elif kind == "feedback":
        # `output` holds the conversation: the prompt's turns, then the completion.
        columns["output"] = pa.Column(object, nullable=True, checks=chat_checks)
        columns["label"] = pa.Column(
            object,
            nullable=True,
            checks=pa.Check(
                lambda v: isinstance(v, bool), element_wise=True, error="must be true or false"
            ),
        )
        frame_checks = [missing("output"), missing("label")]
    elif kind == "pair":
        text_checks = {"instruction": [blank, too_long], "input": [too_long]}
        text_checks["output"] = [blank, too_long]
        for name, checks in text_checks.items():
            columns[name] = pa.Column(object, nullable=True, checks=[is_text, *checks])
        frame_checks = [missing("instruction"), missing("output")]
    elif kind == "chat":
        columns["messages"] = pa.Column(object, nullable=True, checks=chat_checks)
        frame_checks = [missing("messages")]
    else:
        # No length limit: a document is split into train.max_length blocks, never cut.
        columns["text"] = pa.Column(object, nullable=True, checks=[is_text, blank])
        frame_checks = [missing("text")]
    return pa.DataFrameSchema(columns, checks=frame_checks, coerce=False)


def _pair_checks(cmap: ColumnMap) -> list[pa.Check]:
    """A preference pair's own rules, across its two sides (malformed sides are reported by
    the sides' own checks, not again here)."""
    chosen, rejected = cmap.column("chosen"), cmap.column("rejected")

    def both(rule: Callable[[list, list], bool]) -> Callable[[pd.DataFrame], pd.Series]:
        def check(df: pd.DataFrame) -> pd.Series:
            return pd.Series(
                [
                    _turns(c) is None or _turns(r) is None or rule(c, r)
                    for c, r in zip(df["chosen"], df["rejected"], strict=True)
                ],
                index=df.index,
            )

        return check

    return [
        pa.Check(
            both(lambda c, r: c[:-1] == r[:-1]),
            error=f"{chosen} and {rejected} have different prompts (their turns before the "
            "answer differ)",
        ),
        pa.Check(both(lambda c, r: c != r), error=f"{chosen} equals {rejected}"),
    ]


Reader = Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]]
_FIELDS = {
    "pair": PAIR_FIELDS,
    "chat": ("messages",),
    "text": ("text",),
    "preference": ("instruction", "chosen", "rejected"),
    "feedback": ("instruction", "output", "label"),
}


def _prompt_turns(value: Any, cmap: ColumnMap) -> tuple[list[dict[str, str]], str | None]:
    """A preference or feedback row's prompt as turns (none when absent), or the reason."""
    column = cmap.column("instruction")
    if value is None:
        return [], None
    if isinstance(value, str):
        if not value.strip():
            return [], f"{column}: is blank"
        return [{"role": "user", "content": value}], None
    turns, reason = convert_turns(value, cmap, "instruction")
    if reason or _turns(turns) is None:
        return [], reason or f"{column}: must be text or a list of {{role, content}} turns"
    return turns, None


def _answer_turns(
    prompt: list[dict[str, str]], value: Any, cmap: ColumnMap, field: str
) -> tuple[Any, str | None]:
    """One answer (chosen, rejected, a completion) as a whole conversation: the prompt's turns,
    then the answer, given as text (the assistant's turn) or as turns (the conversation's
    rest, or all of it when there is no prompt)."""
    if value is None:
        return None, None  # reported as missing
    if isinstance(value, str):
        if not value.strip():
            return value, f"{cmap.column(field)}: is empty"
        return [*prompt, {"role": "assistant", "content": value}], None
    if isinstance(value, list) and not value:
        return value, f"{cmap.column(field)}: is empty"
    turns, reason = convert_turns(value, cmap, field)
    return ([*prompt, *turns] if _turns(turns) is not None else turns), reason


def _label(value: Any) -> Any:
    """A feedback label as a bool: JSON's true/false, or the words in a CSV cell."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _reader(cmap: ColumnMap) -> Reader:
    """A function giving a row's values under tuneforge's field names, and a reason if its
    turns cannot be read. (Built once per file: it runs for every row.)"""
    kind = _kind(cmap)
    pairs = tuple((name, cmap.column(name)) for name in (*_FIELDS[kind], "task"))
    answers = {"preference": ("chosen", "rejected"), "feedback": ("output",)}.get(kind, ())

    def read(record: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        fields = {name: record.get(column) for name, column in pairs}
        if answers:
            prompt, reason = _prompt_turns(fields.pop("instruction"), cmap)
            for name in answers:
                fields[name], why = _answer_turns(prompt, fields[name], cmap, name)
                reason = reason or why
            if kind == "feedback":
                fields["label"] = _label(fields["label"])
            return fields, reason
        if kind != "chat":
            return fields, None
        messages = fields["messages"]
        if isinstance(messages, str):  # CSV cells carry turns as a JSON string
            # Undecodable text stays a string: the format check rejects it with a reason.
            with contextlib.suppress(ValueError):
                messages = parse_json(messages)
        fields["messages"], reason = convert_turns(messages, cmap)
        return fields, reason

    return read


def _failure_reasons(
    schema: pa.DataFrameSchema, frame: pd.DataFrame, cmap: ColumnMap
) -> dict[int, list[str]]:
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
            # A failure without a row (e.g. a missing column) is a bug in _fields, not bad data.
            raise RuntimeError(f"schema failure without a row: {column}: {error}")
        reason = f"{cmap.column(column)}: {error}" if ctx == "Column" else error
        row_reasons = reasons.setdefault(int(index), [])
        if reason not in row_reasons:  # frame-level checks are reported once per column
            row_reasons.append(reason)
    return reasons


class SeenKeys:
    """The first row of each record content kept so far, by a 128-bit digest of it: 24 bytes
    a row in three sorted arrays (a dict of digests takes ~150 bytes a row, 1.5 GB at 10M)."""

    def __init__(self) -> None:
        self.hi = np.empty(0, np.uint64)
        self.lo = np.empty(0, np.uint64)
        self.row = np.empty(0, np.int64)

    def first_rows(self, rows: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """For each candidate (row number, digest), the earlier row it repeats, or 0 when it
        is the first of its content (and is remembered)."""
        if not len(rows):
            return np.zeros(0, np.int64)
        order = np.lexsort((rows, digests[:, 1], digests[:, 0]))
        hi, lo, row = digests[order, 0], digests[order, 1], rows[order]
        new = np.ones(len(rows), bool)
        new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        leaders = np.flatnonzero(new)  # the lowest row of each content in this batch
        earlier = self._lookup(hi[leaders], lo[leaders])
        first = np.where(earlier > 0, earlier, row[leaders])[np.cumsum(new) - 1]
        fresh = leaders[earlier == 0]
        first[fresh] = 0
        result = np.empty(len(rows), np.int64)
        result[order] = first
        at = np.searchsorted(self.hi, hi[fresh])
        self.hi = np.insert(self.hi, at, hi[fresh])
        self.lo = np.insert(self.lo, at, lo[fresh])
        self.row = np.insert(self.row, at, row[fresh])
        return result

    def _lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hi), np.int64)
        at = np.searchsorted(self.hi, hi)
        for i in np.flatnonzero(at < len(self.hi)):
            j = at[i]
            while j < len(self.hi) and self.hi[j] == hi[i]:  # the same high half: rarely two
                if self.lo[j] == lo[i]:
                    found[i] = self.row[j]
                    break
                j += 1
        return found


def _content(record: dict[str, Any]) -> str:
    """What makes two records the same row: everything but the row number and the task
    (`columnar.accept` writes the same JSON for the rows it accepts)."""
    rest = {k: v for k, v in record.items() if k not in ("row", "task")}
    return json.dumps(rest, ensure_ascii=False, default=str)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"  # as JsonlWriter writes


@dataclass
class _Rules:
    """One file's rules, built once: its ColumnMap, the row-by-row reader and pandera schema,
    and the contents kept so far (duplicates are found across the whole file)."""

    cmap: ColumnMap
    max_chars: int
    seen: SeenKeys = field(default_factory=SeenKeys)

    def __post_init__(self) -> None:
        self.schema = build_schema(self.max_chars, self.cmap)
        self.read = _reader(self.cmap)
        self.kind = _kind(self.cmap)

    def task_ok(self, value: str) -> bool:
        return bool(value.strip()) and len(value) <= self.max_chars and _is_family_name(value)


@dataclass
class _Verdicts:
    """One chunk's verdicts: the valid records as JSON lines and the quarantine entries,
    each in row order."""

    lines: pyarrow.Array  # string, one line (ending in a newline) per valid row
    quarantine: list[dict[str, Any]]


def _judge(chunk: Chunk, rules: _Rules | None) -> _Verdicts:
    """Every row of the chunk judged: the rows `columnar.accept` certainly passes at column
    speed, the rest by the exact rules; then duplicates, in row order, across both."""
    empty = pyarrow.array([], pyarrow.string())
    if rules is None:  # no row parsed anywhere: every row is a parse error
        entries = [{"row": r.row, "reason": r.parse_error, "record": r.raw} for r in chunk.others]
        return _Verdicts(empty, entries)
    accepted = columnar.accept(
        chunk.table,
        chunk.rows,
        rules.cmap,
        rules.kind,
        rules.max_chars,
        rules.task_ok,
    )
    set_aside = [chunk.raw_row(int(i)) for i in np.flatnonzero(~accepted.mask)]
    exact = sorted(chunk.others + set_aside, key=lambda r: r.row)
    quarantine, records = [], []
    for r, record, entry in _judge_rows(exact, rules):
        if entry is not None:
            quarantine.append(entry)
        else:
            records.append((r, record))
    fast_rows = np.flatnonzero(accepted.mask)
    rows = np.concatenate([chunk.rows[fast_rows], [r.row for r, _ in records]]).astype(np.int64)
    contents = accepted.contents.cast(pyarrow.binary()).to_pylist()
    contents += [_content(rec).encode("utf-8") for _, rec in records]
    repeats = rules.seen.first_rows(rows, columnar.content_digests(contents))
    for i in np.flatnonzero(repeats):
        raw = (
            chunk.raw_row(int(fast_rows[i]))
            if i < len(fast_rows)
            else records[i - len(fast_rows)][0]
        )
        quarantine.append(
            {"row": raw.row, "reason": f"duplicate of row {repeats[i]}", "record": raw.record}
        )
    lines = pyarrow.concat_arrays(
        [accepted.lines, pyarrow.array([_line(rec) for _, rec in records], pyarrow.string())]
    )
    order = np.argsort(rows, kind="stable")
    lines = lines.take(pyarrow.array(order[repeats[order] == 0]))
    quarantine.sort(key=lambda e: e["row"])
    return _Verdicts(lines, quarantine)


def _judge_rows(
    chunk: list[RawRow], rules: _Rules
) -> list[tuple[RawRow, dict[str, Any] | None, dict[str, Any] | None]]:
    """Each row by the exact rules (pandera over the chunk): `(row, canonical record, None)`
    or `(row, None, quarantine entry)`, duplicates not yet looked for."""
    cmap = rules.cmap
    judged: list[tuple[RawRow, dict[str, Any] | None, dict[str, Any] | None]] = []
    checked: list[tuple[int, RawRow, dict[str, Any]]] = []
    for r in chunk:
        if r.record is None:
            judged.append((r, None, {"row": r.row, "reason": r.parse_error, "record": r.raw}))
            continue
        fields, reason = rules.read(r.record)
        reason = reason or _not_unicode(fields, cmap)
        if reason:
            judged.append((r, None, {"row": r.row, "reason": reason, "record": r.record}))
        else:
            judged.append((r, None, None))
            checked.append((len(judged) - 1, r, fields))
    reasons: dict[int, list[str]] = {}
    if checked:
        frame = pd.DataFrame(
            {
                name: pd.Series([f[name] for _, _, f in checked], dtype=object)
                for name in checked[0][2]
            }
        )
        reasons = _failure_reasons(rules.schema, frame, cmap)
    for position, (i, r, fields) in enumerate(checked):
        if position in reasons:
            entry = {"row": r.row, "reason": "; ".join(reasons[position]), "record": r.record}
            judged[i] = (r, None, entry)
        else:
            judged[i] = (r, canonical_record(r.row, fields), None)
    return judged


def _row_chunks(rows: Iterable[RawRow]) -> Iterator[Chunk]:
    """Rows from a row reader as chunks of `CHUNK` (nothing for Arrow to parse)."""
    rows = iter(rows)
    while chunk := list(islice(rows, CHUNK)):
        yield Chunk(pyarrow.table({}), np.empty(0, np.int64), chunk, _no_row)


def _no_row(i: int) -> RawRow:
    raise IndexError(i)  # a row-reader chunk has no Arrow rows


def _tally(columns: Columns, chunk: Chunk) -> None:
    for r in chunk.others:
        columns.add(r)
    columns.rows += chunk.table.num_rows
    columns.parsed += chunk.table.num_rows
    for name, count in chunk.counts.items():
        columns.found[name] = columns.found.get(name, 0) + count


def validate_rows(
    rows: list[RawRow],
    max_chars: int,
    cmap: ColumnMap | None = None,
    source: str = "the data",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits rows into canonical valid records and quarantine entries (each with a reason),
    both in row order. Without `cmap`, the schema is recognised from the rows (`auto`);
    raises `SchemaError` when it cannot be."""
    if cmap is None:
        cmap = resolve_rows(rows, source)
    rules = _Rules(cmap, max_chars) if cmap is not None else None
    valid: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    for chunk in _row_chunks(rows):
        verdicts = _judge(chunk, rules)
        valid += [json.loads(line) for line in verdicts.lines.to_pylist()]
        quarantine += verdicts.quarantine
    return valid, quarantine


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class _Outputs:
    """The valid and quarantine files, written chunk by chunk; the counts so far."""

    def __init__(self, valid_path: Path, quarantine_path: Path) -> None:
        self.valid_path, self.quarantine_path = valid_path, quarantine_path
        valid_path.parent.mkdir(parents=True, exist_ok=True)
        self._good = valid_path.open("wb")
        self._bad = JsonlWriter(quarantine_path)
        self.total = self.valid = 0

    def write(self, verdicts: _Verdicts) -> None:
        lines = verdicts.lines
        if len(lines):
            offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset)
            data = memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]
            self._good.write(data)
        for entry in verdicts.quarantine:
            self._bad.write(entry)
        self.valid += len(lines)
        self.total += len(lines) + len(verdicts.quarantine)

    def close(self) -> None:
        self._good.close()
        self._bad.__exit__(None, None, None)

    def report(self, cmap: ColumnMap | None) -> ValidationReport:
        return ValidationReport(
            total=self.total,
            valid=self.valid,
            rejected=self.total - self.valid,
            valid_path=str(self.valid_path),
            quarantine_path=str(self.quarantine_path),
            fingerprint=_sha256(self.valid_path)[:16],
            schema=cmap.schema if cmap else "none",
            columns=cmap.columns if cmap else {},
        )


def _validate_chunks(
    chunks: Callable[[], Iterable[Chunk]],
    max_chars: int,
    valid_path: Path,
    quarantine_path: Path,
    cmap: ColumnMap | None,
) -> ValidationReport:
    rules = _Rules(cmap, max_chars) if cmap is not None else None
    outputs = _Outputs(valid_path, quarantine_path)
    try:
        for chunk in chunks():
            outputs.write(_judge(chunk, rules))
    finally:
        outputs.close()
    return outputs.report(cmap)


def validate_file(
    rows: Callable[[], Iterable[RawRow]] | list[RawRow],
    max_chars: int,
    valid_path: Path,
    quarantine_path: Path,
    cmap: ColumnMap | None = None,
    source: str = "the data",
) -> ValidationReport:
    """Validates rows and writes both outputs as it goes; the quarantine file is written even
    when empty. `rows` is a list, or a function giving a fresh iterator of them (read twice:
    once for the columns, once to validate, so a file larger than memory never is in it)."""
    fresh = rows if callable(rows) else lambda: rows
    if cmap is None:
        cmap = resolve_rows(fresh(), source)
    return _validate_chunks(
        lambda: _row_chunks(fresh()), max_chars, valid_path, quarantine_path, cmap
    )


def _extends(earlier: ColumnMap, later: ColumnMap) -> bool:
    """Whether rows judged under `earlier` would be judged the same under `later`: the same
    schema, every column read into the same field (later may read columns first seen since)."""
    same = earlier.schema == later.schema and earlier.turns == later.turns
    return same and all(later.columns.get(f) == c for f, c in earlier.columns.items())


def validate_source(
    rows: Callable[[], Iterable[RawRow]],
    max_chars: int,
    valid_path: Path,
    quarantine_path: Path,
    source: str,
    schema: str = "auto",
    columns: dict[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> ValidationReport:
    """`validate_file` of rows straight from their source, reading it once in the usual case
    (see `_settled_pass`)."""
    chunks = lambda: _row_chunks(rows())  # noqa: E731
    return _settled_pass(
        chunks, max_chars, valid_path, quarantine_path, source, schema, columns, ignore
    )


def validate_path(
    source: str,
    max_chars: int,
    valid_path: Path,
    quarantine_path: Path,
    fmt: str = "auto",
    hf_split: str = "train",
    schema: str = "auto",
    columns: dict[str, str] | None = None,
    ignore: Iterable[str] = (),
    columnar_reading: bool = True,
    name: str | None = None,
) -> ValidationReport:
    """`validate_source` of a data source by name. JSONL and Parquet files are read straight
    into Arrow and their plain rows accepted at column speed (`tuneforge.data.columnar`);
    the verdicts are the row reader's, only sooner. `columnar_reading=False` reads row by row
    (the tests compare the two). Errors name the source as `name` (a run's copy of a file
    is named as the file it copied)."""
    fmt = detect_format(source, fmt)
    shown = name or source
    args = (max_chars, valid_path, quarantine_path, shown, schema, columns, ignore)
    try:
        if columnar_reading and fmt in ("jsonl", "parquet"):
            try:
                return _settled_pass(
                    lambda: columnar.read_chunks(Path(source), fmt), *args, exact_errors=True
                )
            except columnar.NotColumnar:
                pass  # the whole file's trouble: the row reader reads it and says what it is
        return validate_source(lambda: iter_rows(source, fmt, hf_split), *args)
    except DataLoadError as exc:
        if shown == source:
            raise
        raise DataLoadError(str(exc).replace(source, shown)) from None


def _settled_pass(
    chunks: Callable[[], Iterable[Chunk]],
    max_chars: int,
    valid_path: Path,
    quarantine_path: Path,
    source: str,
    schema: str = "auto",
    columns: dict[str, str] | None = None,
    ignore: Iterable[str] = (),
    exact_errors: bool = False,
) -> ValidationReport:
    """Each chunk is judged under the schema decided from the columns of every row read so
    far, which only grows by optional columns seen for the first time. Should a later chunk
    change that decision (or leave none), the source is read again under the decision all its
    columns give, or its `SchemaError` raised: the verdicts are always those of that one.
    `exact_errors`: the counts of a columnar tally are approximate (a key holding null is not
    counted), so a `SchemaError`, whose message shows counts, is `NotColumnar` instead."""
    ignore = tuple(ignore)
    tally = Columns()
    cmap: ColumnMap | None = None
    rules: _Rules | None = None
    settled = True
    outputs = _Outputs(valid_path, quarantine_path)
    try:
        for chunk in chunks():
            _tally(tally, chunk)
            if settled:
                try:
                    now = resolve_rows(tally, source, schema, columns, ignore)
                except SchemaError:
                    now = None
                    settled = False  # decided, if at all, by the whole file: read on, count
                if settled and cmap is not None and (now is None or not _extends(cmap, now)):
                    settled = False
            if not settled:
                continue
            if now is not None and now != cmap:  # the rows kept so far stay kept
                cmap = now
                rules = _Rules(cmap, max_chars, rules.seen if rules else SeenKeys())
            outputs.write(_judge(chunk, rules))
    finally:
        outputs.close()
    if settled:
        return outputs.report(cmap)
    # Rare: the first rows did not tell; the whole file does (or raises).
    try:
        final = resolve_rows(tally, source, schema, columns, ignore)
    except SchemaError:
        if exact_errors:
            raise columnar.NotColumnar(source) from None
        raise
    return _validate_chunks(chunks, max_chars, valid_path, quarantine_path, final)


def check_rejected_fraction(report: ValidationReport, limit: float, source: str) -> None:
    if report.rejected_fraction > limit:
        raise TooManyRejectedError(
            f"{source}: {report.rejected} of {report.total} rows rejected "
            f"({report.rejected_fraction:.1%}), above data.max_rejected_fraction={limit:.1%}; "
            f"reasons in {report.quarantine_path}"
        )
