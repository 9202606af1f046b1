"""Load a dataset into numbered raw rows: JSONL, JSON (Alpaca-style array), CSV, Parquet, or a
Hugging Face `datasets` name.

Row numbers are 1-based positions in the source (for JSONL, the line number), so a quarantine
entry points at the exact place to fix. A row that cannot even be parsed (a malformed JSONL
line, an array element that is not an object) is kept as a `RawRow` with a `parse_error`, for
validation to quarantine; a source that is unusable as a whole (missing, empty, undecodable,
not the format) raises `DataLoadError` with a one-line message naming the file.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge.config import DataConfig
from tuneforge.run_context import RunContext

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


# A byte-order mark makes UTF-16 and UTF-32 unambiguous (Windows "Unicode text" exports), so
# such files are decoded; without one, their NUL bytes read as binary data.
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(path: Path, data: bytes) -> str:
    for bom, encoding in _WIDE_BOMS:  # UTF-32 first: its LE mark starts with UTF-16's
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                raise DataLoadError(
                    f"{path}: starts with a {encoding} byte-order mark but is not {encoding}"
                ) from None
    if b"\x00" in data:
        raise DataLoadError(
            f"{path}: binary data (NUL bytes), not a text file "
            "(UTF-16/UTF-32 text needs a byte-order mark; better, save it as UTF-8)"
        )
    try:
        return data.decode("utf-8-sig")  # -sig: a leading byte-order mark is not data
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataLoadError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
            f"line {line}); save it as UTF-8"
        ) from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataLoadError(f"{path}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read ({exc.strerror})") from None
    text = _decode(path, data)
    if not text.strip():
        raise DataLoadError(f"{path}: file is empty")
    return text


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        # json.loads would keep the last value silently; which one the author meant is unknown.
        repeated = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {repeated!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; JSON does not


# A row is a few levels deep (messages -> turn -> text). Far deeper values are garbage, and
# later steps (pandera, json.dumps) would hit Python's recursion limit on them.
MAX_DEPTH = 64


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:  # iterative: a recursive walk would fail on the very values it looks for
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON: raises ValueError (one line) for invalid JSON, duplicate keys, NaN or
    Infinity, numbers with thousands of digits, and values nested deeper than `max_depth`."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if "\n" in text else f"column {exc.colno}"
        raise ValueError(f"invalid JSON: {exc.msg} at {where}") from None
    except RecursionError:
        raise ValueError(f"invalid JSON: nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # the hooks above, or int() refusing thousands of digits
        message = str(exc).split(";")[0]  # drop int()'s advice to raise a global limit
        raise ValueError(f"invalid JSON: {message}") from None
    if _depth(value) > max_depth:
        raise ValueError(f"invalid JSON: nested deeper than {max_depth} levels")
    return value


def _read_jsonl(path: Path) -> list[RawRow]:
    rows = []
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and friends, which JSON
    # strings may legally contain unescaped.
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        # A BOM mid-file comes from concatenating files that each had one; it is never data.
        line = line.removesuffix("\r").removeprefix("\ufeff")
        if not line.strip():
            continue  # blank lines hold no data; numbering still follows the file
        try:
            value = parse_json(line)
        except ValueError as exc:
            rows.append(RawRow(lineno, None, raw=line, parse_error=str(exc)))
            continue
        if isinstance(value, dict):
            rows.append(RawRow(lineno, value))
        else:
            error = f"not a JSON object (got {type(value).__name__})"
            rows.append(RawRow(lineno, None, raw=line, parse_error=error))
    if rows and all(r.record is None for r in rows):
        first = rows[0]
        raise DataLoadError(
            f"{path}: no line is a JSON object (line {first.row}: {first.parse_error}); "
            "is this JSONL?"
        )
    return rows


def _read_json(path: Path) -> list[RawRow]:
    try:
        value = parse_json(_read_text(path))
    except ValueError as exc:  # one bad value spoils the whole array: no row to blame
        raise DataLoadError(f"{path}: {exc}") from None
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
    editor shows them; a quoted cell may span lines. A row with more or fewer cells than the
    header is quarantined whole: which cell belongs to which column is a guess."""
    import csv
    import io

    csv.field_size_limit(2**26)  # enormous cells are quarantined by length, not crashed on
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataLoadError(f"{path}: CSV has no header row")
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise DataLoadError(f"{path}: CSV header repeats column {repeated[0]!r}")
        rows = []
        start = reader.line_num + 1
        for cells in reader:
            if cells:  # a blank line holds no row
                rows.append(_csv_row(start, header, cells))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataLoadError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise DataLoadError(f"{path}: CSV has a header but no rows")
    return rows


def _csv_row(row: int, header: list[str], cells: list[str]) -> RawRow:
    if len(cells) != len(header):
        more = "more" if len(cells) > len(header) else "fewer"
        record: dict[str, Any] = dict(zip(header, cells, strict=False))
        if len(cells) > len(header):
            record["_extra"] = cells[len(header) :]
        raw = json.dumps(record, ensure_ascii=False)
        error = f"{more} cells than header columns ({len(cells)} for {len(header)})"
        return RawRow(row, None, raw=raw, parse_error=error)
    # CSV has no null: an empty cell means "no value", as a missing key does in JSON.
    return RawRow(row, {k: (v if v != "" else None) for k, v in zip(header, cells, strict=True)})


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
    # backslashreplace: a lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8,
    # but written as `\ud800` inside a JSON string it is the same escape, read back as is.
    with path.open("w", encoding="utf-8", errors="backslashreplace") as f:
        for r in rows:
            f.write(json.dumps(r.__dict__, ensure_ascii=False, default=str) + "\n")


def read_raw_rows(path: Path) -> list[RawRow]:
    with path.open(encoding="utf-8") as f:
        return [RawRow(**json.loads(line)) for line in f]


@task(name="load_dataset")
def load_dataset(*, data: DataConfig, ctx: RunContext) -> str:
    """Reads `data.path` and stores its numbered rows as `data/loaded.jsonl` in the run
    directory; returns that path."""
    rows = read_rows(data.path, data.format, data.hf_split)
    path = Path(ctx.path("data", "loaded.jsonl"))
    write_raw_rows(rows, path)
    return str(path)
