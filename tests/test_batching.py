"""Packing blocks of raw text into rows (`tuneforge.batching.pack`), as `pretrain` trains."""

from __future__ import annotations

import random

import pytest

from tuneforge.batching import pack


def test_pack_fills_rows_best_fit_and_keeps_every_item_once():
    assert pack([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]
    assert pack([10, 1, 1], 4) == [[0], [1, 2]]  # too long for any row: a row of its own
    assert pack([], 5) == []


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_rows_are_full_and_within_capacity(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 128) for _ in range(3000)]
    rows = pack(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    # Best fit decreasing on uniform lengths: within a few percent of the lower bound.
    assert len(rows) <= 1.03 * sum(lengths) / 128 + 1


def test_trained_tokens_are_counted_in_any_sequence_a_strategy_builds():
    import numpy as np

    from tuneforge.batching import IGNORE_INDEX, Example
    from tuneforge.training.token_cache import _trained_after_first

    labels = [IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX, 2]
    for built in (labels, tuple(labels), np.array(labels)):
        assert Example(list(range(6)), built).trained_tokens == 3
        assert _trained_after_first(Example(list(range(6)), built)) == 3
    assert _trained_after_first(Example([1, 2, 3], [5, IGNORE_INDEX, 6])) == 1  # not position 0
