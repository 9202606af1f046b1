"""Every command that ends a job ends the same way: with --json, its last stdout line is one
JSON object, the result or `{"error": ...}`; the error is also one `error: ...` line on stderr,
and the exit status is unchanged (2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from tuneforge import lineage
from tuneforge.cli import app

TUNEFORGE = Path(sys.executable).parent / "tuneforge"

JOB_COMMANDS = [
    ["run"],
    ["pipeline"],
    ["sweep"],
    ["validate"],
    ["evaluate"],
    ["config"],
    ["strategies"],
    ["evaluators"],
    ["data", "push"],
    ["models", "list"],
    ["models", "show"],
    ["models", "compare"],
    ["models", "promote"],
    ["models", "rollback"],
    ["slots", "list"],
    ["slots", "release"],
]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _fails_with_json_error(result, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    error = _last_json(result.stdout)["error"]
    assert set(_last_json(result.stdout)) == {"error"}
    line = result.stderr.strip().splitlines()[-1]
    assert line == f"error: {error}"
    for phrase in phrases:
        assert phrase in error
    return error


@pytest.mark.parametrize("command", JOB_COMMANDS, ids=" ".join)
def test_every_command_that_ends_a_job_takes_json(command):
    result = CliRunner().invoke(app, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "--json" in result.stdout


def test_the_json_option_is_declared_once():
    package = REPO / "tuneforge" / "cli"
    sources = {path.name: path.read_text() for path in package.glob("*.py")}

    assert sum(text.count('"--json"') for text in sources.values()) == 1
    assert sources["output.py"].count('"--json"') == 1


def test_run_with_a_missing_config_ends_with_a_json_error(tmp_path):
    missing = tmp_path / "missing.yaml"

    result = CliRunner().invoke(app, ["run", str(missing), "--json"])

    _fails_with_json_error(result, str(missing), "not found")


def test_run_with_a_bad_override_ends_with_a_json_error():
    preset = REPO / "deployments" / "presets" / "tiny-cpu.yaml"

    result = CliRunner().invoke(app, ["run", str(preset), "--set", "bogus=1", "--json"])

    _fails_with_json_error(result, "bogus: unknown key")


def test_validate_of_a_missing_file_ends_with_a_json_error(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.jsonl"), "--json"])

    _fails_with_json_error(result, "file not found")


def test_models_show_of_an_unknown_model_ends_with_a_json_error(tmp_path):
    args = ["models", "show", "nosuchmodel", "--json"]
    args += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]

    result = CliRunner().invoke(app, args)

    _fails_with_json_error(result, "nosuchmodel")


def test_an_unknown_plugin_ends_with_a_json_error():
    result = CliRunner().invoke(app, ["strategies", "no-such-strategy", "--json"])

    _fails_with_json_error(result, "no-such-strategy")


def test_data_push_without_a_prefect_server_ends_with_a_json_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')

    result = CliRunner().invoke(app, ["data", "push", str(data), "--json"])

    _fails_with_json_error(result, "PREFECT_API_URL is not set")


def test_without_json_an_error_is_the_stderr_line_alone(tmp_path):
    runner = CliRunner()
    missing = str(tmp_path / "missing.jsonl")

    with_json = runner.invoke(app, ["validate", missing, "--json"])
    without = runner.invoke(app, ["validate", missing])  # the flag does not outlive a command

    assert with_json.exit_code == without.exit_code == 2
    assert without.stdout == ""
    assert without.stderr.strip() == f"error: {missing}: file not found"


def test_strategies_json_is_one_line_listing_the_built_ins():
    result = CliRunner().invoke(app, ["strategies", "--json"])

    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1
    names = {s["name"] for s in _last_json(result.stdout)}
    assert {"full", "lora", "instruction", "pretrain"} <= names


def test_the_installed_command_ends_with_the_json_error_and_no_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"

    proc = subprocess.run(
        [str(TUNEFORGE), "run", str(missing), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert proc.returncode == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "error": f"{missing}: config file not found"
    }
    assert proc.stderr.strip().splitlines()[-1] == f"error: {missing}: config file not found"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_data_push_json_reports_the_resource_and_its_rows(prefect_harness, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": " "}\n')

    result = CliRunner().invoke(app, ["data", "push", str(data), "--json"])

    assert result.exit_code == 0, result.output
    assert _last_json(result.stdout) == {
        "resource_id": f"{lineage.DATASET_RESOURCE}{data.resolve()}",
        "schema": "alpaca",  # a label on the event's resource: triggers route by it
        "rows": 2,
        "valid": 1,
        "rejected": 1,
    }


def test_a_crash_in_a_flow_still_ends_with_a_json_error_under_json(prefect_harness, capsys):
    """Not bad input (a ValueError or OSError, one line) but a crash: the traceback is printed,
    exit status 1, and under --json the last stdout line still says what failed."""
    import typer

    from tuneforge.cli import output
    from tuneforge.cli.jobs import _run_flow

    def crash() -> None:
        raise RuntimeError("training process failed (-9):\nKilled")

    with pytest.raises(RuntimeError):  # without --json: as any crash, a traceback
        _run_flow(crash, debug=False)
    token = output._as_json.set(True)
    try:
        with pytest.raises(typer.Exit) as exited:
            _run_flow(crash, debug=False)
    finally:
        output._as_json.reset(token)
    assert exited.value.exit_code == 1
    captured = capsys.readouterr()
    assert _last_json(captured.out) == {"error": "training process failed (-9):"}
    assert "Traceback" in captured.err
