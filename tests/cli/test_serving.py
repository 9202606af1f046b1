"""`tuneforge export` and `tuneforge serve` refuse what cannot work in one line, before any
download or export (the exports themselves: tests/exports, tests/flows/test_exports.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app


def _refused(*args: str) -> str:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 2, done.output
    assert "Traceback" not in done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert len(lines) == 1, done.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx"], "--format 'onnx': use one of merged, adapter, gguf"),
        (["--format", "merged", "--precision", "q8_0"], "--precision: a gguf setting"),
        (["--format", "gguf", "--precision", "q4_k"], "--precision 'q4_k': use f16, bf16"),
        (["--format", "merged", "--check", "--rows", "0"], "--rows 0: compare at least one"),
    ],
)
def test_export_refuses_bad_options(args, message, tmp_path):
    line = _refused("export", "models:/nowhere/1", "--out", str(tmp_path / "o"), *args)
    assert message in line


def test_export_check_refuses_bad_data_before_fetching_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no registry here: a download would fail differently
    missing = tmp_path / "no-such.jsonl"
    line = _refused(
        "export",
        "models:/nowhere/1",
        "--format",
        "merged",
        "--out",
        "o",
        "--check",
        "--data",
        str(missing),
    )
    assert f"--data: {missing}: file not found" in line
    assert not (tmp_path / "o").exists()  # nothing exported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch", "0"], "--max-batch 0: must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
        (["--threads", "-1"], "--threads -1: must be at least 1"),
        (["--port", "70000"], "--port 70000: not a TCP port"),
    ],
)
def test_serve_refuses_bad_options(args, message):
    assert message in _refused("serve", "models:/nowhere/1", *args)


def test_serve_names_a_missing_checkpoint(tmp_path):
    line = _refused("serve", str(tmp_path / "nope"))
    assert f"{tmp_path / 'nope'}: no such checkpoint directory" in line
