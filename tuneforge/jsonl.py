"""JSON Lines files: one JSON object per line, UTF-8, the format every step hands on."""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

# 19 digits in a row: maybe an integer past 64 bits, which orjson reads as a float (an
# integer of up to 18 digits always fits).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads(line: bytes) -> Any:
    """One JSON document, as `json.loads` reads it: by orjson (several times sooner), or by
    `json` for what orjson refuses or reads otherwise (NaN, lone surrogates, integers past 64
    bits), so the result never depends on which parser read it."""
    if _LONG_DIGITS.search(line):
        return json.loads(line.decode("utf-8"))
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line.decode("utf-8"))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a block builds millions of objects (parsed
    records, tokenized examples): it would otherwise walk every live object again and again as
    they pile up (at a million records, more time than the parsing). Records and examples hold
    no reference cycles: reference counting frees them as before."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every object in the file, one at a time, blank lines skipped."""
    with Path(path).open("rb") as f:
        for line in f:
            if line.strip():
                yield loads(line)


def read_jsonl_sample(path: str | Path, at_most: int) -> list[dict[str, Any]]:
    """At most `at_most` objects spread evenly over the file (every k-th line from the first):
    all of them when it has no more lines than that."""
    with Path(path).open("rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    step = max(1, -(-lines // at_most))
    with Path(path).open("rb") as f, gc_paused():
        return [loads(line) for i, line in enumerate(f) if i % step == 0 and line.strip()]


class JsonlRecords:
    """The objects of a JSON Lines file, read again each time they are iterated and never all
    held: training tokenizes a million records a batch at a time from one of these (as Python
    dicts they take about 1 KB each)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_jsonl(self.path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every object in the file, blank lines skipped."""
    with gc_paused():
        return list(iter_jsonl(path))


class JsonlWriter:
    """Writes objects one per line as they come, creating the directory; non-JSON values as
    strings. A context manager: the file is complete when the block ends."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A quarantined record may hold a lone surrogate; as `\ud800` it stays the same JSON
        # string.
        self._file = path.open("w", encoding="utf-8", errors="backslashreplace")

    def write(self, item: Any) -> None:
        self._file.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._file.close()


def write_jsonl(items: Iterable[Any], path: str | Path) -> None:
    """Writes `items` one per line, creating the directory; non-JSON values as strings."""
    with JsonlWriter(path) as writer:
        for item in items:
            writer.write(item)
