"""Tests for `tuneforge validate`: exit 0 all valid, 1 some quarantined, 2 unusable input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from tuneforge.cli import app

BUNDLED = REPO / "data" / "instructions.jsonl"
BAD_ROWS = REPO / "tests" / "fixtures" / "bad_rows.jsonl"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"


def _validate(*args: str):
    return CliRunner().invoke(app, ["validate", *args])


def test_bundled_data_is_all_valid_and_exits_0(tmp_path):
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(BUNDLED), "--quarantine", str(quarantine), "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    columns = {"instruction": "instruction", "input": "input", "output": "output", "task": "task"}
    assert summary == {
        "total": 1508,
        "valid": 1508,
        "rejected": 0,
        "quarantine": str(quarantine),
        "schema": "alpaca",
        "columns": columns,
    }
    assert quarantine.read_text() == ""
    assert result.stderr == ""


def test_bad_rows_exit_1_write_quarantine_and_print_json_summary_last(tmp_path):
    quarantine = tmp_path / "out" / "q.jsonl"

    result = _validate(
        str(BAD_ROWS), "--quarantine", str(quarantine), "--max-chars", "64", "--json"
    )

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"total", "valid", "rejected", "quarantine", "schema", "columns"}
    assert (summary["total"], summary["valid"], summary["rejected"]) == (12, 3, 9)
    assert summary["quarantine"] == str(quarantine)
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert len(entries) == summary["rejected"]
    assert entries[0]["row"] == 3
    assert "row 3: instruction: is blank" in result.stderr
    assert "row 9: duplicate of row 1" in result.stderr


def test_max_chars_option_changes_the_verdict(tmp_path):
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(BAD_ROWS), "--quarantine", str(quarantine), "--json")

    assert result.exit_code == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rejected"] == 8  # row 8 fits the default 2000-character limit


def test_human_summary_and_default_quarantine_beside_the_data(tmp_path, monkeypatch):
    data = tmp_path / "data" / "bad_rows.jsonl"
    data.parent.mkdir()
    data.write_bytes(BAD_ROWS.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    result = _validate(str(data), "--max-chars", "64")

    assert result.exit_code == 1
    text = " ".join(result.stdout.split())
    assert "schema alpaca (recognised;" in text and "12 rows, 3 valid, 9 quarantined" in text
    assert len((data.parent / "bad_rows.jsonl.quarantine.jsonl").read_text().splitlines()) == 9
    assert list(work.iterdir()) == []  # nothing in the working directory


def test_explicit_format_reads_a_file_without_a_known_suffix(tmp_path):
    data = tmp_path / "rows.txt"
    data.write_text('{"instruction": "a", "output": "b"}\n')

    guessed = _validate(str(data), "--quarantine", str(tmp_path / "q1.jsonl"))
    explicit = _validate(str(data), "--format", "jsonl", "--quarantine", str(tmp_path / "q2.jsonl"))

    assert guessed.exit_code == 2
    assert "cannot tell the format" in guessed.stderr
    assert explicit.exit_code == 0, explicit.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b" \n\n", "file is empty"),
        (b"\x00\x01\x02binary", "binary data"),
        (b"caf\xe9\n", "not UTF-8"),
    ],
)
def test_unusable_input_exits_2_with_one_line_error(tmp_path, content, expected):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_bytes(content)
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(data), "--quarantine", str(quarantine))

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert str(data) in lines[0] and expected in lines[0]
    assert not quarantine.exists()


def test_installed_command_missing_file_exits_2_without_traceback(tmp_path):
    missing = tmp_path / "missing.jsonl"

    proc = subprocess.run(
        [str(TUNEFORGE), "validate", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {missing}: file not found"
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("folder", ["runs[old]", "runs[/old]"])
def test_error_message_shows_path_with_brackets_verbatim(tmp_path, folder):
    data = tmp_path / folder / "missing.jsonl"

    result = _validate(str(data))

    assert result.exit_code == 2
    assert str(data) in result.stderr


# Schemas and column mappings

DOLLY = [
    {
        "instruction": "Who wrote Hamlet?",
        "context": "",
        "response": "Shakespeare.",
        "category": "qa",
    },
    {
        "instruction": "Summarise.",
        "context": "Cats sleep a lot.",
        "response": "Cats nap.",
        "category": "sum",
    },
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_dolly_file_is_recognised_and_reported(tmp_path):
    data = _write_jsonl(tmp_path / "dolly.jsonl", DOLLY)

    result = _validate(str(data), "--json")

    assert result.exit_code == 0, result.output
    summary = _summary(result)
    assert summary["schema"] == "dolly"
    assert summary["columns"] == {
        "instruction": "instruction",
        "input": "context",
        "output": "response",
        "task": "category",
    }


def test_a_partial_rename_is_refused_naming_the_unread_columns_then_ignored_on_purpose(tmp_path):
    renamed = [{("output" if k == "response" else k): v for k, v in r.items()} for r in DOLLY]
    data = _write_jsonl(tmp_path / "renamed.jsonl", renamed)

    refused = _validate(str(data), "--json")
    ignored = _validate(str(data), "--ignore", "context", "--ignore", "category", "--json")
    mapped = _validate(str(data), "--column", "input=context", "--column", "task=category")

    assert refused.exit_code == 2
    line = refused.stderr.strip()
    assert "columns 'context', 'category' are not read by schema alpaca" in line
    assert "--column FIELD=COLUMN" in line and "--ignore context" in line
    assert "\n" not in line
    assert ignored.exit_code == 0, ignored.output
    assert _summary(ignored)["columns"] == {"instruction": "instruction", "output": "output"}
    assert mapped.exit_code == 0, mapped.output


def test_a_key_in_a_single_row_is_a_column_too(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d", "foo": 1}]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)

    result = _validate(str(data))

    assert result.exit_code == 2
    assert "column 'foo' (1 rows) is not read by schema alpaca" in result.stderr


def test_ambiguous_or_unknown_columns_exit_2_listing_what_the_file_has(tmp_path):
    unknown = _write_jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    both = _write_jsonl(
        tmp_path / "b.jsonl", [{"instruction": "q", "output": "a", "response": "r"}]
    )

    none_fits = _validate(str(unknown))
    two_fit = _validate(str(both))

    assert none_fits.exit_code == 2
    assert "the columns fit no schema (the file has answer (1 rows), question (1 rows)" in (
        none_fits.stderr
    )
    assert two_fit.exit_code == 2
    assert "fit schemas alpaca, dolly equally" in two_fit.stderr and "--schema" in two_fit.stderr


def test_an_explicit_schema_and_mapping(tmp_path):
    rows = [{"q": "Say hi.", "a": "hi", "kind": "greet"}]
    data = _write_jsonl(tmp_path / "custom.jsonl", rows)

    result = _validate(
        str(data),
        "--schema",
        "prompt_completion",
        "--column",
        "instruction=q",
        "--column",
        "output=a",
        "--column",
        "task=kind",
        "--json",
    )
    missing = _validate(str(data), "--schema", "dolly")
    bad_field = _validate(str(data), "--column", "answer=a")

    assert result.exit_code == 0, result.output
    assert _summary(result)["columns"] == {"instruction": "q", "output": "a", "task": "kind"}
    assert missing.exit_code == 2 and "schema dolly needs" in missing.stderr
    assert bad_field.exit_code == 2 and "'answer' is not a tuneforge field" in bad_field.stderr


def test_a_file_whose_every_row_is_rejected_exits_2(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": " "}])
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(data), "--quarantine", str(quarantine))

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {data}: every row was rejected; nothing is usable (reasons in {quarantine})"
    )
    assert len(quarantine.read_text().splitlines()) == 1  # the reasons are kept


def test_under_json_an_unusable_file_ends_stdout_with_the_error(tmp_path):
    missing = tmp_path / "missing.jsonl"

    result = _validate(str(missing), "--json")

    assert result.exit_code == 2
    assert result.stdout.strip().splitlines() == [
        json.dumps({"error": f"{missing}: file not found"})
    ]
    assert result.stderr.strip() == f"error: {missing}: file not found"


def test_under_json_every_row_rejected_prints_the_summary_then_the_error(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": " "}])
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(data), "--quarantine", str(quarantine), "--json")

    assert result.exit_code == 2
    *_, summary, error = result.stdout.strip().splitlines()
    assert json.loads(summary)["rejected"] == 1
    assert json.loads(error) == {
        "error": f"{data}: every row was rejected; nothing is usable (reasons in {quarantine})"
    }
