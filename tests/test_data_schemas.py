"""Dataset schemas and column maps (tuneforge/data_schemas.py): every schema in every file
format validates to the same canonical records, `auto` names what it picked, and a column
nothing reads is refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge.data.reading import read_rows
from tuneforge.data.validation import resolve_rows, validate_rows
from tuneforge.data_schemas import SCHEMAS, SchemaError, resolve_columns

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
ROLE_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


def as_schema(name: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical records written the way a file in schema `name` holds them."""
    rows = []
    for rec in records:
        turns, task = rec["messages"], rec.get("task")
        prompt, answer = turns[0]["content"], turns[-1]["content"]
        instruction, _, context = prompt.partition("\n\n")
        if name == "alpaca":
            row = {"instruction": instruction, "input": context, "output": answer, "task": task}
        elif name == "dolly":
            row = {"instruction": instruction, "context": context, "response": answer}
            row["category"] = task
        elif name == "prompt_completion":
            row = {"prompt": prompt, "completion": answer, "task": task}
        elif name == "openai":
            row = {"messages": turns, "task": task}
        elif name == "sharegpt":
            conversation = [{"from": ROLE_NAMES[t["role"]], "value": t["content"]} for t in turns]
            row = {"conversations": conversation, "task": task}
        elif name == "preference":
            row = {"prompt": prompt, "chosen": answer, "rejected": f"{answer}?", "task": task}
        elif name == "feedback":
            row = {"prompt": prompt, "completion": answer, "label": True, "task": task}
        else:
            row = {"text": f"{prompt}\n{answer}", "task": task}
        rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path, fmt: str) -> Path:
    """`rows` as a file (or `datasets` directory) of format `fmt` at `path`."""
    import pandas as pd

    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "csv":  # nested turns go in a cell as JSON text, as spreadsheets export them
        flat = [
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows
        ]
        pd.DataFrame(flat).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def records(bundled_records):
    # Two families and distinct rows: the prompts and answers differ in every schema.
    return [r for r in bundled_records if r["task"] in ("add", "antonym")][:30]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_every_schema_in_every_format_validates_to_the_same_records(records, tmp_path, schema, fmt):
    rows = as_schema(schema, records)
    path = write_rows(rows, tmp_path / f"data.{fmt}", fmt)

    loaded = read_rows(str(path))
    cmap = resolve_rows(loaded, str(path))
    valid, rejected = validate_rows(loaded, 2000, cmap)

    assert cmap is not None and (cmap.schema, cmap.detected) == (schema, True)
    assert rejected == []
    assert [v["task"] for v in valid] == [r["task"] for r in records]
    if schema == "text":
        assert [v["text"] for v in valid] == [r["text"] for r in rows]
    else:
        assert [v["messages"] for v in valid] == [r["messages"] for r in records]
    if schema == "preference":  # the chosen answer ends the messages; the rejected one beside
        assert [v["rejected"] for v in valid] == [r["rejected"] for r in rows]
    if schema == "feedback":  # CSV's "True" is read as the label true
        assert [v["label"] for v in valid] == [True] * len(rows)


def test_a_sharegpt_system_turn_and_several_rounds_become_chat_turns():
    convo = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
        {"from": "human", "value": "And 3+3?"},
        {"from": "gpt", "value": "6"},
    ]
    from tuneforge.data.reading import RawRow

    valid, _ = validate_rows([RawRow(1, {"conversations": convo})], 100)

    assert [m["role"] for m in valid[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


# Resolving columns: the decision alone


def _cmap(*columns: str, **kwargs: Any):
    return resolve_columns({c: 5 for c in columns}, "d.jsonl", **kwargs)


@pytest.mark.parametrize(
    ("columns", "schema"),
    [
        (("instruction", "output"), "alpaca"),
        (("instruction", "input", "output", "task"), "alpaca"),
        (("instruction", "context", "response", "category"), "dolly"),
        (("instruction", "response"), "dolly"),
        (("prompt", "completion"), "prompt_completion"),
        (("messages",), "openai"),
        (("messages", "task"), "openai"),
        (("conversations",), "sharegpt"),
        (("text",), "text"),
    ],
)
def test_auto_recognises_each_schema_from_its_columns(columns, schema):
    cmap = _cmap(*columns)
    assert cmap.schema == schema and cmap.detected
    assert set(cmap.columns.values()) == set(columns)


def test_a_mapping_applies_to_the_schema_auto_picks():
    cmap = _cmap(
        "question",
        "answer",
        "kind",
        columns={"instruction": "question", "output": "answer", "task": "kind"},
    )
    assert cmap.schema == "alpaca"
    assert cmap.columns == {"instruction": "question", "output": "answer", "task": "kind"}


@pytest.mark.parametrize(
    ("columns", "kwargs", "phrase"),
    [
        (("question", "answer"), {}, "the columns fit no schema"),
        (("instruction", "output", "response"), {}, "fit schemas alpaca, dolly equally"),
        (("instruction", "output", "context"), {}, "column 'context' (5 rows) is not read"),
        (
            ("instruction", "output"),
            {"schema": "dolly"},
            "schema dolly needs output (column 'response')",
        ),
        (("instruction", "output"), {"columns": {"input": "ctx"}}, "maps input to column 'ctx'"),
        (
            ("instruction", "output"),
            {"columns": {"answer": "output"}},
            "'answer' is not a tuneforge field",
        ),
        (
            ("messages",),
            {"schema": "openai", "columns": {"output": "x"}},
            "schema openai has no field",
        ),
    ],
)
def test_what_cannot_be_decided_is_one_line_naming_the_fix(columns, kwargs, phrase):
    with pytest.raises(SchemaError) as info:
        _cmap(*columns, **kwargs)
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_ignored_columns_are_left_out_on_purpose():
    cmap = _cmap("instruction", "output", "id", "source", ignore=["id", "source"])
    assert cmap.schema == "alpaca" and cmap.ignored == ("id", "source")
