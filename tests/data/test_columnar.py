"""Columnar validation gives the row reader's verdicts, byte for byte: the same valid records,
the same quarantine (rows, reasons, records), the same report, or the same one-line error.

    .venv/bin/pytest -q tests/data/test_columnar.py

Every JSONL and Parquet case of the bad-input corpus (`tests/test_bad_input.py`, the
`tests/fixtures/bad_*` files) runs both ways, then the edges of what `columnar.accept` takes,
then random files. Chunks are made tiny where a case is about what crosses them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_bad_input import DATA_CASES
from tuneforge.data import columnar, validation
from tuneforge.data.reading import DataLoadError
from tuneforge.data.validation import validate_path
from tuneforge.data_schemas import SchemaError

FIXTURES = Path(__file__).parent.parent / "fixtures"
MAX_CHARS = 40


def _outcome(path: Path, out: Path, columnar_reading: bool, **options) -> tuple:
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = validate_path(
            str(path),
            options.pop("max_chars", MAX_CHARS),
            out / "valid.jsonl",
            out / "quarantine.jsonl",
            columnar_reading=columnar_reading,
            **options,
        )
    except (DataLoadError, SchemaError) as exc:
        return (type(exc).__name__, str(exc))
    files = ((out / "valid.jsonl").read_bytes(), (out / "quarantine.jsonl").read_bytes())
    summary = (report.total, report.valid, report.fingerprint, report.schema, report.columns)
    return (*files, summary)


def _same_both_ways(path: Path, tmp: Path, **options) -> tuple:
    fast = _outcome(path, tmp / "columnar", True, **dict(options))
    exact = _outcome(path, tmp / "rows", False, **dict(options))
    assert fast == exact
    return fast


def _json(row: object) -> str:
    """Non-ASCII as itself, unless the row holds a lone surrogate: then escaped (as `\\ud800`)."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row)
    return line


def _jsonl(tmp_path: Path, *rows: object) -> Path:
    lines = [r if isinstance(r, str) else _json(r) for r in rows]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (name, content)
        for name, content, _, _ in DATA_CASES
        if name.endswith((".jsonl", ".parquet"))
    ],
)
def test_every_bad_input_case_is_judged_the_same(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)

    _same_both_ways(path, tmp_path, max_chars=2000)  # the CLI's default, as those cases expect


@pytest.mark.parametrize(
    "name",
    [
        "bad_rows.jsonl",
        "bad_chat_rows.jsonl",
        "bad_preference_rows.jsonl",
        "bad_feedback_rows.jsonl",
    ],
)
@pytest.mark.parametrize("block", [columnar.BLOCK, 64])  # 64 bytes: a line or two a chunk
def test_every_bad_fixture_is_judged_the_same(tmp_path, monkeypatch, name, block):
    monkeypatch.setattr(columnar, "BLOCK", block)
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)

    valid, quarantine, _ = _same_both_ways(path, tmp_path)

    assert valid and quarantine  # each fixture has both kinds of rows


def test_plain_rows_never_reach_the_row_rules(tmp_path, monkeypatch):
    path = _jsonl(
        tmp_path,
        {"instruction": 'Quote "this"\\ and\ttab', "input": "line\r\nbreak", "output": "é 😀 ✓"},
        {"instruction": "Same answer", "input": "", "output": "é 😀 ✓", "task": "qa/math"},
        {"instruction": "no input", "input": None, "output": "x" * MAX_CHARS, "task": "t"},
    )

    valid, quarantine, _ = _same_both_ways(path, tmp_path)
    judged = []
    original = validation._judge_rows
    monkeypatch.setattr(
        validation, "_judge_rows", lambda rows, rules: judged.extend(rows) or original(rows, rules)
    )

    assert _outcome(path, tmp_path / "again", True)[0] == valid
    assert judged == [] and quarantine == b""
    assert valid.count(b"\n") == 3


ALPACA_EDGES = [
    {"instruction": "q", "input": "  ", "output": "whitespace-only input is dropped"},
    {"instruction": "q", "input": "\u3000", "output": "so is an ideographic space"},
    {"instruction": "\u3000", "output": "blank to Python, not to a naive regex"},
    {"instruction": "q", "output": "a\u0007bell: escaped as \\u0007"},
    {"instruction": "q", "output": "\x0cform feed and \x08backspace"},
    {"instruction": "q", "output": "x" * (MAX_CHARS + 1)},
    {"instruction": "q", "output": "é" * MAX_CHARS},
    {"instruction": "q", "output": "a", "task": "../x"},
    {"instruction": "q", "output": "a", "task": " "},
    {"instruction": "q", "output": "a", "task": "a/b"},
    {"instruction": "q", "output": "a", "task": "t\u0007"},
    {"instruction": "q", "output": "a", "task": 3},
    {"instruction": "q", "output": 5},
    {"instruction": ["q"], "output": "a"},
    '{"instruction": "q", "output": "\\ud83d\\ude00 escaped pair"}',
    '{"instruction": "q", "output": "a", "meta": NaN}',
    '{"instruction": "q", "output": "dup key", "output": "b"}',
    '\ufeff{"instruction": "q", "output": "a BOM mid-file"}',
    '{"instruction": "q", "output": "two"} {"instruction": "q", "output": "objects"}',
    '  {"instruction": "q", "output": "leading spaces"}\r',
    "[1, 2]",
    "   ",
    {"instruction": "q", "output": "a"},  # a duplicate of row... the first plain one
]


@pytest.mark.parametrize("block", [columnar.BLOCK, 100])
def test_the_edges_of_what_is_accepted_in_columns_are_judged_the_same(tmp_path, monkeypatch, block):
    monkeypatch.setattr(columnar, "BLOCK", block)
    plain = {"instruction": "q", "output": "a"}
    path = _jsonl(tmp_path, plain, *ALPACA_EDGES, plain, {"instruction": "z", "output": "y"})

    _valid, quarantine, _ = _same_both_ways(path, tmp_path, ignore=["meta"])

    reasons = [json.loads(line)["reason"] for line in quarantine.splitlines()]
    assert "duplicate of row 1" in reasons and any("NaN" in r for r in reasons)


def test_a_column_whose_type_changes_midway_sets_those_rows_aside(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    rows[2]["output"] = 7
    rows[4]["output"] = {"nested": True}
    path = _jsonl(tmp_path, *rows)

    _, quarantine, _ = _same_both_ways(path, tmp_path)

    assert [json.loads(q)["row"] for q in quarantine.splitlines()] == [3, 5]


def test_an_unread_column_that_only_holds_null_still_refuses_the_file(tmp_path):
    path = _jsonl(tmp_path, {"instruction": "q", "output": "a", "extra": None})

    outcome = _same_both_ways(path, tmp_path)

    assert outcome[0] == "SchemaError" and "'extra' (1 rows)" in outcome[1]


CHAT = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": 'a\n"quoted"'},
        ],
        "task": "chat",
    },
    {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "name": "bot"},
        ]
    },
    {"messages": [{"role": "user", "content": "q"}]},
    {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
    {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 41}]},
    {"messages": []},
    {"messages": None},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]


@pytest.mark.parametrize("block", [columnar.BLOCK, 150])
def test_chat_rows_are_judged_the_same(tmp_path, monkeypatch, block):
    monkeypatch.setattr(columnar, "BLOCK", block)

    valid, quarantine, _ = _same_both_ways(_jsonl(tmp_path, *CHAT), tmp_path)

    # A turn's keys other than role and content are refused (row 3's "name").
    assert valid.count(b"\n") == 2 and quarantine.count(b"\n") == len(CHAT) - 2


def test_sharegpt_turns_are_mapped_and_their_other_keys_refused_the_same(tmp_path):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows = [
        {"conversations": turns},
        {"conversations": [{"from": "system", "value": "s"}, *turns], "task": "t"},
        {"conversations": [{"from": "human", "value": "q", "weight": 1}, turns[1]]},
        {"conversations": [{"from": "user", "value": "q"}, turns[1]]},
    ]

    valid, _quarantine, summary = _same_both_ways(_jsonl(tmp_path, *rows), tmp_path)

    assert summary[3] == "sharegpt" and valid.count(b"\n") == 2


def test_text_rows_are_judged_the_same(tmp_path):
    rows = [{"text": "x" * 100}, {"text": " "}, {"text": "a\tb"}, {"text": 3}, {"text": "x" * 100}]

    valid, _, summary = _same_both_ways(_jsonl(tmp_path, *rows), tmp_path)

    assert summary[3] == "text" and valid.count(b"\n") == 2


def test_parquet_rows_are_judged_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(columnar, "PARQUET_BATCH", 2)
    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(
        pa.table(
            {
                "instruction": ["q", " ", "q", None, "q2"],
                "input": ["", "i", None, "i", "\u3000"],
                "output": ["a", "a", "a", "a", "b"],
                "task": ["t", None, "t", "t", "../x"],
            }
        ),
        alpaca,
    )
    chat = tmp_path / "chat.parquet"
    # (no row with a turn key "name": Parquet would give every turn one, which is refused)
    pq.write_table(pa.Table.from_pylist(CHAT[:2] + CHAT[3:6] + CHAT[:1]), chat)

    # Row 3 repeats row 1: an empty input and a missing one make the same prompt.
    assert _same_both_ways(alpaca, tmp_path / "a")[2][1] == 1
    assert _same_both_ways(chat, tmp_path / "c")[2][1] == 2


_TEXTS = st.text(st.characters(exclude_characters="\ufeff"), max_size=12) | st.sampled_from(
    ["", " ", "\u3000", "a\u0007", "q", "é😀", "x" * MAX_CHARS, "../t", "a/b"]
)
_VALUES = _TEXTS | st.none() | st.integers() | st.lists(_TEXTS, max_size=2)
_ALPACA = st.fixed_dictionaries(
    {"instruction": _VALUES, "output": _VALUES}, optional={"input": _VALUES, "task": _VALUES}
)
_TURN = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "bot"])}, optional={"content": _VALUES}
)
_CHAT = st.fixed_dictionaries(
    {"messages": st.lists(_TURN, max_size=3) | st.none()}, optional={"task": _VALUES}
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_ALPACA, min_size=1, max_size=8) | st.lists(_CHAT, min_size=1, max_size=8))
def test_random_files_are_judged_the_same(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("random")
    rows = rows + rows[:2]  # some duplicates

    _same_both_ways(_jsonl(tmp, *rows), tmp)
