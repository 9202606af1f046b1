"""Training examples and how they become batches: the types and functions both the training
loop and the strategies (built-in and plugins) use, with no dependency on either.

An `Example` is one tokenized record; `labels[i] == IGNORE_INDEX` means token i carries no loss.
`collate` right-pads examples into a batch; `audit_examples` refuses examples the loss would
silently mistreat before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # label value the causal-LM loss skips


@dataclass(frozen=True)
class Example:
    """One tokenized training example; `labels[i] == IGNORE_INDEX` means token i is not trained."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        labels = self.labels if isinstance(self.labels, list) else list(self.labels)
        return len(labels) - labels.count(IGNORE_INDEX)


@dataclass(frozen=True)
class MaskAudit:
    """What the loss will see, counted before the first step."""

    examples: int
    truncated: int  # examples that lost their tail (and end-of-sequence token) to max_length
    trained_tokens: int  # tokens with a label, over all examples
    masked_tokens: int  # tokens without one (prompt tokens for response-only strategies)


def audit_examples(
    examples: list[Example], rows: list[int], eos_id: int, max_length: int
) -> MaskAudit:
    """Refuses examples the loss would silently mistreat; counts the rest.

    Every example must keep a trained token after truncation, and every example that was not
    truncated must train its end-of-sequence token (or the model never learns to stop).
    """
    counts = [e.trained_tokens for e in examples]
    empty = [row for row, n in zip(rows, counts, strict=True) if not n]
    if empty:
        raise ValueError(
            f"{len(empty)} examples have no trained token after truncation to "
            f"train.max_length={max_length} (rows {empty[:5]}); raise train.max_length"
        )
    truncated = 0
    for row, e in zip(rows, examples, strict=True):
        if e.labels[-1] == eos_id:
            continue
        if len(e.input_ids) >= max_length:
            truncated += 1
            continue
        raise ValueError(f"row {row}: the end-of-sequence token is not trained (strategy bug)")
    trained = sum(counts)
    total = sum(len(e.input_ids) for e in examples)
    return MaskAudit(len(examples), truncated, trained, total - trained)


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pads a batch to its longest example; padding is masked and never trained.

    `[Example([5, 6, 2], [-100, 6, 2]), Example([7, 2], [7, 2])]` with `pad_id=0` gives
    `input_ids [[5, 6, 2], [7, 2, 0]]`, `labels [[-100, 6, 2], [7, 2, -100]]` and
    `attention_mask [[1, 1, 1], [1, 1, 0]]`, as long tensors.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Groups items (by index) into bins of at most `capacity` total length, best fit in
    decreasing length: few bins, each nearly full. Deterministic; every index appears in exactly
    one bin, in ascending index order within it. An item longer than `capacity` gets a bin of
    its own.

    `pack([5, 3, 4, 2], 7)` gives `[[0, 3], [1, 2]]` (5 + 2 and 3 + 4).
    """
    import bisect

    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, bin) for bins that have space, sorted
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))  # the fullest bin that still fits it
        if at < len(room):
            left, b = room.pop(at)
            bins[b].append(i)
            left -= n
        else:
            b, left = len(bins), capacity - n
            bins.append([i])
        if left > 0:
            bisect.insort(room, (left, b))
    return [sorted(b) for b in bins]
