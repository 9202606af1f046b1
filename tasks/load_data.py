"""Load a dataset into numbered raw rows: JSONL, JSON (Alpaca-style array), CSV, Parquet, or a
Hugging Face `datasets` name.

Row numbers are 1-based positions in the source (for JSONL, the line number), so a quarantine
entry points at the exact place to fix. A row that cannot even be parsed (a malformed JSONL
line, an array element that is not an object) is kept as a `RawRow` with a `parse_error`, for
validation to quarantine; a source that is unusable as a whole (missing, empty, undecodable,
not the format) raises `DataLoadError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
_SUFFIXES |= {".parquet": "parquet", ".pq": "parquet"}


class DataLoadError(ValueError):
    """The source is unusable as a whole; the message is one line naming it."""


@dataclass(frozen=True)
class RawRow:
    row: int  # 1-based position in the source
    record: dict[str, Any] | None  # None when the row could not be parsed
    raw: str | None = None  # the unparsed text, kept so the quarantine loses nothing
    parse_error: str | None = None


def detect_format(source: str, fmt: str = "auto") -> str:
    """Picks the reader: an explicit `fmt`, `hf:` prefix, file suffix, or a directory (hf)."""
    if fmt != "auto":
        return fmt
    if source.startswith("hf:"):
        return "hf"
    path = Path(source)
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise DataLoadError(
        f"{source}: cannot tell the format from the name; pass --format ({', '.join(FORMATS)})"
    )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataLoadError(f"{path}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read ({exc.strerror})") from None
    if b"\x00" in data:
        raise DataLoadError(f"{path}: binary data (NUL bytes), not a text file")
    try:
        text = data.decode("utf-8-sig")  # -sig: a leading byte-order mark is not data
    except UnicodeDecodeError as exc:
        raise DataLoadError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    if not text.strip():
        raise DataLoadError(f"{path}: file is empty")
    return text


def _read_jsonl(path: Path) -> list[RawRow]:
    rows = []
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and friends, which JSON
    # strings may legally contain unescaped.
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue  # blank lines hold no data; numbering still follows the file
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(RawRow(lineno, None, raw=line, parse_error=f"invalid JSON: {exc.msg}"))
            continue
        if isinstance(value, dict):
            rows.append(RawRow(lineno, value))
        else:
            error = f"not a JSON object (got {type(value).__name__})"
            rows.append(RawRow(lineno, None, raw=line, parse_error=error))
    if rows and all(r.record is None for r in rows):
        raise DataLoadError(f"{path}: no line is a JSON object; is this JSONL?")
    return rows


def _read_json(path: Path) -> list[RawRow]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataLoadError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]  # some exports wrap the rows
    if not isinstance(value, list):
        raise DataLoadError(f"{path}: expected a JSON array of rows, got {type(value).__name__}")
    if not value:
        raise DataLoadError(f"{path}: the JSON array is empty")
    rows = []
    for i, item in enumerate(value, start=1):
        if isinstance(item, dict):
            rows.append(RawRow(i, item))
        else:
            error = f"not a JSON object (got {type(item).__name__})"
            rows.append(RawRow(i, None, raw=json.dumps(item), parse_error=error))
    return rows


def _plain(value: Any) -> Any:
    """Converts pandas/numpy/arrow values to plain JSON-able Python values."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rows_from_frame(frame: Any) -> list[RawRow]:
    records = frame.to_dict(orient="records")
    return [RawRow(i, {k: _plain(v) for k, v in rec.items()}) for i, rec in enumerate(records, 1)]


def _read_csv(path: Path) -> list[RawRow]:
    """Rows are numbered by the file line they start on (the header is line 1), like a text
    editor shows them; a quoted cell may span lines."""
    import csv
    import io

    csv.field_size_limit(2**26)  # enormous cells are quarantined by length, not crashed on
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        if not reader.fieldnames:
            raise DataLoadError(f"{path}: CSV has no header row")
        rows = []
        start = reader.line_num + 1
        for rec in reader:
            extra = rec.pop(None, None)  # cells beyond the header
            if extra:
                raw = json.dumps(rec | {"_extra": extra})
                rows.append(
                    RawRow(start, None, raw=raw, parse_error="more cells than header columns")
                )
            else:
                # CSV has no null: an empty cell means "no value", as a missing key does in JSON.
                rows.append(RawRow(start, {k: (v if v != "" else None) for k, v in rec.items()}))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataLoadError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise DataLoadError(f"{path}: CSV has a header but no rows")
    return rows


def _read_parquet(path: Path) -> list[RawRow]:
    import pandas as pd

    if not path.exists():
        raise DataLoadError(f"{path}: file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataLoadError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    if frame.empty:
        raise DataLoadError(f"{path}: Parquet file has no rows")
    return _rows_from_frame(frame)


def _read_hf(source: str, split: str) -> list[RawRow]:
    """A Hugging Face `datasets` name (hub id, or a local dataset directory)."""
    import datasets

    name = source.removeprefix("hf:")
    try:
        if (Path(name) / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk output
            dataset = datasets.load_from_disk(name)[split]
        elif (Path(name) / "state.json").is_file():  # Dataset.save_to_disk output
            dataset = datasets.load_from_disk(name)
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # hub, network and format errors all mean "unusable"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataLoadError(f"{source}: cannot load dataset split {split!r}: {message}") from None
    if len(dataset) == 0:
        raise DataLoadError(f"{source}: dataset split {split!r} has no rows")
    return [RawRow(i, _plain(dict(rec))) for i, rec in enumerate(dataset, start=1)]


def read_rows(source: str, fmt: str = "auto", hf_split: str = "train") -> list[RawRow]:
    """Reads every row of `source`; see the module docstring for the error contract."""
    fmt = detect_format(source, fmt)
    if fmt == "hf":
        return _read_hf(source, hf_split)
    path = Path(source)
    if path.is_dir():
        raise DataLoadError(f"{path}: is a directory; use format hf for a dataset directory")
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}
    readers["parquet"] = _read_parquet
    if fmt not in readers:
        raise DataLoadError(f"{source}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return readers[fmt](path)


def write_raw_rows(rows: list[RawRow], path: Path) -> None:
    """Persists loaded rows as JSONL so the next task gets a path, not a live object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.__dict__, ensure_ascii=False, default=str) + "\n")


def read_raw_rows(path: Path) -> list[RawRow]:
    with path.open(encoding="utf-8") as f:
        return [RawRow(**json.loads(line)) for line in f]


@task(name="load_dataset")
def load_dataset(source: str, fmt: str, hf_split: str, out_dir: str) -> str:
    """Reads the dataset and stores its numbered rows as `loaded.jsonl` in `out_dir`."""
    rows = read_rows(source, fmt, hf_split)
    path = Path(out_dir) / "loaded.jsonl"
    write_raw_rows(rows, path)
    return str(path)
