"""Tests for tuneforge/flan_mini.py: the committed corpus is what the generator writes, and it
keeps the promises the FLAN-in-miniature measurement rests on."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.flan_mini import FAMILIES, HELD_OUT, SEEN, UNSEEN, write_flan_mini

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "flan-mini"
EVAL_ONLY = {*HELD_OUT, "new_phrasing", "new_fact"}


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLED / name).read_text("utf-8").splitlines()]


def test_committed_corpus_is_exactly_what_the_generator_writes(tmp_path):
    counts = write_flan_mini(tmp_path)
    for name, n in counts.items():
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes(), name
        assert n == len(_rows(name))


def test_prose_states_every_fact_and_asks_nothing():
    prose = " ".join(r["text"] for r in _rows("prose.jsonl")).lower()
    for rel, facts in FAMILIES.values():
        for x, y in facts.items():
            assert f"the {rel} of {x} is {y}.".lower() in prose, (rel, x)
    stems = {p.split("{", 1)[0].strip().lower() for p in SEEN + UNSEEN}
    assert "?" not in prose and not any(f"{stem} the" in prose for stem in stems)


def test_only_held_in_families_train_and_eval_rows_are_shared_by_both_files():
    many, one = _rows("instructions.jsonl"), _rows("instructions-one-phrasing.jsonl")
    for rows in (many, one):
        trained = {r["task"] for r in rows} - EVAL_ONLY
        assert trained == set(FAMILIES) - set(HELD_OUT)
    assert [r for r in many if r["task"] in EVAL_ONLY] == [r for r in one if r["task"] in EVAL_ONLY]
    phrasings = {r["instruction"].split(" the ", 1)[0] for r in one if r["task"] not in EVAL_ONLY}
    assert phrasings == {"What is"}  # one phrasing, the first of SEEN
    # No phrasing tagged new_phrasing is used by any training row.
    unseen = {r["instruction"] for r in many if r["task"] == "new_phrasing"}
    assert not unseen & {r["instruction"] for r in many if r["task"] not in EVAL_ONLY}
