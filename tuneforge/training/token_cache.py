"""Tokenized training examples, written once as memory-mapped Arrow and reused while nothing
that shapes them changed.

A nightly retrain on unchanged data tokenizes the same rows the same way every night. Here the
examples of a run are written to `<cache root>/<key>/examples.arrow` (the `datasets` library's
Arrow format: `input_ids`, `labels`, and each example's `length` and `trained` token counts),
keyed by a hash of everything that shapes them:

- the training records (their content, as the checkpoint resume key hashes them);
- the tokenizer (its serialized vocabulary, merges, normalizer and added tokens) and chat
  template;
- the strategy and its settings (e.g. the instruction templates), `train.max_length` and
  `train.assistant_turns`.

Change any of them and the key changes: the examples are built again (old entries are left
for `tuneforge`'s output directory's owner to delete; each is about the size of its tokens).
A hit memory-maps the file: the examples are read from the page cache a batch at a time, so
the training process does not hold every example as Python lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.batching import IGNORE_INDEX, Example, MaskAudit

FILE = "examples.arrow"
META = "meta.json"
WRITE_BATCH = 10_000  # examples per Arrow record batch while writing


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What in a tokenizer decides its token ids: its serialized state (fast tokenizers) or
    vocabulary, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    extra = {
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256((state + json.dumps(extra, sort_keys=True)).encode()).hexdigest()


def cache_key(data: str, tokenizer: Any, shaping: dict[str, Any]) -> str:
    """The cache entry's name: `data` (the records' hash), the tokenizer's fingerprint and the
    settings that shape the examples, hashed together."""
    blob = json.dumps(
        {"data": data, "tokenizer": tokenizer_fingerprint(tokenizer), "shaping": shaping},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ArrowExamples(Sequence[Example]):
    """Examples read from a memory-mapped Arrow file, one `Example` per index; `lengths` and
    `trained` (tokens that carry loss after the first position) as arrays, read once."""

    def __init__(self, path: Path) -> None:
        from datasets import Dataset

        self.dataset = Dataset.from_file(str(path))  # memory-mapped, not read into memory
        table = self.dataset.data  # the Arrow table: columns to numpy without Python ints
        self.lengths = table.column("length").to_numpy().astype(np.int64)
        self.trained = table.column("trained").to_numpy().astype(np.int64)
        self._tokens = self.dataset.with_format("numpy", columns=["input_ids", "labels"])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        row = self._tokens[int(index)]
        return Example(row["input_ids"].tolist(), row["labels"].tolist())


@dataclass(frozen=True)
class Cached:
    examples: ArrowExamples
    audit: MaskAudit
    hit: bool  # reused (True) or built now (False)


def load_or_build(
    root: Path,
    key: str,
    build: Callable[[], Iterable[tuple[int, Example]]],
    audit: Callable[[list[Example], list[int]], MaskAudit],
) -> Cached:
    """The cached examples under `root/key`, or, when there are none, `build()`'s (row,
    example) pairs written there first, a batch at a time (checked by `audit` batch by batch,
    its counts summed) and then memory-mapped. A half-written entry (a crash) is never read:
    the entry is moved into place only once complete."""
    entry = root / key
    if _complete(entry):
        meta = json.loads((entry / META).read_text())
        return Cached(ArrowExamples(entry / FILE), MaskAudit(**meta["audit"]), hit=True)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    total = _write(partial / FILE, _batches(build(), audit))
    (partial / META).write_text(json.dumps({"audit": asdict(total)}))
    if entry.exists() and not _complete(entry):  # left by a writer that died: never read
        shutil.rmtree(entry, ignore_errors=True)
    try:
        partial.rename(entry)
    except OSError:  # another process wrote the same entry first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
    return Cached(ArrowExamples(entry / FILE), total, hit=False)


def _complete(entry: Path) -> bool:
    """Whether an entry was finished: its metadata is written last, into the partial entry
    that is then moved into place whole."""
    return (entry / META).exists() and (entry / FILE).exists()


def _batches(
    pairs: Iterable[tuple[int, Example]], audit: Callable[[list[Example], list[int]], MaskAudit]
) -> Iterator[tuple[list[Example], MaskAudit]]:
    rows: list[int] = []
    examples: list[Example] = []
    for row, example in pairs:
        rows.append(row)
        examples.append(example)
        if len(examples) == WRITE_BATCH:
            yield examples, audit(examples, rows)
            rows, examples = [], []
    if examples:
        yield examples, audit(examples, rows)


def _write(path: Path, batches: Iterator[tuple[list[Example], MaskAudit]]) -> MaskAudit:
    import pyarrow as pa
    from datasets import Features, Value
    from datasets import Sequence as Feature
    from datasets.arrow_writer import ArrowWriter

    features = Features(
        {
            "input_ids": Feature(Value("int32")),
            "labels": Feature(Value("int32")),
            "length": Value("int32"),
            "trained": Value("int32"),
        }
    )
    total = MaskAudit(0, 0, 0, 0)
    with ArrowWriter(features=features, path=str(path)) as writer:
        for examples, audit in batches:
            writer.write_table(
                pa.table(
                    {
                        "input_ids": [e.input_ids for e in examples],
                        "labels": [e.labels for e in examples],
                        "length": [len(e.input_ids) for e in examples],
                        "trained": [_trained_after_first(e) for e in examples],
                    },
                    schema=features.arrow_schema,
                )
            )
            total = _summed(total, audit)
        writer.finalize()
    return total


def _trained_after_first(example: Example) -> int:
    """Tokens that carry loss after the first position (the causal shift never trains it)."""
    first_trained = len(example.labels) > 0 and example.labels[0] != IGNORE_INDEX
    return example.trained_tokens - int(first_trained)


def _summed(a: MaskAudit, b: MaskAudit) -> MaskAudit:
    return MaskAudit(*(x + y for x, y in zip(asdict(a).values(), asdict(b).values(), strict=True)))
