"""Tests for `tuneforge validate`: exit 0 all valid, 1 some quarantined, 2 unusable input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app

REPO = Path(__file__).resolve().parents[1]
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
    assert summary == {"total": 1508, "valid": 1508, "rejected": 0, "quarantine": str(quarantine)}
    assert quarantine.read_text() == ""
    assert result.stderr == ""


def test_bad_rows_exit_1_write_quarantine_and_print_json_summary_last(tmp_path):
    quarantine = tmp_path / "out" / "q.jsonl"

    result = _validate(
        str(BAD_ROWS), "--quarantine", str(quarantine), "--max-chars", "64", "--json"
    )

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"total", "valid", "rejected", "quarantine"}
    assert summary == {"total": 20, "valid": 4, "rejected": 16, "quarantine": str(quarantine)}
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert len(entries) == summary["rejected"]
    assert entries[0]["row"] == 4
    assert "row 4: instruction: is blank" in result.stderr
    assert "row 17: duplicate of row 1" in result.stderr


def test_max_chars_option_changes_the_verdict(tmp_path):
    quarantine = tmp_path / "q.jsonl"

    result = _validate(str(BAD_ROWS), "--quarantine", str(quarantine), "--json")

    assert result.exit_code == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rejected"] == 15  # row 9 fits the default 2000-character limit


def test_human_summary_and_default_quarantine_name_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = _validate(str(BAD_ROWS), "--max-chars", "64")

    assert result.exit_code == 1
    assert "20 rows, 4 valid, 16 quarantined" in " ".join(result.stdout.split())
    assert len((tmp_path / "bad_rows.jsonl.quarantine.jsonl").read_text().splitlines()) == 16


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
