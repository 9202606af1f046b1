"""Tests for tasks/split_data.py: a content-hashed, seed-stable train/eval split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.splitting import split_records
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.tasks.split_data import split_dataset

TASKS = ("add", "reverse", "sort", "antonym")


def _records(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "row": i + 1,
            "task": TASKS[i % len(TASKS)],
            "messages": [
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": str(i + 1)},
            ],
        }
        for i in range(start, start + n)
    ]


def _eval_rows(records: list[dict], seed: int, fraction: float = 0.2) -> list[int]:
    _, evaluation = split_records(records, fraction, seed, [])
    return [r["row"] for r in evaluation]


def test_split_is_deterministic_for_a_seed_and_keeps_source_order():
    records = _records(300)

    first = split_records(records, 0.2, 7, [])
    second = split_records(records, 0.2, 7, [])

    assert first == second
    train, evaluation = first
    assert len(train) + len(evaluation) == len(records)
    assert [r["row"] for r in train] == sorted(r["row"] for r in train)
    assert {r["row"] for r in train}.isdisjoint(r["row"] for r in evaluation)


def test_eval_fraction_is_roughly_respected():
    _, evaluation = split_records(_records(1000), 0.2, 0, [])

    assert 150 <= len(evaluation) <= 250


def test_different_seeds_give_different_splits():
    records = _records(300)

    assert _eval_rows(records, seed=0) != _eval_rows(records, seed=1)


def test_rows_keep_their_side_when_new_rows_are_added():
    old = _records(200)
    grown = old + _records(200, start=200)

    old_eval = set(_eval_rows(old, seed=3))
    grown_eval = set(_eval_rows(grown, seed=3))

    assert old_eval  # the check below would be vacuous otherwise
    assert {row for row in grown_eval if row <= 200} == old_eval


def test_side_depends_on_content_not_position():
    records = _records(200)

    assert set(_eval_rows(records, seed=5)) == set(_eval_rows(records[::-1], seed=5))


def test_holdout_tasks_go_entirely_to_eval():
    records = _records(200)

    train, evaluation = split_records(records, 0.2, 0, ["reverse", "sort"])

    assert all(r["task"] not in {"reverse", "sort"} for r in train)
    held = [r for r in records if r["task"] in {"reverse", "sort"}]
    assert all(r in evaluation for r in held)
    assert any(r["task"] == "add" for r in evaluation)  # the usual split still applies


def test_split_dataset_writes_both_sides_beside_the_valid_file(tmp_path):
    records = _records(100)
    valid_path = tmp_path / "valid.jsonl"
    write_jsonl(records, valid_path)

    data = DataConfig(path="data.jsonl", eval_fraction=0.25, seed=0, holdout_tasks=["antonym"])
    paths = split_dataset.fn(valid_path=str(valid_path), data=data)

    assert Path(paths.train_path) == tmp_path / "train.jsonl"
    assert Path(paths.eval_path) == tmp_path / "eval.jsonl"
    train, evaluation = read_jsonl(paths.train_path), read_jsonl(paths.eval_path)
    assert (paths.train_rows, paths.eval_rows) == (len(train), len(evaluation))
    assert (train, evaluation) == split_records(records, 0.25, 0, ["antonym"])
    assert sorted(json.dumps(r) for r in train + evaluation) == sorted(
        json.dumps(r) for r in records
    )


@pytest.mark.parametrize(
    ("fraction", "holdout", "empty_side"),
    [(0.0, [], "eval=0"), (1.0, [], "train=0"), (0.2, list(TASKS), "train=0")],
)
def test_split_dataset_refuses_an_empty_side(tmp_path, fraction, holdout, empty_side):
    valid_path = tmp_path / "valid.jsonl"
    write_jsonl(_records(20), valid_path)

    # The config refuses eval_fraction 0 and 1 already; the task must refuse them too.
    data = DataConfig.model_construct(
        path="data.jsonl", eval_fraction=fraction, seed=0, holdout_tasks=holdout
    )
    with pytest.raises(ValueError, match="split of 20 valid rows") as info:
        split_dataset.fn(valid_path=str(valid_path), data=data)

    assert empty_side in str(info.value)
    assert str(valid_path) in str(info.value)
    assert not (tmp_path / "train.jsonl").exists()


def test_unknown_holdout_task_is_named():
    from tuneforge.data.splitting import split_records

    records = [{"row": 1, "task": "add", "messages": [{"role": "user", "content": "q"}]}]
    with pytest.raises(ValueError, match=r"data\.holdout_tasks: \['nope'\] not among"):
        split_records(records, 0.2, 0, ["nope"])


def test_the_streamed_split_writes_what_split_records_gives(tmp_path):
    from tuneforge.data.splitting import split_file

    records = _records(500)
    write_jsonl(records, tmp_path / "valid.jsonl")

    counts = split_file(
        tmp_path / "valid.jsonl", tmp_path / "t.jsonl", tmp_path / "e.jsonl", 0.2, 4, ["sort"]
    )

    train, evaluation = split_records(records, 0.2, 4, ["sort"])
    write_jsonl(train, tmp_path / "t2.jsonl")
    write_jsonl(evaluation, tmp_path / "e2.jsonl")
    assert counts == (len(train), len(evaluation))
    assert (tmp_path / "t.jsonl").read_bytes() == (tmp_path / "t2.jsonl").read_bytes()
    assert (tmp_path / "e.jsonl").read_bytes() == (tmp_path / "e2.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"\['nope'\] not among the task families"):
        split_file(
            tmp_path / "valid.jsonl", tmp_path / "t.jsonl", tmp_path / "e.jsonl", 0.2, 4, ["nope"]
        )
    assert not (tmp_path / "t.jsonl").exists()  # no half-made split left behind
