"""Tests for tuneforge/data/validation.py: every bad-row kind is quarantined with its reason, and
every row ends up in exactly one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.data.reading import RawRow, read_rows
from tuneforge.data.validation import (
    TooManyRejectedError,
    ValidationReport,
    check_rejected_fraction,
    resolve_rows,
    validate_file,
    validate_rows,
)
from tuneforge.data_schemas import SCHEMAS, SchemaError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD_ROWS = FIXTURES / "bad_rows.jsonl"  # alpaca rows
BAD_CHAT_ROWS = FIXTURES / "bad_chat_rows.jsonl"  # openai rows
BAD_PREFERENCE_ROWS = FIXTURES / "bad_preference_rows.jsonl"  # prompt/chosen/rejected
BAD_FEEDBACK_ROWS = FIXTURES / "bad_feedback_rows.jsonl"  # prompt/completion/label
MAX_CHARS = 64  # row 8 of bad_rows.jsonl is just over this
USER_ASSISTANT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]

# Row number in the fixture -> a phrase its quarantine reason must contain.
EXPECTED = {
    BAD_ROWS: {
        3: "instruction: is blank",
        4: "output: is blank",
        5: "output is missing",
        6: "instruction is missing",
        7: "output: must be text",
        8: f"output: is longer than {MAX_CHARS} characters",
        9: "duplicate of row 1",
        11: "invalid JSON",
        12: "not a JSON object (got list)",
    },
    BAD_CHAT_ROWS: {
        2: "messages: needs a user turn and an assistant turn",
        3: "messages: must end with the assistant's turn",
        4: "messages: turn 1 has role 'human'; expected one of assistant, system, user",
        5: "messages: turn 1 has no 'content'",
        6: "messages: has a blank turn",
        8: "duplicate of row 1",
        9: "messages: turn 1 has key 'name', which tuneforge does not read",
    },
    BAD_PREFERENCE_ROWS: {
        2: "chosen equals rejected",
        3: "chosen: is empty",
        4: "chosen and rejected have different prompts",
        5: "chosen: must end with the assistant's turn",
        6: f"chosen: has a turn longer than {MAX_CHARS} characters",
        7: "duplicate of row 1",
        10: "rejected is missing",
        11: "chosen: turn 1 has role 'bot'; expected one of assistant, system, user",
    },
    BAD_FEEDBACK_ROWS: {
        3: "label: must be true or false",
        4: "completion: is empty",
        5: "label is missing",
        6: "duplicate of row 1",
        7: "prompt: is blank",
    },
}
VALID_ROWS = {
    BAD_ROWS: [1, 2, 13],
    BAD_CHAT_ROWS: [1, 7],
    BAD_PREFERENCE_ROWS: [1, 8, 9],
    BAD_FEEDBACK_ROWS: [1, 2],
}
CASES = [(path, row, phrase) for path in EXPECTED for row, phrase in EXPECTED[path].items()]


def _source_lines(path: Path) -> dict[int, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {n: line for n, line in enumerate(lines, start=1) if line.strip()}


@pytest.fixture(scope="module")
def results() -> dict[Path, tuple[list[RawRow], list[dict], list[dict]]]:
    out = {}
    for path in EXPECTED:
        rows = read_rows(str(path))
        valid, quarantine = validate_rows(rows, MAX_CHARS)
        out[path] = (rows, valid, quarantine)
    return out


def _validate(*records: Any, max_chars: int = MAX_CHARS) -> tuple[list[dict], list[dict]]:
    rows = [RawRow(i, rec) for i, rec in enumerate(records, start=1)]
    valid, quarantine = validate_rows(rows, max_chars)
    assert len(valid) + len(quarantine) == len(rows)
    return valid, quarantine


def _reason(record: dict[str, Any], max_chars: int = MAX_CHARS) -> str:
    valid, quarantine = _validate(record, max_chars=max_chars)
    assert valid == []
    assert quarantine[0]["record"] == record
    return quarantine[0]["reason"]


# The committed fixtures: one row of each bad kind


@pytest.mark.parametrize("path", list(EXPECTED), ids=lambda p: p.name)
def test_fixture_every_row_is_valid_or_quarantined_exactly_once(results, path):
    rows, valid, quarantine = results[path]

    assert len(valid) + len(quarantine) == len(rows) == len(_source_lines(path))
    assert [v["row"] for v in valid] == VALID_ROWS[path]
    assert [q["row"] for q in quarantine] == sorted(EXPECTED[path])
    assert sorted(VALID_ROWS[path] + sorted(EXPECTED[path])) == [r.row for r in rows]


@pytest.mark.parametrize(
    ("path", "row", "phrase"), CASES, ids=[f"{p.stem}-{r}" for p, r, _ in CASES]
)
def test_bad_row_is_quarantined_with_reason_and_original_record(results, path, row, phrase):
    _, _, quarantine = results[path]
    entry = next(q for q in quarantine if q["row"] == row)
    line = _source_lines(path)[row]

    assert phrase in entry["reason"]
    if entry["reason"].startswith(("invalid JSON", "not a JSON object")):
        assert entry["record"] == line  # unparsed rows keep their text
    else:
        assert entry["record"] == json.loads(line)


def test_valid_preference_and_feedback_rows_are_chat_records_with_the_other_answer(results):
    _, pairs, _ = results[BAD_PREFERENCE_ROWS]
    _, feedback, _ = results[BAD_FEEDBACK_ROWS]

    france = [{"role": "user", "content": "Capital of France?"}]
    assert pairs[0] == {
        "row": 1,
        "task": "geo",
        "messages": [*france, {"role": "assistant", "content": "Paris."}],
        "rejected": "paris",
    }
    assert pairs[1]["rejected"] == "Lyon"  # the same chosen answer with another rejected one
    assert pairs[2]["messages"][-1] == {"role": "assistant", "content": "Lima"}
    assert [(f["messages"][-1]["content"], f["label"]) for f in feedback] == [
        ("Paris.", True),
        ("paris", False),
    ]


def test_valid_records_are_canonical_chat_records(results):
    _, valid, _ = results[BAD_ROWS]
    _, chat, _ = results[BAD_CHAT_ROWS]

    assert all(set(v) == {"row", "task", "messages"} for v in valid + chat)
    assert valid[0] == {
        "row": 1,
        "task": "add",
        "messages": [
            {"role": "user", "content": "Add the two numbers.\n\n2 + 3"},
            {"role": "assistant", "content": "5"},
        ],
    }
    assert valid[1]["task"] is None
    assert valid[1]["messages"][0] == {"role": "user", "content": "Say hello."}
    assert [m["role"] for m in chat[0]["messages"]] == ["system", "user", "assistant"]
    assert chat[1]["task"] == "greet"


def test_quarantine_is_sorted_by_row_and_reasons_are_never_empty(results):
    for _, _, quarantine in results.values():
        assert [q["row"] for q in quarantine] == sorted(q["row"] for q in quarantine)
        assert all(set(q) == {"row", "reason", "record"} and q["reason"] for q in quarantine)


# Single-row cases beyond the fixtures


@pytest.mark.parametrize(
    ("record", "phrase"),
    [
        ({"instruction": "\n\t ", "output": "x"}, "instruction: is blank"),
        ({"instruction": "Say hi.", "output": " \n"}, "output: is blank"),
        ({"instruction": ["Say", "hi"], "output": "hi"}, "instruction: must be text"),
        ({"instruction": "Say hi.", "input": 3, "output": "hi"}, "input: must be text"),
        ({"instruction": "Say hi.", "output": "hi", "task": 7}, "task: must be text"),
        ({"instruction": "Say hi.", "output": "hi", "task": "  "}, "task: is blank"),
        ({"instruction": "Say hi.", "input": "x" * 65, "output": "hi"}, "input: is longer than"),
        ({"instruction": "Say hi.", "output": None}, "output is missing"),
        ({"instruction": None, "output": "hi"}, "instruction is missing"),
        ({"messages": []}, "messages: must be a non-empty list"),
        ({"messages": "not json"}, "messages: must be a non-empty list"),
        ({"messages": {"role": "user", "content": "q"}}, "messages: must be a non-empty list"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages: turn 1: content must be text"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "needs a user turn"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a" * 65},
                ]
            },
            f"messages: has a turn longer than {MAX_CHARS} characters",
        ),
        ({"messages": None}, "messages is missing"),
        ({"text": " \n"}, "text: is blank"),
        ({"text": 3}, "text: must be text"),
        ({"text": None, "task": "doc"}, "text is missing"),
    ],
)
def test_single_bad_row_reason_names_the_problem(record, phrase):
    assert phrase in _reason(record)


def test_row_with_several_problems_lists_each_reason_once():
    reason = _reason({"instruction": " ", "output": 4})

    assert reason.split("; ") == ["instruction: is blank", "output: must be text"]


def test_over_long_limit_is_inclusive():
    at_limit = {"instruction": "x" * 10, "output": "y"}
    over = {"instruction": "x" * 11, "output": "y"}

    valid, quarantine = _validate(at_limit, over, max_chars=10)

    assert [v["row"] for v in valid] == [1]
    assert quarantine[0]["row"] == 2


def test_chat_messages_as_json_string_are_decoded_like_csv_cells():
    valid, quarantine = _validate({"messages": json.dumps(USER_ASSISTANT), "task": "qa"})

    assert quarantine == []
    assert valid == [{"row": 1, "task": "qa", "messages": USER_ASSISTANT}]


def test_a_turn_key_nothing_reads_is_quarantined_not_dropped():
    turns = [dict(turn, name="someone") for turn in USER_ASSISTANT]

    assert "turn 1 has key 'name', which tuneforge does not read" in _reason({"messages": turns})


def test_blank_alpaca_input_is_not_joined_to_instruction():
    valid, _ = _validate({"instruction": "Say hi.", "input": "  ", "output": "hi"})

    assert valid[0]["messages"][0]["content"] == "Say hi."


def test_duplicates_keep_first_and_name_it():
    alpaca = {"instruction": "Capital of France?", "output": "Paris."}

    valid, quarantine = _validate(alpaca, {"instruction": "Other", "output": "x"}, alpaca)

    assert [v["row"] for v in valid] == [1, 2]
    assert [(q["row"], q["reason"]) for q in quarantine] == [(3, "duplicate of row 1")]


def test_parse_error_rows_are_quarantined_with_their_text():
    rows = [RawRow(5, None, raw="{oops", parse_error="invalid JSON: Expecting property name")]

    valid, quarantine = validate_rows(rows, MAX_CHARS)

    assert valid == []
    assert quarantine == [
        {"row": 5, "reason": "invalid JSON: Expecting property name", "record": "{oops"}
    ]


def test_no_rows_validate_to_nothing():
    assert validate_rows([], MAX_CHARS) == ([], [])


def test_chat_turn_with_unhashable_role_is_quarantined_not_a_crash():
    assert "messages: turn 1 has role ['user']" in _reason({"messages": [{"role": ["user"]}]})


# Files and the rejected-fraction threshold


def test_validate_file_writes_valid_and_quarantine_files(tmp_path):
    rows = read_rows(str(BAD_ROWS))

    report = validate_file(rows, MAX_CHARS, tmp_path / "valid.jsonl", tmp_path / "q.jsonl")

    valid, quarantine = validate_rows(rows, MAX_CHARS)
    assert (report.total, report.valid, report.rejected) == (12, 3, 9)
    assert (report.schema, report.columns["output"]) == ("alpaca", "output")
    assert [json.loads(x) for x in Path(report.valid_path).read_text().splitlines()] == valid
    written = [json.loads(x) for x in Path(report.quarantine_path).read_text().splitlines()]
    assert written == quarantine
    assert len(report.fingerprint) == 16
    int(report.fingerprint, 16)


def test_validate_file_writes_empty_quarantine_and_fingerprint_follows_valid_data(tmp_path):
    good = [RawRow(1, {"instruction": "a", "output": "b"})]
    other = [RawRow(1, {"instruction": "a", "output": "c"})]

    first = validate_file(good, MAX_CHARS, tmp_path / "1" / "v.jsonl", tmp_path / "1" / "q.jsonl")
    again = validate_file(good, MAX_CHARS, tmp_path / "2" / "v.jsonl", tmp_path / "2" / "q.jsonl")
    changed = validate_file(
        other, MAX_CHARS, tmp_path / "3" / "v.jsonl", tmp_path / "3" / "q.jsonl"
    )

    assert Path(first.quarantine_path).read_text() == ""
    assert first.rejected == 0
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != changed.fingerprint


def _report(total: int, rejected: int) -> ValidationReport:
    return ValidationReport(total, total - rejected, rejected, "v.jsonl", "q.jsonl", "0" * 16)


def test_rejected_fraction_at_or_below_limit_passes():
    check_rejected_fraction(_report(4, 1), 0.25, "d.jsonl")
    check_rejected_fraction(_report(4, 0), 0.0, "d.jsonl")
    check_rejected_fraction(_report(0, 0), 0.0, "d.jsonl")


def test_rejected_fraction_above_limit_raises_with_counts_and_quarantine_path():
    with pytest.raises(TooManyRejectedError) as info:
        check_rejected_fraction(_report(4, 1), 0.2, "d.jsonl")

    message = str(info.value)
    assert message.startswith("d.jsonl: 1 of 4 rows rejected (25.0%)")
    assert "q.jsonl" in message


# Property: arbitrary dict rows never crash validation and are all accounted for

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: Parquet and HF rows can hold them
    | st.text(max_size=12)
    | st.text(st.characters(exclude_categories=()), max_size=4)  # lone surrogates, controls
    | st.sampled_from(["", " ", "\u3000", "user", "assistant", "system", "../x", "/abs", ".."])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["role", "content", "from", "value", "x"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@st.composite
def _schema_rows(draw: Any) -> tuple[str, list[dict[str, Any]]]:
    """A schema, and rows whose keys are that schema's columns (some of them, in any mix)."""
    name = draw(st.sampled_from(sorted(SCHEMAS)))
    keys = list(SCHEMAS[name].columns.values())
    rows = draw(st.lists(st.dictionaries(st.sampled_from(keys), _VALUES, max_size=5), max_size=6))
    return name, rows


@settings(max_examples=150, deadline=None)
@given(drawn=_schema_rows(), max_chars=st.integers(min_value=1, max_value=20))
def test_random_rows_never_crash_and_are_all_accounted_for(drawn, max_chars):
    name, records = drawn
    rows = [RawRow(i, rec) for i, rec in enumerate(records, start=1)]

    try:
        cmap = resolve_rows(rows, "d.jsonl", schema=name)
    except SchemaError as exc:  # only when no row has a column the schema requires
        needed = {SCHEMAS[name].columns[f] for f in SCHEMAS[name].required}
        assert not needed <= {key for rec in records for key in rec}, str(exc)
        assert str(exc).startswith("d.jsonl: ") and "\n" not in str(exc)
        return
    valid, quarantine = validate_rows(rows, max_chars, cmap)

    assert len(valid) + len(quarantine) == len(rows)
    assert sorted([v["row"] for v in valid] + [q["row"] for q in quarantine]) == [
        r.row for r in rows
    ]
    assert all(isinstance(q["reason"], str) and q["reason"] for q in quarantine)
    for q in quarantine:
        assert q["record"] is records[q["row"] - 1]
    for v in valid:
        if name == "text":
            assert set(v) == {"row", "task", "text"} and v["text"].strip()
        else:
            assert set(v) == {"row", "task", "messages"}
            assert v["messages"][-1]["role"] == "assistant"
        json.dumps(v, ensure_ascii=False).encode("utf-8")  # writable and tokenizable text


# Straight from the source: one pass when the first rows tell the schema


def _one_pass_and_two(tmp_path, monkeypatch, records: list[dict]):
    import tuneforge.data.validation as module

    monkeypatch.setattr(module, "CHUNK", 2)  # a decision per two rows
    rows = [RawRow(i, r) for i, r in enumerate(records, start=1)]
    reads = []

    def source():
        reads.append(1)
        return iter(rows)

    streamed = module.validate_source(source, MAX_CHARS, tmp_path / "v1", tmp_path / "q1", "d")
    whole = validate_file(rows, MAX_CHARS, tmp_path / "v2", tmp_path / "q2")
    assert (tmp_path / "v1").read_text() == (tmp_path / "v2").read_text()
    assert (tmp_path / "q1").read_text() == (tmp_path / "q2").read_text()
    assert (streamed.schema, streamed.columns, streamed.total) == (
        whole.schema,
        whole.columns,
        whole.total,
    )
    return len(reads)


def test_an_optional_column_first_seen_late_needs_no_second_read(tmp_path, monkeypatch):
    late_input = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    late_input.append({"instruction": "q", "input": "ctx", "output": "a", "task": "t"})

    assert _one_pass_and_two(tmp_path, monkeypatch, late_input) == 1


def test_rows_that_cannot_tell_the_schema_at_first_are_read_again(tmp_path, monkeypatch):
    # The first rows lack `output` (no schema fits them yet); the file as a whole is alpaca.
    records = [{"instruction": f"q{i}"} for i in range(4)]
    records += [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4, 8)]

    assert _one_pass_and_two(tmp_path, monkeypatch, records) == 2


def test_a_column_seen_late_that_nothing_reads_still_refuses_the_file(tmp_path, monkeypatch):
    import tuneforge.data.validation as module

    monkeypatch.setattr(module, "CHUNK", 2)
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)] + [
        {"instruction": "q", "output": "a", "foo": 1}
    ]
    rows = [RawRow(i, r) for i, r in enumerate(records, start=1)]

    with pytest.raises(SchemaError, match=r"column 'foo' \(1 rows\) is not read"):
        module.validate_source(lambda: iter(rows), MAX_CHARS, tmp_path / "v", tmp_path / "q", "d")
