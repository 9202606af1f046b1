"""Tests for tuneforge/preference_data.py: the committed preference and feedback data are exactly
what the generator makes, and every rejected answer is a near miss of the right one."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.preference_data import (
    KINDS,
    feedback_rows,
    preference_rows,
    write_preferences,
)
from tuneforge.prompts import instruction_prompt
from tuneforge.sample_data import FAMILIES, generate_rows

DATA = Path(__file__).resolve().parents[1] / "data"
PREFERENCES = DATA / "preferences.jsonl"
FEEDBACK = DATA / "feedback.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _kind(chosen: str, rejected: str) -> str | None:
    """Which near miss `rejected` is, judged only by comparing it with `chosen`."""
    if rejected != chosen and rejected.lower() == chosen.lower():
        return "case"
    numbers = chosen.lstrip("-").isdigit() and rejected.lstrip("-").isdigit()
    if numbers and abs(int(chosen) - int(rejected)) == 1:
        return "off_by_one"
    if chosen.startswith(rejected) and len(rejected) < len(chosen):
        return "truncated"
    if chosen in rejected and len(rejected.split()) > len(chosen.split()):
        return "chatty"
    if rejected != chosen and sorted(rejected.split()) == sorted(chosen.split()):
        return "order"
    return None


@pytest.mark.parametrize(
    ("path", "feedback"), [(PREFERENCES, False), (FEEDBACK, True)], ids=["pairs", "feedback"]
)
def test_committed_files_are_exactly_what_the_cli_writes(tmp_path, path, feedback):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    out = tmp_path / "nested" / path.name
    flag = "--feedback" if feedback else "--preferences"
    done = CliRunner().invoke(app, ["sample-data", str(out), flag])

    assert done.exit_code == 0, done.output
    assert out.read_bytes() == path.read_bytes()
    assert write_preferences(tmp_path / "again.jsonl", feedback=feedback) == len(_rows(path))
    assert path.stat().st_size < 200_000


def test_pairs_are_shaped_and_rejected_is_a_near_miss_never_the_answer():
    rows = _rows(PREFERENCES)
    expected = list(generate_rows(100, 0))

    assert len(rows) == len(expected)
    for row, source in zip(rows, expected, strict=True):
        assert set(row) == {"prompt", "chosen", "rejected", "task"}
        assert all(isinstance(v, str) and v.strip() for v in row.values())
        assert row["prompt"] == instruction_prompt(source["instruction"], source["input"])
        assert (row["chosen"], row["task"]) == (source["output"], source["task"])
        assert row["rejected"] != row["chosen"]
        assert _kind(row["chosen"], row["rejected"]) in KINDS, row


def test_every_family_and_every_kind_is_present_and_kinds_are_spread():
    rows = _rows(PREFERENCES)
    kinds = Counter(_kind(r["chosen"], r["rejected"]) for r in rows)

    assert {r["task"] for r in rows} == set(FAMILIES)
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= len(rows) / len(KINDS) / 2, kinds
    sort_kinds = {_kind(r["chosen"], r["rejected"]) for r in rows if r["task"] == "sort"}
    assert "order" in sort_kinds


def test_feedback_is_unpaired_with_both_labels_and_no_duplicates():
    rows = _rows(FEEDBACK)
    pairs = {r["prompt"]: r for r in _rows(PREFERENCES)}
    labels = Counter(r["label"] for r in rows)

    assert set(labels) == {True, False}
    assert labels[True] == len(pairs)  # every right answer, labelled true
    assert 0.3 * len(pairs) <= labels[False] <= 0.7 * len(pairs)  # about half the near misses
    keys = [(r["prompt"], r["completion"]) for r in rows]
    assert len(keys) == len(set(keys))
    for row in rows:
        assert set(row) == {"prompt", "completion", "label", "task"}
        pair = pairs[row["prompt"]]
        assert row["task"] == pair["task"]
        assert row["completion"] == (pair["chosen"] if row["label"] else pair["rejected"])
    assert {r["task"] for r in rows if not r["label"]} == set(FAMILIES)


def test_generators_are_seeded():
    first = preference_rows(10, seed=1)

    assert first == preference_rows(10, seed=1)
    assert first != preference_rows(10, seed=2)
    assert len(first) == 10 * len(FAMILIES)
    assert feedback_rows(10, seed=1) == feedback_rows(10, seed=1)
    assert feedback_rows(10, seed=1) != feedback_rows(10, seed=2)
    for seed in range(5):
        for row in preference_rows(20, seed):
            assert row["rejected"].strip() and row["rejected"] != row["chosen"]
