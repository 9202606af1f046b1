"""JSONL and Parquet files read straight into Arrow, and the rows that certainly pass
validation accepted by column operations: validation at file speed.

The rules live in `validation` (row by row, with pandera). This module only *accepts*: a row is
accepted here when column operations show it meets every rule with room to spare (text with a
visible character, within the length limit, turns well formed, a task family whose exact check
passed). At the least doubt a row is read by the row reader (`reading.jsonl_row`,
`reading.parquet_row`) and judged by those rules instead, so which rows are quarantined, and
why, is the row-by-row path's by construction; `tests/data/test_columnar.py` compares the two
on every bad-input case. Accepted rows are written as JSON by string operations, byte for byte
what `JsonlWriter` writes of their canonical record.

A JSONL line goes the row-by-row way before parsing when it does not start with `{`, or holds
what pyarrow reads but tuneforge refuses (NaN or Infinity, an escaped lone surrogate, deep
nesting); and after, when pyarrow's reader refuses it (a repeated key, a value whose type is not
its column's in the rows before it: the error names the row, which is set aside and the rest
parsed on). Conditions of the whole file (not UTF-8, NUL bytes, a UTF-16 file, nothing parsed)
raise `NotColumnar`: the row reader then reads the file and raises its own one-line error.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tuneforge.data.reading import RawRow, jsonl_row, parquet_row
from tuneforge.data_schemas import ColumnMap

BLOCK = 16 << 20  # bytes of JSONL per chunk (~80,000 rows of instruction data)
PARQUET_BATCH = 65_536
# A character Python's str.strip() never removes: a text holding one is not blank. (Checked
# over every code point: no letter, number, punctuation or symbol is whitespace to Python.)
_GLYPH = r"[\pL\pN\pP\pS]"
# Control characters JSON writes as \u00XX or \b, \f: rare; their rows go the row-by-row way,
# so the writer here only escapes backslash, quote, newline, carriage return and tab.
_ODD_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_ROW_LINE = r"^[ \t]*\{"
_BLANK_LINE = r"^[ \t\r\n]*$"
# What pyarrow reads and `reading.parse_json` refuses (or may): NaN/Infinity, escaped
# surrogates, nesting near MAX_DEPTH. False alarms only cost the row-by-row path.
_REFUSED = r"NaN|Infinity|\\u[dD][89a-fA-F]"
_NESTING = 48
_ERROR_ROW = re.compile(r" in row (\d+)")
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 and UTF-32 byte-order marks start so
_UTF8_BOM = b"\xef\xbb\xbf"

__all__ = ["Accepted", "Chunk", "NotColumnar", "accept", "content_digests", "read_chunks"]


class NotColumnar(Exception):
    """The file must be read row by row (its trouble is the whole file's, not a row's)."""


@dataclass
class Chunk:
    """A stretch of a file: the rows Arrow parsed (`table`, numbered by `rows`) and the rest
    (`others`, read by the row reader); together every row of the stretch once."""

    table: pa.Table
    rows: np.ndarray  # int64: each table row's number in the file
    others: list[RawRow]
    raw_row: Callable[[int], RawRow]  # table row i as the row reader reads it
    counts: dict[str, int] = field(default_factory=dict)  # column -> table rows with a value


def read_chunks(path: Path, fmt: str) -> Iterator[Chunk]:
    """The file's rows in chunks; raises `NotColumnar` (possibly midway) as the module says."""
    if fmt == "jsonl":
        return _jsonl_chunks(path)
    if fmt == "parquet":
        return _parquet_chunks(path)
    raise NotColumnar(fmt)


def _jsonl_chunks(path: Path) -> Iterator[Chunk]:
    try:
        f = path.open("rb")
    except OSError:
        raise NotColumnar(str(path)) from None
    with f:
        head = f.read(4)
        if head.startswith(_WIDE_BOMS):
            raise NotColumnar("UTF-16/32")
        f.seek(len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0)  # utf-8-sig, as read
        carry, first, parsed = b"", 1, False
        while True:
            data = f.read(BLOCK)
            buf = carry + data
            end = len(buf) if not data else buf.rfind(b"\n") + 1
            if end:
                chunk = _jsonl_chunk(buf[:end], first)
                parsed = parsed or chunk.table.num_rows > 0
                parsed = parsed or any(r.record is not None for r in chunk.others)
                yield chunk
                first += buf.count(b"\n", 0, end)
            carry = buf[end:]
            if not data:
                break
    if not parsed:  # empty, or not JSONL at all: the row reader says which, in one line
        raise NotColumnar(str(path))


def _jsonl_chunk(part: bytes, first: int) -> Chunk:
    if b"\x00" in part:
        raise NotColumnar("NUL bytes")
    if not part.endswith(b"\n"):
        part += b"\n"
    ends = np.flatnonzero(np.frombuffer(part, np.uint8) == 10)
    offsets = np.concatenate([[0], ends + 1]).astype(np.int32)
    lines = pa.Array.from_buffers(
        pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(part)]
    )
    try:
        text = lines.cast(pa.string())  # validates UTF-8
    except pa.ArrowInvalid:
        raise NotColumnar("not UTF-8") from None
    numbers = np.arange(first, first + len(ends), dtype=np.int64)
    blank = _mask(pc.match_substring_regex(text, _BLANK_LINE))
    simple = _mask(pc.match_substring_regex(text, _ROW_LINE))
    simple &= ~_mask(pc.match_substring_regex(text, _REFUSED))
    simple &= np.asarray(pc.count_substring_regex(text, r"[\[{]")) <= _NESTING
    candidates = np.flatnonzero(simple)
    table, kept = _parse(lines, candidates)
    by_reader = np.setdiff1d(np.flatnonzero(~blank), kept, assume_unique=True)
    others = [
        jsonl_row(int(numbers[i]), part[offsets[i] : offsets[i + 1]].decode()) for i in by_reader
    ]
    counts = {
        name: len(column) - column.null_count
        for name, column in zip(table.column_names, table.columns, strict=True)
    }

    def raw_row(i: int) -> RawRow:
        k = kept[i]
        row = jsonl_row(int(numbers[k]), part[offsets[k] : offsets[k + 1]].decode())
        assert row is not None
        return row

    return Chunk(table, numbers[kept], [r for r in others if r is not None], raw_row, counts)


def _parse(lines: pa.Array, candidates: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The candidate lines pyarrow parses, and which those are: a line it refuses is set aside
    (its index is in the error) and parsing goes on after it."""
    import pyarrow.json as pj

    tables, kept, start = [], [], 0
    while start < len(candidates):
        segment = candidates[start:]
        data = _joined(lines.take(pa.array(segment)))
        options = pj.ReadOptions(block_size=len(data) + 1, use_threads=False)  # one block
        try:
            table = pj.read_json(io.BytesIO(data), read_options=options)
        except pa.ArrowInvalid as exc:
            where = _ERROR_ROW.search(str(exc))
            if where is None:
                break
            bad = int(where.group(1))
            if bad:  # the rows before it parsed: parse them alone
                table, indices = _parse(lines, segment[:bad])
                tables.append(table)
                kept.append(indices)
            start += bad + 1
            continue
        if table.num_rows != len(segment):  # two objects on a line: leave it to the reader
            break
        tables.append(table)
        kept.append(segment)
        break
    return _concat(tables, kept)


def _concat(tables: list[pa.Table], kept: list[np.ndarray]) -> tuple[pa.Table, np.ndarray]:
    parts = [(t, k) for t, k in zip(tables, kept, strict=True) if len(k)]
    if not parts:
        return pa.table({}), np.empty(0, np.int64)
    joined, rows = parts[0][0], [parts[0][1]]
    for table, indices in parts[1:]:
        try:
            joined = pa.concat_tables([joined, table], promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            continue  # a column's type differs between the parts: those rows go row by row
        rows.append(indices)
    return joined, np.concatenate(rows)


def _joined(lines: pa.Array) -> bytes:
    """The lines' bytes end to end (each keeps its newline)."""
    offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def _parquet_chunks(path: Path) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            raise NotColumnar("no rows")
        row = 1
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
            table = pa.Table.from_batches([batch])
            numbers = np.arange(row, row + table.num_rows, dtype=np.int64)

            def raw_row(i: int, table: pa.Table = table, numbers: np.ndarray = numbers) -> RawRow:
                return parquet_row(int(numbers[i]), table.slice(i, 1).to_pylist()[0])

            counts = dict.fromkeys(table.column_names, table.num_rows)  # every row has each
            yield Chunk(table, numbers, [], raw_row, counts)
            row += table.num_rows
    except NotColumnar:
        raise
    except Exception:  # unreadable midway: the row reader names the row
        raise NotColumnar(str(path)) from None


# Acceptance and writing


@dataclass
class Accepted:
    """The accepted rows of a chunk's table (`mask`), each as its canonical record's JSON line
    and the part of it that makes two records the same row (everything but row and task)."""

    mask: np.ndarray
    lines: pa.Array  # string, each ending in a newline
    contents: pa.Array  # string


def accept(
    table: pa.Table,
    rows: np.ndarray,
    cmap: ColumnMap,
    kind: str,
    max_chars: int,
    task_ok: Callable[[str], bool],
) -> Accepted:
    """The rows of `table` that certainly pass, written out. `kind` is validation's (pair,
    chat or text; others accept nothing); `task_ok` is the exact rule for a task family name,
    run once per distinct name."""
    n = table.num_rows
    rules = {"pair": _pair, "chat": _chat, "text": _text}
    if kind not in rules or n == 0:
        return Accepted(np.zeros(n, bool), pa.array([], pa.string()), pa.array([], pa.string()))
    mask, body = rules[kind](table, cmap, max_chars)
    task = _column(table, cmap.column("task"))
    mask &= _task_mask(task, n, task_ok)
    if not mask.any():
        return Accepted(mask, pa.array([], pa.string()), pa.array([], pa.string()))
    picked = pa.array(np.flatnonzero(mask))
    body = body(table.take(picked))
    task_json = "null" if task is None else _json_or_null(task.take(picked))
    numbers = pa.array(rows[mask]).cast(pa.string())
    lines = pc.binary_join_element_wise(
        '{"row": ', numbers, ', "task": ', task_json, ", ", body, "}\n", ""
    )
    return Accepted(mask, lines, pc.binary_join_element_wise("{", body, "}", ""))


def content_digests(contents: list[bytes]) -> np.ndarray:
    """A 128-bit digest of each record's content, as pairs of uint64 (duplicates share one)."""
    digests = b"".join(hashlib.blake2b(c, digest_size=16).digest() for c in contents)
    return np.frombuffer(digests, np.uint64).reshape(-1, 2)


Body = Callable[[pa.Table], pa.Array]


def _pair(table: pa.Table, cmap: ColumnMap, max_chars: int) -> tuple[np.ndarray, Body]:
    names = {f: cmap.column(f) for f in ("instruction", "input", "output")}
    n = table.num_rows
    instruction, output = _column(table, names["instruction"]), _column(table, names["output"])
    ok = _text_ok(instruction, n, max_chars) & _text_ok(output, n, max_chars)
    given = _column(table, names["input"])
    if given is not None and pa.types.is_string(given.type):
        # instruction_prompt reads an input with a visible character, and drops an empty one
        ok &= _is_null(given) | (
            _text_ok(given, n, max_chars, glyph=False)
            & (_mask(pc.match_substring_regex(given, _GLYPH)) | _mask(pc.equal(given, "")))
        )
    elif given is not None:
        ok &= _is_null(given)

    def body(t: pa.Table) -> pa.Array:
        instruction, output = _column(t, names["instruction"]), _column(t, names["output"])
        given = _column(t, names["input"])
        user = instruction
        if given is not None and pa.types.is_string(
            given.type
        ):  # instruction_prompt: the input after a blank line, if any
            used = pc.fill_null(pc.match_substring_regex(given, _GLYPH), False)
            both = pc.binary_join_element_wise(instruction, given, "\n\n")
            user = pc.if_else(used, both, instruction)
        return pc.binary_join_element_wise(
            '"messages": [{"role": "user", "content": ',
            _json_string(user),
            '}, {"role": "assistant", "content": ',
            _json_string(output),
            "}]",
            "",
        )

    return ok, body


def _chat(table: pa.Table, cmap: ColumnMap, max_chars: int) -> tuple[np.ndarray, Body]:
    n = table.num_rows
    name = cmap.column("messages")
    role_key, text_key, roles = cmap.turns or ("role", "content", {r: r for r in _ROLES})
    messages = _column(table, name)
    nothing = (np.zeros(n, bool), lambda t: pa.array([], pa.string()))
    if messages is None or not pa.types.is_list(messages.type):
        return nothing
    turn_type = messages.type.value_type
    if not pa.types.is_struct(turn_type):
        return nothing
    keys = {turn_type.field(i).name for i in range(turn_type.num_fields)}
    if not {role_key, text_key} <= keys or (cmap.turns is not None and len(keys) > 2):
        return nothing  # a turn's other keys are an error under a turn mapping: row by row
    turns = messages.flatten()
    role = _roles(turns.field(role_key), roles)
    good = _is_valid(role) & _text_ok(_as_string(turns.field(text_key)), len(turns), max_chars)
    lengths = np.diff(np.asarray(messages.offsets))
    parent = np.repeat(np.arange(n), lengths)
    ok = _is_valid(messages) & (lengths > 0)
    ok &= np.bincount(parent, weights=~good, minlength=n) == 0
    for needed in ("user", "assistant"):
        ok &= np.bincount(parent, weights=_mask(pc.equal(role, needed)), minlength=n) > 0
    last = np.cumsum(lengths) - 1
    is_assistant = _mask(pc.equal(role, "assistant"))
    ok &= np.where(lengths > 0, is_assistant[np.maximum(last, 0)], False)

    def body(t: pa.Table) -> pa.Array:
        messages = _column(t, name)
        turns = messages.flatten()
        text = _json_string(_as_string(turns.field(text_key)))
        written = pc.binary_join_element_wise(
            '{"role": "', _roles(turns.field(role_key), roles), '", "content": ', text, "}", ""
        )
        offsets = np.asarray(messages.offsets)
        listed = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), written)
        joined = pc.binary_join(listed, ", ")
        return pc.binary_join_element_wise('"messages": [', joined, "]", "")

    return ok, body


def _text(table: pa.Table, cmap: ColumnMap, max_chars: int) -> tuple[np.ndarray, Body]:
    name = cmap.column("text")
    # No length limit: a document is split into train.max_length blocks, never cut.
    ok = _text_ok(_column(table, name), table.num_rows, None)

    def body(t: pa.Table) -> pa.Array:
        return pc.binary_join_element_wise('"text": ', _json_string(_column(t, name)), "")

    return ok, body


_ROLES = ("system", "user", "assistant")


def _roles(values: pa.Array, roles: dict[str, str]) -> pa.Array:
    """Each turn's canonical role, null where the file's role is not one tuneforge reads."""
    if not pa.types.is_string(values.type):
        return pa.nulls(len(values), pa.string())
    names = list(roles)
    return pc.take(
        pa.array([roles[r] for r in names], pa.string()), pc.index_in(values, pa.array(names))
    )


def _column(table: pa.Table, name: str) -> pa.Array | None:
    if name not in table.column_names:
        return None
    column = table.column(name).combine_chunks()
    return _as_string(column)


def _as_string(column: pa.Array) -> pa.Array:
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        return column.cast(pa.string())
    if pa.types.is_large_list(column.type):
        return column.cast(pa.list_(column.type.value_type))
    return column


def _text_ok(
    column: pa.Array | None, n: int, max_chars: int | None, glyph: bool = True
) -> np.ndarray:
    """Rows whose value is text that certainly passes: not blank (when `glyph`), at most
    `max_chars` long, no control character the writer leaves to the row path."""
    if column is None or not pa.types.is_string(column.type):
        return np.zeros(n, bool)
    ok = _is_valid(column) & ~_mask(pc.match_substring_regex(column, _ODD_CONTROL))
    if glyph:
        ok &= _mask(pc.match_substring_regex(column, _GLYPH))
    if max_chars is not None:
        ok &= _mask(pc.less_equal(pc.utf8_length(column), max_chars))
    return ok


def _task_mask(task: pa.Array | None, n: int, task_ok: Callable[[str], bool]) -> np.ndarray:
    if task is None:
        return np.ones(n, bool)
    if not pa.types.is_string(task.type):
        return _is_null(task)
    names = [v for v in pc.unique(task).to_pylist() if v is not None]
    good = pa.array(
        [v for v in names if task_ok(v) and not re.search(_ODD_CONTROL, v)], pa.string()
    )
    return _is_null(task) | _mask(pc.is_in(task, good))


def _json_string(values: pa.Array) -> pa.Array:
    """Each text as a JSON string, as json.dumps(ensure_ascii=False) writes it (for text
    without the control characters `_ODD_CONTROL` names)."""
    for old, new in _ESCAPES:
        has = pc.fill_null(pc.match_substring(values, old), False)
        if pc.any(has).as_py():
            values = pc.replace_with_mask(
                values, has, pc.replace_substring(values.filter(has), old, new)
            )
    return pc.binary_join_element_wise('"', values, '"', "")


def _json_or_null(values: pa.Array) -> pa.Array:
    if not pa.types.is_string(values.type):  # accepted rows hold null there (a null column)
        return pa.array(["null"] * len(values), pa.string())
    return pc.fill_null(_json_string(values), "null")


def _mask(result: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(result, False), dtype=bool)


def _is_valid(values: pa.Array) -> np.ndarray:
    return np.asarray(values.is_valid(), dtype=bool)


def _is_null(values: pa.Array) -> np.ndarray:
    return np.asarray(values.is_null(), dtype=bool)
