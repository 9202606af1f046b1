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
import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tuneforge.errors import first_line

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
_BINARY = (
    "binary data (NUL bytes), not a text file "
    "(UTF-16/UTF-32 text needs a byte-order mark; better, save it as UTF-8)"
)
_BLOCK = 1 << 20


class _NoNul(io.RawIOBase):
    """A binary file that refuses NUL bytes as it is read (UTF-8 text never has them)."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self._f, self._path = f, path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)
        if n and b"\x00" in memoryview(buffer)[:n].tobytes():
            raise DataLoadError(f"{self._path}: {_BINARY}")
        return n or 0


def _bad_utf8(path: Path) -> DataLoadError:
    """Where a file stops being UTF-8: found by reading it again, block by block."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                byte = block[exc.start]
                where = offset + exc.start
                line = lines + block.count(b"\n", 0, exc.start) + 1
                return DataLoadError(
                    f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {where}, "
                    f"line {line}); save it as UTF-8"
                )
            offset += len(block)
            lines += block.count(b"\n")
    return DataLoadError(f"{path}: not UTF-8 text (it ends inside a character); save it as UTF-8")


@contextmanager
def _open_text(path: Path, newline: str) -> Iterator[TextIO]:
    """Opens a data file as text, streaming: UTF-8 (a leading byte-order mark is not data), or
    UTF-16/32 with a byte-order mark. Unusable files raise `DataLoadError` naming them, also
    midway (NUL bytes, bytes that are not UTF-8)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataLoadError(f"{path}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read ({exc.strerror})") from None
    with f:
        head = f.read(4)
        f.seek(0)
        wide = next((enc for bom, enc in _WIDE_BOMS if head.startswith(bom)), None)
        raw: BinaryIO = f if wide else io.BufferedReader(_NoNul(f, path), _BLOCK)
        text = io.TextIOWrapper(raw, encoding=wide or "utf-8-sig", newline=newline)
        try:
            yield text
        except UnicodeDecodeError:
            if wide:
                raise DataLoadError(
                    f"{path}: starts with a {wide} byte-order mark but is not {wide}"
                ) from None
            raise _bad_utf8(path) from None
        finally:
            text.detach()


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
    if isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values()):
        return 2 if value else 1  # the usual row, flat: no walk needed
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


def jsonl_row(lineno: int, line: str) -> RawRow | None:
    """One JSONL line (its line ending included or not) as a row, or None when it is blank."""
    # A BOM mid-file comes from concatenating files that each had one; never data.
    line = line.removesuffix("\n").removesuffix("\r").removeprefix("\ufeff")
    if not line.strip():
        return None
    try:
        value = parse_json(line)
    except ValueError as exc:
        return RawRow(lineno, None, raw=line, parse_error=str(exc))
    if not isinstance(value, dict):
        error = f"not a JSON object (got {type(value).__name__})"
        return RawRow(lineno, None, raw=line, parse_error=error)
    return RawRow(lineno, value)


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    parsed = blank = True  # no line yet: parsed=no line parsed; blank=nothing but blanks
    first_error: RawRow | None = None
    # Lines end at "\n" only (newline="\n"): U+2028 and friends may appear unescaped in JSON
    # strings, and are not line breaks here.
    with _open_text(path, newline="\n") as text:
        for lineno, line in enumerate(text, start=1):
            row = jsonl_row(lineno, line)
            if row is None:
                continue  # blank lines hold no data; numbering still follows the file
            blank = False
            if row.record is None:
                first_error = first_error or row
            else:
                parsed = False
            yield row
    if blank:
        raise DataLoadError(f"{path}: file is empty")
    if parsed and first_error is not None:  # every line failed: not JSONL at all
        raise DataLoadError(
            f"{path}: no line is a JSON object (line {first_error.row}: "
            f"{first_error.parse_error}); is this JSONL?"
        )


def _read_text(path: Path) -> str:
    with _open_text(path, newline="") as text:
        content = text.read()
    if not content.strip():
        raise DataLoadError(f"{path}: file is empty")
    return content


def _read_json(path: Path) -> list[RawRow]:
    content = _read_text(path)
    try:
        value = parse_json(content)
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


def _iter_csv(path: Path) -> Iterator[RawRow]:
    """Rows are numbered by the file line they start on (the header is line 1), like a text
    editor shows them; a quoted cell may span lines. A row with more or fewer cells than the
    header is quarantined whole: which cell belongs to which column is a guess."""
    import csv

    csv.field_size_limit(2**26)  # enormous cells are quarantined by length, not crashed on
    with _open_text(path, newline="") as text:
        reader = csv.reader(text, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataLoadError(f"{path}: file is empty")
            if not any(h.strip() for h in header):
                raise DataLoadError(f"{path}: CSV has no header row")
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataLoadError(f"{path}: CSV header repeats column {repeated[0]!r}")
            start = reader.line_num + 1
            empty = True
            for cells in reader:
                if cells:  # a blank line holds no row
                    empty = False
                    yield _csv_row(start, header, cells)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataLoadError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if empty:
        raise DataLoadError(f"{path}: CSV has a header but no rows")


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


def parquet_row(row: int, rec: dict[str, Any]) -> RawRow:
    """One Parquet row (pyarrow's `to_pylist` of it) as a row of plain values."""
    return RawRow(row, {str(k): _plain(v) for k, v in rec.items()})


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    """Read in Arrow record batches: memory holds one batch, not the file."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataLoadError(f"{path}: file not found")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataLoadError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    if parquet.metadata.num_rows == 0:
        raise DataLoadError(f"{path}: Parquet file has no rows")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                yield parquet_row(row, rec)
    except DataLoadError:
        raise
    except Exception as exc:  # a corrupt page midway
        raise DataLoadError(
            f"{path}: not a readable Parquet file after row {row} ({type(exc).__name__})"
        ) from None


def _iter_hf(source: str, split: str) -> Iterator[RawRow]:
    """A Hugging Face `datasets` name (hub id, or a local dataset directory). Datasets are
    memory-mapped Arrow files: rows are read one at a time."""
    dataset = _hf_dataset(source, split)
    if len(dataset) == 0:
        raise DataLoadError(f"{source}: dataset split {split!r} has no rows")
    for i, rec in enumerate(dataset, start=1):
        yield RawRow(i, _plain(dict(rec)))


def _hf_dataset(source: str, split: str, streaming: bool = False) -> Any:
    """A Hugging Face `datasets` name (hub id, or a local dataset directory) as a Dataset (or an
    IterableDataset, `streaming`). Raises DataLoadError naming it."""
    import datasets

    name = source.removeprefix("hf:")
    try:
        if (Path(name) / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk output
            return datasets.load_from_disk(name)[split]
        if (Path(name) / "state.json").is_file():  # Dataset.save_to_disk output
            return datasets.load_from_disk(name)
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as exc:  # hub, network and format errors all mean "unusable"
        message = first_line(exc)
        raise DataLoadError(f"{source}: cannot load dataset split {split!r}: {message}") from None


HF_BATCH = 10_000  # rows of a datasets split per Parquet write: memory holds one batch


def snapshot(
    source: str, fmt: str, hf_split: str, directory: Path, hf_streaming: bool = False
) -> Path:
    """The source as it is now, copied into `directory` as `source.<format>`, for a run to
    read while the original may change: a file byte for byte; a `datasets` split as Parquet,
    written a batch at a time (a streamed split is never held whole). Raises DataLoadError
    naming the source; what is wrong inside a file is found when it is read."""
    import shutil

    fmt = detect_format(source, fmt)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        return _hf_snapshot(source, hf_split, directory / "source.parquet", hf_streaming)
    path = Path(source)
    if fmt not in FORMATS:
        raise DataLoadError(f"{source}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if path.is_dir():
        raise DataLoadError(f"{path}: is a directory; use format hf for a dataset directory")
    target = directory / f"source.{fmt}"
    try:
        shutil.copyfile(path, target)
    except FileNotFoundError:
        raise DataLoadError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read ({exc.strerror})") from None
    return target


def _hf_snapshot(source: str, split: str, target: Path, streaming: bool) -> Path:
    import pyarrow.parquet as pq

    dataset = _hf_dataset(source, split, streaming)
    partial = target.with_name(target.name + ".partial")
    writer = None
    try:
        for table in dataset.with_format("arrow").iter(batch_size=HF_BATCH):
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema)
            writer.write_table(table.cast(writer.schema))
    except DataLoadError:
        raise
    except Exception as exc:  # a stream that breaks midway, rows whose types change
        raise DataLoadError(f"{source}: cannot read split {split!r}: {first_line(exc)}") from None
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise DataLoadError(f"{source}: dataset split {split!r} has no rows")
    partial.replace(target)
    return target


def iter_rows(source: str, fmt: str = "auto", hf_split: str = "train") -> Iterator[RawRow]:
    """Every row of `source`, one at a time (a JSON array is read whole; the other formats
    stream). Errors follow the module docstring; an unusable file may raise after some rows."""
    fmt = detect_format(source, fmt)
    if fmt == "hf":
        return _iter_hf(source, hf_split)
    path = Path(source)
    if path.is_dir():
        raise DataLoadError(f"{path}: is a directory; use format hf for a dataset directory")
    readers = {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}
    readers["json"] = lambda p: iter(_read_json(p))
    if fmt not in readers:
        raise DataLoadError(f"{source}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return readers[fmt](path)


def read_rows(source: str, fmt: str = "auto", hf_split: str = "train") -> list[RawRow]:
    """Reads every row of `source`; see the module docstring for the error contract."""
    return list(iter_rows(source, fmt, hf_split))


@dataclass
class Columns:
    """What loaded rows hold: how many rows, how many parsed, and each column (a key of a
    parsed row) with the number of rows that have it. Counted while the rows are written, so
    that validation need not read them an extra time to pick the schema."""

    rows: int = 0
    parsed: int = 0
    found: dict[str, int] = field(default_factory=dict)

    def add(self, row: RawRow) -> None:
        self.rows += 1
        if row.record is not None:
            self.parsed += 1
            for key in row.record:
                self.found[key] = self.found.get(key, 0) + 1
