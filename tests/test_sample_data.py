"""Tests for tuneforge/sample_data.py: the committed dataset is exactly what the generator makes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tuneforge.sample_data import FAMILIES, generate_rows, write_sample

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "instructions.jsonl"


def _bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]


def test_committed_data_is_exactly_what_write_sample_produces(tmp_path):
    path = tmp_path / "nested" / "instructions.jsonl"

    n = write_sample(path)

    assert path.read_bytes() == BUNDLED.read_bytes()
    assert n == len(_bundled_rows())


def test_every_family_is_present_with_several_phrasings():
    phrasings = defaultdict(set)
    for row in _bundled_rows():
        phrasings[row["task"]].add(row["instruction"])

    assert set(phrasings) == set(FAMILIES)
    for task, used in phrasings.items():
        assert len(used) >= 3, task
        assert used <= set(FAMILIES[task][0]), task


def test_no_duplicate_instruction_input_pairs():
    pairs = [(row["instruction"], row["input"]) for row in _bundled_rows()]

    assert len(pairs) == len(set(pairs))


def test_rows_are_alpaca_shaped_and_capped_per_family():
    rows = _bundled_rows()
    counts = defaultdict(int)
    for row in rows:
        assert set(row) == {"instruction", "input", "output", "task"}
        assert all(isinstance(v, str) and v.strip() for v in row.values())
        counts[row["task"]] += 1

    assert max(counts.values()) == 300
    assert counts["antonym"] < 300  # only 30 words x 4 phrasings exist


def test_generator_is_seeded():
    first = list(generate_rows(20, seed=1))

    assert first == list(generate_rows(20, seed=1))
    assert first != list(generate_rows(20, seed=2))
    assert len(first) == 20 * len(FAMILIES)


def test_the_arithmetic_domain_is_what_its_generator_makes_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    path = tmp_path / "arithmetic.jsonl"
    done = CliRunner().invoke(app, ["sample-data", str(path), "--arithmetic"])
    assert done.exit_code == 0, done.output
    assert path.read_bytes() == (BUNDLED.parent / "arithmetic.jsonl").read_bytes()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["task"] for r in rows} == {"add", "subtract"} and len(rows) == 1200
    for row in rows:
        a, op, b = row["input"].split()
        assert int(row["output"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
